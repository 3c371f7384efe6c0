import Common
import NIOCore
import Synchronization

/// Where offline sessions live between connections: in memory (`InMemorySessionStore`, `sessions.store =
/// memory`) or in the compacted Kafka topic `mqtt.sessions` (`KafkaSessionStore`, the default).
///
/// Calls are synchronous and local: CONNACK never waits for a remote round trip when the answer is known
/// locally. Implementations must be thread-safe.
protocol SessionStore: Sendable {
    /// Removes and returns the session of `clientId` if it exists and has not expired.
    func take(clientId: String, now: ContinuousClock.Instant) -> SessionState?
    /// Keeps `session` until `now + session.expiryInterval` (replacing any other of the same client).
    func put(_ session: SessionState, now: ContinuousClock.Instant)
    /// Forgets the session of `clientId`; returns whether there was one.
    @discardableResult func remove(clientId: String) -> Bool
    /// Queues a message for an offline session. QoS 0 messages are not kept for offline sessions. With
    /// `readBack`, a QoS 1/2 message from Kafka that finds the queue full is left to a read-back from Kafka
    /// when the client reconnects (`OutboundState.enqueue`) instead of being dropped.
    func enqueue(clientId: String, message: OutboundMessage, limit: Int, readBack: Bool) -> SessionEnqueueResult
    /// Removes and returns the sessions that have expired by `now`.
    func removeExpired(now: ContinuousClock.Instant) -> [SessionState]
    /// (sessions, queued messages) for metrics.
    func statistics() -> (sessions: Int, queuedMessages: Int)
    /// Records the state of a connected persistent session (it stays with its connection; nothing is kept
    /// locally). No-op for stores that do not outlive the node.
    func persist(_ session: SessionState)
    /// Succeeds on `eventLoop` once the store knows every session (at once when it is already loaded).
    func whenLoaded(on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Succeeds on `eventLoop` once the store's view of `clientId` includes every change other nodes made
    /// before the call (read-your-writes for a CONNECT): at once when the session is known locally.
    func whenCurrent(clientId: String, on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// A connection of this node now owns the session of `clientId`: later writes carry a new generation
    /// of its epoch, so writes of a node that owned it before (still under way) lose everywhere.
    func claim(clientId: String)
}

extension SessionStore {
    func persist(_ session: SessionState) {}
    func whenLoaded(on eventLoop: any EventLoop) -> EventLoopFuture<Void> { eventLoop.makeSucceededVoidFuture() }
    func whenCurrent(clientId: String, on eventLoop: any EventLoop) -> EventLoopFuture<Void> { eventLoop.makeSucceededVoidFuture() }
    func claim(clientId: String) {}
}

enum SessionEnqueueResult: Equatable {
    case queued
    case dropped
    case noSession
}

/// Offline sessions in a dictionary.
final class InMemorySessionStore: SessionStore {
    private struct Entry {
        var session: SessionState
        var expiresAt: ContinuousClock.Instant
    }

    private let entries = Mutex<[String: Entry]>([:])

    init() {}

    func take(clientId: String, now: ContinuousClock.Instant) -> SessionState? {
        entries.withLock { entries in
            guard let entry = entries.removeValue(forKey: clientId) else { return nil }
            return entry.expiresAt > now ? entry.session : nil
        }
    }

    func put(_ session: SessionState, now: ContinuousClock.Instant) {
        var session = session
        _ = session.outbound.dropQoS0()
        let expiresAt = now + .seconds(Int64(session.expiryInterval))
        entries.withLock { $0[session.clientId] = Entry(session: session, expiresAt: expiresAt) }
    }

    @discardableResult
    func remove(clientId: String) -> Bool {
        entries.withLock { $0.removeValue(forKey: clientId) != nil }
    }

    func contains(clientId: String) -> Bool {
        entries.withLock { $0[clientId] != nil }
    }

    func enqueue(clientId: String, message: OutboundMessage, limit: Int, readBack: Bool) -> SessionEnqueueResult {
        entries.withLock { entries in
            guard entries[clientId] != nil else { return .noSession }
            guard message.qos != .atMostOnce else { return .dropped }
            if entries[clientId]!.session.outbound.enqueue(message, limit: limit) { return .queued }
            // The queue is full: only then are the subscriptions looked at.
            guard readBack && SessionState.canReadBack(entries[clientId]!.session.subscriptions) else { return .dropped }
            return entries[clientId]!.session.outbound.enqueue(message, limit: limit, readBackAllowed: true) ? .queued : .dropped
        }
    }

    func removeExpired(now: ContinuousClock.Instant) -> [SessionState] {
        entries.withLock { entries in
            let expired = entries.filter { $0.value.expiresAt <= now }
            for key in expired.keys { entries.removeValue(forKey: key) }
            return expired.values.map(\.session)
        }
    }

    func statistics() -> (sessions: Int, queuedMessages: Int) {
        entries.withLock { entries in
            (entries.count, entries.values.reduce(0) { $0 + $1.session.outbound.queuedCount })
        }
    }
}
