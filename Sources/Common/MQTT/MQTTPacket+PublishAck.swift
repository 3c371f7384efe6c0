import NIOCore

/// PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 5.0 sections 3.4 to 3.7): a packet identifier, and in MQTT 5 a
/// reason code and properties (both left out on the wire when they are success and empty).
public struct MQTTPublishAck: Sendable, Equatable {
    public var packetId: UInt16
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(packetId: UInt16, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
        self.packetId = packetId
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

extension MQTTPublishAck {
    enum Kind {
        case puback, pubrec, pubrel, pubcomp

        var type: MQTTPacketType {
            switch self {
            case .puback: .puback
            case .pubrec: .pubrec
            case .pubrel: .pubrel
            case .pubcomp: .pubcomp
            }
        }

        var context: MQTTProperties.Context {
            switch self {
            case .puback: .puback
            case .pubrec: .pubrec
            case .pubrel: .pubrel
            case .pubcomp: .pubcomp
            }
        }

        var allowedReasonCodes: MQTTReasonCode.AllowedSet {
            switch self {
            case .puback, .pubrec: MQTTReasonCode.allowedInPubAckPubRec
            case .pubrel, .pubcomp: MQTTReasonCode.allowedInPubRelPubComp
            }
        }
    }

    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion, kind: Kind) throws(MQTTCodecError) -> MQTTPublishAck {
        let packetId = try body.readMQTTUInt16()
        guard packetId != 0 else { throw .protocolError("\(kind.type) needs a non-zero packet identifier") }
        var ack = MQTTPublishAck(packetId: packetId)
        guard version == .v5, body.readableBytes > 0 else { return ack }
        ack.reasonCode = MQTTReasonCode(try body.readMQTTByte())
        guard kind.allowedReasonCodes.contains(ack.reasonCode) else {
            throw .protocolError("reason code \(ack.reasonCode) is not allowed in \(kind.type)")
        }
        if body.readableBytes > 0 {
            ack.properties = try MQTTProperties.decode(from: &body, context: kind.context)
        }
        return ack
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, kind: Kind, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard packetId != 0 else { throw .unencodable(.protocolError, "\(kind.type) needs a non-zero packet identifier") }
        let flags = kind.type.requiredFlags
        switch version {
        case .v311:
            guard reasonCode == .success, properties.isEmpty else {
                throw .unencodable(.protocolError, "MQTT 3.1.1 \(kind.type) has no reason code or properties")
            }
            try buffer.writeMQTTPacket(type: kind.type, flags: flags, remainingLength: 2, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(packetId)
            }
        case .v5:
            guard kind.allowedReasonCodes.contains(reasonCode) else {
                throw .unencodable(.protocolError, "reason code \(reasonCode) is not allowed in \(kind.type)")
            }
            let propertiesLength = try properties.encodedContentLength(context: kind.context)
            if propertiesLength == 0 && reasonCode == .success {
                try buffer.writeMQTTPacket(type: kind.type, flags: flags, remainingLength: 2, maximumPacketSize: maximumPacketSize) { out in
                    out.writeInteger(packetId)
                }
            } else if propertiesLength == 0 {
                try buffer.writeMQTTPacket(type: kind.type, flags: flags, remainingLength: 3, maximumPacketSize: maximumPacketSize) { out in
                    out.writeInteger(packetId)
                    out.writeInteger(reasonCode.rawValue)
                }
            } else {
                let length = 3 + ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
                try buffer.writeMQTTPacket(type: kind.type, flags: flags, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
                    out.writeInteger(packetId)
                    out.writeInteger(reasonCode.rawValue)
                    properties.write(into: &out, contentLength: propertiesLength)
                }
            }
        }
    }
}
