import Common
import Foundation
import Logging
import Metrics
import NIOCore
import Synchronization
import TributaryKafka

/// Offline sessions kept in the compacted Kafka topic `mqtt.sessions` (key = client id, value = a
/// `SessionSnapshot`, tombstone when the session ends or expires), with a local table in front.
///
/// - Writes: a snapshot when a persistent session is attached, changes its subscriptions (`persist`) or
///   goes offline (`put`), a tombstone when a persisted session ends
///   (`remove`, expiry, `take` of an expired one). Each write carries the node id and the client's next
///   epoch (headers `tributary.node`, `tributary.epoch`), so a reader keeps the newest.
/// - Reads: at start-up `KafkaLink` feeds every record from the beginning to the Fetch-reported high
///   watermark through `apply`, then calls `finishLoading`; until then `whenLoaded` holds CONNECTs back.
///   Afterwards records written by other nodes are applied; this node's own are skipped (it already knows).
/// - Queued offline messages stay in the local table only (they are lost with the node).
///
/// Lookups (`take`, `enqueue`) are local: CONNACK never waits for Kafka once loading is done.
final class KafkaSessionStore: SessionStore {
    static let nodeHeader = "tributary.node"
    static let epochHeader = "tributary.epoch"

    private struct Meta {
        /// Latest epoch written or read per client id (kept after the session ends).
        var epochs: [String: UInt64] = [:]
        /// Client ids whose latest record in the topic is a snapshot (a tombstone is due when they end).
        var persisted: Set<String> = []
        /// Client ids whose latest record is a snapshot another node wrote while the client was connected
        /// there: this node only keeps a copy (for a takeover) and never ends it with a tombstone.
        var connectedElsewhere: Set<String> = []
        var loaded = false
        var waiters: [EventLoopPromise<Void>] = []
        /// Per partition, the next offset to apply (loading progress).
        var nextOffsets: [Int32: Int64] = [:]
        /// Sessions read while loading: registered with the router and caught up afterwards.
        var restored: [String: RestoredSession] = [:]
    }

    /// A session read at start-up: its subscriptions and where its delivery stood when it went offline.
    struct RestoredSession: Sendable, Equatable {
        var subscriptions: [SubscriptionOptions]
        var offsets: [KafkaTopicPartition: Int64]
    }

    let topic: String
    /// Read-your-writes: catches the sessions consumer up with the end of the topic.
    let catchUp: KafkaCatchUp
    private let nodeId: String
    private let local = InMemorySessionStore()
    private let meta = Mutex(Meta())
    /// The node's delivery position per messages-topic partition (set by `KafkaLink`).
    private let positions = Mutex<(@Sendable () -> [KafkaTopicPartition: Int64])?>(nil)
    private let logger: Logger
    /// Hands a record to the producer (asynchronous; must keep the order of calls per key).
    private let write: @Sendable (KafkaOutgoingMessage) -> Void

    init(topic: String, nodeId: String, logger: Logger, write: @escaping @Sendable (KafkaOutgoingMessage) -> Void) {
        self.topic = topic
        self.nodeId = nodeId
        self.logger = logger
        self.write = write
        self.catchUp = KafkaCatchUp(name: "sessions", positions: ConsumerPositions(), logger: logger)
    }

    /// Writes through `producer`, counting (in `written` / `failed`) and logging failures.
    static func producerWriter(
        _ producer: KafkaProducer, logger: Logger, what: String = "session record",
        written: Counter = BrokerMetrics.sessionRecordsWritten, failed: Counter = BrokerMetrics.sessionRecordsWriteFailed
    ) -> @Sendable (KafkaOutgoingMessage) -> Void {
        { message in
            let clientId = String(decoding: message.key ?? [], as: UTF8.self)
            do {
                try producer.send(message) { result in
                    switch result {
                    case .success:
                        written.increment()
                    case .failure(let error):
                        failed.increment()
                        logger.error("cannot write \(what)", metadata: ["mqtt.client_id": "\(clientId)", "kafka.topic": "\(message.topic)", "kafka.error": "\(error)"])
                    }
                }
            } catch {
                failed.increment()
                logger.error("cannot write \(what)", metadata: ["mqtt.client_id": "\(clientId)", "kafka.topic": "\(message.topic)", "kafka.error": "\(error)"])
            }
        }
    }

    /// Where the node's delivery stands, stored with a session going offline.
    func setDeliveryPositions(_ provider: @escaping @Sendable () -> [KafkaTopicPartition: Int64]) {
        positions.withLock { $0 = provider }
    }

    // MARK: SessionStore

    func whenLoaded(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        meta.withLock { meta in
            if meta.loaded { return eventLoop.makeSucceededVoidFuture() }
            let promise = eventLoop.makePromise(of: Void.self)
            meta.waiters.append(promise)
            return promise.futureResult
        }
    }

    /// A session known locally is answered at once (CONNACK never waits for Kafka then); otherwise another
    /// node may have written it a moment ago: wait until the sessions consumer has read what the topic
    /// holds now. If Kafka cannot answer, the local view is used (logged by `KafkaCatchUp`).
    func whenCurrent(clientId: String, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        if local.contains(clientId: clientId) { return eventLoop.makeSucceededVoidFuture() }
        return catchUp.wait(on: eventLoop).flatMapErrorThrowing { _ in }
    }

    func take(clientId: String, now: ContinuousClock.Instant) -> SessionState? {
        if let session = local.take(clientId: clientId, now: now) { return session }
        // Not here (or expired): if the topic still holds a snapshot, the session has ended.
        writeTombstoneIfPersisted(clientId: clientId)
        return nil
    }

    func put(_ session: SessionState, now: ContinuousClock.Instant) {
        local.put(session, now: now)
        // Where delivery stands, moved back to the oldest message the client has not got yet.
        var offsets = positions.withLock { $0 }?() ?? [:]
        for (partition, offset) in session.outbound.replayFrom() { offsets[partition] = min(offsets[partition] ?? offset, offset) }
        writeSnapshot(session, offsets: offsets, connected: false)
    }

    /// Writes the snapshot of a connected session (no delivery position: it receives directly).
    func persist(_ session: SessionState) {
        writeSnapshot(session, offsets: [:], connected: true)
    }

    private func writeSnapshot(_ session: SessionState, offsets: [KafkaTopicPartition: Int64], connected: Bool) {
        let storedAt = Int64(Date().timeIntervalSince1970 * 1000)
        meta.withLock { meta in
            let epoch = Self.nextEpoch(after: meta.epochs[session.clientId, default: 0])
            meta.epochs[session.clientId] = epoch
            meta.persisted.insert(session.clientId)
            meta.connectedElsewhere.remove(session.clientId)
            let snapshot = SessionSnapshot(
                session: session, owner: nodeId, epoch: epoch, storedAtMilliseconds: storedAt, offsets: offsets, connected: connected)
            // Under the lock: the producer queue gets one client's records in epoch order.
            write(record(clientId: session.clientId, value: snapshot.encoded(), epoch: epoch))
        }
    }

    @discardableResult
    func remove(clientId: String) -> Bool {
        let removed = local.remove(clientId: clientId)
        writeTombstoneIfPersisted(clientId: clientId)
        return removed
    }

    func enqueue(clientId: String, message: OutboundMessage, limit: Int, readBack: Bool) -> SessionEnqueueResult {
        local.enqueue(clientId: clientId, message: message, limit: limit, readBack: readBack)
    }

    func removeExpired(now: ContinuousClock.Instant) -> [SessionState] {
        let expired = local.removeExpired(now: now)
        for session in expired {
            let elsewhere = meta.withLock { $0.connectedElsewhere.remove(session.clientId) != nil }
            if !elsewhere { writeTombstoneIfPersisted(clientId: session.clientId) }
        }
        return expired
    }

    func statistics() -> (sessions: Int, queuedMessages: Int) {
        local.statistics()
    }

    // MARK: Reading the topic

    /// Applies one record of the sessions topic: the newest epoch per client id wins, a tombstone ends
    /// the session, an unreadable record is logged and skipped.
    func apply(_ record: KafkaRecord) {
        let loaded = meta.withLock { meta in
            meta.nextOffsets[record.partition] = max(meta.nextOffsets[record.partition] ?? 0, record.offset + 1)
            return meta.loaded
        }
        guard let key = record.key, let clientId = String(validating: key, as: UTF8.self) else {
            BrokerMetrics.sessionRecordsRejected.increment()
            logger.warning("skipping session record without a client id", metadata: ["kafka.topic": "\(record.topic)", "kafka.offset": "\(record.offset)"])
            return
        }
        let writer = record.headers.first { $0.name == Self.nodeHeader }.map { String(decoding: $0.value, as: UTF8.self) }
        if loaded && writer == nodeId { return }
        guard let value = record.value, !value.isEmpty else {
            let epoch = record.headers.first { $0.name == Self.epochHeader }.flatMap { UInt64(String(decoding: $0.value, as: UTF8.self)) } ?? 0
            meta.withLock { meta in
                if epoch > 0 && epoch < meta.epochs[clientId, default: 0] { return }
                meta.epochs[clientId] = max(epoch, meta.epochs[clientId, default: 0])
                meta.persisted.remove(clientId)
                meta.connectedElsewhere.remove(clientId)
                meta.restored[clientId] = nil
                local.remove(clientId: clientId)
            }
            return
        }
        let snapshot: SessionSnapshot
        do {
            snapshot = try SessionSnapshot.decode(value)
        } catch {
            BrokerMetrics.sessionRecordsRejected.increment()
            logger.warning(
                "skipping unreadable session record",
                metadata: ["mqtt.client_id": "\(clientId)", "kafka.topic": "\(record.topic)", "kafka.offset": "\(record.offset)", "kafka.error": "\(error)"])
            return
        }
        let nowWall = Int64(Date().timeIntervalSince1970 * 1000)
        var session = snapshot.session
        meta.withLock { meta in
            // Read at start-up, the replay happens before CONNECTs (`KafkaLink.catchUp`); read later, it
            // happens when the client attaches here.
            if meta.loaded && !snapshot.connected && !snapshot.offsets.isEmpty { session.undeliveredFrom = snapshot.offsets }
            guard snapshot.epoch >= meta.epochs[clientId, default: 0] else { return }
            meta.epochs[clientId] = snapshot.epoch
            meta.persisted.insert(clientId)
            if snapshot.connected && snapshot.owner != nodeId {
                meta.connectedElsewhere.insert(clientId)
            } else {
                meta.connectedElsewhere.remove(clientId)
            }
            if !meta.loaded {
                meta.restored[clientId] = RestoredSession(subscriptions: Array(session.subscriptions.values), offsets: snapshot.offsets)
            }
            // The expiry counts from when the session went offline (bounded, so the instant stays sane); for a
            // snapshot of a connected client, from now (its connection may be long; if its node is lost,
            // the session must outlive the loss).
            let (difference, overflow) = nowWall.subtractingReportingOverflow(snapshot.storedAtMilliseconds)
            let offlineMilliseconds = snapshot.connected ? 0 : max(0, overflow ? Int64.max : difference)
            let elapsedMilliseconds = min(offlineMilliseconds, Int64(snapshot.expiryInterval) * 1000 + 1000)
            local.put(session, now: .now - .milliseconds(elapsedMilliseconds))
        }
    }

    /// The next offset to apply per partition (what was read so far).
    func nextOffsets() -> [Int32: Int64] {
        meta.withLock { $0.nextOffsets }
    }

    /// The sessions read so far while loading, by client id.
    func restoredSessions() -> [String: RestoredSession] {
        meta.withLock { $0.restored }
    }

    /// Loading is done: CONNECTs proceed.
    func finishLoading() {
        let waiters = meta.withLock { meta in
            meta.loaded = true
            defer {
                meta.waiters = []
                meta.restored = [:]
            }
            return meta.waiters
        }
        for waiter in waiters { waiter.succeed() }
    }

    private func writeTombstoneIfPersisted(clientId: String) {
        meta.withLock { meta in
            guard meta.persisted.remove(clientId) != nil else { return }
            let epoch = Self.nextEpoch(after: meta.epochs[clientId, default: 0])
            meta.epochs[clientId] = epoch
            write(record(clientId: clientId, value: nil, epoch: epoch))
        }
    }

    func claim(clientId: String) {
        meta.withLock { meta in
            meta.epochs[clientId] = Self.nextGeneration(after: meta.epochs[clientId, default: 0])
        }
    }

    /// The first epoch of the generation after `epoch`'s: epochs are `generation << 32 | write number`; a
    /// node claiming a client starts a new generation, above every write of the previous owner.
    static func nextGeneration(after epoch: UInt64) -> UInt64 {
        let generation = epoch >> 32
        return generation >= UInt64(UInt32.max) ? .max - 1 : (generation + 1) << 32
    }

    /// The epoch after `epoch` (saturating: an epoch read from Kafka may be anything).
    static func nextEpoch(after epoch: UInt64) -> UInt64 {
        epoch == .max ? .max : epoch + 1
    }

    private func record(clientId: String, value: [UInt8]?, epoch: UInt64) -> KafkaOutgoingMessage {
        KafkaOutgoingMessage(
            topic: topic, key: Array(clientId.utf8), value: value,
            headers: [KafkaHeader(Self.nodeHeader, Array(nodeId.utf8)), KafkaHeader(Self.epochHeader, Array("\(epoch)".utf8))])
    }
}
