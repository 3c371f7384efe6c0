import Common
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization
import TributaryKafka

/// The node's side of Kafka other than producing: creates the topics, consumes the messages topics (all
/// partitions, manual assignment, from the end at start-up) into the `SessionRegistry` and the retained
/// topic (from the beginning) into the `RetainedStore`, and watches Metadata once a second for `/ready`.
///
/// When Metadata shows a topic missing (a Kafka that lost its data) the topics are created again, and
/// when a partition count changes the consumers are assigned again (new partitions from offset 0).
final class KafkaLink: Service, Sendable {
    struct Settings: Sendable {
        var kafka: KafkaConfiguration
        var messagesTopics: [String]
        var retainedTopic: String
        /// The compacted sessions topic, when sessions are kept in Kafka.
        var sessionsTopic: String? = nil
        /// The topic of connection announcements (takeover across nodes), tailed from its end.
        var connectionsTopic: String? = nil
        var topics: [KafkaTopicSpecification]
        var defaultQoS: MQTTQoS
        var checkInterval: Duration = .seconds(1)
        /// Records per messages partition read back at start-up into the deduplication index only (not
        /// delivered), so a client resending to a restarted node is still recognised.
        var dedupeLookback: Int64 = 5000
        /// How often this node writes its heartbeat to the connections topic (and judges node losses).
        var heartbeatInterval: Duration = .seconds(1)
    }

    private struct State {
        var ready = false
        var reason = "Kafka metadata not fetched yet"
        var partitions: [String: Int32] = [:]
        /// Every assigned partition has answered a fetch (its start position is fixed).
        var positioned = false
        /// Per partition: records older than the node's start are skipped until a newer one was seen
        /// (Tansu resolves "end" to the start of its last batch).
        var live: Set<KafkaTopicPartition> = []
        /// Per messages-topic partition, the next offset the delivery consumer has not routed yet (stored
        /// with a session going offline, so a restarted node can replay from there).
        var routed: [KafkaTopicPartition: Int64] = [:]
        /// The high watermarks up to which restored sessions were caught up: the delivery consumer
        /// starts there, so nothing falls between the two.
        var startOffsets: [KafkaTopicPartition: Int64]?
        /// Per messages partition, the first offset delivered to subscribers; records before it were read
        /// back for the deduplication index only.
        var deliverFrom: [KafkaTopicPartition: Int64] = [:]
    }

    private let settings: Settings
    private let registry: SessionRegistry
    private let retained: RetainedStore
    private let sessions: KafkaSessionStore?
    private let deduplicator: PublishDeduplicator?
    /// When the delivery consumer may pause (nothing here subscribes) and what resumes it.
    let deliveryDemand: DeliveryDemand
    /// Read-your-writes for the messages consumer (used before a resent publish is checked).
    let messagesCatchUp: KafkaCatchUp
    /// Read-your-writes for the sessions consumer (used before a CONNECT finds no session locally).
    let sessionsCatchUp: KafkaCatchUp?
    /// Wills of clients of lost nodes, and what publishing them needs.
    private let wills: NodeLossWills?
    private let publisher: Publisher?
    private let announce: (@Sendable (KafkaOutgoingMessage) -> Void)?
    /// Which offset each messages partition had reached when (for `MovedSessionReplay`).
    private let timeline = OffsetTimeline()
    private let logger: Logger
    private let state = Mutex(State())
    private let startedAtMilliseconds = Int64(Date().timeIntervalSince1970 * 1000)

    init(
        settings: Settings, registry: SessionRegistry, retained: RetainedStore, sessions: KafkaSessionStore? = nil,
        deduplicator: PublishDeduplicator? = nil, messagesCatchUp: KafkaCatchUp, deliveryDemand: DeliveryDemand, wills: NodeLossWills? = nil, publisher: Publisher? = nil,
        announce: (@Sendable (KafkaOutgoingMessage) -> Void)? = nil, logger: Logger
    ) {
        self.wills = wills
        self.publisher = publisher
        self.announce = announce
        self.settings = settings
        self.registry = registry
        self.retained = retained
        self.sessions = sessions
        self.deduplicator = deduplicator
        self.messagesCatchUp = messagesCatchUp
        self.deliveryDemand = deliveryDemand
        self.sessionsCatchUp = sessions?.catchUp
        self.logger = logger
    }

    /// nil when Kafka metadata was reachable at the last check and the consumers have their start
    /// positions, else why not.
    func readiness() -> String? {
        state.withLock { state in
            guard state.ready else { return state.reason }
            return state.positioned ? nil : "Kafka consumers are not positioned yet"
        }
    }

    /// Creates missing topics; throws `BrokerError(.kafkaTopics)` if the cluster refuses one, retries
    /// while Kafka is unreachable.
    static func ensureTopics(admin: KafkaAdmin, topics: [KafkaTopicSpecification], logger: Logger) async throws {
        while true {
            do {
                let created = try await admin.ensureTopics(topics, timeout: .seconds(10))
                for name in created { logger.info("created Kafka topic", metadata: ["kafka.topic": "\(name)"]) }
                return
            } catch {
                if !error.isRetriable && error.code != KafkaError.Code.transport && error.code != KafkaError.Code.allBrokersDown {
                    throw BrokerError(.kafkaTopics, "cannot create the Kafka topics: \(error.message)")
                }
                logger.warning("Kafka not reachable for topic creation; retrying", metadata: ["kafka.error": "\(error)"])
                try await Task.sleep(for: .seconds(1))  // retry back-off
            }
        }
    }

    func run() async throws {
        var consumerConfiguration = settings.kafka
        consumerConfiguration.properties["auto.offset.reset"] = "earliest"
        consumerConfiguration.properties["topic.metadata.refresh.interval.ms"] = consumerConfiguration.properties["topic.metadata.refresh.interval.ms"] ?? "5000"
        let admin = try KafkaAdmin(configuration: settings.kafka, logger: logger)
        messagesCatchUp.setAdmin(admin)
        sessionsCatchUp?.setAdmin(admin)
        defer {
            messagesCatchUp.setAdmin(nil)
            sessionsCatchUp?.setAdmin(nil)
            admin.close()
        }
        try await Self.ensureTopics(admin: admin, topics: settings.topics, logger: logger)
        let defaultQoS = settings.defaultQoS
        let registry = self.registry
        let retained = self.retained
        let deduplicator = self.deduplicator
        let messagesPositions = messagesCatchUp.positions
        let messages = try KafkaConsumer(configuration: consumerConfiguration, logger: logger) { [self] records in
            BrokerMetrics.kafkaRecordsConsumed.increment(by: records.count)
            for record in records {
                deduplicator?.observe(record)
                guard isDelivered(record), registry.hasSubscriptions else { continue }
                if let message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS) {
                    registry.route(message)
                }
            }
            messagesPositions.processed(records)
            timeline.observe(records)
            var next: [KafkaTopicPartition: Int64] = [:]
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                next[partition] = max(next[partition] ?? 0, record.offset + 1)
            }
            state.withLock { state in for (partition, offset) in next { state.routed[partition] = max(state.routed[partition] ?? 0, offset) } }
        }
        let retainedConsumer = try KafkaConsumer(configuration: consumerConfiguration, logger: logger) { records in
            for record in records { retained.apply(record) }
            BrokerMetrics.retainedMessages.record(retained.count)
        }
        let sessionsConsumer = try sessions.map { sessions in
            try KafkaConsumer(configuration: consumerConfiguration, logger: logger) { records in
                for record in records { sessions.apply(record) }
                sessions.catchUp.positions.processed(records)
            }
        }
        let wills = self.wills
        let replay = MovedSessionReplay(configuration: consumerConfiguration, registry: registry, defaultQoS: defaultQoS, logger: logger)
        registry.setSessionMovedHandler { [self] clientId, subscriptions, start in
            let starts: [KafkaTopicPartition: Int64]
            switch start {
            case .lastSeen(let node):
                // From one second before the last sign of life of the node the client left: that node was
                // delivering until then; the second covers what it had sent and not yet seen acknowledged.
                // Records that node had not routed two heartbeats before its last, and those of the last
                // second by time (offsets from the timeline), whichever is earlier per partition: a record it
                // consumed late (load) is never skipped, one it sent and saw no acknowledgement for is covered.
                // Where that node's heartbeats carried no position, this node's estimate alone, even one from
                // before its own consumer paused (`MovedSessionReplay.starts`).
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let lastSeen = min(now, wills?.lastHeartbeat(node: node) ?? now)
                starts = MovedSessionReplay.starts(
                    routing: wills?.routingPositions(node: node) ?? [:], timeline: timeline.offsets(atOrBefore: lastSeen - 1000))
            case .offsets(let offsets):
                starts = offsets
            }
            guard deliveryDemand.phase != .delivering else {
                let ends = state.withLock { $0.routed }
                replay.enqueue(.init(clientId: clientId, subscriptions: subscriptions, starts: starts, ends: ends))
                return
            }
            // The delivery consumer is paused: the replay ends where it resumes (its `routed` then).
            Task {
                await self.deliveryDemand.delivering(reason: "session moved here")
                let ends = self.state.withLock { $0.routed }
                replay.enqueue(.init(clientId: clientId, subscriptions: subscriptions, starts: starts, ends: ends))
            }
        }
        defer { registry.setSessionMovedHandler(nil) }
        let connectionsPositions = ConsumerPositions()
        let connectionsConsumer = try settings.connectionsTopic.map { _ in
            try KafkaConsumer(configuration: consumerConfiguration, logger: logger) { records in
                for record in records {
                    guard let (clientId, announcement) = ConnectionAnnouncement.decode(record) else { continue }
                    wills?.apply(clientId: clientId, announcement)
                    registry.announced(clientId: clientId, announcement)
                }
                connectionsPositions.processed(records)
            }
        }
        deliveryDemand.setResume { [self] reason in await self.resumeDelivery(messages: messages, admin: admin, reason: reason) }
        defer {
            deliveryDemand.setResume(nil)
            deliveryDemand.close()
            messages.close()
            retainedConsumer.close()
            sessionsConsumer?.close()
            connectionsConsumer?.close()
        }
        if let topic = settings.connectionsTopic, let connectionsConsumer {
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.followConnections(topic: topic, consumer: connectionsConsumer, positions: connectionsPositions, admin: admin)
                }
            } catch is CancellationError {
                return  // shut down while starting
            }
        }
        if let sessions, let sessionsConsumer {
            sessions.setDeliveryPositions { [self] in state.withLock { $0.routed } }
            let configuration = consumerConfiguration
            do {
                try await cancelWhenGracefulShutdown {
                    try await self.loadSessions(sessions, consumer: sessionsConsumer, admin: admin, configuration: configuration)
                }
            } catch is CancellationError {
                return  // shut down while loading
            }
        }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                if let topic = self.settings.connectionsTopic, self.wills != nil {
                    group.addTask { await self.watchNodes(connectionsTopic: topic) }
                }
                group.addTask { await self.checkLoop(admin: admin, messages: messages, retainedConsumer: retainedConsumer) }
            }
        }
    }

    /// Writes this node's heartbeat to the connections topic every `heartbeatInterval` and publishes the
    /// wills of clients of nodes found lost (`NodeLossWills`), until cancelled.
    private func watchNodes(connectionsTopic: String) async {
        guard let wills, let announce else { return }
        // Routing positions of the last heartbeats; each heartbeat carries the one from two beats before.
        var recentPositions: [[KafkaTopicPartition: Int64]] = []
        while !Task.isCancelled {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            recentPositions.append(state.withLock { $0.routed })
            if recentPositions.count > 3 { recentPositions.removeFirst() }
            var heartbeat = ConnectionAnnouncement(node: wills.nodeId, connection: 0, atMilliseconds: now, kind: .heartbeat, incarnation: wills.incarnation)
            heartbeat.positions = Self.heartbeatPositions(recentPositions).map { .init(topic: $0.key.topic, partition: $0.key.partition, offset: $0.value) }
            announce(heartbeat.record(topic: connectionsTopic, clientId: ConnectionAnnouncement.heartbeatKey(node: wills.nodeId)))
            let (due, newlyLost) = wills.evaluate(nowMilliseconds: now)
            for lost in newlyLost {
                logger.warning(
                    "node lost: no heartbeat within the lease", metadata: ["tributary.node": "\(lost.node)", "tributary.responsible_node": "\(lost.responsible)"])
            }
            for will in due { publishLostWill(will, connectionsTopic: connectionsTopic) }
            try? await Task.sleep(for: settings.heartbeatInterval)  // heartbeat period
        }
    }

    /// The routing positions a heartbeat carries, from those of the last heartbeats (oldest first): per
    /// partition the oldest (positions only grow). A partition this node began routing less than two beats
    /// ago is reported from where it began (it routed nothing before), not left out until two beats later:
    /// a node lost within its first seconds left nothing else to start a moved session's replay from.
    static func heartbeatPositions(_ recent: [[KafkaTopicPartition: Int64]]) -> [KafkaTopicPartition: Int64] {
        recent.reduce(into: [:]) { carried, positions in carried.merge(positions, uniquingKeysWith: min) }
    }

    /// Publishes the will of a connection whose node was lost, unless a record of it is already in Kafka
    /// (published by its node, or by a responsible node that died before announcing it), then announces
    /// the connection ended so that no node keeps it.
    private func publishLostWill(_ due: NodeLossWills.Due, connectionsTopic: String) {
        guard let publisher, let announce, let will = NodeLossWills.decode(due.connection.will) else { return }
        let willId = due.connection.willId(clientId: due.clientId)
        let loop = NIOSingletons.posixEventLoopGroup.next()
        let ended = ConnectionAnnouncement(
            node: due.connection.node, connection: due.connection.connection, atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000),
            kind: .ended, incarnation: due.connection.incarnation
        ).record(topic: connectionsTopic, clientId: due.clientId)
        let logger = self.logger
        let deduplicator = self.deduplicator
        let wills = self.wills
        messagesCatchUp.wait(on: loop).whenComplete { result in
            if case .failure = result {
                wills?.publishFailed(due)
                // Judged again at the next heartbeat (the connection stays known until `ended`).
                logger.warning("cannot check whether a lost node's will is in Kafka yet", metadata: ["mqtt.client_id": "\(due.clientId)"])
                return
            }
            if deduplicator?.contains(.will(willId)) == true {
                announce(ended)
                return
            }
            logger.info("publishing the will of a client whose node was lost", metadata: ["mqtt.client_id": "\(due.clientId)", "tributary.node": "\(due.connection.node)"])
            BrokerMetrics.willsPublished.increment()
            publisher.publish(
                will, clientId: due.clientId, extraHeaders: [KafkaHeader(PublishDeduplicator.Header.willOf, Array(willId.utf8))], eventLoop: loop,
                blocked: { _ in }
            ) { outcome in
                if outcome == .delivered {
                    announce(ended)
                } else {
                    wills?.publishFailed(due)
                    logger.warning("cannot publish the will of a client whose node was lost", metadata: ["mqtt.client_id": "\(due.clientId)"])
                }
            }
        }
    }

    private func checkLoop(admin: KafkaAdmin, messages: KafkaConsumer, retainedConsumer: KafkaConsumer) async {
        let registry = self.registry
        do {
            while !Task.isCancelled {
                await self.check(admin: admin, messages: messages, retainedConsumer: retainedConsumer)
                registry.sweepExpiredSessions()
                let stats = registry.store.statistics()
                BrokerMetrics.sessions.record(stats.sessions + registry.onlineCount)
                BrokerMetrics.sessionQueuedMessages.record(stats.queuedMessages)
                // Periodic health check; faster until the consumers are positioned.
                let positioned = self.state.withLock { $0.positioned }
                if positioned {
                    let paused = deliveryDemand.pauseIfIdle(hasSubscriptions: { registry.hasSubscriptions }) {
                        try messages.pause()
                        timeline.paused(atMilliseconds: Int64(Date().timeIntervalSince1970 * 1000), next: messagesCatchUp.positions.next)
                    }
                    if paused {
                        BrokerMetrics.deliveryConsumerPauses.increment()
                        logger.info("delivery consumer paused: no session on this node subscribes to anything")
                    }
                }
                try await Task.sleep(for: positioned ? self.settings.checkInterval : .milliseconds(100))
            }
        } catch {
            return  // cancelled
        }
    }

    /// Reads the connections topic from its beginning (retention keeps it short) up to its Fetch-reported
    /// high watermarks, so that `NodeLossWills` knows the connections and nodes of the cluster before it
    /// judges losses, then keeps following it.
    private func followConnections(topic: String, consumer: KafkaConsumer, positions: ConsumerPositions, admin: KafkaAdmin) async throws {
        while true {
            do {
                let metadata = try await admin.metadata(timeout: .seconds(5))
                let count = metadata.topic(topic)?.partitionCount ?? 0
                guard count > 0 else { throw BrokerError(.kafkaTopics, "connections topic has no partitions") }
                let partitions = (0..<count).map { KafkaTopicPartition(topic: topic, partition: $0) }
                let ends = try await admin.highWatermarks(for: partitions, timeout: .seconds(10))
                positions.assigned(partitions)
                try consumer.assign(topic: topic, partitionCount: count, from: .beginning)
                while !partitions.allSatisfy({ (positions.next[$0] ?? 0) >= (ends[$0] ?? 0) }) {
                    try Task.checkCancellation()
                    try await Task.sleep(for: .milliseconds(10))  // polls the consumer's progress
                }
                wills?.finishLoading()
                return
            } catch let error as CancellationError {
                throw error
            } catch {
                logger.warning("cannot follow the connections topic yet; retrying", metadata: ["kafka.topic": "\(topic)", "kafka.error": "\(error)"])
                try await Task.sleep(for: .seconds(1))  // retry back-off
            }
        }
    }

    /// Reads the sessions topic from the beginning up to its high watermark (as Fetch reports it; Tansu's
    /// ListOffsets "latest" is wrong) into `sessions`, registers their subscriptions, then lets CONNECTs
    /// proceed. The consumer keeps running afterwards (records of other nodes).
    private func loadSessions(_ sessions: KafkaSessionStore, consumer: KafkaConsumer, admin: KafkaAdmin, configuration: KafkaConfiguration) async throws {
        var announced = false
        while true {
            do {
                let metadata = try await admin.metadata(timeout: .seconds(5))
                let count = metadata.topic(sessions.topic)?.partitionCount ?? 0
                guard count > 0 else { throw BrokerError(.kafkaTopics, "sessions topic has no partitions") }
                let partitions = (0..<count).map { KafkaTopicPartition(topic: sessions.topic, partition: $0) }
                let ends = try await admin.highWatermarks(for: partitions, timeout: .seconds(10))
                sessions.catchUp.positions.assigned(partitions)
                try consumer.assign(topic: sessions.topic, partitionCount: count, from: .beginning)
                let started = ContinuousClock.now
                while true {
                    try Task.checkCancellation()
                    let next = sessions.nextOffsets()
                    if partitions.allSatisfy({ next[$0.partition] ?? 0 >= ends[$0] ?? 0 }) { break }
                    if !announced && ContinuousClock.now - started > .seconds(10) {
                        announced = true
                        logger.warning("still reading the sessions topic", metadata: ["kafka.topic": "\(sessions.topic)"])
                    }
                    try await Task.sleep(for: .milliseconds(10))  // polls the consumer's progress
                }
                break
            } catch let error as CancellationError {
                throw error
            } catch {
                logger.warning("cannot read the sessions topic yet; retrying", metadata: ["kafka.topic": "\(sessions.topic)", "kafka.error": "\(error)"])
                try await Task.sleep(for: .seconds(1))  // retry back-off
            }
        }
        let restored = sessions.restoredSessions()
        for (clientId, session) in restored { registry.register(clientId: clientId, session.subscriptions) }
        logger.info("sessions loaded", metadata: ["kafka.topic": "\(sessions.topic)", "mqtt.sessions": "\(restored.count)"])
        while true {
            do {
                try await catchUp(restored, sessions: sessions, admin: admin, configuration: configuration)
                break
            } catch let error as CancellationError {
                throw error
            } catch {
                logger.warning("cannot replay messages to restored sessions yet; retrying", metadata: ["kafka.error": "\(error)"])
                try await Task.sleep(for: .seconds(1))  // retry back-off
            }
        }
        sessions.finishLoading()
    }

    /// "Kafka is the queue": replays the records of the messages topics from where each restored session's
    /// delivery stood when it went offline up to the current high watermarks (Fetch-reported) into its
    /// queue, then fixes those high watermarks as the delivery consumer's start.
    private func catchUp(
        _ restored: [String: KafkaSessionStore.RestoredSession], sessions: KafkaSessionStore, admin: KafkaAdmin, configuration: KafkaConfiguration
    ) async throws {
        let metadata = try await admin.metadata(timeout: .seconds(5))
        let partitions = settings.messagesTopics.flatMap { topic in
            (0..<(metadata.topic(topic)?.partitionCount ?? 0)).map { KafkaTopicPartition(topic: topic, partition: $0) }
        }
        let ends = try await admin.highWatermarks(for: partitions, timeout: .seconds(10))
        let waiting = restored.filter { !$0.value.offsets.isEmpty }
        var starts: [KafkaTopicPartition: Int64] = [:]
        for session in waiting.values {
            for (partition, offset) in session.offsets where offset < ends[partition] ?? 0 { starts[partition] = min(starts[partition] ?? offset, offset) }
        }
        guard !starts.isEmpty else {
            state.withLock { $0.startOffsets = ends }
            return
        }
        let progress = Mutex<[KafkaTopicPartition: Int64]>([:])
        let replayed = Atomic<Int>(0)
        let limit = registry.limits.sessionQueueLimit
        let readBack = registry.limits.readBack
        let defaultQoS = settings.defaultQoS
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger) { records in
            var next: [KafkaTopicPartition: Int64] = [:]
            for record in records {
                let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
                next[partition] = max(next[partition] ?? 0, record.offset + 1)
                guard record.offset < ends[partition] ?? 0, let message = KafkaRecordMapping.message(from: record, defaultQoS: defaultQoS) else { continue }
                for (clientId, session) in waiting {
                    guard let from = session.offsets[partition], record.offset >= from,
                        let outbound = SessionRegistry.outbound(for: message, clientId: clientId, subscriptions: session.subscriptions)
                    else { continue }
                    switch sessions.enqueue(clientId: clientId, message: outbound, limit: limit, readBack: readBack) {
                    case .queued: replayed.add(1, ordering: .relaxed)
                    case .dropped: BrokerMetrics.messagesDroppedQueueFull[Int(outbound.qos.rawValue)].increment()
                    case .noSession: break
                    }
                }
            }
            progress.withLock { progress in for (partition, offset) in next { progress[partition] = max(progress[partition] ?? 0, offset) } }
        }
        defer { consumer.close() }
        try consumer.assign(starts.map { KafkaPartitionAssignment(topic: $0.key.topic, partition: $0.key.partition, offset: .offset($0.value)) })
        // Until every replayed partition reaches its end; given up only after a minute without progress.
        var watch = ReplayWatch(ends: ends.filter { starts[$0.key] != nil }, stallLimit: .seconds(60), now: .now)
        while true {
            try Task.checkCancellation()
            let verdict = watch.observe(progress.withLock { $0 }, now: .now)
            if verdict == .reached { break }
            if verdict == .stalled {
                logger.warning(
                    "gave up replaying messages to restored sessions: no progress for 60 s before the end",
                    metadata: ["kafka.topic": "\(settings.messagesTopics)", "kafka.replay_to": "\(ends)", "kafka.replay_reached": "\(progress.withLock { $0 })"])
                break
            }
            try await Task.sleep(for: .milliseconds(10))  // polls the consumer's progress
        }
        state.withLock { $0.startOffsets = ends }
        logger.info("restored sessions caught up", metadata: ["mqtt.sessions": "\(waiting.count)", "mqtt.messages": "\(replayed.load(ordering: .relaxed))"])
    }

    /// Whether a consumed record goes to subscribers (not one read back for the deduplication index only,
    /// nor one older than the node's start).
    /// Positions the paused delivery consumer at the partitions' high watermarks as observed now, less the
    /// deduplication look-back (read into the index only, as at start-up), and lets it fetch again
    /// (`DeliveryDemand`). Records before the high watermarks count as routed: nothing here subscribed when
    /// they were published. If the high watermarks cannot be read, the consumer goes on from where it
    /// paused (delivering what was published during the pause rather than risking a gap).
    private func resumeDelivery(messages: KafkaConsumer, admin: KafkaAdmin, reason: String) async {
        let positions = messagesCatchUp.positions
        let partitions = positions.partitions
        let lookback = deduplicator == nil ? 0 : max(0, settings.dedupeLookback)
        do {
            let ends = try await admin.highWatermarks(for: partitions, timeout: .seconds(5))
            let next = positions.next
            var assignments: [KafkaPartitionAssignment] = []
            for partition in partitions {
                let from = max(next[partition] ?? 0, (ends[partition] ?? 0) - lookback)
                positions.start(partition, at: from)
                assignments.append(KafkaPartitionAssignment(topic: partition.topic, partition: partition.partition, offset: .offset(from)))
            }
            state.withLock { state in
                for (partition, end) in ends {
                    state.deliverFrom[partition] = max(state.deliverFrom[partition] ?? 0, end)
                    state.routed[partition] = max(state.routed[partition] ?? 0, end)
                }
            }
            try messages.assign(assignments)
            try messages.resume()
            logger.info("delivery consumer resumed", metadata: ["tributary.reason": "\(reason)"])
        } catch {
            logger.warning(
                "cannot read the partitions' ends; the delivery consumer resumes where it paused",
                metadata: ["tributary.reason": "\(reason)", "kafka.error": "\(error)"])
            do { try messages.resume() } catch { logger.error("cannot resume the delivery consumer", metadata: ["kafka.error": "\(error)"]) }
        }
        BrokerMetrics.deliveryConsumerResumes.increment()
    }

    private func isDelivered(_ record: KafkaRecord) -> Bool {
        let partition = KafkaTopicPartition(topic: record.topic, partition: record.partition)
        return state.withLock { state in
            if record.offset < state.deliverFrom[partition] ?? 0 { return false }
            if state.live.contains(partition) { return true }
            if let timestamp = record.timestampMilliseconds, timestamp < startedAtMilliseconds - 1000 { return false }
            state.live.insert(partition)
            return true
        }
    }

    private func check(admin: KafkaAdmin, messages: KafkaConsumer, retainedConsumer: KafkaConsumer) async {
        let metadata: KafkaClusterMetadata
        do {
            metadata = try await admin.metadata(timeout: .seconds(2))
        } catch {
            state.withLock {
                $0.ready = false
                $0.reason = "Kafka metadata unreachable: \(error.name)"
            }
            return
        }
        let missing = settings.topics.filter { metadata.topic($0.name) == nil }
        if !missing.isEmpty {
            logger.warning("Kafka topics missing; creating them", metadata: ["kafka.topic": "\(missing.map(\.name))"])
            state.withLock {
                $0.ready = false
                $0.reason = "Kafka topics missing: \(missing.map(\.name).joined(separator: ", "))"
            }
            _ = try? await admin.createTopics(missing, timeout: .seconds(5))
            return
        }
        var changed: [(String, Int32)] = []
        let wasPositioned = state.withLock { $0.positioned }
        if !wasPositioned {
            // A partition's start position is fixed once it answered a fetch (its high watermark is
            // known): from then on, every record produced is delivered.
            let counts = state.withLock { $0.partitions }
            let positioned = !counts.isEmpty && settings.messagesTopics.allSatisfy { topic in
                (0..<(counts[topic] ?? 0)).allSatisfy { messages.highWatermark(topic: topic, partition: $0) != nil }
            }
            if positioned {
                state.withLock { $0.positioned = true }
                logger.info("Kafka consumers positioned")
            }
        }
        state.withLock { state in
            state.ready = true
            for spec in settings.topics {
                let count = metadata.topic(spec.name)?.partitionCount ?? 0
                if state.partitions[spec.name] != count {
                    changed.append((spec.name, count))
                    state.partitions[spec.name] = count
                }
            }
        }
        guard !changed.isEmpty else { return }
        let first = changed.count == settings.topics.count
        do {
            let counts = state.withLock { $0.partitions }
            // At start-up subscribers get what is produced from now on; a topic that was recreated is read
            // from its start. "Now" is each partition's high watermark as reported by Fetch responses, not
            // KafkaOffset.end: that is a ListOffsets query, which Tansu answers wrongly (start of the last
            // batch + 1), and starting there would replay old records to subscribers.
            let partitions = settings.messagesTopics.flatMap { topic in
                (0..<(counts[topic] ?? 0)).map { KafkaTopicPartition(topic: topic, partition: $0) }
            }
            let fixed = state.withLock { $0.startOffsets }
            let ends: [KafkaTopicPartition: Int64]
            if !first {
                ends = [:]
            } else if let fixed, partitions.allSatisfy({ fixed[$0] != nil }) {
                ends = fixed
            } else {
                ends = try await admin.highWatermarks(for: partitions, timeout: .seconds(10))
            }
            let lookback = deduplicator == nil ? 0 : max(0, settings.dedupeLookback)
            if first {
                state.withLock { state in
                    for (partition, offset) in ends {
                        state.routed[partition] = max(state.routed[partition] ?? 0, offset)
                        state.deliverFrom[partition] = offset
                    }
                }
            }
            let assignments = partitions.map { partition in
                KafkaPartitionAssignment(
                    topic: partition.topic, partition: partition.partition,
                    offset: first ? .offset(max(0, (ends[partition] ?? 0) - lookback)) : .beginning)
            }
            let positions = messagesCatchUp.positions
            for assignment in assignments {
                if case .offset(let offset) = assignment.offset {
                    positions.start(KafkaTopicPartition(topic: assignment.topic, partition: assignment.partition), at: offset)
                }
            }
            positions.assigned(partitions)
            try messages.assign(assignments)
            deliveryDemand.assignedAnew()
            try retainedConsumer.assign(topic: settings.retainedTopic, partitionCount: counts[settings.retainedTopic] ?? 0, from: .beginning)
            logger.info("assigned Kafka partitions", metadata: ["kafka.topic": "\(changed.map(\.0))"])
        } catch {
            logger.error("cannot assign Kafka partitions", metadata: ["kafka.error": "\(error)"])
            state.withLock { state in for (name, _) in changed { state.partitions[name] = nil } }
        }
    }
}
