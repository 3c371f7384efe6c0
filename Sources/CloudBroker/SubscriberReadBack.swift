import Common
import Foundation
import Logging
import Synchronization
import TributaryKafka

/// Reads messages back from Kafka for one connected session whose queue overflowed ("Kafka is the queue"
/// for a subscriber slower than its publishers; `OutboundState.PartitionDelivery`): a consumer of its own,
/// assigned to the partitions being read back at their next offsets. Batches reach `deliver` on the
/// consumer's thread, in offset order per partition, with how far each partition was read (matching or
/// not). Flow control: the consumer's thread hands over one batch at a time (the connection calls
/// `processed()` when it has queued it) and waits while the session's queue is full (`pause()` until
/// `resume()`); librdkafka keeps prefetching meanwhile (bounded by its prefetch limits), so a resumed
/// read-back goes on at once instead of fetching again as a paused partition would.
final class SubscriberReadBack: Sendable {
    /// What a connection needs to start one (`BrokerContext.readBack`).
    struct Source: Sendable {
        var configuration: KafkaConfiguration
        var defaultQoS: MQTTQoS
        var logger: Logger
        /// The node's read-backs running at once, at most `mqtt.read_back_limit` (G5: one consumer each).
        var slots: Slots
    }

    /// A node-wide count of running read-backs with a ceiling.
    final class Slots: Sendable {
        let limit: Int
        private let taken = Atomic<Int>(0)

        init(limit: Int) { self.limit = limit }

        func acquire() -> Bool {
            var current = taken.load(ordering: .relaxed)
            while current < limit {
                let (exchanged, original) = taken.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
                if exchanged { return true }
                current = original
            }
            return false
        }

        func release() { taken.subtract(1, ordering: .relaxed) }
    }

    /// librdkafka's prefetch of one read-back (`queued.max.messages.kbytes`, `queued.min.messages`): with up
    /// to `mqtt.read_back_limit` (100) of them on a node, the node-wide bound is 100 × 2 MiB instead of 100 ×
    /// the delivery consumer's 16 MiB (G5). The drain is no slower for it (an offline subscriber's
    /// 100,000-message backlog: 48–49.5k messages/s against 45–46k with 16 MiB, BENCHMARKS.md).
    static let prefetchKilobytes = 2_048
    static let prefetchMessages = 2_000

    private let consumer: KafkaConsumer
    private let logger: Logger
    private let gate = Gate()
    private let shared = Shared()

    /// Where each partition's read must continue. librdkafka, reassigned a partition it was already
    /// reading, may still hand over records it had fetched beyond the new offset (seen with many slow
    /// subscribers: record 1,321 after a reassignment at 860). Taken as the continuation, they would skip
    /// what lies between, so every record must continue its partition (offset at most one past the last
    /// record handed over, or the offset read from); a partition whose record lies beyond is sought back
    /// there and the rest of its batch dropped. Only a gap still there after `Self.seeksBeforeGivingUp`
    /// successful seeks back to the same offset is taken for records no longer in Kafka (retention, or a
    /// transaction's markers), and the read goes on from there. Records of a partition not being read (one
    /// that went live, prefetched before the reassignment) are dropped: let through, they would pass for
    /// the continuation of a later read-back of that partition, skipping what lies between.
    ///
    /// Each `read(from:)` starts a new `epoch`; a batch carries the epoch it was checked in, and the
    /// connection takes only batches of the current one (`isCurrent`). A batch checked before a
    /// reassignment but handled after it was checked against starts the session no longer stands at (the
    /// partition went live and overflowed again meanwhile); its records are read again from where the
    /// session stands.
    struct Starts {
        static let seeksBeforeGivingUp = 3
        /// Which `read(from:)` these starts belong to.
        let epoch: UInt64
        /// The offset each partition's next record may not exceed; exactly the partitions being read.
        var expected: [KafkaTopicPartition: Int64] = [:]
        /// Partitions sought back: to which offset, how many times.
        var sought: [KafkaTopicPartition: (offset: Int64, times: Int)] = [:]

        init(from offsets: [KafkaTopicPartition: Int64] = [:], epoch: UInt64 = 0) {
            expected = offsets
            self.epoch = epoch
        }

        /// Splits `records` into those to hand over and the partitions to seek back (with their offsets).
        mutating func check(_ records: [KafkaRecord]) -> (accepted: [KafkaRecord], seekBack: [KafkaTopicPartition: Int64]) {
            var seekBack: [KafkaTopicPartition: Int64] = [:]
            var accepted: [KafkaRecord] = []
            accepted.reserveCapacity(records.count)
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                guard let next = expected[partition] else { continue }  // not being read: stale
                if seekBack[partition] != nil { continue }
                if record.offset > next {
                    let times = sought[partition].map { $0.offset == next ? $0.times : 0 } ?? 0
                    if times < Self.seeksBeforeGivingUp {
                        seekBack[partition] = next
                        sought[partition] = (next, times + 1)
                        continue
                    }
                    sought[partition] = nil  // gone from Kafka: go on from here
                }
                expected[partition] = max(next, record.offset + 1)
                accepted.append(record)
            }
            return (accepted, seekBack)
        }

        /// A seek back failed (it does not count): the next gap seeks again.
        mutating func seekFailed(_ partitions: some Sequence<KafkaTopicPartition>) {
            for partition in partitions {
                if let entry = sought[partition] { sought[partition] = entry.times > 1 ? (entry.offset, entry.times - 1) : nil }
            }
        }
    }

    /// `deliver` gets each batch with its epoch (see `Starts`; hand it to `isCurrent`).
    init(
        source: Source,
        deliver: @escaping @Sendable (_ messages: [BrokerMessage], _ readUpTo: [KafkaTopicPartition: Int64], _ epoch: UInt64) -> Void
    ) throws(KafkaError) {
        let defaultQoS = source.defaultQoS
        let gate = self.gate
        logger = source.logger
        var configuration = source.configuration
        configuration.maxPrefetchKilobytes = min(configuration.maxPrefetchKilobytes, Self.prefetchKilobytes)
        configuration.maxPrefetchMessages = min(configuration.maxPrefetchMessages, Self.prefetchMessages)
        let shared = self.shared
        let logger = source.logger
        consumer = try KafkaConsumer(configuration: configuration, logger: source.logger) { polled in
            guard gate.waitUntilReady() else { return }
            let (records, seekBack, epoch) = shared.starts.withLock { starts in
                let checked = starts.check(polled)
                return (checked.accepted, checked.seekBack, starts.epoch)
            }
            if !seekBack.isEmpty {
                logger.debug("read-back: records beyond a partition's start after a reassignment; seeking back", metadata: ["kafka.offsets": "\(seekBack)"])
                do {
                    try shared.consumer.withLock { $0 }?.seek(seekBack.map { KafkaPartitionAssignment(topic: $0.key.topic, partition: $0.key.partition, offset: .offset($0.value)) })
                } catch {
                    logger.warning("read-back: cannot seek back; trying again at the next record", metadata: ["kafka.error": "\(error)"])
                    shared.starts.withLock { $0.seekFailed(seekBack.keys) }
                }
            }
            guard !records.isEmpty else { return }
            var messages: [BrokerMessage] = []
            var readUpTo: [KafkaTopicPartition: Int64] = [:]
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                readUpTo[partition] = max(readUpTo[partition] ?? 0, record.offset + 1)
                if let message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS) { messages.append(message) }
            }
            gate.posted()
            deliver(messages, readUpTo, epoch)
        }
        shared.consumer.withLock { $0 = consumer }
    }

    /// What the consumer's handler shares with this object: the starts, and the consumer itself (the
    /// handler is created before it).
    private final class Shared: Sendable {
        let starts = Mutex(Starts())
        let consumer = Mutex<KafkaConsumer?>(nil)
    }

    /// Reads exactly these partitions from these offsets (replacing what it read before).
    /// Batches checked before are no longer current.
    func read(from offsets: [KafkaTopicPartition: Int64]) {
        shared.starts.withLock { $0 = Starts(from: offsets, epoch: $0.epoch &+ 1) }
        do {
            try consumer.assign(offsets.map { KafkaPartitionAssignment(topic: $0.key.topic, partition: $0.key.partition, offset: .offset($0.value)) })
        } catch {
            logger.warning("cannot read messages back for a subscriber", metadata: ["kafka.error": "\(error)"])
        }
    }

    /// Whether a batch of `epoch` was checked against the current reading (else the connection drops it).
    func isCurrent(_ epoch: UInt64) -> Bool {
        shared.starts.withLock { $0.epoch == epoch }
    }

    /// The session's queue is full / has room again.
    func pause() { gate.set(open: false) }
    func resume() { gate.set(open: true) }
    /// The connection has taken the batch it was given.
    func processed() { gate.processed() }

    /// Stops the consumer (joins its thread: not on an event loop).
    func close() {
        shared.consumer.withLock { $0 = nil }
        gate.close()
        consumer.close()
    }
}

/// One batch at a time, and none while closed for a full queue (see `SubscriberReadBack`).
private final class Gate: @unchecked Sendable {  // every field under `condition`
    private let condition = NSCondition()
    private var open = true
    private var closed = false
    private var pending = 0

    /// Waits until the previous batch was taken and the queue has room; false once closed.
    func waitUntilReady() -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !closed && (pending > 0 || !open) { condition.wait() }
        return !closed
    }

    func posted() {
        condition.lock()
        pending += 1
        condition.unlock()
    }

    func processed() {
        condition.lock()
        pending = max(0, pending - 1)
        condition.broadcast()
        condition.unlock()
    }

    func set(open: Bool) {
        condition.lock()
        self.open = open
        condition.broadcast()
        condition.unlock()
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}
