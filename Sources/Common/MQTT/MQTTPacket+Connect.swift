import NIOCore

/// CONNECT (MQTT 5.0 section 3.1, MQTT 3.1.1 section 3.1).
public struct MQTTConnect: Sendable, Equatable {
    public var protocolVersion: MQTTProtocolVersion
    public var clientIdentifier: String
    /// Clean Session (3.1.1) / Clean Start (5.0).
    public var cleanStart: Bool
    /// Seconds; 0 turns keep-alive off.
    public var keepAlive: UInt16
    public var username: String?
    public var password: ByteBuffer?
    public var will: MQTTWill?
    public var properties: MQTTProperties

    public init(
        protocolVersion: MQTTProtocolVersion,
        clientIdentifier: String,
        cleanStart: Bool = true,
        keepAlive: UInt16 = 60,
        username: String? = nil,
        password: ByteBuffer? = nil,
        will: MQTTWill? = nil,
        properties: MQTTProperties = MQTTProperties()
    ) {
        self.protocolVersion = protocolVersion
        self.clientIdentifier = clientIdentifier
        self.cleanStart = cleanStart
        self.keepAlive = keepAlive
        self.username = username
        self.password = password
        self.will = will
        self.properties = properties
    }
}

/// The Will Message of a CONNECT.
public struct MQTTWill: Sendable, Equatable {
    public var topic: String
    public var payload: ByteBuffer
    public var qos: MQTTQoS
    public var retain: Bool
    /// Will properties (MQTT 5 only): payload format, message expiry, content type, response topic,
    /// correlation data, will delay interval, user properties.
    public var properties: MQTTProperties

    public init(
        topic: String,
        payload: ByteBuffer,
        qos: MQTTQoS = .atMostOnce,
        retain: Bool = false,
        properties: MQTTProperties = MQTTProperties()
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }
}

extension MQTTConnect {
    enum Flag {
        static let username: UInt8 = 0x80
        static let password: UInt8 = 0x40
        static let willRetain: UInt8 = 0x20
        static let willQoSShift: UInt8 = 3
        static let will: UInt8 = 0x04
        static let cleanStart: UInt8 = 0x02
        static let reserved: UInt8 = 0x01
    }

    static func decode(body: inout ByteBuffer) throws(MQTTCodecError) -> MQTTConnect {
        let protocolName = try body.readMQTTString()
        let level = try body.readMQTTByte()
        guard protocolName == "MQTT" else {
            if protocolName == "MQIsdp" && level == 3 {
                throw MQTTCodecError(reasonCode: .unsupportedProtocolVersion, message: "MQTT 3.1 (MQIsdp) is not supported")
            }
            throw .protocolError("protocol name is not MQTT")
        }
        guard let version = MQTTProtocolVersion(rawValue: level) else {
            throw MQTTCodecError(reasonCode: .unsupportedProtocolVersion, message: "unsupported protocol level \(level)")
        }
        let flags = try body.readMQTTByte()
        guard flags & Flag.reserved == 0 else { throw .malformed("CONNECT reserved flag must be 0") }
        let hasWill = flags & Flag.will != 0
        let willQoSBits = (flags >> Flag.willQoSShift) & 0x03
        let willRetain = flags & Flag.willRetain != 0
        guard let willQoS = MQTTQoS(rawValue: willQoSBits) else { throw .malformed("will QoS 3") }
        if !hasWill && (willQoSBits != 0 || willRetain) {
            throw .malformed("will QoS and will retain must be 0 without a will")
        }
        let hasUsername = flags & Flag.username != 0
        let hasPassword = flags & Flag.password != 0
        if version == .v311 && hasPassword && !hasUsername {
            throw .protocolError("MQTT 3.1.1 forbids a password without a user name")
        }
        let keepAlive = try body.readMQTTUInt16()
        let properties =
            version == .v5 ? try MQTTProperties.decode(from: &body, context: .connect) : MQTTProperties()
        let clientIdentifier = try body.readMQTTString()
        let cleanStart = flags & Flag.cleanStart != 0
        if version == .v311 && clientIdentifier.isEmpty && !cleanStart {
            throw MQTTCodecError(
                reasonCode: .clientIdentifierNotValid, message: "an empty client identifier needs clean session 1")
        }
        var will: MQTTWill? = nil
        if hasWill {
            let willProperties =
                version == .v5 ? try MQTTProperties.decode(from: &body, context: .will) : MQTTProperties()
            let topic = try body.readMQTTString()
            guard MQTTTopicName.isValid(topic) else {
                throw MQTTCodecError(reasonCode: .topicNameInvalid, message: "will topic is not a valid topic name")
            }
            let payload = try body.readMQTTBinary()
            will = MQTTWill(topic: topic, payload: payload, qos: willQoS, retain: willRetain, properties: willProperties)
        }
        let username = hasUsername ? try body.readMQTTString() : nil
        let password = hasPassword ? try body.readMQTTBinary() : nil
        return MQTTConnect(
            protocolVersion: version, clientIdentifier: clientIdentifier, cleanStart: cleanStart,
            keepAlive: keepAlive, username: username, password: password, will: will, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, maximumPacketSize: Int) throws(MQTTCodecError) {
        let version = protocolVersion
        var flags: UInt8 = cleanStart ? Flag.cleanStart : 0
        // Protocol name "MQTT" (6), level (1), flags (1), keep alive (2).
        var length = 10
        var propertiesLength = 0
        var willPropertiesLength = 0
        if version == .v5 {
            propertiesLength = try properties.encodedContentLength(context: .connect)
            if properties.authenticationData != nil && properties.authenticationMethod == nil {
                throw .unencodable(.protocolError, "authentication data without authentication method")
            }
            length += ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
        } else if !properties.isEmpty {
            throw .unencodable(.protocolError, "MQTT 3.1.1 CONNECT has no properties")
        }
        try MQTTEncodingCheck.string(clientIdentifier, "client identifier")
        if version == .v311 && clientIdentifier.isEmpty && !cleanStart {
            throw .unencodable(.clientIdentifierNotValid, "an empty client identifier needs clean session 1")
        }
        length += 2 + clientIdentifier.utf8.count
        if let will {
            guard MQTTTopicName.isValid(will.topic) else { throw .unencodable(.topicNameInvalid, "invalid will topic") }
            try MQTTEncodingCheck.binary(will.payload, "will payload")
            flags |= Flag.will | will.qos.rawValue << Flag.willQoSShift | (will.retain ? Flag.willRetain : 0)
            if version == .v5 {
                willPropertiesLength = try will.properties.encodedContentLength(context: .will)
                length += ByteBuffer.mqttVariableByteIntegerLength(willPropertiesLength) + willPropertiesLength
            } else if !will.properties.isEmpty {
                throw .unencodable(.protocolError, "MQTT 3.1.1 has no will properties")
            }
            length += 2 + will.topic.utf8.count + 2 + will.payload.readableBytes
        }
        if let username {
            try MQTTEncodingCheck.string(username, "user name")
            flags |= Flag.username
            length += 2 + username.utf8.count
        }
        if let password {
            if version == .v311 && username == nil {
                throw .unencodable(.protocolError, "MQTT 3.1.1 forbids a password without a user name")
            }
            try MQTTEncodingCheck.binary(password, "password")
            flags |= Flag.password
            length += 2 + password.readableBytes
        }
        try buffer.writeMQTTPacket(type: .connect, flags: 0, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
            out.writeMQTTString("MQTT")
            out.writeInteger(version.rawValue)
            out.writeInteger(flags)
            out.writeInteger(keepAlive)
            if version == .v5 { properties.write(into: &out, contentLength: propertiesLength) }
            out.writeMQTTString(clientIdentifier)
            if let will {
                if version == .v5 { will.properties.write(into: &out, contentLength: willPropertiesLength) }
                out.writeMQTTString(will.topic)
                out.writeMQTTBinary(will.payload)
            }
            if let username { out.writeMQTTString(username) }
            if let password { out.writeMQTTBinary(password) }
        }
    }
}
