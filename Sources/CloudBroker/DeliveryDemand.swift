import Logging
import NIOCore
import Synchronization

/// Whether this node's delivery consumer (the messages topics) must be reading now.
///
/// Every record a node produces is also fetched back by its delivery consumer, for its subscribers and for
/// the index that recognises resent publishes (`PublishDeduplicator`). A node none of whose sessions
/// subscribes to anything (the ingest-only case: devices publish, Kafka consumers read) needs neither
/// until a client subscribes or resends: reading every record back costs the node and Kafka about a third
/// of the CPU of a publish. So, after `idleBeforePause` without subscriptions and without a duplicate
/// check, `KafkaLink` pauses the consumer; whatever needs it again waits for `resume`:
///
/// - a SUBSCRIBE (the SUBACK waits; the connection reads nothing meanwhile) and a CONNECT that brings back a
///   session with subscriptions (the CONNACK waits): the consumer continues from the high watermark
///   observed *after* the subscription was registered, so every record acknowledged after the SUBACK is
///   delivered (records of the pause are not: they were published before the subscription);
/// - a duplicate check or a will of a lost node (`KafkaCatchUp`): the consumer first reads the last
///   `kafka.dedupe_lookback` records per partition into the index, as a node does at start-up, then the
///   check waits until it has caught up, as always;
/// - a session moved here from a lost node: its replay runs up to the same high watermark.
///
/// The pause decision and the registration of a subscription are ordered by this object's lock: a
/// subscription registered before the decision keeps the consumer running; one registered after it finds
/// the consumer paused and waits.
final class DeliveryDemand: Sendable {
    enum Phase: Sendable, Equatable {
        case delivering
        case paused
        case resuming
    }

    private struct State {
        var phase = Phase.delivering
        var lastDemand = ContinuousClock.now
        /// Duplicate checks running now (their consumer must not pause under them).
        var activeChecks = 0
        var waiters: [EventLoopPromise<Void>] = []
        var asyncWaiters: [CheckedContinuation<Void, Never>] = []
        var resume: (@Sendable (_ reason: String) async -> Void)?
        var closed = false
    }

    /// nil: never pause.
    let idleBeforePause: Duration?
    private let logger: Logger
    private let state = Mutex(State())

    init(idleBeforePause: Duration?, logger: Logger) {
        self.idleBeforePause = idleBeforePause
        self.logger = logger
    }

    var phase: Phase { state.withLock { $0.phase } }

    // MARK: Waiting for the consumer

    /// nil when the consumer is delivering now (the caller goes on at once); else a future that succeeds
    /// once it delivers again from the partitions' current ends.
    func whenDelivering(on eventLoop: any EventLoop, reason: String) -> EventLoopFuture<Void>? {
        guard idleBeforePause != nil else { return nil }  // never pauses (the default): no lock per SUBSCRIBE
        let (start, promise) = state.withLock { state -> (Bool, EventLoopPromise<Void>?) in
            state.lastDemand = .now
            guard state.phase != .delivering, !state.closed else { return (false, nil) }
            let promise = eventLoop.makePromise(of: Void.self)
            state.waiters.append(promise)
            return (Self.beginResume(&state), promise)
        }
        if start { startResume(reason: reason) }
        return promise?.futureResult
    }

    /// Returns once the consumer is delivering.
    func delivering(reason: String) async {
        guard idleBeforePause != nil else { return }
        let mustWait = state.withLock { state -> Bool in
            state.lastDemand = .now
            return state.phase != .delivering && !state.closed
        }
        guard mustWait else { return }
        await withCheckedContinuation { continuation in
            let start = state.withLock { state -> Bool in
                guard state.phase != .delivering, !state.closed else {
                    continuation.resume()
                    return false
                }
                state.asyncWaiters.append(continuation)
                return Self.beginResume(&state)
            }
            if start { startResume(reason: reason) }
        }
    }

    /// Runs `body` with the consumer delivering and not pausing under it (a duplicate check).
    func whileChecking<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        state.withLock { $0.activeChecks += 1 }
        defer { state.withLock { $0.activeChecks -= 1; $0.lastDemand = .now } }
        await delivering(reason: "duplicate check")
        return try await body()
    }

    // MARK: KafkaLink's side

    /// How to resume (installed by `KafkaLink` while it runs): repositions the consumer and lets it read.
    func setResume(_ resume: (@Sendable (_ reason: String) async -> Void)?) {
        state.withLock { $0.resume = resume }
    }

    /// Pauses the consumer (by calling `pause`) when nothing has needed it for `idleBeforePause` and
    /// `hasSubscriptions` says no session here subscribes. Returns whether it paused.
    func pauseIfIdle(hasSubscriptions: () -> Bool, pause: () throws -> Void) -> Bool {
        guard let idleBeforePause else { return false }
        return state.withLock { state in
            guard state.phase == .delivering, !state.closed, state.resume != nil, state.activeChecks == 0,
                ContinuousClock.now - state.lastDemand >= idleBeforePause, !hasSubscriptions()
            else { return false }
            do {
                try pause()
            } catch {
                logger.warning("cannot pause the delivery consumer", metadata: ["kafka.error": "\(error)"])
                return false
            }
            state.phase = .paused
            BrokerMetrics.deliveryConsumerPaused.record(1)
            return true
        }
    }

    /// The consumer was assigned anew (partition counts changed): it reads again whatever the phase was.
    func assignedAnew() {
        finishResume()
    }

    /// Shutting down: nothing waits any more.
    func close() {
        state.withLock { $0.closed = true }
        finishResume()
    }

    private static func beginResume(_ state: inout State) -> Bool {
        guard state.phase == .paused else { return false }
        state.phase = .resuming
        return true
    }

    private func startResume(reason: String) {
        guard let resume = state.withLock({ $0.resume }) else {
            finishResume()
            return
        }
        Task {
            await resume(reason)
            self.finishResume()
        }
    }

    private func finishResume() {
        let (waiters, asyncWaiters) = state.withLock { state in
            state.phase = .delivering
            state.lastDemand = .now
            defer {
                state.waiters = []
                state.asyncWaiters = []
            }
            return (state.waiters, state.asyncWaiters)
        }
        BrokerMetrics.deliveryConsumerPaused.record(0)
        for waiter in waiters { waiter.succeed() }
        for waiter in asyncWaiters { waiter.resume() }
    }
}
