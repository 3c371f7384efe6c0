import NIOCore

/// UNSUBACK (MQTT 5.0 section 3.11, MQTT 3.1.1 section 3.11). MQTT 5 carries one reason code per topic
/// filter of the UNSUBSCRIBE; MQTT 3.1.1 only the packet identifier (`reasonCodes` then empty).
public struct MQTTUnsubAck: Sendable, Equatable {
    public var packetId: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties

    public init(packetId: UInt16, reasonCodes: [MQTTReasonCode] = [], properties: MQTTProperties = MQTTProperties()) {
        self.packetId = packetId
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

extension MQTTUnsubAck {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTUnsubAck {
        let packetId = try body.readMQTTUInt16()
        guard packetId != 0 else { throw .protocolError("UNSUBACK needs a non-zero packet identifier") }
        guard version == .v5 else { return MQTTUnsubAck(packetId: packetId) }
        let properties = try MQTTProperties.decode(from: &body, context: .unsuback)
        var reasonCodes: [MQTTReasonCode] = []
        reasonCodes.reserveCapacity(body.readableBytes)
        while body.readableBytes > 0 {
            let code = MQTTReasonCode(try body.readMQTTByte())
            guard MQTTReasonCode.allowedInUnsubAck.contains(code) else {
                throw .protocolError("reason code \(code) is not allowed in UNSUBACK")
            }
            reasonCodes.append(code)
        }
        guard !reasonCodes.isEmpty else { throw .protocolError("UNSUBACK without reason codes") }
        return MQTTUnsubAck(packetId: packetId, reasonCodes: reasonCodes, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard packetId != 0 else { throw .unencodable(.protocolError, "UNSUBACK needs a non-zero packet identifier") }
        switch version {
        case .v311:
            guard properties.isEmpty, reasonCodes.allSatisfy({ $0 == .success }) else {
                throw .unencodable(.protocolError, "MQTT 3.1.1 UNSUBACK has no reason codes or properties")
            }
            try buffer.writeMQTTPacket(type: .unsuback, flags: 0, remainingLength: 2, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(packetId)
            }
        case .v5:
            guard !reasonCodes.isEmpty else { throw .unencodable(.protocolError, "UNSUBACK without reason codes") }
            for code in reasonCodes where !MQTTReasonCode.allowedInUnsubAck.contains(code) {
                throw .unencodable(.protocolError, "reason code \(code) is not allowed in UNSUBACK")
            }
            let propertiesLength = try properties.encodedContentLength(context: .unsuback)
            let length = 2 + ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength + reasonCodes.count
            try buffer.writeMQTTPacket(type: .unsuback, flags: 0, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(packetId)
                properties.write(into: &out, contentLength: propertiesLength)
                for code in reasonCodes { out.writeInteger(code.rawValue) }
            }
        }
    }
}
