// Header-only target; this file exists because SwiftPM needs a source file in every C target.
#include "CFuzzerDriver.h"
