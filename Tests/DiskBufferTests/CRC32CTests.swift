import Testing
@testable import DiskBuffer

/// RFC 3720 appendix B.4 check values, plus the classic "123456789" check value.
@Suite struct CRC32CTests {
    @Test func rfc3720Zeros() { #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA) }
    @Test func rfc3720Ones() { #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43) }
    @Test func rfc3720Incrementing() { #expect(CRC32C.checksum((0..<32).map { UInt8($0) }) == 0x46DD_794E) }
    @Test func rfc3720Decrementing() { #expect(CRC32C.checksum((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C) }
    @Test func checkString() { #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283) }

    @Test func iscsiReadCommand() {
        let pdu: [UInt8] = [
            0x01, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
            0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ]
        #expect(CRC32C.checksum(pdu) == 0xD9963A56)
    }

    /// Slicing-by-8 and the byte-at-a-time tail agree for every split of a buffer.
    @Test func incrementalMatchesWhole() {
        let data = (0..<100).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let whole = CRC32C.checksum(data)
        for split in 0...data.count {
            var state = data[..<split].withUnsafeBytes { CRC32C.update(CRC32C.initialState, $0) }
            state = data[split...].withUnsafeBytes { CRC32C.update(state, $0) }
            #expect(CRC32C.finalize(state) == whole)
        }
    }

    /// The CRC instructions (when this processor has them) and the Swift tables agree on every length
    /// and alignment, and with the check value.
    @Test func hardwareMatchesSoftware() {
        // Lengths around the three-stream rounds (3 × 64, 3 × 256, 3 × 4096 bytes) and their remainders.
        let data = (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7 &+ $0 >> 9) }
        data.withUnsafeBytes { raw in
            for start in 0..<9 {
                for count in [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 191, 192, 193, 200, 767, 768, 769, 1000, 1024, 1040,
                              4096, 12_287, 12_288, 12_289, 13_000, 24_576 + 768 + 192 + 5, 39_990] {
                    let slice = UnsafeRawBufferPointer(rebasing: raw[start..<(start + count)])
                    #expect(CRC32C.update(0x1234_5678, slice) == CRC32C.softwareUpdate(0x1234_5678, slice),
                            "start \(start) count \(count)")
                }
            }
        }
        let check = Array("123456789".utf8)
        #expect(check.withUnsafeBytes { CRC32C.finalize(CRC32C.softwareUpdate(CRC32C.initialState, $0)) } == 0xE306_9283)
        print("CRC32C: \(CRC32C.usesHardware ? "CRC instructions" : "slicing-by-8 (no CRC instructions)")")
    }
}
