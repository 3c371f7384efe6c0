import NIOCore

/// Retain Handling subscription option (MQTT 5.0 section 3.8.3.1).
public enum MQTTRetainHandling: UInt8, Sendable, Hashable, CaseIterable {
    /// Send retained messages at the time of the subscribe.
    case sendOnSubscribe = 0
    /// Send retained messages only if the subscription does not exist yet.
    case sendOnNewSubscribe = 1
    /// Do not send retained messages.
    case doNotSend = 2
}

/// One topic filter of a SUBSCRIBE with its options (the MQTT 5 options are false / 0 in 3.1.1).
public struct MQTTSubscription: Sendable, Equatable {
    public var topicFilter: MQTTTopicFilter
    public var qos: MQTTQoS
    public var noLocal: Bool
    public var retainAsPublished: Bool
    public var retainHandling: MQTTRetainHandling

    public init(
        topicFilter: MQTTTopicFilter,
        qos: MQTTQoS,
        noLocal: Bool = false,
        retainAsPublished: Bool = false,
        retainHandling: MQTTRetainHandling = .sendOnSubscribe
    ) {
        self.topicFilter = topicFilter
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }
}

/// SUBSCRIBE (MQTT 5.0 section 3.8, MQTT 3.1.1 section 3.8).
public struct MQTTSubscribe: Sendable, Equatable {
    public var packetId: UInt16
    /// At least one.
    public var subscriptions: [MQTTSubscription]
    public var properties: MQTTProperties

    public init(packetId: UInt16, subscriptions: [MQTTSubscription], properties: MQTTProperties = MQTTProperties()) {
        self.packetId = packetId
        self.subscriptions = subscriptions
        self.properties = properties
    }
}

extension MQTTSubscribe {
    static func decode(body: inout ByteBuffer, version: MQTTProtocolVersion) throws(MQTTCodecError) -> MQTTSubscribe {
        let packetId = try body.readMQTTUInt16()
        guard packetId != 0 else { throw .protocolError("SUBSCRIBE needs a non-zero packet identifier") }
        let properties =
            version == .v5 ? try MQTTProperties.decode(from: &body, context: .subscribe) : MQTTProperties()
        var subscriptions: [MQTTSubscription] = []
        while body.readableBytes > 0 {
            let filter = try body.readMQTTTopicFilter()
            let options = try body.readMQTTByte()
            guard let qos = MQTTQoS(rawValue: options & 0x03) else { throw .malformed("subscription with QoS 3") }
            var subscription = MQTTSubscription(topicFilter: filter, qos: qos)
            switch version {
            case .v311:
                guard options & 0xFC == 0 else { throw .malformed("reserved subscription option bits must be 0") }
            case .v5:
                guard options & 0xC0 == 0 else { throw .malformed("reserved subscription option bits must be 0") }
                subscription.noLocal = options & 0x04 != 0
                subscription.retainAsPublished = options & 0x08 != 0
                guard let retainHandling = MQTTRetainHandling(rawValue: (options >> 4) & 0x03) else {
                    throw .protocolError("retain handling 3")
                }
                subscription.retainHandling = retainHandling
                if subscription.noLocal && filter.isShared {
                    throw .protocolError("no local on a shared subscription")
                }
            }
            subscriptions.append(subscription)
        }
        guard !subscriptions.isEmpty else { throw .protocolError("SUBSCRIBE without topic filters") }
        return MQTTSubscribe(packetId: packetId, subscriptions: subscriptions, properties: properties)
    }

    func encode(into buffer: inout ByteBuffer, version: MQTTProtocolVersion, maximumPacketSize: Int) throws(MQTTCodecError) {
        guard packetId != 0 else { throw .unencodable(.protocolError, "SUBSCRIBE needs a non-zero packet identifier") }
        guard !subscriptions.isEmpty else { throw .unencodable(.protocolError, "SUBSCRIBE without topic filters") }
        var length = 2
        var propertiesLength = 0
        if version == .v5 {
            propertiesLength = try properties.encodedContentLength(context: .subscribe)
            length += ByteBuffer.mqttVariableByteIntegerLength(propertiesLength) + propertiesLength
        } else if !properties.isEmpty {
            throw .unencodable(.protocolError, "MQTT 3.1.1 SUBSCRIBE has no properties")
        }
        for subscription in subscriptions {
            if version == .v311
                && (subscription.noLocal || subscription.retainAsPublished || subscription.retainHandling != .sendOnSubscribe)
            {
                throw .unencodable(.protocolError, "MQTT 3.1.1 has no subscription options besides QoS")
            }
            if subscription.noLocal && subscription.topicFilter.isShared {
                throw .unencodable(.protocolError, "no local on a shared subscription")
            }
            length += 2 + subscription.topicFilter.string.utf8.count + 1
        }
        try buffer.writeMQTTPacket(type: .subscribe, flags: 0b0010, remainingLength: length, maximumPacketSize: maximumPacketSize) { out in
            out.writeInteger(packetId)
            if version == .v5 { properties.write(into: &out, contentLength: propertiesLength) }
            for subscription in subscriptions {
                out.writeMQTTString(subscription.topicFilter.string)
                let options =
                    subscription.qos.rawValue | (subscription.noLocal ? 0x04 : 0) | (subscription.retainAsPublished ? 0x08 : 0)
                    | subscription.retainHandling.rawValue << 4
                out.writeInteger(options)
            }
        }
    }
}

extension ByteBuffer {
    /// Reads a topic filter: invalid UTF-8 or U+0000 is a Malformed Packet, a misplaced wildcard or an empty
    /// filter is Topic Filter Invalid.
    mutating func readMQTTTopicFilter() throws(MQTTCodecError) -> MQTTTopicFilter {
        let string = try readMQTTString()
        return try MQTTTopicFilter(string)
    }
}
