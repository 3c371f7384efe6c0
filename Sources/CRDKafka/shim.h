// librdkafka's C API, imported into Swift as the module CRDKafka.
// Only Sources/TributaryKafka uses it (one Swift module per C library, see docs/ARCHITECTURE.md).
#include <librdkafka/rdkafka.h>
