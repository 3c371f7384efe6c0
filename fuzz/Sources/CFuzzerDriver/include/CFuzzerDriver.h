// libFuzzer's driver entry (LLVM >= 11). SwiftPM names the executable's entry point itself, so the fuzzer
// starts libFuzzer from Swift instead of using libFuzzer's main().
#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*UserCb)(const uint8_t *Data, size_t Size));
