import Common
import Foundation
import NIOCore
import TributaryKafka

/// An application message inside the broker: consumed from Kafka (or the retained topic) and on its way
/// to subscribers.
struct BrokerMessage: Sendable, Equatable {
    var topic: String
    var payload: ByteBuffer
    /// The QoS it was published with (caps the delivery QoS together with the subscription's).
    var qos: MQTTQoS
    /// The RETAIN flag it was published with.
    var retain: Bool
    /// The publishing client, when it came through an MQTT broker (for No Local).
    var publisherClientId: String?
    /// MQTT 5 properties forwarded to subscribers: payload format, content type, response topic,
    /// correlation data, user properties. Expiry is kept in `expiresAt`.
    var properties: MQTTProperties
    /// When the message expires (MQTT 5 Message Expiry Interval), on the wall clock.
    var expiresAt: Date?
    /// Where it was consumed from (nil for retained messages and messages not from a messages topic): a
    /// session going offline with it undelivered stores an offset at or before it (`OutboundState.replayFrom`).
    var source: KafkaTopicPartition? = nil
    var sourceOffset: Int64? = nil

    /// Seconds left before expiry (rounded up), nil if it never expires, 0 if it has expired.
    func remainingExpiry(now: Date) -> UInt32? {
        guard let expiresAt else { return nil }
        let left = expiresAt.timeIntervalSince(now)
        guard left > 0 else { return 0 }
        return UInt32(min(Double(UInt32.max), left.rounded(.up)))
    }
}

/// A message for one session: the message plus what the matching subscriptions decided.
struct OutboundMessage: Sendable, Equatable {
    var message: BrokerMessage
    /// min(published QoS, subscription QoS).
    var qos: MQTTQoS
    /// The RETAIN flag to send: 1 for retained messages sent on subscribe, else the publisher's flag
    /// with Retain As Published, else 0.
    var retain: Bool
    /// Subscription identifiers of the matching subscriptions (MQTT 5).
    var subscriptionIdentifiers: [UInt32]

    /// The PUBLISH to send, or nil if the message has expired.
    func publish(packetId: UInt16?, dup: Bool, version: MQTTProtocolVersion, now: Date) -> MQTTPublish? {
        var properties = MQTTProperties()
        if version == .v5 {
            properties = message.properties
            properties.subscriptionIdentifiers = subscriptionIdentifiers
            if let remaining = message.remainingExpiry(now: now) {
                if remaining == 0 { return nil }
                properties.messageExpiryInterval = remaining
            }
        } else if message.remainingExpiry(now: now) == 0 {
            return nil
        }
        return MQTTPublish(
            topic: message.topic, payload: message.payload, qos: qos, retain: retain, dup: dup,
            packetId: qos == .atMostOnce ? nil : packetId, properties: properties)
    }
}

/// How MQTT publishes become Kafka records and back. Header names are documented in docs/broker.md.
enum KafkaRecordMapping {
    enum Header {
        static let topic = "mqtt.topic"
        static let clientId = "mqtt.client_id"
        static let qos = "mqtt.qos"
        static let retain = "mqtt.retain"
        static let contentType = "mqtt.content_type"
        static let responseTopic = "mqtt.response_topic"
        static let correlationData = "mqtt.correlation_data"
        static let payloadFormat = "mqtt.payload_format"
        static let messageExpiry = "mqtt.message_expiry"
    }

    /// Header values shared by every record (a literal array per publish would be a heap allocation each).
    private static let qosValues: [[UInt8]] = [[UInt8(ascii: "0")], [UInt8(ascii: "1")], [UInt8(ascii: "2")]]
    private static let flagSet: [UInt8] = [UInt8(ascii: "1")]
    private static let flagClear: [UInt8] = [UInt8(ascii: "0")]

    /// The record for `publish` (topic already resolved from any alias) from `clientId`.
    static func record(
        for publish: MQTTPublish, clientId: String, destination: TopicMapping.Destination
    ) -> KafkaOutgoingMessage {
        let properties = publish.properties
        var headers: [KafkaHeader] = []
        headers.reserveCapacity(10 + properties.userProperties.count)  // one allocation, however many optional headers follow
        let topicBytes = Array(publish.topic.utf8)
        headers.append(KafkaHeader(Header.topic, topicBytes))
        headers.append(KafkaHeader(Header.clientId, Array(clientId.utf8)))
        headers.append(KafkaHeader(Header.qos, qosValues[Int(publish.qos.rawValue)]))
        headers.append(KafkaHeader(Header.retain, publish.retain ? flagSet : flagClear))
        if publish.qos == .exactlyOnce, let packetId = publish.packetId {
            // Lets any node recognise this publish if the client resends it after a node loss (`PublishDeduplicator`).
            headers.append(KafkaHeader(PublishDeduplicator.Header.packetId, Array(String(packetId).utf8)))
        }
        if let contentType = properties.contentType { headers.append(KafkaHeader(Header.contentType, Array(contentType.utf8))) }
        if let responseTopic = properties.responseTopic { headers.append(KafkaHeader(Header.responseTopic, Array(responseTopic.utf8))) }
        if let correlation = properties.correlationData { headers.append(KafkaHeader(Header.correlationData, Array(correlation.readableBytesView))) }
        if properties.payloadFormatIndicator == .utf8 { headers.append(KafkaHeader(Header.payloadFormat, [UInt8(ascii: "1")])) }
        if let expiry = properties.messageExpiryInterval { headers.append(KafkaHeader(Header.messageExpiry, Array(String(expiry).utf8))) }
        for property in properties.userProperties {
            headers.append(KafkaHeader(property.name, Array(property.value.utf8)))
        }
        return KafkaOutgoingMessage(
            // The default key is the MQTT topic: share its bytes with the header (one array, not two).
            topic: destination.kafkaTopic, key: destination.key == publish.topic ? topicBytes : Array(destination.key.utf8),
            value: Array(publish.payload.readableBytesView), headers: headers)
    }

    /// The record that stores (or, with an empty payload, clears) the retained message of `publish`.
    static func retainedRecord(for publish: MQTTPublish, clientId: String, retainedTopic: String) -> KafkaOutgoingMessage {
        var record = record(for: publish, clientId: clientId, destination: .init(kafkaTopic: retainedTopic, key: publish.topic))
        if publish.payload.readableBytes == 0 { record.value = nil }
        return record
    }

    /// The message a consumed record carries. The MQTT topic is the `mqtt.topic` header, else the key
    /// if it is a valid topic name, else the Kafka topic's name. Headers that are not `mqtt.*` become
    /// user properties. Returns nil for tombstones.
    static func message(from record: KafkaRecord, defaultQoS: MQTTQoS) -> BrokerMessage? {
        guard let value = record.value else { return nil }
        var topic: String?
        var qos = defaultQoS
        var retain = false
        var clientId: String?
        var properties = MQTTProperties()
        var userProperties: [MQTTUserProperty] = []
        var expiry: UInt32?
        for header in record.headers {
            switch header.name {
            case Header.topic: topic = String(decoding: header.value, as: UTF8.self)
            case Header.clientId: clientId = String(decoding: header.value, as: UTF8.self)
            case Header.qos:
                if header.value.count == 1, let parsed = MQTTQoS(rawValue: header.value[0] &- UInt8(ascii: "0")) { qos = parsed }
            case Header.retain: retain = header.value.count == 1 && header.value[0] == UInt8(ascii: "1")
            case Header.contentType: properties.contentType = String(decoding: header.value, as: UTF8.self)
            case Header.responseTopic: properties.responseTopic = String(decoding: header.value, as: UTF8.self)
            case Header.correlationData: properties.correlationData = ByteBuffer(bytes: header.value)
            case Header.payloadFormat: properties.payloadFormatIndicator = .utf8
            case Header.messageExpiry: expiry = UInt32(String(decoding: header.value, as: UTF8.self))
            default:
                if !header.name.hasPrefix("mqtt.") {
                    userProperties.append(MQTTUserProperty(name: header.name, value: String(decoding: header.value, as: UTF8.self)))
                }
            }
        }
        if topic == nil || !isValidTopicName(topic!) {
            if let key = record.key, let text = String(validating: key, as: UTF8.self), isValidTopicName(text) {
                topic = text
            } else {
                topic = record.topic
            }
        }
        if !userProperties.isEmpty { properties.userProperties = userProperties }
        var expiresAt: Date?
        if let expiry {
            let published = record.timestampMilliseconds.map { Date(timeIntervalSince1970: Double($0) / 1000) } ?? Date()
            expiresAt = published.addingTimeInterval(Double(expiry))
        }
        return BrokerMessage(
            topic: topic!, payload: ByteBuffer(bytes: value), qos: qos, retain: retain, publisherClientId: clientId,
            properties: properties, expiresAt: expiresAt, source: KafkaTopicPartition(topic: record.topic, partition: record.partition),
            sourceOffset: record.offset)
    }

    static func isValidTopicName(_ text: String) -> Bool {
        (try? MQTTTopicName(text)) != nil
    }
}

extension MQTTProperties {
    /// The properties of a PUBLISH (or will) that reach subscribers unchanged (MQTT 5.0 section 3.3.2.3):
    /// payload format, content type, response topic, correlation data, user properties, and optionally
    /// the message expiry interval.
    func forwardedToSubscribers(keepingExpiry: Bool) -> MQTTProperties {
        var properties = MQTTProperties()
        properties.payloadFormatIndicator = payloadFormatIndicator
        if keepingExpiry { properties.messageExpiryInterval = messageExpiryInterval }
        properties.contentType = contentType
        properties.responseTopic = responseTopic
        properties.correlationData = correlationData
        let users = userProperties
        if !users.isEmpty { properties.userProperties = users }
        return properties
    }
}
