import NIOCore

/// PUBLISH (MQTT 5.0 section 3.3, MQTT 3.1.1 section 3.3).
public struct MQTTPublish: Sendable, Equatable {
    /// The topic name; empty only in MQTT 5 when `properties.topicAlias` names an alias set earlier.
    public var topic: String
    /// The application message; after decoding, a slice of the received bytes (no copy).
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    public var dup: Bool
    /// Present (and non-zero) exactly when `qos` is 1 or 2; ignored when encoding QoS 0.
    public var packetId: UInt16?
    public var properties: MQTTProperties

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS = .atMostOnce,
        retain: Bool = false,
        dup: Bool = false,
        packetId: UInt16? = nil,
        properties: MQTTProperties = MQTTProperties()
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packetId = packetId
        self.properties = properties
    }
}

extension MQTTPublish {
    static func decode(flags: UInt8, body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTPublish {
        guard let qos = MQTTQoS(rawValue: (flags >> 1) & 0x03) else { throw .malformed("PUBLISH with QoS 3") }
        let dup = flags & 0x08 != 0
        if dup && qos == .atMostOnce { throw .malformed("DUP must be 0 for QoS 0") }
        let topic = try body.readMQTTTopicName()
        var packetId: UInt16? = nil
        if qos != .atMostOnce {
            let id = try body.readMQTTUInt16()
            guard id != 0 else { throw .protocolError("PUBLISH with QoS > 0 needs a non-zero packet identifier") }
            packetId = id
        }
        var properties = MQTTProperties()
        if version == .v5 {
            properties = try MQTTProperties.decode(from: &body, context: .publish)
        }
        if topic.isEmpty && properties.topicAlias == nil {
            throw .protocolError("empty topic name without a topic alias")
        }
        let payload = body.readSlice(length: body.readableBytes) ?? ByteBuffer()
        return MQTTPublish(
            topic: topic, payload: payload, qos: qos, retain: flags & 0x01 != 0, dup: dup, packetId: packetId,
            properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        if topic.isEmpty {
            guard version == .v5 && properties.topicAlias != nil else {
                throw .unencodable(.topicNameInvalid, "empty topic name without a topic alias")
            }
        } else {
            // Checks length, U+0000 and wildcards in one pass.
            guard MQTTTopicName.isValid(topic) else { throw .unencodable(.topicNameInvalid, "invalid topic name") }
        }
        if dup && qos == .atMostOnce { throw .unencodable(.protocolError, "DUP must be 0 for QoS 0") }
        var length = 2 + topic.utf8.count + payload.readableBytes
        var id: UInt16 = 0
        if qos != .atMostOnce {
            id = try MQTTEncodingCheck.packetIdentifier(packetId, "PUBLISH")
            length += 2
        }
        var propertiesLength = 0
        if version == .v5 {
            propertiesLength = try properties.encodedContentLength(context: .publish)
            length += ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
        } else if !properties.isEmpty {
            throw .unencodable(.protocolError, "MQTT 3.1.1 PUBLISH has no properties")
        }
        let flags = (dup ? 0x08 : 0) | qos.rawValue << 1 | (retain ? 0x01 : 0)
        try buffer.writeMQTTPacket(type: .publish, flags: flags, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
            out.writeMQTTString(topic)
            if qos != .atMostOnce { out.writeInteger(id) }
            if version == .v5 { properties.write(into: &out, contentLength: propertiesLength) }
            out.writeImmutableBuffer(payload)
        }
    }
}

extension ByteBuffer {
    /// Reads a PUBLISH topic name: a valid UTF-8 string without U+0000 (else Malformed Packet) and without
    /// wildcards (else Topic Name Invalid), checked in one pass. May be empty (topic alias).
    mutating func readMQTTTopicName() throws(MQTTCodecError) -> String {
        let length = Int(try readMQTTUInt16())
        guard readableBytes >= length else { throw .malformed("topic name longer than the packet") }
        // 0: ok, 1: malformed, 2: wildcard.
        var verdict = 0
        let string: String? = withUnsafeReadableBytes { raw in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[0..<length])
            var nonASCII = false
            for byte in bytes {
                switch byte {
                case 0:
                    verdict = 1
                    return nil
                case UInt8(ascii: "+"), UInt8(ascii: "#"):
                    verdict = 2
                default:
                    nonASCII = nonASCII || byte >= 0x80
                }
            }
            if nonASCII {
                guard let validated = String(validating: bytes.bindMemory(to: UInt8.self), as: UTF8.self) else {
                    verdict = 1
                    return nil
                }
                return validated
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        guard let string, verdict != 1 else { throw .malformed("topic name is not valid UTF-8 or contains U+0000") }
        guard verdict == 0 else {
            throw MQTTCodecError(reasonCode: .topicNameInvalid, message: "topic name contains a wildcard")
        }
        moveReaderIndex(forwardBy: length)
        return string
    }
}
