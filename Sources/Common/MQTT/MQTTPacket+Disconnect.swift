import NIOCore

/// DISCONNECT (MQTT 5.0 section 3.14, MQTT 3.1.1 section 3.14). MQTT 3.1.1 has no reason code or properties
/// (and only clients send it).
public struct MQTTDisconnect: Sendable, Equatable {
    public var reasonCode: MQTTReasonCode
    public var properties: MQTTProperties

    public init(reasonCode: MQTTReasonCode = .normalDisconnection, properties: MQTTProperties = MQTTProperties()) {
        self.reasonCode = reasonCode
        self.properties = properties
    }
}

extension MQTTDisconnect {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTDisconnect {
        guard version == .v5 else { return MQTTDisconnect() }
        let (reasonCode, properties) = try body.readMQTTReasonCodeAndProperties(
            type: .disconnect, allowed: MQTTReasonCode.allowedInDisconnect, context: .disconnect)
        return MQTTDisconnect(reasonCode: reasonCode, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        try buffer.writeMQTTReasonCodeAndPropertiesPacket(
            type: .disconnect, version: version, reasonCode: reasonCode, properties: properties,
            allowed: MQTTReasonCode.allowedInDisconnect, context: .disconnect, maximumPacketSize: maximumPacketSize)
    }
}

extension ByteBuffer {
    /// The MQTT 5 body of DISCONNECT and AUTH: nothing (success), a reason code, or a reason code and properties.
    mutating func readMQTTReasonCodeAndProperties(
        type: MQTTPacketType,
        allowed: MQTTReasonCode.AllowedSet,
        context: MQTTProperties.Context
    ) throws(MQTTCodecError) -> (MQTTReasonCode, MQTTProperties) {
        guard readableBytes > 0 else { return (.success, MQTTProperties()) }
        let reasonCode = MQTTReasonCode(try readMQTTByte())
        guard allowed.contains(reasonCode) else {
            throw .protocolError("reason code \(reasonCode) is not allowed in \(type)")
        }
        guard readableBytes > 0 else { return (reasonCode, MQTTProperties()) }
        return (reasonCode, try MQTTProperties.decode(from: &self, context: context))
    }

    /// Writes DISCONNECT or AUTH, leaving out what MQTT 5 lets a sender leave out.
    mutating func writeMQTTReasonCodeAndPropertiesPacket(
        type: MQTTPacketType,
        version: MQTTProtocolVersion,
        reasonCode: MQTTReasonCode,
        properties: MQTTProperties,
        allowed: MQTTReasonCode.AllowedSet,
        context: MQTTProperties.Context,
        maximumPacketSize: Int
    ) throws(MQTTCodecError) {
        guard version == .v5 else {
            guard reasonCode == .success, properties.isEmpty else {
                throw .unencodable(.protocolError, "MQTT 3.1.1 \(type) has no reason code or properties")
            }
            try writeMQTTPacket(type: type, flags: 0, remainingLength: 0, maximumPacketSize: maximumPacketSize) { _ in }
            return
        }
        guard allowed.contains(reasonCode) else {
            throw .unencodable(.protocolError, "reason code \(reasonCode) is not allowed in \(type)")
        }
        let propertiesLength = try properties.encodedContentLength(context: context)
        if propertiesLength == 0 && reasonCode == .success {
            try writeMQTTPacket(type: type, flags: 0, remainingLength: 0, maximumPacketSize: maximumPacketSize) { _ in }
        } else if propertiesLength == 0 {
            try writeMQTTPacket(type: type, flags: 0, remainingLength: 1, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(reasonCode.rawValue)
            }
        } else {
            let length = 1 + ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
            try writeMQTTPacket(type: type, flags: 0, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
                out.writeInteger(reasonCode.rawValue)
                properties.write(into: &out, contentLength: propertiesLength)
            }
        }
    }
}
