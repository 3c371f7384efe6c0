import DiskBuffer

/// Encoding helpers for the agent's small persisted state files (written with `AtomicFile`). Each file is
/// `magic (4) | version u32 | content | crc32c u32 of everything before it`, integers big-endian; a file
/// that fails the checksum is reported, never half-trusted.
struct StateFileWriter {
    var bytes: [UInt8] = []

    init(magic: String, version: UInt32 = 1) {
        bytes += Array(magic.utf8)
        put(version)
    }

    mutating func put<T: FixedWidthInteger>(_ value: T) {
        var big = value.bigEndian
        withUnsafeBytes(of: &big) { bytes += $0 }
    }

    mutating func put(_ string: String) {
        let utf8 = Array(string.utf8.prefix(Int(UInt16.max)))
        put(UInt16(utf8.count))
        bytes += utf8
    }

    mutating func finish() -> [UInt8] {
        let checksum = CRC32C.checksum(bytes)
        put(checksum)
        return bytes
    }
}

struct StateFileReader {
    let bytes: [UInt8]
    var offset = 4
    private(set) var version: UInt32 = 0

    /// nil if the magic or checksum is wrong, or the version is not in `versions`.
    init?(_ bytes: [UInt8], magic: String, versions: ClosedRange<UInt32> = 1...1) {
        guard bytes.count >= 12, Array(bytes[0..<4]) == Array(magic.utf8) else { return nil }
        let body = bytes[0..<(bytes.count - 4)]
        var stored: UInt32 = 0
        for byte in bytes[(bytes.count - 4)...] { stored = stored << 8 | UInt32(byte) }
        guard CRC32C.checksum(body) == stored else { return nil }
        self.bytes = Array(body)
        guard let version = get(UInt32.self), versions.contains(version) else { return nil }
        self.version = version
    }

    var isAtEnd: Bool { offset >= bytes.count }

    mutating func get<T: FixedWidthInteger>(_ type: T.Type) -> T? {
        let size = MemoryLayout<T>.size
        guard offset + size <= bytes.count else { return nil }
        var value: T = 0
        for byte in bytes[offset..<offset + size] { value = value << 8 | T(byte) }
        offset += size
        return value
    }

    mutating func getString() -> String? {
        guard let length = get(UInt16.self), offset + Int(length) <= bytes.count else { return nil }
        defer { offset += Int(length) }
        return String(validating: bytes[offset..<offset + Int(length)], as: UTF8.self)
    }
}

/// One error type for the agent: what failed, classified by what it closes.
struct AgentError: Error, CustomStringConvertible {
    enum Scope { case connection, process }
    var scope: Scope
    var message: String
    init(_ scope: Scope, _ message: String) {
        self.scope = scope
        self.message = message
    }
    var description: String { "AgentError(\(scope)): \(message)" }
}
