import NIOCore

/// Every MQTT 3.1.1 and 5.0 control packet, both directions, as one closed enum. Version differences live in
/// the fields (properties and reason codes are empty / success in 3.1.1) and in `encode`/`decode`.
public enum MQTTPacket: Sendable, Equatable {
    indirect case connect(MQTTConnect)
    indirect case connack(MQTTConnAck)
    case publish(MQTTPublish)
    case puback(MQTTPublishAck)
    case pubrec(MQTTPublishAck)
    case pubrel(MQTTPublishAck)
    case pubcomp(MQTTPublishAck)
    case subscribe(MQTTSubscribe)
    case suback(MQTTSubAck)
    case unsubscribe(MQTTUnsubscribe)
    case unsuback(MQTTUnsubAck)
    case pingreq
    case pingresp
    case disconnect(MQTTDisconnect)
    case auth(MQTTAuth)

    public var type: MQTTPacketType {
        switch self {
        case .connect: .connect
        case .connack: .connack
        case .publish: .publish
        case .puback: .puback
        case .pubrec: .pubrec
        case .pubrel: .pubrel
        case .pubcomp: .pubcomp
        case .subscribe: .subscribe
        case .suback: .suback
        case .unsubscribe: .unsubscribe
        case .unsuback: .unsuback
        case .pingreq: .pingreq
        case .pingresp: .pingresp
        case .disconnect: .disconnect
        case .auth: .auth
        }
    }
}

/// The control packet type, the high nibble of the first byte (MQTT 5.0 section 2.1.2).
public enum MQTTPacketType: UInt8, Sendable, Hashable, CaseIterable {
    case connect = 1
    case connack = 2
    case publish = 3
    case puback = 4
    case pubrec = 5
    case pubrel = 6
    case pubcomp = 7
    case subscribe = 8
    case suback = 9
    case unsubscribe = 10
    case unsuback = 11
    case pingreq = 12
    case pingresp = 13
    case disconnect = 14
    case auth = 15

    /// The fixed header flags every packet type but PUBLISH must carry (section 2.1.3).
    var requiredFlags: UInt8 {
        switch self {
        case .pubrel, .subscribe, .unsubscribe: 0b0010
        default: 0
        }
    }
}

extension MQTTPacket {
    /// The largest packet the protocol can carry: a one byte header, a four byte length and 268,435,455 bytes.
    public static let protocolMaximumPacketSize = 1 + 4 + 268_435_455

    /// Decodes one packet from the front of `buffer`.
    ///
    /// - Returns: the packet, or nil if `buffer` does not yet hold a whole packet (nothing is consumed then).
    /// - Parameters:
    ///   - version: the version agreed in CONNECT; nil before CONNECT, when only CONNECT is acceptable (its
    ///     protocol level then tells the version). A CONNECT is always decoded by its own protocol level.
    ///   - maximumPacketSize: the largest whole packet (header included) accepted; a larger one fails as
    ///     `.packetTooLarge` as soon as its fixed header is read, so at most this much is ever buffered.
    /// - Throws: `MQTTCodecError`, with the reason code to send; the bytes of a rejected packet may be consumed.
    public static func decode(
        from buffer: inout ByteBuffer,
        version: MQTTProtocolVersion?,
        maximumPacketSize: Int
    ) throws(MQTTCodecError) -> MQTTPacket? {
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return nil }
        let typeBits = first >> 4
        let flags = first & 0x0F
        guard let type = MQTTPacketType(rawValue: typeBits) else {
            throw .malformed("reserved packet type 0")
        }
        if version == nil && type != .connect {
            throw .protocolError("the first packet must be CONNECT")
        }
        let remainingLength: Int
        let lengthBytes: Int
        switch ByteBuffer.peekVariableByteInteger(buffer, at: buffer.readerIndex + 1) {
        case .needMoreBytes:
            return nil
        case .malformed(let message):
            throw .malformed("remaining length: \(message)")
        case .value(let value, let length):
            remainingLength = Int(value)
            lengthBytes = length
        }
        let total = 1 + lengthBytes + remainingLength
        guard total <= maximumPacketSize else {
            throw MQTTCodecError(
                reasonCode: .packetTooLarge,
                message: "packet of \(total) bytes exceeds the maximum packet size \(maximumPacketSize)")
        }
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: 1 + lengthBytes)
        guard var body = buffer.readSlice(length: remainingLength) else { return nil }

        if type != .publish && flags != type.requiredFlags {
            throw .malformed("reserved flags of \(type) must be \(type.requiredFlags)")
        }
        if type == .connect {
            return .connect(try MQTTConnect.decode(body: &body))
        }
        // Before CONNECT only CONNECT reaches here (checked above).
        let version = version ?? .v5
        let packet: MQTTPacket
        switch type {
        case .connect:
            packet = .connect(try MQTTConnect.decode(body: &body))
        case .connack:
            packet = .connack(try MQTTConnAck.decode(body: &body, version: version))
        case .publish:
            packet = .publish(try MQTTPublish.decode(flags: flags, body: &body, version: version))
        case .puback:
            packet = .puback(try MQTTPublishAck.decode(body: &body, version: version, kind: .puback))
        case .pubrec:
            packet = .pubrec(try MQTTPublishAck.decode(body: &body, version: version, kind: .pubrec))
        case .pubrel:
            packet = .pubrel(try MQTTPublishAck.decode(body: &body, version: version, kind: .pubrel))
        case .pubcomp:
            packet = .pubcomp(try MQTTPublishAck.decode(body: &body, version: version, kind: .pubcomp))
        case .subscribe:
            packet = .subscribe(try MQTTSubscribe.decode(body: &body, version: version))
        case .suback:
            packet = .suback(try MQTTSubAck.decode(body: &body, version: version))
        case .unsubscribe:
            packet = .unsubscribe(try MQTTUnsubscribe.decode(body: &body, version: version))
        case .unsuback:
            packet = .unsuback(try MQTTUnsubAck.decode(body: &body, version: version))
        case .pingreq, .pingresp:
            guard body.readableBytes == 0 else { throw .malformed("\(type) has a remaining length of 0") }
            packet = type == .pingreq ? .pingreq : .pingresp
        case .disconnect:
            packet = .disconnect(try MQTTDisconnect.decode(body: &body, version: version))
        case .auth:
            guard version == .v5 else { throw .malformed("packet type 15 is reserved in MQTT 3.1.1") }
            packet = .auth(try MQTTAuth.decode(body: &body))
        }
        guard body.readableBytes == 0 else {
            throw .malformed("\(body.readableBytes) bytes left over after \(type)")
        }
        return packet
    }

    /// Appends the encoded packet to `buffer`.
    ///
    /// A CONNECT is encoded by its own `protocolVersion`. Throws (writing nothing) if the packet cannot be
    /// represented in `version` (e.g. properties, failure reason codes or AUTH in MQTT 3.1.1), if a field is
    /// out of range, or if the packet would exceed `maximumPacketSize` (the peer's Maximum Packet Size).
    public func encode(
        into buffer: inout ByteBuffer,
        version: MQTTProtocolVersion,
        maximumPacketSize: Int = MQTTPacket.protocolMaximumPacketSize
    ) throws(MQTTCodecError) {
        switch self {
        case .connect(let connect):
            try connect.encode(into: &buffer, maximumPacketSize: maximumPacketSize)
        case .connack(let connack):
            try connack.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .publish(let publish):
            try publish.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .puback(let ack):
            try ack.encode(into: &buffer, version: version, kind: .puback, maximumPacketSize: maximumPacketSize)
        case .pubrec(let ack):
            try ack.encode(into: &buffer, version: version, kind: .pubrec, maximumPacketSize: maximumPacketSize)
        case .pubrel(let ack):
            try ack.encode(into: &buffer, version: version, kind: .pubrel, maximumPacketSize: maximumPacketSize)
        case .pubcomp(let ack):
            try ack.encode(into: &buffer, version: version, kind: .pubcomp, maximumPacketSize: maximumPacketSize)
        case .subscribe(let subscribe):
            try subscribe.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .suback(let suback):
            try suback.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .unsubscribe(let unsubscribe):
            try unsubscribe.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .unsuback(let unsuback):
            try unsuback.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .pingreq:
            try buffer.writeMQTTPacket(type: .pingreq, flags: 0, remainingLength: 0, maximumPacketSize: maximumPacketSize) { _ in }
        case .pingresp:
            try buffer.writeMQTTPacket(type: .pingresp, flags: 0, remainingLength: 0, maximumPacketSize: maximumPacketSize) { _ in }
        case .disconnect(let disconnect):
            try disconnect.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        case .auth(let auth):
            try auth.encode(into: &buffer, version: version, maximumPacketSize: maximumPacketSize)
        }
    }

    /// The packet encoded into a new buffer.
    public func encoded(
        version: MQTTProtocolVersion,
        allocator: ByteBufferAllocator = ByteBufferAllocator()
    ) throws(MQTTCodecError) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        try encode(into: &buffer, version: version)
        return buffer
    }
}

extension ByteBuffer {
    /// Checks the whole packet's size, then writes the fixed header and lets `body` write exactly
    /// `remainingLength` bytes, all through one access to the buffer's storage. Nothing is written if it throws.
    @inline(__always)
    mutating func writeMQTTPacket(
        type: MQTTPacketType,
        flags: UInt8,
        remainingLength: Int,
        maximumPacketSize: Int,
        _ body: (inout MQTTWriter) -> Void
    ) throws(MQTTCodecError) {
        guard remainingLength <= ByteBuffer.mqttMaximumVariableByteInteger else {
            throw .unencodable(.packetTooLarge, "\(type) longer than the protocol allows")
        }
        let total = 1 + ByteBuffer.mqttVariableByteIntegerLength(remainingLength) + remainingLength
        guard total <= maximumPacketSize else {
            throw .unencodable(.packetTooLarge, "\(type) of \(total) bytes exceeds the maximum packet size \(maximumPacketSize)")
        }
        writeWithUnsafeMutableBytes(minimumWritableBytes: total) { raw in
            guard let base = raw.baseAddress else { return 0 }
            var writer = MQTTWriter(base: base, capacity: total)
            writer.writeInteger(type.rawValue << 4 | flags)
            writer.writeMQTTVariableByteInteger(remainingLength)
            body(&writer)
            assert(writer.offset == total, "\(type): computed \(total) bytes, wrote \(writer.offset)")
            return writer.offset
        }
    }
}

/// Writes into memory the encoder reserved after computing the packet's exact length, so that encoding one
/// packet costs one access to the `ByteBuffer` instead of one per field.
struct MQTTWriter {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    private(set) var offset = 0

    init(base: UnsafeMutableRawPointer, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    @inline(__always)
    mutating func writeInteger<T: FixedWidthInteger>(_ value: T) {
        precondition(offset + MemoryLayout<T>.size <= capacity)
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    @inline(__always)
    mutating func writeMQTTVariableByteInteger(_ value: Int) {
        var remaining = value
        repeat {
            var byte = UInt8(truncatingIfNeeded: remaining & 0x7F)
            remaining >>= 7
            if remaining > 0 { byte |= 0x80 }
            writeInteger(byte)
        } while remaining > 0
    }

    @inline(__always)
    mutating func writeBytes(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(offset + bytes.count <= capacity)
        (base + offset).copyMemory(from: source, byteCount: bytes.count)
        offset += bytes.count
    }

    /// A UTF-8 Encoded String (the caller checked its length).
    mutating func writeMQTTString(_ string: String) {
        writeInteger(UInt16(truncatingIfNeeded: string.utf8.count))
        let done: Void? = string.utf8.withContiguousStorageIfAvailable { writeBytes(UnsafeRawBufferPointer($0)) }
        if done == nil {
            for byte in string.utf8 { writeInteger(byte) }
        }
    }

    /// Binary Data (the caller checked its length).
    mutating func writeMQTTBinary(_ data: ByteBuffer) {
        writeInteger(UInt16(truncatingIfNeeded: data.readableBytes))
        writeImmutableBuffer(data)
    }

    mutating func writeImmutableBuffer(_ data: ByteBuffer) {
        data.withUnsafeReadableBytes { writeBytes($0) }
    }
}
