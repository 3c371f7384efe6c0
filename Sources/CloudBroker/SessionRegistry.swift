import Common
import Foundation
import Logging
import NIOCore
import Synchronization
import TributaryKafka

/// A live client connection as the registry sees it (implemented by `MQTTServerConnection.Handle`).
protocol ConnectionEndpoint: AnyObject, Sendable {
    /// Hands a message to the connection (on its own event loop).
    func deliver(_ message: OutboundMessage)
    /// Disconnects the client with 0x8E and returns its session state (on its event loop).
    func takeOver() -> EventLoopFuture<SessionState?>
    /// Disconnects the client with 0x8B (server shutting down).
    func shutdown()
}

/// Who is connected, which sessions exist and who subscribed to what: the routing state of one node.
///
/// One lock guards the online table, the subscription index and pending wills; the offline sessions are
/// in the `SessionStore`. Messages for online clients are handed to their connection outside the lock.
final class SessionRegistry: Sendable {
    struct PendingWill {
        var id: UInt64
        var task: Scheduled<Void>
    }

    /// This node's announcement of a client's current connection (see `ConnectionAnnouncement`).
    private struct Announcement {
        var connection: UInt64
        var endpoint: ObjectIdentifier
        /// This node has read its own announcement back from `mqtt.connections`.
        var seen = false
    }

    private struct State {
        var online: [String: any ConnectionEndpoint] = [:]
        var announcements: [String: Announcement] = [:]
        /// Connection number of every announced connection whose end is not announced yet.
        var announcedBy: [ObjectIdentifier: UInt64] = [:]
        /// Messages routed to a moved session while its replay from Kafka runs, delivered after it (order).
        var heldDuringReplay: [String: [OutboundMessage]] = [:]
        var nextConnection: UInt64 = 0
        var subscriptions = SubscriptionTree<String, SubscriptionOptions>()
        var shareCursor: [String: Int] = [:]
        var pendingWills: [String: PendingWill] = [:]
        var nextWillId: UInt64 = 0
    }

    private let state = Mutex(State())
    let store: any SessionStore
    let limits: BrokerLimits
    private let logger: Logger
    /// Publishes a will message (through the Kafka publish path) with its `mqtt.will_of` id (nil: the
    /// connection was not announced) and calls `done` once Kafka has it.
    typealias WillPublisher = @Sendable (_ will: MQTTWill, _ clientId: String, _ willId: String?, _ done: @escaping @Sendable () -> Void) -> Void
    private let willPublisher: WillPublisher
    /// This node's id and incarnation, and how it announces client connections to the others (nil: single node).
    private let nodeId: String
    private let incarnation: String
    private let announcer: (@Sendable (_ clientId: String, _ announcement: ConnectionAnnouncement) -> Void)?
    /// Called when a client attaches to a session another node wrote while it was connected there.
    typealias SessionMovedHandler = @Sendable (_ clientId: String, _ subscriptions: [SubscriptionOptions], _ from: ReplayStart) -> Void

    /// Where the replay of a session that moved here starts.
    enum ReplayStart: Sendable {
        /// A little before the last sign of life of the node the connected client left.
        case lastSeen(node: String)
        /// Exactly here (the offline snapshot's offsets).
        case offsets([KafkaTopicPartition: Int64])
    }
    private let sessionMoved = Mutex<SessionMovedHandler?>(nil)

    init(
        store: any SessionStore, limits: BrokerLimits, logger: Logger, nodeId: String = "", incarnation: String = "",
        announcer: (@Sendable (_ clientId: String, _ announcement: ConnectionAnnouncement) -> Void)? = nil,
        deliveryDemand: DeliveryDemand? = nil,
        willPublisher: @escaping WillPublisher
    ) {
        self.deliveryDemand = deliveryDemand
        self.store = store
        self.limits = limits
        self.logger = logger
        self.nodeId = nodeId
        self.incarnation = incarnation
        self.announcer = announcer
        self.willPublisher = willPublisher
    }

    /// A resumed session with subscriptions gets its CONNACK once the delivery consumer reads (it may be
    /// paused while nothing here subscribes).
    private let deliveryDemand: DeliveryDemand?

    var onlineCount: Int { state.withLock { $0.online.count } }

    func setSessionMovedHandler(_ handler: SessionMovedHandler?) {
        sessionMoved.withLock { $0 = handler }
    }
    var subscriptionCount: Int { state.withLock { $0.subscriptions.count } }

    // MARK: Connect and disconnect

    /// Binds `endpoint` to the session of `request.clientId`: takes over a connected client of the same
    /// id, resumes a stored session unless clean start, cancels a pending will. The future succeeds on
    /// `eventLoop` with the session and whether it was present.
    func attach(
        _ request: MQTTServerConnection.StateMachine.SessionRequest,
        endpoint: any ConnectionEndpoint,
        eventLoop: any EventLoop
    ) -> EventLoopFuture<(SessionState, Bool)> {
        let previous: (any ConnectionEndpoint)? = state.withLock { state in
            if let will = state.pendingWills.removeValue(forKey: request.clientId) { will.task.cancel() }
            let previous = state.online[request.clientId]
            state.online[request.clientId] = endpoint
            return previous
        }
        let oldSession: EventLoopFuture<SessionState?>
        if let previous, previous !== endpoint {
            BrokerMetrics.takeoversLocal.increment()
            oldSession = previous.takeOver().hop(to: eventLoop)
        } else {
            let store = self.store
            let clientId = request.clientId
            oldSession = store.whenLoaded(on: eventLoop).flatMap {
                // A clean start needs no stored session (any is ended below).
                request.cleanStart ? eventLoop.makeSucceededVoidFuture() : store.whenCurrent(clientId: clientId, on: eventLoop)
            }.map { store.take(clientId: clientId, now: .now) }
        }
        let attached = oldSession.map { old in
            defer { self.announce(request, endpoint: endpoint) }
            if let old, !request.cleanStart {
                // A session read from Kafka after a restart is not in the subscription index yet.
                self.register(clientId: request.clientId, Array(old.subscriptions.values))
                var start: ReplayStart?
                if let node = old.movedFrom {
                    start = .lastSeen(node: node)
                } else if let offsets = old.undeliveredFrom {
                    start = .offsets(offsets)
                }
                if let start, let handler = self.sessionMoved.withLock({ $0 }) {
                    // A replay already running for the client (it reconnected again meanwhile) keeps what it
                    // holds: overwriting it would lose those messages.
                    self.state.withLock { state in
                        if state.heldDuringReplay[request.clientId] == nil { state.heldDuringReplay[request.clientId] = [] }
                    }
                    handler(request.clientId, Array(old.subscriptions.values), start)
                }
                // Replayed once: the session this connection owns (and later puts back) is here now.
                var session = old
                session.movedFrom = nil
                session.undeliveredFrom = nil
                return (session, true)
            }
            if request.cleanStart {
                // Ends a stored session (a tombstone in `mqtt.sessions` if it was written there).
                self.store.remove(clientId: request.clientId)
            }
            if old != nil || request.cleanStart {
                self.state.withLock { _ = $0.subscriptions.removeAll(key: request.clientId) }
            }
            return (SessionState(clientId: request.clientId, expiryInterval: request.expiryInterval), false)
        }
        // Only a node that may pause its delivery consumer adds a step to every CONNECT.
        guard let deliveryDemand, deliveryDemand.idleBeforePause != nil else { return attached }
        return attached.flatMap { attached in
            guard !attached.0.subscriptions.isEmpty,
                let delivering = deliveryDemand.whenDelivering(on: eventLoop, reason: "session with subscriptions resumed")
            else { return eventLoop.makeSucceededFuture(attached) }
            return delivering.map { attached }
        }
    }

    /// Claims the client for this connection: a new session generation in the store (fencing writes of a
    /// node that had it before) and an announcement on `mqtt.connections`.
    private func announce(_ request: MQTTServerConnection.StateMachine.SessionRequest, endpoint: any ConnectionEndpoint) {
        let clientId = request.clientId
        if request.expiryInterval > 0 { store.claim(clientId: clientId) }
        guard let announcer else { return }
        let connection = state.withLock { state -> UInt64? in
            guard let current = state.online[clientId], current === endpoint else { return nil }
            state.nextConnection += 1
            state.announcements[clientId] = Announcement(connection: state.nextConnection, endpoint: ObjectIdentifier(endpoint))
            state.announcedBy[ObjectIdentifier(endpoint)] = state.nextConnection
            return state.nextConnection
        }
        guard let connection else { return }
        let will = request.will.flatMap(NodeLossWills.encode)
        let delay = request.will.map { min($0.properties.willDelayInterval ?? 0, request.expiryInterval) }
        announcer(
            clientId,
            ConnectionAnnouncement(
                node: nodeId, connection: connection, atMilliseconds: Self.nowMilliseconds, incarnation: incarnation, will: will,
                willDelay: will == nil ? nil : delay))
    }

    private static var nowMilliseconds: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// The announced connection of `endpoint` ended here: its number (nil if it was not announced).
    private func announcedConnectionEnded(_ endpoint: any ConnectionEndpoint) -> UInt64? {
        state.withLock { $0.announcedBy.removeValue(forKey: ObjectIdentifier(endpoint)) }
    }

    /// Tells the other nodes that this node handled the end of `connection` (and its will): they forget it.
    private func announceEnded(clientId: String, connection: UInt64) {
        announcer?(clientId, ConnectionAnnouncement(node: nodeId, connection: connection, atMilliseconds: Self.nowMilliseconds, kind: .ended, incarnation: incarnation))
    }

    /// An announcement read from `mqtt.connections` (in log order per client). If another node announced
    /// the client after this node's own announcement of its open connection, that connection is taken
    /// over: disconnected (0x8E), its subscriptions dropped here, and its session not written again.
    func announced(clientId: String, _ announcement: ConnectionAnnouncement) {
        let loser = state.withLock { state -> (any ConnectionEndpoint)? in
            guard var mine = state.announcements[clientId] else { return nil }
            if announcement.node == nodeId {
                if announcement.effectiveKind == .connected, announcement.incarnation == incarnation, announcement.connection == mine.connection {
                    mine.seen = true
                    state.announcements[clientId] = mine
                }
                return nil
            }
            guard announcement.effectiveKind == .connected, mine.seen, let endpoint = state.online[clientId], ObjectIdentifier(endpoint) == mine.endpoint
            else { return nil }
            state.online.removeValue(forKey: clientId)
            state.announcements.removeValue(forKey: clientId)
            _ = state.subscriptions.removeAll(key: clientId)
            return endpoint
        }
        guard let loser else { return }
        BrokerMetrics.takeoversRemote.increment()
        logger.info("client connected to another node; disconnecting it here", metadata: ["mqtt.client_id": "\(clientId)", "tributary.node": "\(announcement.node)"])
        _ = loser.takeOver()
    }

    /// The connection of `endpoint` ended. Keeps the session if it has an expiry interval, else drops
    /// its subscriptions; schedules the will (after its delay, bounded by the session expiry).
    func detach(endpoint: any ConnectionEndpoint, session: SessionState?, will: MQTTWill?, takenOver: Bool) {
        guard let session else {
            if let connection = announcedConnectionEnded(endpoint), let clientId = state.withLock({ $0.announcements.first { $0.value.endpoint == ObjectIdentifier(endpoint) }?.key }) {
                announceEnded(clientId: clientId, connection: connection)
            }
            return
        }
        let clientId = session.clientId
        let stillOwner = state.withLock { state -> Bool in
            guard let current = state.online[clientId], current === endpoint else { return false }
            state.online.removeValue(forKey: clientId)
            state.announcements.removeValue(forKey: clientId)
            return true
        }
        if stillOwner {
            if session.expiryInterval > 0 {
                store.put(session, now: .now)
            } else {
                store.remove(clientId: clientId)
                state.withLock { _ = $0.subscriptions.removeAll(key: clientId) }
            }
        }
        scheduleWill(will, clientId: clientId, sessionExpiry: session.expiryInterval, takenOver: takenOver, endpoint: endpoint)
    }

    /// The session of a connected client was attached or its subscriptions changed: a persistent one is
    /// written to the store (so it outlives a node that dies while the client is connected).
    func sessionChanged(_ session: SessionState) {
        if session.expiryInterval > 0 { store.persist(session) }
    }

    /// Drops the registration of `endpoint` (a connection that closed before its session was attached).
    func forget(endpoint: any ConnectionEndpoint, clientId: String) {
        state.withLock { state in
            if let current = state.online[clientId], current === endpoint {
                state.online.removeValue(forKey: clientId)
                state.announcements.removeValue(forKey: clientId)
            }
        }
    }

    /// Publishes `will` now, or after its Will Delay Interval bounded by the session expiry unless the
    /// client reconnects first (MQTT 5.0 section 3.1.3.2.2).
    ///
    /// `endpoint` is the connection that ended: if it was announced to the other nodes, the will carries its
    /// id and its end is announced once the will is in Kafka (or at once without a will), so that no other
    /// node publishes it (`NodeLossWills`).
    func scheduleWill(_ will: MQTTWill?, clientId: String, sessionExpiry: UInt32, takenOver: Bool, endpoint: (any ConnectionEndpoint)? = nil) {
        let connection = endpoint.flatMap { announcedConnectionEnded($0) }
        let willId = connection.map { NodeLossWills.willId(node: nodeId, incarnation: incarnation, connection: $0, clientId: clientId) }
        let ended: @Sendable () -> Void = { [self] in
            if let connection { announceEnded(clientId: clientId, connection: connection) }
        }
        guard let will else {
            ended()
            return
        }
        let delay = min(will.properties.willDelayInterval ?? 0, sessionExpiry)
        if takenOver || delay == 0 {
            // On takeover the client is back at once, so a delayed will is cancelled (MQTT 5.0 3.1.3.2.2).
            if !takenOver || delay == 0 {
                publishWill(will, clientId: clientId, willId: willId, done: ended)
            } else {
                ended()
            }
            return
        }
        let loop = MultiThreadedEventLoopGroupProvider.willLoop
        state.withLock { state in
            state.nextWillId += 1
            let id = state.nextWillId
            let task = loop.scheduleTask(in: .seconds(Int64(delay))) { [self] in
                let due = self.state.withLock { state -> Bool in
                    guard state.pendingWills[clientId]?.id == id else { return false }
                    state.pendingWills.removeValue(forKey: clientId)
                    return true
                }
                if due { self.publishWill(will, clientId: clientId, willId: willId, done: ended) }
            }
            state.pendingWills[clientId] = PendingWill(id: id, task: task)
        }
    }

    private func publishWill(_ will: MQTTWill, clientId: String, willId: String?, done: @escaping @Sendable () -> Void) {
        BrokerMetrics.willsPublished.increment()
        logger.debug("publishing will", metadata: ["mqtt.client_id": "\(clientId)", "mqtt.topic": "\(will.topic)"])
        willPublisher(will, clientId, willId, done)
    }

    /// Removes expired offline sessions and their subscriptions.
    func sweepExpiredSessions() {
        let expired = store.removeExpired(now: .now)
        guard !expired.isEmpty else { return }
        state.withLock { state in
            for session in expired where state.online[session.clientId] == nil {
                _ = state.subscriptions.removeAll(key: session.clientId)
            }
        }
    }

    /// Asks every connected client to disconnect (server shutting down).
    func shutdownAll() {
        let endpoints = state.withLock { Array($0.online.values) }
        for endpoint in endpoints { endpoint.shutdown() }
    }

    // MARK: Subscriptions and routing

    func register(clientId: String, _ subscriptions: [SubscriptionOptions]) {
        state.withLock { state in
            for options in subscriptions {
                state.subscriptions.insert(options.subscription.topicFilter, key: clientId, value: options)
            }
        }
    }

    func unregister(clientId: String, _ filters: [MQTTTopicFilter]) {
        state.withLock { state in
            for filter in filters { state.subscriptions.remove(filter, key: clientId) }
        }
    }

    /// Whether any session (connected or not) subscribes to anything: when none does, consumed records
    /// need not be turned into messages at all.
    var hasSubscriptions: Bool {
        state.withLock { !$0.subscriptions.isEmpty }
    }

    /// Delivers `message` to every matching session: the best matching subscription per client (highest
    /// QoS, all subscription identifiers), one member per shared subscription group (round robin,
    /// connected members first). Returns how many sessions received it.
    @discardableResult
    func route(_ message: BrokerMessage) -> Int {
        var direct: [(any ConnectionEndpoint, OutboundMessage)] = []
        let count = state.withLock { state -> Int in
            var perClient: [String: OutboundMessage] = [:]
            var groups: [String: [(String, SubscriptionOptions)]] = [:]
            state.subscriptions.forEachMatch(message.topic) { clientId, shareGroup, options in
                if let shareGroup {
                    groups[shareGroup + "\u{0}" + options.subscription.topicFilter.filter, default: []].append((clientId, options))
                    return
                }
                if options.subscription.noLocal && message.publisherClientId == clientId { return }
                Self.merge(&perClient[clientId], message: message, options: options)
            }
            for (group, members) in groups {
                let ordered = members.sorted { $0.0 < $1.0 }
                let connected = ordered.filter { state.online[$0.0] != nil }
                let candidates = connected.isEmpty ? ordered : connected
                let cursor = state.shareCursor[group, default: 0]
                state.shareCursor[group] = cursor &+ 1
                let (clientId, options) = candidates[cursor % candidates.count]
                var single: OutboundMessage?
                Self.merge(&single, message: message, options: options)
                if let single { perClient["\u{1}" + clientId] = single }
            }
            for (key, outbound) in perClient {
                let clientId = key.hasPrefix("\u{1}") ? String(key.dropFirst()) : key
                if state.heldDuringReplay[clientId] != nil {
                    state.heldDuringReplay[clientId]!.append(outbound)
                } else if let endpoint = state.online[clientId] {
                    direct.append((endpoint, outbound))
                } else {
                    let result = store.enqueue(clientId: clientId, message: outbound, limit: limits.sessionQueueLimit, readBack: limits.readBack)
                    if result == .dropped { BrokerMetrics.messagesDroppedQueueFull[Int(outbound.qos.rawValue)].increment() }
                }
            }
            return perClient.count
        }
        for (endpoint, outbound) in direct { endpoint.deliver(outbound) }
        return count
    }

    /// The replay of a moved session is over: what routing held back for it meanwhile goes out, in order.
    func endReplay(clientId: String) {
        let (held, endpoint) = state.withLock { state in
            (state.heldDuringReplay.removeValue(forKey: clientId) ?? [], state.online[clientId])
        }
        for message in held {
            if let endpoint { endpoint.deliver(message) } else { redeliver(clientId: clientId, message) }
        }
    }

    /// A message that reached a connection after it closed: queue it for the session or hand it to
    /// the connection that now owns the client.
    func redeliver(clientId: String, _ message: OutboundMessage) {
        let endpoint = state.withLock { state -> (any ConnectionEndpoint)? in
            if let endpoint = state.online[clientId] { return endpoint }
            if store.enqueue(clientId: clientId, message: message, limit: limits.sessionQueueLimit, readBack: limits.readBack) == .dropped {
                BrokerMetrics.messagesDroppedQueueFull[Int(message.qos.rawValue)].increment()
            }
            return nil
        }
        endpoint?.deliver(message)
    }

    /// What one session with `subscriptions` receives of `message` (its best matching non-shared
    /// subscription, all identifiers), or nil (replay of records towards a restored offline session).
    static func outbound(for message: BrokerMessage, clientId: String, subscriptions: [SubscriptionOptions]) -> OutboundMessage? {
        var result: OutboundMessage?
        for options in subscriptions where !options.subscription.topicFilter.isShared {
            guard options.subscription.topicFilter.matches(message.topic) else { continue }
            if options.subscription.noLocal && message.publisherClientId == clientId { continue }
            merge(&result, message: message, options: options)
        }
        return result
    }

    private static func merge(_ existing: inout OutboundMessage?, message: BrokerMessage, options: SubscriptionOptions) {
        let qos = min(message.qos, options.subscription.qos)
        let retain = options.subscription.retainAsPublished && message.retain
        if var current = existing {
            current.qos = max(current.qos, qos)
            current.retain = current.retain || retain
            if let id = options.identifier { current.subscriptionIdentifiers.append(id) }
            existing = current
        } else {
            existing = OutboundMessage(message: message, qos: qos, retain: retain, subscriptionIdentifiers: options.identifier.map { [$0] } ?? [])
        }
    }
}

/// The event loop that runs delayed wills.
enum MultiThreadedEventLoopGroupProvider {
    static var willLoop: any EventLoop { NIOSingletons.posixEventLoopGroup.next() }
}
