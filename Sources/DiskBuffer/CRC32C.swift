// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the processor's CRC instructions when it has
// them (SSE4.2 on x86-64, the ARMv8 CRC extension on AArch64, through the small C target CCRC32C),
// else slicing-by-8 in Swift. Both give the same values; the tests check both against RFC 3720.
import CCRC32C

/// CRC-32C as used by iSCSI, ext4 and the disk buffer's record checksums.
///
/// `CRC32C.update` continues a running checksum, so a record's checksum can be computed in two parts
/// (the body on the appending thread, the length and sequence on the writer thread).
public enum CRC32C {
    /// The checksum of `bytes`.
    @inlinable
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var state = Self.initialState
        bytes.withContiguousStorageIfAvailable { state = update(state, $0) } ?? {
            let array = Array(bytes)
            array.withUnsafeBufferPointer { state = update(state, $0) }
        }()
        return finalize(state)
    }

    /// The state before any byte. Pass it to ``update(_:_:)``, then ``finalize(_:)``.
    public static let initialState: UInt32 = 0xFFFF_FFFF

    @inlinable
    public static func finalize(_ state: UInt32) -> UInt32 { ~state }

    /// Continues a running checksum state over `bytes`.
    public static func update(_ state: UInt32, _ bytes: UnsafeBufferPointer<UInt8>) -> UInt32 {
        update(state, UnsafeRawBufferPointer(bytes))
    }

    /// True if `update` uses the processor's CRC instructions (checked once per process).
    public static let usesHardware = ccrc32c_hardware_available() != 0

    /// Continues a running checksum state over `bytes`.
    public static func update(_ state: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard bytes.count > 0, let base = bytes.baseAddress else { return state }
        if usesHardware { return ccrc32c_hardware_update(state, base, bytes.count) }
        return softwareUpdate(state, bytes)
    }

    /// Slicing-by-8 in Swift: the fallback, and the reference the hardware path is tested against.
    static func softwareUpdate(_ state: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var crc = state
        var index = 0
        let count = bytes.count
        guard count > 0, let base = bytes.baseAddress else { return crc }
        table.withUnsafeBufferPointer { t in
            while count - index >= 8 {
                let word = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: index, as: UInt64.self))
                let low = UInt32(truncatingIfNeeded: word) ^ crc
                let high = UInt32(truncatingIfNeeded: word >> 32)
                crc = t[7 * 256 + Int(low & 0xFF)]
                    ^ t[6 * 256 + Int((low >> 8) & 0xFF)]
                    ^ t[5 * 256 + Int((low >> 16) & 0xFF)]
                    ^ t[4 * 256 + Int(low >> 24)]
                    ^ t[3 * 256 + Int(high & 0xFF)]
                    ^ t[2 * 256 + Int((high >> 8) & 0xFF)]
                    ^ t[1 * 256 + Int((high >> 16) & 0xFF)]
                    ^ t[0 * 256 + Int(high >> 24)]
                index += 8
            }
            while index < count {
                let byte = base.load(fromByteOffset: index, as: UInt8.self)
                crc = t[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
                index += 1
            }
        }
        return crc
    }

    /// Eight 256-entry tables: table k gives the CRC of a byte followed by k zero bytes.
    private static let table: [UInt32] = {
        let polynomial: UInt32 = 0x82F6_3B78
        var table = [UInt32](repeating: 0, count: 8 * 256)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ polynomial : crc >> 1
            }
            table[byte] = crc
        }
        for slice in 1..<8 {
            for byte in 0..<256 {
                let previous = table[(slice - 1) * 256 + byte]
                table[slice * 256 + byte] = (previous >> 8) ^ table[Int(previous & 0xFF)]
            }
        }
        return table
    }()
}
