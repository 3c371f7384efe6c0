// Byte layout of segments, records and the ledger. See the top of DiskBuffer.swift and docs/disk-format.md.

/// Encoding and decoding of the on-disk structures. All integers little-endian.
enum RecordFormat {
    /// Segment header (32 bytes): magic "TRBS", format version (u32), first sequence (u64), previous
    /// last (u64: the last sequence stored before this segment, `first - 1` unless recovery cut records
    /// there), crc32c of the preceding 24 bytes (u32), zero (u32).
    static let segmentMagic: [UInt8] = Array("TRBS".utf8)
    static let segmentVersion: UInt32 = 1
    static let segmentHeaderSize = 32
    /// Record header: body length (u32), crc32c (u32), sequence (u64).
    static let recordHeaderSize = 16
    static let segmentSuffix = ".seg"
    static let ledgerName = "ledger"
    static let lockName = "lock"

    /// "00000000000000000001.seg": the first sequence, 20 digits, so names sort like numbers.
    static func segmentName(firstSequence: UInt64) -> String {
        let digits = String(firstSequence)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits + segmentSuffix
    }

    /// The first sequence encoded in a segment file name, or nil for any other file.
    static func firstSequence(ofSegmentNamed name: String) -> UInt64? {
        guard name.hasSuffix(segmentSuffix) else { return nil }
        let stem = name.dropLast(segmentSuffix.count)
        guard stem.count == 20, stem.allSatisfy({ $0 >= "0" && $0 <= "9" }) else { return nil }
        return UInt64(stem)
    }

    static func segmentHeader(firstSequence: UInt64, previousLast: UInt64) -> [UInt8] {
        var bytes = segmentMagic
        bytes.appendLittleEndian(segmentVersion)
        bytes.appendLittleEndian(firstSequence)
        bytes.appendLittleEndian(previousLast)
        bytes.appendLittleEndian(CRC32C.checksum(bytes))
        bytes.appendLittleEndian(UInt32(0))
        return bytes
    }

    /// The header's `previous last` if the header is intact and names `firstSequence`, else nil.
    static func parseSegmentHeader(_ bytes: ArraySlice<UInt8>, firstSequence: UInt64) -> UInt64? {
        guard bytes.count >= segmentHeaderSize else { return nil }
        let start = bytes.startIndex
        guard bytes[start..<start + 4].elementsEqual(segmentMagic),
              bytes.loadLittleEndian(UInt32.self, at: start + 4) == segmentVersion,
              bytes.loadLittleEndian(UInt64.self, at: start + 8) == firstSequence,
              bytes.loadLittleEndian(UInt32.self, at: start + 24) == CRC32C.checksum(bytes[start..<start + 24])
        else { return nil }
        let previousLast = bytes.loadLittleEndian(UInt64.self, at: start + 16)
        return previousLast < firstSequence ? previousLast : nil
    }

    /// The checksum covers the body, then the length and sequence fields, so the body's share can be
    /// computed by the appending thread before the writer assigns the sequence.
    static func checksum(bodyState: UInt32, length: UInt32, sequence: UInt64) -> UInt32 {
        var state = bodyState
        withUnsafeBytes(of: length.littleEndian) { state = CRC32C.update(state, $0) }
        withUnsafeBytes(of: sequence.littleEndian) { state = CRC32C.update(state, $0) }
        return CRC32C.finalize(state)
    }

    static func bodyState(_ body: [UInt8]) -> UInt32 {
        body.withUnsafeBytes { CRC32C.update(CRC32C.initialState, $0) }
    }

    /// Appends one record (header and body) to `buffer`.
    static func appendRecord(to buffer: inout [UInt8], sequence: UInt64, body: [UInt8], bodyState: UInt32) {
        let length = UInt32(body.count)
        buffer.appendLittleEndian(length)
        buffer.appendLittleEndian(checksum(bodyState: bodyState, length: length, sequence: sequence))
        buffer.appendLittleEndian(sequence)
        body.withUnsafeBytes { buffer.append(contentsOf: $0) }
    }

    /// The outcome of decoding one record at the start of `bytes`.
    enum Decoded {
        /// A valid record; `size` is header plus body.
        case record(sequence: UInt64, body: ArraySlice<UInt8>, size: Int)
        /// Not enough bytes for the header or the body the header announces.
        case incomplete(needed: Int)
        /// The header and body are present but the checksum does not match.
        case badChecksum(size: Int)
    }

    static func decodeRecord(_ bytes: ArraySlice<UInt8>, maxBodyBytes: Int) -> Decoded {
        guard bytes.count >= recordHeaderSize else { return .incomplete(needed: recordHeaderSize) }
        let start = bytes.startIndex
        let length = bytes.loadLittleEndian(UInt32.self, at: start)
        let stored = bytes.loadLittleEndian(UInt32.self, at: start + 4)
        let sequence = bytes.loadLittleEndian(UInt64.self, at: start + 8)
        guard Int(length) <= maxBodyBytes else { return .badChecksum(size: recordHeaderSize) }
        let size = recordHeaderSize + Int(length)
        guard bytes.count >= size else { return .incomplete(needed: size) }
        let body = bytes[(start + recordHeaderSize)..<(start + size)]
        let state = body.withUnsafeBytes { CRC32C.update(CRC32C.initialState, $0) }
        guard checksum(bodyState: state, length: length, sequence: sequence) == stored else {
            return .badChecksum(size: size)
        }
        return .record(sequence: sequence, body: body, size: size)
    }

    /// Reads only the length and sequence fields (no checksum), for skipping records already known good.
    static func peekHeader(_ bytes: ArraySlice<UInt8>) -> (size: Int, sequence: UInt64)? {
        guard bytes.count >= recordHeaderSize else { return nil }
        let start = bytes.startIndex
        let length = bytes.loadLittleEndian(UInt32.self, at: start)
        return (recordHeaderSize + Int(length), bytes.loadLittleEndian(UInt64.self, at: start + 8))
    }

    // MARK: Ledger

    /// Ledger: magic "TRBL", version (u32), acknowledged-through (u64), next sequence (u64), crc32c of
    /// the preceding 24 bytes (u32). 28 bytes, replaced atomically.
    static let ledgerMagic: [UInt8] = Array("TRBL".utf8)
    static let ledgerVersion: UInt32 = 1
    static let ledgerSize = 28

    static func encodeLedger(acknowledgedThrough: UInt64, nextSequence: UInt64) -> [UInt8] {
        var bytes = ledgerMagic
        bytes.appendLittleEndian(ledgerVersion)
        bytes.appendLittleEndian(acknowledgedThrough)
        bytes.appendLittleEndian(nextSequence)
        bytes.appendLittleEndian(CRC32C.checksum(bytes))
        return bytes
    }

    static func decodeLedger(_ bytes: [UInt8]) -> (acknowledgedThrough: UInt64, nextSequence: UInt64)? {
        guard bytes.count == ledgerSize, Array(bytes[0..<4]) == ledgerMagic else { return nil }
        let slice = bytes[...]
        guard slice.loadLittleEndian(UInt32.self, at: 4) == ledgerVersion,
              slice.loadLittleEndian(UInt32.self, at: 24) == CRC32C.checksum(bytes[0..<24])
        else { return nil }
        let acknowledged = slice.loadLittleEndian(UInt64.self, at: 8)
        let next = slice.loadLittleEndian(UInt64.self, at: 16)
        guard next >= 1, acknowledged < next else { return nil }
        return (acknowledged, next)
    }
}

extension [UInt8] {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}

extension ArraySlice<UInt8> {
    func loadLittleEndian<T: FixedWidthInteger>(_: T.Type, at index: Int) -> T {
        precondition(index >= startIndex && index + MemoryLayout<T>.size <= endIndex, "load out of bounds")
        return withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: index - startIndex, as: T.self)) }
    }
}
