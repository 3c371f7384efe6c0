// CRC-32C (Castagnoli) with CPU instructions, chosen at run time. See include/ccrc32c.h.
// Each function carrying a target attribute is compiled for that extension only; the rest of the
// program is not, so a processor without it never executes those instructions.
#include "ccrc32c.h"

#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>

__attribute__((target("sse4.2")))
static uint32_t update_x86(uint32_t state, const unsigned char *p, size_t n) {
    uint64_t crc = state;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = __builtin_ia32_crc32di(crc, word);
        p += 8;
        n -= 8;
    }
    uint32_t crc32 = (uint32_t)crc;
    while (n > 0) {
        crc32 = __builtin_ia32_crc32qi(crc32, *p);
        p += 1;
        n -= 1;
    }
    return crc32;
}

static int detect(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
    return (ecx & bit_SSE4_2) != 0;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>

#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif

__attribute__((target("crc")))
static uint32_t update_arm(uint32_t state, const unsigned char *p, size_t n) {
    uint32_t crc = state;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        crc = __builtin_arm_crc32cd(crc, word);
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        crc = __builtin_arm_crc32cb(crc, *p);
        p += 1;
        n -= 1;
    }
    return crc;
}

static int detect(void) { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }

#else
static int detect(void) { return 0; }
#endif

int ccrc32c_hardware_available(void) {
    // Benign race: every thread computes the same answer.
    static int cached = -1;
    int value = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (value < 0) {
        value = detect();
        __atomic_store_n(&cached, value, __ATOMIC_RELAXED);
    }
    return value;
}

uint32_t ccrc32c_hardware_update(uint32_t state, const void *bytes, size_t count) {
#if defined(__x86_64__)
    return update_x86(state, (const unsigned char *)bytes, count);
#elif defined(__aarch64__) && defined(__linux__)
    return update_arm(state, (const unsigned char *)bytes, count);
#else
    (void)bytes;
    (void)count;
    return state;
#endif
}
