// CRC-32C with the processor's CRC instructions (SSE4.2 crc32 on x86-64, the ARMv8 CRC extension on
// AArch64), for Sources/DiskBuffer/CRC32C.swift. The only C in DiskBuffer: Swift cannot compile one
// function for an instruction set extension and call it after a run-time check (see docs/ARCHITECTURE.md).
#ifndef CCRC32C_H
#define CCRC32C_H

#include <stddef.h>
#include <stdint.h>

/// 1 if this processor has CRC-32C instructions (checked once), else 0.
int ccrc32c_hardware_available(void);

/// Continues a raw (not inverted) CRC-32C state over `count` bytes. Call only if
/// `ccrc32c_hardware_available()` returned 1.
uint32_t ccrc32c_hardware_update(uint32_t state, const void *bytes, size_t count);

#endif
