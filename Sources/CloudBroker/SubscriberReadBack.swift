import Common
import Logging
import TributaryKafka

/// Reads messages back from Kafka for one connected session whose queue overflowed ("Kafka is the queue"
/// for a subscriber slower than its publishers; `OutboundState.PartitionDelivery`): a consumer of its own,
/// assigned to the partitions being read back at their next offsets, paused while the session's queue is
/// full. Batches reach `deliver` on the consumer's thread, in offset order per partition, with how far each
/// partition was read (matching or not).
final class SubscriberReadBack: Sendable {
    /// What a connection needs to start one (`BrokerContext.readBack`).
    struct Source: Sendable {
        var configuration: KafkaConfiguration
        var defaultQoS: MQTTQoS
        var logger: Logger
    }

    private let consumer: KafkaConsumer
    private let logger: Logger

    init(source: Source, deliver: @escaping @Sendable (_ messages: [BrokerMessage], _ readUpTo: [KafkaTopicPartition: Int64]) -> Void) throws(KafkaError) {
        let defaultQoS = source.defaultQoS
        logger = source.logger
        consumer = try KafkaConsumer(configuration: source.configuration, logger: source.logger) { records in
            var messages: [BrokerMessage] = []
            var readUpTo: [KafkaTopicPartition: Int64] = [:]
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                readUpTo[partition] = max(readUpTo[partition] ?? 0, record.offset + 1)
                if let message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS) { messages.append(message) }
            }
            deliver(messages, readUpTo)
        }
    }

    /// Reads exactly these partitions from these offsets (replacing what it read before).
    func read(from offsets: [KafkaTopicPartition: Int64]) {
        do {
            try consumer.assign(offsets.map { KafkaPartitionAssignment(topic: $0.key.topic, partition: $0.key.partition, offset: .offset($0.value)) })
        } catch {
            logger.warning("cannot read messages back for a subscriber", metadata: ["kafka.error": "\(error)"])
        }
    }

    func pause() { try? consumer.pause() }
    func resume() { try? consumer.resume() }

    /// Stops the consumer (joins its thread: not on an event loop).
    func close() { consumer.close() }
}
