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
/// | 23+L   | ...  | filler up to the payload size (`PayloadFill`)           |
///
/// A requested size smaller than the header gives a payload of exactly the header.
/// What follows the header (`--payload-fill`): `dots` (the default: `.` bytes, which compress to almost
/// nothing), `json` (JSON-like sensor readings with pseudo-random digits, about as compressible as real
/// telemetry: lz4 makes a 1 KiB payload ~37 % and a batch of 100 ~24 % of its size) or `random`
/// (pseudo-random bytes, incompressible). Only what compresses downstream (cloud-broker's Kafka batches) cares.
enum PayloadFill: String, CaseIterable, Sendable {
    case dots, json, random
}

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

    /// Appends the payload, padded with `fill` to `size` bytes (never shorter than the header).
    func write(into buffer: inout ByteBuffer, size: Int, fill: PayloadFill = .dots) {
        buffer.writeInteger(Self.magic)
        buffer.writeInteger(Self.formatVersion)
        buffer.writeInteger(sentAtNanoseconds)
        buffer.writeInteger(sequence)
        buffer.writeInteger(UInt16(truncatingIfNeeded: clientId.utf8.count))
        buffer.writeString(clientId)
        let padding = size - headerSize()
        guard padding > 0 else { return }
        switch fill {
        case .dots:
            buffer.writeRepeatingByte(Self.filler, count: padding)
        case .random:
            var random = FastRandom(seed: sequence ^ sentAtNanoseconds)
            var left = padding
            while left >= 8 {
                buffer.writeInteger(random.next())
                left -= 8
            }
            if left > 0 { buffer.writeRepeatingByte(UInt8(truncatingIfNeeded: random.next()), count: left) }
        case .json:
            var random = FastRandom(seed: sequence ^ sentAtNanoseconds)
            var reading = Self.jsonReading
            var left = padding
            while left > 0 {
                var digits = random.next()
                for (index, slot) in Self.jsonDigitSlots.enumerated() {
                    if index % 19 == 18 { digits = random.next() }
                    reading[slot] = UInt8(ascii: "0") &+ UInt8(digits % 10)
                    digits /= 10
                }
                let count = min(left, reading.count)
                buffer.writeBytes(reading[0..<count])
                left -= count
            }
        }
    }

    func encoded(size: Int, fill: PayloadFill = .dots, allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: max(size, headerSize()))
        write(into: &buffer, size: size, fill: fill)
        return buffer
    }

    /// One reading of the `json` fill; its `0`s are replaced by pseudo-random digits each time.
    static let jsonReading = Array(#"{"sensor":"temp-00","value":00.000,"unit":"C","status":"ok","ts":17642364000000},"#.utf8)
    static let jsonDigitSlots = jsonReading.indices.filter { jsonReading[$0] == UInt8(ascii: "0") }

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
