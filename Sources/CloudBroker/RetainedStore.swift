import Common
import Foundation
import Synchronization
import TributaryKafka

/// The retained message of every topic, as read from the compacted Kafka topic `mqtt.retained` (key =
/// MQTT topic; an empty value or a tombstone clears it), plus what this node wrote itself (so a client
/// sees its own retained publish on its next SUBSCRIBE without waiting for the consumer).
///
/// A topic always maps to the same partition, so the offset orders the writes of one topic: an update
/// older than what is stored is ignored.
final class RetainedStore: Sendable {
    private struct Entry {
        var message: BrokerMessage
        var offset: Int64
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let defaultQoS: MQTTQoS

    init(defaultQoS: MQTTQoS) {
        self.defaultQoS = defaultQoS
    }

    var count: Int { entries.withLock { $0.count } }

    /// Applies a record consumed from the retained topic.
    func apply(_ record: KafkaRecord) {
        guard let key = record.key, let topic = String(validating: key, as: UTF8.self) else { return }
        let message: BrokerMessage?
        if let value = record.value, !value.isEmpty {
            message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS).map {
                var message = $0
                message.topic = topic
                return message
            }
        } else {
            message = nil
        }
        set(topic: topic, message: message, offset: record.offset)
    }

    /// Stores (or with nil clears) the retained message of `topic` written at `offset`.
    func set(topic: String, message: BrokerMessage?, offset: Int64) {
        entries.withLock { entries in
            if let current = entries[topic], current.offset > offset { return }
            if let message {
                entries[topic] = Entry(message: message, offset: offset)
            } else {
                entries[topic] = nil
            }
        }
    }

    /// The retained messages whose topic matches `filter`, without expired ones.
    func matching(_ filter: MQTTTopicFilter, now: Date = Date()) -> [BrokerMessage] {
        entries.withLock { entries in
            entries.values.compactMap { entry in
                guard filter.matches(entry.message.topic) else { return nil }
                if entry.message.remainingExpiry(now: now) == 0 { return nil }
                return entry.message
            }
        }
    }
}
