import NIOCore

/// CONNACK (MQTT 5.0 section 3.2, MQTT 3.1.1 section 3.2). In 3.1.1 the return code is carried as the
/// equivalent reason code (see `MQTTReasonCode.v311ConnectReturnCode`).
public struct MQTTConnAck: Sendable, Equatable {
    public var sessionPresent: Bool
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(sessionPresent: Bool = false, reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
        self.sessionPresent = sessionPresent
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

extension MQTTConnAck {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTConnAck {
        let flags = try body.readMQTTByte()
        guard flags & 0xFE == 0 else { throw .malformed("CONNACK acknowledge flags 7-1 are reserved") }
        let code = try body.readMQTTByte()
        let reasonCode: MQTTReasonCode
        var properties = MQTTProperties()
        switch version {
        case .v311:
            guard let mapped = MQTTReasonCode(v311ConnectReturnCode: code) else {
                throw .malformed("reserved CONNACK return code \(code)")
            }
            reasonCode = mapped
        case .v5:
            reasonCode = MQTTReasonCode(code)
            guard MQTTReasonCode.allowedInConnAck.contains(reasonCode) else {
                throw .protocolError("reason code \(reasonCode) is not allowed in CONNACK")
            }
            properties = try MQTTProperties.decode(from: &body, context: .connack)
        }
        let sessionPresent = flags & 0x01 != 0
        if sessionPresent && reasonCode.isFailure {
            throw .protocolError("session present must be 0 in a refusing CONNACK")
        }
        return MQTTConnAck(sessionPresent: sessionPresent, reasonCode: reasonCode, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        if sessionPresent && reasonCode.isFailure {
            throw .unencodable(.protocolError, "session present must be 0 in a refusing CONNACK")
        }
        switch version {
        case .v311:
            guard let code = reasonCode.v311ConnectReturnCode else {
                throw .unencodable(.unspecifiedError, "\(reasonCode) has no MQTT 3.1.1 CONNACK return code: close instead")
            }
            guard properties.isEmpty else { throw .unencodable(.protocolError, "MQTT 3.1.1 CONNACK has no properties") }
            try buffer.writeMQTTPacket(type: .connack, flags: 0, remainingLength: 2, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(UInt8(sessionPresent ? 1 : 0))
                out.writeInteger(code)
            }
        case .v5:
            guard MQTTReasonCode.allowedInConnAck.contains(reasonCode) else {
                throw .unencodable(.protocolError, "reason code \(reasonCode) is not allowed in CONNACK")
            }
            let propertiesLength = try properties.encodedContentLength(context: .connack)
            let length = 2 + ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
            try buffer.writeMQTTPacket(type: .connack, flags: 0, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(UInt8(sessionPresent ? 1 : 0))
                out.writeInteger(reasonCode.rawValue)
                properties.write(into: &out, contentLength: propertiesLength)
            }
        }
    }
}
