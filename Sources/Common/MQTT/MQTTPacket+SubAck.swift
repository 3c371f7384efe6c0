import NIOCore

/// SUBACK (MQTT 5.0 section 3.9, MQTT 3.1.1 section 3.9): one reason code per topic filter of the SUBSCRIBE,
/// in order. In 3.1.1 every failure travels as 0x80 (`unspecifiedError`).
public struct MQTTSubAck: Sendable, Equatable {
    public var packetId: UInt16
    public var reasonCodes: [MQTTReasonCode]
    public var properties: MQTTProperties

    public init(packetId: UInt16, reasonCodes: [MQTTReasonCode], properties: MQTTProperties = MQTTProperties()) {
        self.packetId = packetId
        self.reasonCodes = reasonCodes
        self.properties = properties
    }
}

extension MQTTSubAck {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTSubAck {
        let packetId = try body.readMQTTUInt16()
        guard packetId != 0 else { throw .protocolError("SUBACK needs a non-zero packet identifier") }
        let properties = version == .v5 ? try MQTTProperties.decode(from: &body, context: .suback) : MQTTProperties()
        var reasonCodes: [MQTTReasonCode] = []
        reasonCodes.reserveCapacity(body.readableBytes)
        while body.readableBytes > 0 {
            let code = MQTTReasonCode(try body.readMQTTByte())
            switch version {
            case .v311:
                guard code.rawValue <= 2 || code == .unspecifiedError else {
                    throw .malformed("SUBACK return code \(code.rawValue) is reserved in MQTT 3.1.1")
                }
            case .v5:
                guard MQTTReasonCode.allowedInSubAck.contains(code) else {
                    throw .protocolError("reason code \(code) is not allowed in SUBACK")
                }
            }
            reasonCodes.append(code)
        }
        guard !reasonCodes.isEmpty else { throw .protocolError("SUBACK without reason codes") }
        return MQTTSubAck(packetId: packetId, reasonCodes: reasonCodes, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard packetId != 0 else { throw .unencodable(.protocolError, "SUBACK needs a non-zero packet identifier") }
        guard !reasonCodes.isEmpty else { throw .unencodable(.protocolError, "SUBACK without reason codes") }
        var length = 2 + reasonCodes.count
        var propertiesLength = 0
        switch version {
        case .v311:
            guard properties.isEmpty else { throw .unencodable(.protocolError, "MQTT 3.1.1 SUBACK has no properties") }
        case .v5:
            for code in reasonCodes where !MQTTReasonCode.allowedInSubAck.contains(code) {
                throw .unencodable(.protocolError, "reason code \(code) is not allowed in SUBACK")
            }
            propertiesLength = try properties.encodedContentLength(context: .suback)
            length += ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
        }
        try buffer.writeMQTTPacket(type: .suback, flags: 0, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
            out.writeInteger(packetId)
            if version == .v5 { properties.write(into: &out, contentLength: propertiesLength) }
            for code in reasonCodes {
                out.writeInteger(version == .v5 ? code.rawValue : code.v311SubAckReturnCode)
            }
        }
    }
}
