import NIOCore

/// AUTH (MQTT 5.0 section 3.15); MQTT 5 only.
public struct MQTTAuth: Sendable, Equatable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .success, properties: MQTTProperties = MQTTProperties()) {
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

extension MQTTAuth {
    static func decode(body: inout ByteBuffer) throws(MQTTCodecError) -> MQTTAuth {
        let (reasonCode, properties) = try body.readMQTTReasonCodeAndProperties(
            type: .auth, allowed: MQTTReasonCode.allowedInAuth, context: .auth)
        return MQTTAuth(reasonCode: reasonCode, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard version == .v5 else { throw .unencodable(.protocolError, "AUTH does not exist in MQTT 3.1.1") }
        try buffer.writeMQTTReasonCodeAndPropertiesPacket(
            type: .auth, version: version, reasonCode: reasonCode, properties: properties,
            allowed: MQTTReasonCode.allowedInAuth, context: .auth, maximumPacketSize: maximumPacketSize)
    }
}
