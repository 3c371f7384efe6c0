import NIOCore

/// UNSUBSCRIBE (MQTT 5.0 section 3.10, MQTT 3.1.1 section 3.10).
public struct MQTTUnsubscribe: Sendable, Equatable {
    public var packetId: UInt16
    /// At least one.
    public var topicFilters: [MQTTTopicFilter]
    public var properties: MQTTProperties

    public init(packetId: UInt16, topicFilters: [MQTTTopicFilter], properties: MQTTProperties = MQTTProperties()) {
        self.packetId = packetId
        self.topicFilters = topicFilters
        self.properties = properties
    }
}

extension MQTTUnsubscribe {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTUnsubscribe {
        let packetId = try body.readMQTTUInt16()
        guard packetId != 0 else { throw .protocolError("UNSUBSCRIBE needs a non-zero packet identifier") }
        let properties =
            version == .v5 ? try MQTTProperties.decode(from: &body, context: .unsubscribe) : MQTTProperties()
        var filters: [MQTTTopicFilter] = []
        while body.readableBytes > 0 {
            filters.append(try body.readMQTTTopicFilter())
        }
        guard !filters.isEmpty else { throw .protocolError("UNSUBSCRIBE without topic filters") }
        return MQTTUnsubscribe(packetId: packetId, topicFilters: filters, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard packetId != 0 else { throw .unencodable(.protocolError, "UNSUBSCRIBE needs a non-zero packet identifier") }
        guard !topicFilters.isEmpty else { throw .unencodable(.protocolError, "UNSUBSCRIBE without topic filters") }
        var length = 2
        var propertiesLength = 0
        if version == .v5 {
            propertiesLength = try properties.encodedContentLength(context: .unsubscribe)
            length += ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
        } else if !properties.isEmpty {
            throw .unencodable(.protocolError, "MQTT 3.1.1 UNSUBSCRIBE has no properties")
        }
        for filter in topicFilters { length += 2 + filter.string.utf8.count }
        try buffer.writeMQTTPacket(type: .unsubscribe, flags: 0b0010, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
            out.writeInteger(packetId)
            if version == .v5 { properties.write(into: &out, contentLength: propertiesLength) }
            for filter in topicFilters { out.writeMQTTString(filter.string) }
        }
    }
}
