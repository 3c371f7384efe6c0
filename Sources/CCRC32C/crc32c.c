// CRC-32C (Castagnoli) with CPU instructions, chosen at run time. See include/ccrc32c.h.
// Each function carrying a target attribute is compiled for that extension only; the rest of the
// program is not, so a processor without it never executes those instructions.
#include "ccrc32c.h"

#include <string.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <pthread.h>

// The crc32 instruction takes 3 cycles but can start one per cycle: three independent streams over
// three adjacent blocks keep it busy, and their states are then combined. The CRC state (not inverted)
// is linear over GF(2): update(s, A || B) = shift(update(s, A), |B|) ^ update(0, B), where shift(c, n)
// is c run over n zero bytes. shift by a fixed n is a linear map of 32 bits, kept as four tables of 256
// entries (one per byte of c), built once from the instruction itself.
#define BLOCK_LONG 4096
#define BLOCK_SHORT 256
#define BLOCK_MINI 64

typedef struct {
    uint32_t table[4][256];
} shift_op;

static shift_op shift_long, shift_short, shift_mini;
static pthread_once_t shift_once = PTHREAD_ONCE_INIT;

__attribute__((target("sse4.2")))
static uint32_t update_single(uint32_t state, const unsigned char *p, size_t n) {
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

static void shift_build(shift_op *op, size_t n) {
    static const unsigned char zeros[BLOCK_LONG];
    uint32_t basis[32];
    for (int bit = 0; bit < 32; bit++) basis[bit] = update_single(1u << bit, zeros, n);
    for (int byte = 0; byte < 4; byte++) {
        for (int value = 0; value < 256; value++) {
            uint32_t result = 0;
            for (int bit = 0; bit < 8; bit++) {
                if (value & (1 << bit)) result ^= basis[8 * byte + bit];
            }
            op->table[byte][value] = result;
        }
    }
}

static void shift_build_all(void) {
    shift_build(&shift_long, BLOCK_LONG);
    shift_build(&shift_short, BLOCK_SHORT);
    shift_build(&shift_mini, BLOCK_MINI);
}

static inline uint32_t shift_apply(const shift_op *op, uint32_t crc) {
    return op->table[0][crc & 0xFF] ^ op->table[1][(crc >> 8) & 0xFF] ^ op->table[2][(crc >> 16) & 0xFF] ^
           op->table[3][crc >> 24];
}

// Runs whole rounds of three `block`-byte streams while at least three blocks remain.
__attribute__((target("sse4.2")))
static inline uint32_t update_rounds(uint32_t state, const unsigned char **pointer, size_t *remaining, size_t block,
                                     const shift_op *op) {
    const unsigned char *p = *pointer;
    size_t n = *remaining;
    uint64_t crc0 = state;
    while (n >= 3 * block) {
        uint64_t crc1 = 0, crc2 = 0;
        const unsigned char *end = p + block;
        do {
            uint64_t word0, word1, word2;
            memcpy(&word0, p, 8);
            memcpy(&word1, p + block, 8);
            memcpy(&word2, p + 2 * block, 8);
            crc0 = __builtin_ia32_crc32di(crc0, word0);
            crc1 = __builtin_ia32_crc32di(crc1, word1);
            crc2 = __builtin_ia32_crc32di(crc2, word2);
            p += 8;
        } while (p < end);
        crc0 = shift_apply(op, (uint32_t)crc0) ^ (uint32_t)crc1;
        crc0 = shift_apply(op, (uint32_t)crc0) ^ (uint32_t)crc2;
        p += 2 * block;
        n -= 3 * block;
    }
    *pointer = p;
    *remaining = n;
    return (uint32_t)crc0;
}

__attribute__((target("sse4.2")))
static uint32_t update_x86(uint32_t state, const unsigned char *p, size_t n) {
    if (n >= 3 * BLOCK_MINI) {
        pthread_once(&shift_once, shift_build_all);
        state = update_rounds(state, &p, &n, BLOCK_LONG, &shift_long);
        state = update_rounds(state, &p, &n, BLOCK_SHORT, &shift_short);
        state = update_rounds(state, &p, &n, BLOCK_MINI, &shift_mini);
    }
    return update_single(state, p, n);
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
