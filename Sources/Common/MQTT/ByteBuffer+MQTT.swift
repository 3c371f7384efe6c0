import NIOCore

/// The MQTT data representations (MQTT 5.0 section 1.5, MQTT 3.1.1 section 1.5) on `ByteBuffer`.
///
/// The `readMQTT…` functions read from a buffer that holds exactly one packet body: running out of bytes
/// there is a Malformed Packet, never a "need more bytes".
extension ByteBuffer {
    /// The largest value of a Variable Byte Integer (four bytes).
    static let mqttMaximumVariableByteInteger = 268_435_455

    mutating func readMQTTByte() throws(MQTTCodecError) -> UInt8 {
        guard let value = readInteger(as: UInt8.self) else { throw .malformed("packet ends inside a byte field") }
        return value
    }

    mutating func readMQTTUInt16() throws(MQTTCodecError) -> UInt16 {
        guard let value = readInteger(as: UInt16.self) else { throw .malformed("packet ends inside a two byte integer") }
        return value
    }

    mutating func readMQTTUInt32() throws(MQTTCodecError) -> UInt32 {
        guard let value = readInteger(as: UInt32.self) else { throw .malformed("packet ends inside a four byte integer") }
        return value
    }

    /// A Variable Byte Integer inside a packet body (section 1.5.5): at most four bytes, and the encoding must
    /// use the minimum number of bytes.
    mutating func readMQTTVariableByteInteger() throws(MQTTCodecError) -> UInt32 {
        switch ByteBuffer.peekVariableByteInteger(self, at: readerIndex) {
        case .value(let value, let length):
            moveReaderIndex(forwardBy: length)
            return value
        case .needMoreBytes:
            throw .malformed("packet ends inside a variable byte integer")
        case .malformed(let message):
            throw .malformed(message)
        }
    }

    enum VariableByteIntegerPeek {
        case value(UInt32, length: Int)
        case needMoreBytes
        case malformed(String)
    }

    /// Reads a Variable Byte Integer at `index` without moving the reader index.
    static func peekVariableByteInteger(_ buffer: ByteBuffer, at index: Int) -> VariableByteIntegerPeek {
        var value: UInt32 = 0
        var shift: UInt32 = 0
        var offset = 0
        while offset < 4 {
            guard let byte = buffer.getInteger(at: index + offset, as: UInt8.self) else { return .needMoreBytes }
            value |= UInt32(byte & 0x7F) << shift
            offset += 1
            if byte & 0x80 == 0 {
                // A non-minimal encoding ends in a zero byte after a continuation (e.g. 0x80 0x00).
                if byte == 0 && offset > 1 { return .malformed("variable byte integer is not minimally encoded") }
                return .value(value, length: offset)
            }
            shift += 7
        }
        return .malformed("variable byte integer longer than four bytes")
    }

    /// Checks an MQTT UTF-8 Encoded String's bytes: well-formed UTF-8 (no surrogates, no overlong forms) and no
    /// U+0000 (section 1.5.4: otherwise a Malformed Packet).
    static func validateMQTTStringBytes(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var nonASCII = false
        for byte in bytes {
            if byte == 0 { return false }
            nonASCII = nonASCII || byte >= 0x80
        }
        if !nonASCII { return true }
        return String(validating: bytes.bindMemory(to: UInt8.self), as: UTF8.self) != nil
    }

    /// Reads and validates a UTF-8 Encoded String.
    mutating func readMQTTString() throws(MQTTCodecError) -> String {
        let length = Int(try readMQTTUInt16())
        guard readableBytes >= length else { throw .malformed("string longer than the packet") }
        let string: String? = withUnsafeReadableBytes { raw in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<length])
            guard ByteBuffer.validateMQTTStringBytes(bytes) else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
        guard let string else { throw .malformed("string is not valid UTF-8 or contains U+0000") }
        moveReaderIndex(forwardBy: length)
        return string
    }

    /// Skips over a UTF-8 Encoded String after validating it, without creating a `String`.
    mutating func skipMQTTString() throws(MQTTCodecError) {
        let length = Int(try readMQTTUInt16())
        guard readableBytes >= length else { throw .malformed("string longer than the packet") }
        let valid = withUnsafeReadableBytes { raw in
            ByteBuffer.validateMQTTStringBytes(UnsafeRawBufferPointer(rebasing: raw[0..<length]))
        }
        guard valid else { throw .malformed("string is not valid UTF-8 or contains U+0000") }
        moveReaderIndex(forwardBy: length)
    }

    /// Reads Binary Data (two byte length, then the bytes) as a slice sharing this buffer's storage.
    mutating func readMQTTBinary() throws(MQTTCodecError) -> ByteBuffer {
        let length = Int(try readMQTTUInt16())
        guard let slice = readSlice(length: length) else { throw .malformed("binary data longer than the packet") }
        return slice
    }

    /// Writes a Variable Byte Integer; `value` must be at most `mqttMaximumVariableByteInteger`.
    @discardableResult
    mutating func writeMQTTVariableByteInteger(_ value: Int) -> Int {
        var remaining = value
        var written = 0
        repeat {
            var byte = UInt8(truncatingIfNeeded: remaining & 0x7F)
            remaining >>= 7
            if remaining > 0 { byte |= 0x80 }
            writeInteger(byte)
            written += 1
        } while remaining > 0
        return written
    }

    static func mqttVariableByteIntegerLength(_ value: Int) -> Int {
        switch value {
        case ..<128: 1
        case ..<16_384: 2
        case ..<2_097_152: 3
        default: 4
        }
    }
}

/// Checks the encoder makes before writing a field.
enum MQTTEncodingCheck {
    /// A UTF-8 Encoded String must fit a two byte length and must not contain U+0000.
    static func string(_ string: String, _ what: StaticString) throws(MQTTCodecError) {
        let utf8 = string.utf8
        guard utf8.count <= 65_535 else { throw .unencodable(.malformedPacket, "\(what) longer than 65,535 bytes") }
        if scan(string, stopAt: { $0 == 0 }) { throw .unencodable(.malformedPacket, "\(what) contains U+0000") }
    }

    /// Whether any UTF-8 byte of `string` satisfies `stop`; a tight loop over contiguous storage (native strings
    /// always have it).
    @inline(__always)
    static func scan(_ string: String, stopAt stop: (UInt8) -> Bool) -> Bool {
        if let found = string.utf8.withContiguousStorageIfAvailable({ bytes in
            for byte in bytes where stop(byte) { return true }
            return false
        }) {
            return found
        }
        return string.utf8.contains(where: stop)
    }

    static func binary(_ data: ByteBuffer, _ what: StaticString) throws(MQTTCodecError) {
        guard data.readableBytes <= 65_535 else { throw .unencodable(.malformedPacket, "\(what) longer than 65,535 bytes") }
    }

    static func packetIdentifier(_ packetId: UInt16?, _ what: StaticString) throws(MQTTCodecError) -> UInt16 {
        guard let packetId, packetId != 0 else { throw .unencodable(.protocolError, "\(what) needs a non-zero packet identifier") }
        return packetId
    }
}

/// Reads MQTT data representations from raw bytes (one packet's property block), so that a whole block costs
/// one access to the `ByteBuffer`. Running out of bytes is a Malformed Packet.
struct MQTTRawReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    var isAtEnd: Bool { offset >= bytes.count }

    @inline(__always)
    mutating func byte() throws(MQTTCodecError) -> UInt8 {
        guard offset < bytes.count else { throw .malformed("packet ends inside a byte field") }
        defer { offset += 1 }
        return bytes[offset]
    }

    @inline(__always)
    mutating func uint16() throws(MQTTCodecError) -> UInt16 {
        guard bytes.count - offset >= 2 else { throw .malformed("packet ends inside a two byte integer") }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    @inline(__always)
    mutating func uint32() throws(MQTTCodecError) -> UInt32 {
        guard bytes.count - offset >= 4 else { throw .malformed("packet ends inside a four byte integer") }
        defer { offset += 4 }
        return UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }

    mutating func variableByteInteger() throws(MQTTCodecError) -> UInt32 {
        var value: UInt32 = 0
        for index in 0..<4 {
            let byte = try self.byte()
            value |= UInt32(byte & 0x7F) << (7 * UInt32(index))
            if byte & 0x80 == 0 {
                if byte == 0 && index > 0 { throw .malformed("variable byte integer is not minimally encoded") }
                return value
            }
        }
        throw .malformed("variable byte integer longer than four bytes")
    }

    /// The range of a validated UTF-8 Encoded String's bytes.
    mutating func stringRange() throws(MQTTCodecError) -> Range<Int> {
        let length = Int(try uint16())
        guard bytes.count - offset >= length else { throw .malformed("string longer than the packet") }
        let range = offset..<offset + length
        guard ByteBuffer.validateMQTTStringBytes(UnsafeRawBufferPointer(rebasing: bytes[range])) else {
            throw .malformed("string is not valid UTF-8 or contains U+0000")
        }
        offset += length
        return range
    }

    mutating func string() throws(MQTTCodecError) -> String {
        let range = try stringRange()
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self)
    }

    /// The range of Binary Data's bytes (after its two byte length).
    mutating func binaryRange() throws(MQTTCodecError) -> Range<Int> {
        let length = Int(try uint16())
        guard bytes.count - offset >= length else { throw .malformed("binary data longer than the packet") }
        defer { offset += length }
        return offset..<offset + length
    }

    mutating func flag(_ what: StaticString) throws(MQTTCodecError) -> Bool {
        switch try byte() {
        case 0: return false
        case 1: return true
        default: throw .protocolError("\(what) must be 0 or 1")
        }
    }
}
