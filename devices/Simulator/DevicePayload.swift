import NIOCore

/// What every simulated device puts at the front of each payload, so that a subscriber or a Kafka reader can
/// tell who sent it, in which order and when.
///
/// Wire format (big-endian), 23 bytes plus the client id, then filler up to the requested size:
///
/// | offset | size | field                                                   |
/// |--------|------|---------------------------------------------------------|
/// | 0      | 4    | magic `TSIM`                                            |
/// | 4      | 1    | format version, 1                                       |
/// | 5      | 8    | send time, nanoseconds since the Unix epoch (wall clock) |
/// | 13     | 8    | per-client sequence number, from 0                      |
/// | 21     | 2    | client id length L                                      |
/// | 23     | L    | client id, UTF-8                                        |
/// | 23+L   | ...  | filler bytes `.` up to the payload size                 |
///
/// A requested size smaller than the header gives a payload of exactly the header.
struct DevicePayload: Sendable, Hashable {
    var clientId: String
    var sequence: UInt64
    /// Nanoseconds since the Unix epoch.
    var sentAtNanoseconds: UInt64

    static let magic: UInt32 = 0x5453_494D  // "TSIM"
    static let formatVersion: UInt8 = 1
    static let fixedHeaderSize = 23
    static let filler = UInt8(ascii: ".")

    func headerSize() -> Int { Self.fixedHeaderSize + clientId.utf8.count }

    /// Appends the payload, padded with filler to `size` bytes (never shorter than the header).
    func write(into buffer: inout ByteBuffer, size: Int) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.formatVersion)
        buffer.writeInteger(sentAtNanoseconds)
        buffer.writeInteger(sequence)
        buffer.writeInteger(UInt16(truncatingIfNeeded: clientId.utf8.count))
        buffer.writeString(clientId)
        let padding = size - headerSize()
        if padding > 0 { buffer.writeRepeatingByte(Self.filler, count: padding) }
    }

    func encoded(size: Int, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: max(size, headerSize()))
        write(into: &buffer, size: size)
        return buffer
    }

    /// Reads the header of a payload written by `write`; nil if it is not one (wrong magic, version or too short).
    init?(decoding buffer: ByteBuffer) {
        var buffer = buffer
        guard let magic = buffer.readInteger(as: UInt32.self), magic == Self.magic,
            let version = buffer.readInteger(as: UInt8.self), version == Self.formatVersion,
            let sentAt = buffer.readInteger(as: UInt64.self),
            let sequence = buffer.readInteger(as: UInt64.self),
            let length = buffer.readInteger(as: UInt16.self),
            let clientId = buffer.readString(length: Int(length))
        else { return nil }
        self.init(clientId: clientId, sequence: sequence, sentAtNanoseconds: sentAt)
    }

    init?(decoding bytes: [UInt8]) {
        self.init(decoding: ByteBuffer(bytes: bytes))
    }

    init(clientId: String, sequence: UInt64, sentAtNanoseconds: UInt64) {
        self.clientId = clientId
        self.sequence = sequence
        self.sentAtNanoseconds = sentAtNanoseconds
    }
}
