import Logging
import NIOCore
import Synchronization
import TributaryKafka

/// "Has this node consumed everything Kafka had when I asked?" for one consumer (read-your-writes).
///
/// `wait(on:)` succeeds once the consumer's position (`position`, the next offset it has not processed per
/// partition) has reached the high watermark of every partition (`partitions`) as observed by a probe that
/// started after the call. Concurrent callers share probes: while one probe runs, new callers wait for the
/// next one, which starts as soon as the current one ends (so a storm of reconnecting clients costs one or
/// two Kafka round trips, not one each). High watermarks come from `KafkaAdmin.highWatermarks` (Fetch
/// responses; Tansu answers ListOffsets wrongly).
///
/// A probe that fails, or a consumer that does not catch up within `timeout`, fails its callers: the caller
/// must then not act on the local view (the publish path answers "unspecified error"/closes, the client
/// retries) rather than guess.
final class KafkaCatchUp: Sendable {
    private struct State {
        var admin: KafkaAdmin?
        var probing = false
        var next: [EventLoopPromise<Void>] = []
    }

    let name: String
    let positions: ConsumerPositions
    /// For the delivery consumer: resumes it if paused, and keeps it from pausing during a probe.
    private let demand: DeliveryDemand?
    private let timeout: Duration
    private let logger: Logger
    private let state = Mutex(State())

    init(name: String, positions: ConsumerPositions, demand: DeliveryDemand? = nil, timeout: Duration = .seconds(10), logger: Logger) {
        self.name = name
        self.demand = demand
        self.positions = positions
        self.timeout = timeout
        self.logger = logger
    }

    /// Set by `KafkaLink` once it has an admin client (callers before that wait).
    func setAdmin(_ admin: KafkaAdmin?) {
        let start = state.withLock { state -> Bool in
            state.admin = admin
            return admin != nil && !state.probing && !state.next.isEmpty
        }
        if start { startProbe() }
    }

    func wait(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let start = state.withLock { state -> Bool in
            state.next.append(promise)
            guard !state.probing, state.admin != nil else { return false }
            state.probing = true
            return true
        }
        if start { startProbe(alreadyMarked: true) }
        return promise.futureResult
    }

    private func startProbe(alreadyMarked: Bool = false) {
        let taken = state.withLock { state -> ([EventLoopPromise<Void>], KafkaAdmin?)? in
            if !alreadyMarked {
                guard !state.probing else { return nil }
                state.probing = true
            }
            let waiters = state.next
            state.next = []
            return (waiters, state.admin)
        }
        guard let (waiters, admin) = taken, let admin else {
            state.withLock { $0.probing = false }
            return
        }
        Task {
            let started = ContinuousClock.now
            let result: Result<Void, any Error>
            do {
                if let demand = self.demand {
                    try await demand.whileChecking { try await self.probe(admin: admin) }
                } else {
                    try await self.probe(admin: admin)
                }
                result = .success(())
            } catch {
                logger.warning("cannot catch up with Kafka", metadata: ["tributary.catch_up": "\(name)", "kafka.error": "\(error)"])
                result = .failure(error)
            }
            BrokerMetrics.catchUp.recordNanoseconds(Self.nanoseconds(ContinuousClock.now - started))
            for waiter in waiters { waiter.completeWith(result) }
            let again = state.withLock { state -> Bool in
                state.probing = !state.next.isEmpty
                return state.probing
            }
            if again { startProbe(alreadyMarked: true) }
        }
    }

    private func probe(admin: KafkaAdmin) async throws {
        let deadline = ContinuousClock.now + timeout
        let wanted = positions.partitions
        guard !wanted.isEmpty else { throw BrokerError(.kafkaUnavailable, "\(name): no partitions assigned yet") }
        let ends = try await admin.highWatermarks(for: wanted, timeout: timeout)
        while true {
            let now = positions.next
            if wanted.allSatisfy({ (now[$0] ?? 0) >= (ends[$0] ?? 0) }) { return }
            guard ContinuousClock.now < deadline else {
                throw BrokerError(.kafkaUnavailable, "\(name): consumer did not reach the end of its partitions within \(timeout)")
            }
            try await Task.sleep(for: .milliseconds(2))  // polls the consumer's progress (it runs on librdkafka's thread)
        }
    }

    private static func nanoseconds(_ duration: Duration) -> Int64 {
        Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
    }
}

/// What one consumer has processed: its assigned partitions and, per partition, the next offset it has not
/// processed yet. Written by the consumer's callback, read by `KafkaCatchUp`.
final class ConsumerPositions: Sendable {
    private struct State {
        var partitions: [KafkaTopicPartition] = []
        var next: [KafkaTopicPartition: Int64] = [:]
    }

    private let state = Mutex(State())

    var partitions: [KafkaTopicPartition] { state.withLock { $0.partitions } }
    var next: [KafkaTopicPartition: Int64] { state.withLock { $0.next } }

    func assigned(_ partitions: [KafkaTopicPartition]) {
        state.withLock { $0.partitions = partitions }
    }

    /// The consumer starts `partition` at `offset` (everything before it counts as processed).
    func start(_ partition: KafkaTopicPartition, at offset: Int64) {
        state.withLock { $0.next[partition] = max($0.next[partition] ?? 0, offset) }
    }

    func processed(_ records: [KafkaRecord]) {
        guard !records.isEmpty else { return }
        state.withLock { state in
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                state.next[partition] = max(state.next[partition] ?? 0, record.offset + 1)
            }
        }
    }
}
