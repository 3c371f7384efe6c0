import Common
import Logging
import Synchronization
import TributaryKafka

/// Messages for a session that moved here from a node that stopped delivering to it (lost, or the client
/// left it): "Kafka is the queue" for connected sessions too.
///
/// While a client is connected to node A, the other nodes keep a copy of its session (from the snapshot A
/// wrote while it was connected) but do not route to it. When the client attaches here, the records that
/// match its subscriptions and that A may not have delivered are read again from Kafka and handed to it:
/// from, per partition, the earlier of where A's routing stood two heartbeats before its last one (carried by
/// the heartbeat) and one second before that last heartbeat (`NodeLossWills`, `OffsetTimeline`) up to where this node's routing stood when the client's subscriptions were registered here
/// (later records reach it by routing). `OffsetTimeline` turns that instant into offsets per partition.
///
/// Several moved sessions are replayed by one consumer (a reconnect storm after a node loss is one
/// replay, not one per client). The price of not losing: messages A delivered in that last second or two
/// are delivered again (QoS 1 and QoS 2 alike, as new PUBLISHes). Routing holds the client's live messages
/// back until its replay is over (`SessionRegistry.endReplay`), so they follow the replayed ones.
final class MovedSessionReplay: Sendable {
    struct Request: Sendable {
        var clientId: String
        var subscriptions: [SubscriptionOptions]
        var starts: [KafkaTopicPartition: Int64]
        var ends: [KafkaTopicPartition: Int64]
    }

    /// Where the replay of a session that moved here from node A starts, per partition: the earlier of
    /// `routing` (where A's routing stood two heartbeats before its last, as its heartbeat said) and
    /// `timeline` (this node's estimate for one second before A's last heartbeat). An estimate sampled before
    /// this node's delivery consumer last paused may lie long before that instant: it is used only where A's
    /// heartbeats carried no position for the partition (A died before routing for a heartbeat), in
    /// place of skipping the partition and with it what A owed the client.
    static func starts(
        routing: [KafkaTopicPartition: Int64], timeline: [KafkaTopicPartition: OffsetTimeline.Estimate]
    ) -> [KafkaTopicPartition: Int64] {
        var starts = routing
        for (partition, estimate) in timeline {
            if let offset = routing[partition] {
                if estimate.sinceLastPause { starts[partition] = min(offset, estimate.offset) }
            } else {
                starts[partition] = estimate.offset
            }
        }
        return starts
    }

    /// A replay that has not moved for this long gives up (`ReplayWatch`); one that keeps moving goes on.
    static let stallLimit: Duration = .seconds(10)

    private struct State {
        var pending: [Request] = []
        var running = false
    }

    private let configuration: KafkaConfiguration
    private let registry: SessionRegistry
    private let defaultQoS: MQTTQoS
    private let logger: Logger
    private let state = Mutex(State())

    init(configuration: KafkaConfiguration, registry: SessionRegistry, defaultQoS: MQTTQoS, logger: Logger) {
        self.configuration = configuration
        self.registry = registry
        self.defaultQoS = defaultQoS
        self.logger = logger
    }

    /// Replays `request` soon; routing holds the client's live messages back until then
    /// (`SessionRegistry.endReplay`).
    func enqueue(_ request: Request) {
        logger.debug(
            "replaying messages to a session that moved here",
            metadata: ["mqtt.client_id": "\(request.clientId)", "kafka.replay_from": "\(request.starts)", "kafka.replay_to": "\(request.ends)"])
        guard request.starts.contains(where: { $0.value < request.ends[$0.key] ?? 0 }) else {
            registry.endReplay(clientId: request.clientId)
            return
        }
        let start = state.withLock { state -> Bool in
            state.pending.append(request)
            guard !state.running else { return false }
            state.running = true
            return true
        }
        if start { Task { await self.drain() } }
    }

    private func drain() async {
        while true {
            let batch = state.withLock { state -> [Request] in
                let batch = state.pending
                state.pending = []
                if batch.isEmpty { state.running = false }
                return batch
            }
            guard !batch.isEmpty else { return }
            do {
                try await replay(batch)
            } catch {
                logger.warning("cannot replay messages to moved sessions", metadata: ["mqtt.sessions": "\(batch.count)", "kafka.error": "\(error)"])
            }
            for request in batch { registry.endReplay(clientId: request.clientId) }
        }
    }

    private func replay(_ batch: [Request]) async throws {
        var starts: [KafkaTopicPartition: Int64] = [:]
        var ends: [KafkaTopicPartition: Int64] = [:]
        for request in batch {
            for (partition, start) in request.starts where start < request.ends[partition] ?? 0 {
                starts[partition] = min(starts[partition] ?? start, start)
                ends[partition] = max(ends[partition] ?? 0, request.ends[partition] ?? 0)
            }
        }
        guard !starts.isEmpty else { return }
        let registry = self.registry
        let defaultQoS = self.defaultQoS
        let progress = Mutex<[KafkaTopicPartition: Int64]>([:])
        let replayed = Atomic<Int>(0)
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger) { records in
            var next: [KafkaTopicPartition: Int64] = [:]
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                next[partition] = max(next[partition] ?? 0, record.offset + 1)
                guard let message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS) else { continue }
                for request in batch {
                    guard let start = request.starts[partition], record.offset >= start, record.offset < request.ends[partition] ?? 0,
                        let outbound = SessionRegistry.outbound(for: message, clientId: request.clientId, subscriptions: request.subscriptions)
                    else { continue }
                    registry.redeliver(clientId: request.clientId, outbound)
                    replayed.add(1, ordering: .relaxed)
                }
            }
            progress.withLock { progress in for (partition, offset) in next { progress[partition] = max(progress[partition] ?? 0, offset) } }
        }
        defer { consumer.close() }
        try consumer.assign(starts.map { KafkaPartitionAssignment(topic: $0.key.topic, partition: $0.key.partition, offset: .offset($0.value)) })
        var watch = ReplayWatch(ends: ends, stallLimit: Self.stallLimit, now: .now)
        var verdict = ReplayWatch.Verdict.progressing
        while verdict == .progressing {
            try await Task.sleep(for: .milliseconds(5))  // polls the consumer's progress
            verdict = watch.observe(progress.withLock { $0 }, now: .now)
        }
        if verdict == .stalled {
            // The held live messages go out now: what lies between the replay's progress and its end is missing.
            logger.warning(
                "gave up replaying messages to sessions that moved here: no progress for 10 s before the end",
                metadata: ["mqtt.sessions": "\(batch.count)", "kafka.replay_to": "\(ends)", "kafka.replay_reached": "\(progress.withLock { $0 })"])
        }
        let count = replayed.load(ordering: .relaxed)
        BrokerMetrics.movedSessionMessagesReplayed.increment(by: count)
        logger.info("replayed messages to sessions that moved here", metadata: ["mqtt.sessions": "\(batch.count)", "mqtt.messages": "\(count)"])
    }
}

/// When a replay is over: once every partition reached its end, or once it has not moved for `stallLimit`
/// (the end cannot be reached: e.g. the log was truncated). A long replay that keeps moving is never cut
/// short: a reconnect storm's replay of a large backlog may take longer than any fixed limit.
struct ReplayWatch {
    enum Verdict: Equatable { case progressing, reached, stalled }

    let ends: [KafkaTopicPartition: Int64]
    let stallLimit: Duration
    private var last: [KafkaTopicPartition: Int64] = [:]
    private var movedAt: ContinuousClock.Instant

    init(ends: [KafkaTopicPartition: Int64], stallLimit: Duration, now: ContinuousClock.Instant) {
        self.ends = ends
        self.stallLimit = stallLimit
        self.movedAt = now
    }

    /// `progress`: per partition, the next offset the replay's consumer will read.
    mutating func observe(_ progress: [KafkaTopicPartition: Int64], now: ContinuousClock.Instant) -> Verdict {
        if ends.allSatisfy({ progress[$0.key] ?? 0 >= $0.value }) { return .reached }
        if progress != last {
            last = progress
            movedAt = now
            return .progressing
        }
        return now - movedAt >= stallLimit ? .stalled : .progressing
    }
}

/// Per messages partition, samples of (record timestamp, offset) taken as the node consumes, at most one
/// per partition every 100 ms, the last 6,000 of them: which offset a partition had reached at an instant.
///
/// While the delivery consumer is paused it reads nothing, and on resuming it jumps to the partitions' ends:
/// the samples of before the pause say nothing precise about the instants of the pause. So a pause adds
/// one sample per partition, (the pause's instant, the next offset the consumer had not read), which bounds
/// every later instant from below, and counts as *stale*, like every sample taken before it: a replay uses
/// a stale estimate only where the lost node's own routing positions say nothing (`MovedSessionReplay.starts`).
final class OffsetTimeline: Sendable {
    /// An offset at or before the first record of an instant, and whether it was sampled since the last pause.
    struct Estimate: Sendable, Equatable {
        var offset: Int64
        var sinceLastPause: Bool
    }

    private struct Sample {
        var milliseconds: Int64
        var offset: Int64
        /// The number of pauses before it was taken.
        var pauses: Int
    }

    private struct State {
        var samples: [KafkaTopicPartition: [Sample]] = [:]
        var pauses = 0
    }

    private let state = Mutex(State())
    private let spacingMilliseconds: Int64 = 100
    private let keptSamples = 6_000

    func observe(_ records: [KafkaRecord]) {
        guard !records.isEmpty else { return }
        state.withLock { state in
            for record in records {
                guard let milliseconds = record.timestampMilliseconds else { continue }
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                // (Also skips what a resumed consumer reads back from before the pause's sample.)
                if let last = state.samples[partition]?.last, milliseconds - last.milliseconds < spacingMilliseconds { continue }
                Self.append(Sample(milliseconds: milliseconds, offset: record.offset, pauses: state.pauses), to: partition, in: &state, keeping: keptSamples)
            }
        }
    }

    /// The delivery consumer paused at `milliseconds`, `next` being per partition the next offset it had not
    /// read: every record it read has an earlier offset, so no record of a later instant has an earlier one.
    func paused(atMilliseconds milliseconds: Int64, next: [KafkaTopicPartition: Int64]) {
        state.withLock { state in
            for (partition, offset) in next {
                Self.append(Sample(milliseconds: milliseconds, offset: offset, pauses: state.pauses), to: partition, in: &state, keeping: keptSamples)
            }
            state.pauses += 1
        }
    }

    /// Per partition, an offset at or before the first record with a timestamp at or after
    /// `milliseconds` (the earliest sample when the timeline does not reach back that far).
    func offsets(atOrBefore milliseconds: Int64) -> [KafkaTopicPartition: Estimate] {
        state.withLock { state in
            let pauses = state.pauses
            return state.samples.compactMapValues { list in
                guard let sample = list.last(where: { $0.milliseconds <= milliseconds }) ?? list.first else { return nil }
                return Estimate(offset: sample.offset, sinceLastPause: sample.pauses == pauses)
            }
        }
    }

    private static func append(_ sample: Sample, to partition: KafkaTopicPartition, in state: inout State, keeping kept: Int) {
        state.samples[partition, default: []].append(sample)
        if state.samples[partition]!.count > kept { state.samples[partition]!.removeFirst(state.samples[partition]!.count - kept) }
    }
}
