import Foundation
import Logging
import Synchronization

/// An idempotent Kafka producer that completes every message exactly once.
///
/// - **Delivery**: `send` enqueues and returns at once; the completion runs exactly once, on the
///   producer's poll thread, with the delivery report (topic, partition, offset) or an error.
///   Success means the cluster acknowledged the record (`acks=all` by default). Keep completions
///   short: hop to your own executor.
/// - **Bounded**: at most `KafkaConfiguration.maxQueuedMessages` messages are queued; beyond that
///   `send` throws `_QUEUE_FULL` (retriable) without enqueuing, so the caller applies
///   backpressure (e.g. stops reading its socket) instead of buffering.
/// - **Thread**: a dedicated thread blocks in `rd_kafka_poll` (up to `pollTimeout`, returning as
///   soon as an event arrives) and serves delivery reports, errors and statistics.
/// - **Fatal errors**: librdkafka's fatal errors (e.g. a fenced idempotent producer),
///   `recreateAfterConsecutiveFailures` delivery failures in a row with producer-state errors
///   (`UNKNOWN_PRODUCER_ID`, `OUT_OF_ORDER_SEQUENCE_NUMBER`, `INVALID_PRODUCER_EPOCH`) or
///   `_MSG_TIMED_OUT`, an epoch that keeps being bumped without a delivery (`watchProducerEpoch`),
///   or no successful delivery for `stallTimeout` while messages are in flight (an idempotent
///   producer whose cluster lost its state never delivers again) make the poll
///   thread recreate the producer: sends are refused with `_STATE` (retriable) for the moment,
///   every message still in the old instance is failed once with a fatal, retriable
///   `KafkaError` (it may or may not be in Kafka; it is never reported as delivered), the old
///   `rd_kafka_t` is destroyed, a new one is created, `producerRecreations` is incremented and
///   `onRecreated` is called.
/// - **Shutdown**: `shutdown()` flushes for up to `shutdownFlushTimeout`, fails what is left with
///   a retriable `_DESTROY` error, and destroys the client; it is idempotent. Releasing the last
///   reference without `shutdown()` does the same in the background.
public final class KafkaProducer: Sendable {
    private let core: Core

    /// Creates the producer and starts its poll thread.
    /// - Parameters:
    ///   - statistics: called on the poll thread every `statisticsInterval` (if set).
    ///   - onRecreated: called on the poll thread after the producer was recreated, with the cause.
    public init(
        configuration: KafkaConfiguration,
        logger: Logger = Logger(label: "tributary.kafka.producer"),
        statistics: (@Sendable (KafkaStatistics) -> Void)? = nil,
        onRecreated: (@Sendable (KafkaError) -> Void)? = nil
    ) throws(KafkaError) {
        core = try Core(configuration: configuration, logger: logger, statistics: statistics, onRecreated: onRecreated)
        core.start()
    }

    deinit {
        core.beginShutdown()
    }

    /// Enqueues `message`. If this returns normally, `completion` will be called exactly once (on
    /// the poll thread). If it throws (`_QUEUE_FULL`, `_STATE` while recreating, `_DESTROY` after
    /// shutdown, invalid arguments), the message was not enqueued and `completion` is never called.
    public func send(
        _ message: KafkaOutgoingMessage,
        completion: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void
    ) throws(KafkaError) {
        try core.send(message, completion: completion)
    }

    /// Enqueues `message` and waits for its delivery report.
    public func send(_ message: KafkaOutgoingMessage) async throws(KafkaError) -> KafkaDeliveryReport {
        let result: Result<KafkaDeliveryReport, KafkaError> = await withCheckedContinuation { continuation in
            do throws(KafkaError) {
                try core.send(message) { continuation.resume(returning: $0) }
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
        return try result.get()
    }

    /// Sends lingering messages now and blocks until every message enqueued so far has completed
    /// (delivered or failed, e.g. in a recreation) or `timeout` has passed (`_TIMED_OUT`). Blocking: call it off event loops. The
    /// poll thread does the flushing, so completions still run there only; calling `flush` from a
    /// completion throws `_STATE`.
    public func flush(timeout: Duration) throws(KafkaError) {
        try core.flush(timeout: timeout)
    }

    /// Flushes (up to `shutdownFlushTimeout`), fails what is left with a retriable `_DESTROY`
    /// error, destroys the client and waits for the poll thread. Idempotent. Called from a
    /// completion handler it does not wait (the poll thread finishes after the handler returns).
    public func shutdown() {
        core.beginShutdown()
        core.thread.join()
    }

    /// How many times the producer was recreated after a fatal error or stall.
    public var producerRecreations: Int {
        core.state.withLock { $0.recreations }
    }

    /// Makes librdkafka raise a fabricated fatal error (`rd_kafka_test_fatal_error`) in the current
    /// instance, so tests can exercise the recreation path; real fatal errors (a fenced producer)
    /// cannot be provoked on demand. Returns false if there is no instance or one was raised already.
    @_spi(Testing)
    public func triggerFatalErrorForTesting(code: Int32 = KafkaError.Code.outOfOrderSequenceNumber) -> Bool {
        guard let generation = core.state.withLock({ $0.generation }) else { return false }
        return generation.client.triggerTestFatalError(code: code, reason: "triggered by a test")
    }

    /// Messages enqueued whose completion has not run yet.
    public var inFlightCount: Int {
        core.state.withLock { $0.generation?.tracker.count ?? 0 }
    }
}

extension KafkaProducer {
    /// One `rd_kafka_t` and its messages.
    final class Generation: Sendable {
        let number: Int
        let client: RDKafkaClient
        let tracker: DeliveryTracker

        init(number: Int, client: RDKafkaClient, tracker: DeliveryTracker) {
            self.number = number
            self.client = client
            self.tracker = tracker
        }
    }

    final class Core: Sendable {
        enum Phase { case running, closing, closed }

        final class FlushRequest: Sendable {
            let deadline: ContinuousClock.Instant
            let done = DispatchSemaphore(value: 0)
            /// Set before `done` is signalled when nothing was left in flight.
            let flushed = Atomic<Bool>(false)

            init(timeout: Duration) { self.deadline = .now + timeout }
        }

        struct State {
            var phase = Phase.running
            var generation: Generation?
            var flushRequests: [FlushRequest] = []
            var generationCount = 0
            var recreations = 0
            var nextID: UInt64 = 0
        }

        let configuration: KafkaConfiguration
        let logger: Logger
        let statistics: (@Sendable (KafkaStatistics) -> Void)?
        let onRecreated: (@Sendable (KafkaError) -> Void)?
        let state = Mutex(State())
        let thread = KafkaPollThread(name: "kafka-producer")
        /// How often statistics feed the epoch-bump watchdog.
        static let epochCheckInterval = Duration.seconds(1)
        /// Wakes the poll thread from a retry back-off when shutting down.
        private let wake = DispatchSemaphore(value: 0)

        init(
            configuration: KafkaConfiguration,
            logger: Logger,
            statistics: (@Sendable (KafkaStatistics) -> Void)?,
            onRecreated: (@Sendable (KafkaError) -> Void)?
        ) throws(KafkaError) {
            self.configuration = configuration
            self.logger = logger
            self.statistics = statistics
            self.onRecreated = onRecreated
            let generation = try makeGeneration(number: 1)
            state.withLock {
                $0.generation = generation
                $0.generationCount = 1
            }
        }

        func makeGeneration(number: Int) throws(KafkaError) -> Generation {
            let tracker = DeliveryTracker(failureThreshold: configuration.recreateAfterConsecutiveFailures)
            let logger = logger
            var events = RDKafkaClient.Events()
            events.deliveryReport = { tracker.deliveryReport($0, $1) }
            events.error = { error in
                if error.isFatal { tracker.markFatal(error) }
            }
            // Statistics also feed the epoch-bump watchdog (see DeliveryTracker.observe), so they
            // are on at least every `epochCheckInterval` for an idempotent producer; the caller's
            // callback still gets them at its own interval.
            var clientConfiguration = configuration
            let watchEpochs = configuration.idempotent && configuration.watchProducerEpoch && configuration.stallTimeout != nil
            if watchEpochs {
                clientConfiguration.statisticsInterval = min(configuration.statisticsInterval ?? Self.epochCheckInterval, Self.epochCheckInterval)
            }
            if watchEpochs || statistics != nil {
                let userInterval = configuration.statisticsInterval
                let lastDelivered = Mutex<ContinuousClock.Instant?>(nil)
                let statistics = self.statistics
                events.statistics = { json in
                    guard let parsed = KafkaStatistics(json: json) else { return }
                    if watchEpochs { tracker.observe(producerId: parsed.producerId, epoch: parsed.producerEpoch) }
                    guard let statistics, let userInterval else { return }
                    let now = ContinuousClock.now
                    let due = lastDelivered.withLock { last in
                        // 10% slack so a 1 s report still counts for a 1 s interval.
                        guard last.map({ now - $0 >= userInterval * 0.9 }) ?? true else { return false }
                        last = now
                        return true
                    }
                    if due { statistics(parsed) }
                }
            }
            let client = try RDKafkaClient.make(role: .producer, configuration: clientConfiguration, events: events, logger: logger)
            return Generation(number: number, client: client, tracker: tracker)
        }

        func start() {
            thread.start { [self] in run() }
        }

        func send(
            _ message: KafkaOutgoingMessage,
            completion: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void
        ) throws(KafkaError) {
            let (generation, id) = try state.withLock { state throws(KafkaError) -> (Generation, UInt64) in
                guard state.phase == .running else { throw KafkaError.shutdown("the producer is shut down") }
                guard let generation = state.generation else { throw KafkaError.producerRecreating }
                state.nextID += 1
                return (generation, state.nextID)
            }
            let box = DeliveryBox(id: id, completion: completion)
            let opaque = Unmanaged.passRetained(box).toOpaque()
            generation.tracker.add(box)
            do {
                try generation.client.produce(message, opaque: opaque)
            } catch {
                // Not enqueued. Unless a concurrent sweep already completed it, undo and throw.
                guard generation.tracker.remove(id) else { return }
                Unmanaged<DeliveryBox>.fromOpaque(opaque).release()
                if error.code == KafkaError.Code.fatal || error.isFatal {
                    generation.tracker.markFatal(error)
                }
                if error.code == KafkaError.Code.destroy {
                    throw state.withLock { $0.phase == .running } ? KafkaError.producerRecreating : error
                }
                throw error
            }
        }

        /// Asks the poll thread to flush and waits for its answer (or `timeout`).
        func flush(timeout: Duration) throws(KafkaError) {
            guard !thread.isCurrent else {
                throw KafkaError(
                    code: KafkaError.Code.state, name: "_STATE",
                    message: "flush called from a completion handler (it would wait for itself)", isRetriable: false
                )
            }
            let request = FlushRequest(timeout: timeout)
            let (accepted, generation) = state.withLock { state -> (Bool, Generation?) in
                guard state.phase == .running else { return (false, nil) }
                state.flushRequests.append(request)
                return (true, state.generation)
            }
            guard accepted else { return }  // shutting down: the shutdown flushes
            generation?.client.wakeUp()
            let answered = request.done.wait(timeout: .now() + .milliseconds(Int(timeout.milliseconds))) == .success
            guard answered, request.flushed.load(ordering: .acquiring) else {
                throw KafkaError(code: KafkaError.Code.timedOut, name: "_TIMED_OUT", message: "flush: messages still in flight after \(timeout)", isRetriable: true)
            }
        }

        /// On the poll thread, instead of one poll: flushes for up to `pollTimeout` (so stalls are
        /// still noticed during a long flush); answers every request once nothing is queued, and
        /// drops requests whose waiter has given up.
        private func flushSlice(_ generation: Generation) {
            let error = generation.client.flush(timeout: configuration.pollTimeout)
            let now = ContinuousClock.now
            let answered = state.withLock { state in
                let (done, waiting) = state.flushRequests.partitioned { error == nil || $0.deadline <= now }
                state.flushRequests = waiting
                return done
            }
            for request in answered {
                request.flushed.store(error == nil, ordering: .releasing)
                request.done.signal()
            }
        }

        /// Answers pending flush requests without flushing (the shutdown flushes instead).
        private func releaseFlushRequests() {
            let requests = state.withLock { state in
                defer { state.flushRequests.removeAll() }
                return state.flushRequests
            }
            for request in requests {
                request.flushed.store(true, ordering: .releasing)  // the shutdown completed every message
                request.done.signal()
            }
        }

        func beginShutdown() {
            let generation: Generation? = state.withLock { state in
                guard state.phase == .running else { return nil }
                state.phase = .closing
                return state.generation
            }
            generation?.client.wakeUp()
            wake.signal()
        }

        // MARK: Poll thread

        private func run() {
            while true {
                let (phase, current) = state.withLock { ($0.phase, $0.generation) }
                guard phase == .running else { break }
                guard let generation = current else {
                    installNewGeneration()
                    continue
                }
                if state.withLock({ $0.flushRequests.isEmpty }) {
                    generation.client.poll(timeout: configuration.pollTimeout)
                } else {
                    flushSlice(generation)
                }
                if let cause = generation.tracker.recreationCause(stallTimeout: configuration.stallTimeout) {
                    recreate(generation, cause: cause)
                }
            }
            finishShutdown()
        }

        /// Fails everything in `old`, destroys it and installs a new instance.
        private func recreate(_ old: Generation, cause: KafkaError) {
            state.withLock { if $0.generation === old { $0.generation = nil } }
            let failure = KafkaError.producerRecreated(cause: cause)
            let failed = retire(old, failure: failure, flushFirst: nil)
            let recreations = state.withLock {
                $0.recreations += 1
                return $0.recreations
            }
            logger.debug(
                "Kafka producer recreated",
                metadata: [
                    "kafka.error": "\(cause)",
                    "kafka.failed_messages": "\(failed)",
                    "kafka.recreations": "\(recreations)",
                    "kafka.generation": "\(old.number)",
                ]
            )
            installNewGeneration()
            onRecreated?(cause)
        }

        /// Creates and installs a new instance; on failure backs off (interruptible by shutdown).
        private func installNewGeneration() {
            let number = state.withLock {
                $0.generationCount += 1
                return $0.generationCount
            }
            do {
                let generation = try makeGeneration(number: number)
                let installed = state.withLock { state in
                    guard state.phase == .running else { return false }
                    state.generation = generation
                    return true
                }
                if !installed { generation.client.destroy() }
            } catch {
                logger.debug("Kafka producer creation failed", metadata: ["kafka.error": "\(error)"])
                _ = wake.wait(timeout: .now() + 1)
            }
        }

        /// Optionally flushes, then purges `generation`, serves the purge reports, destroys it and
        /// completes anything left. Returns how many messages failed in the sweep and purge.
        @discardableResult
        private func retire(_ generation: Generation, failure: KafkaError, flushFirst: Duration?) -> Int {
            if let flushFirst, let error = generation.client.flush(timeout: flushFirst) {
                logger.debug("Kafka producer flush incomplete", metadata: ["kafka.error": "\(error)"])
            }
            let before = generation.tracker.count
            generation.tracker.overrideFailures(with: failure)
            generation.client.purge()
            // Serve the purge reports; each poll returns as soon as reports are available.
            let deadline = ContinuousClock.now + .seconds(2)
            while generation.tracker.count > 0, ContinuousClock.now < deadline {
                generation.client.poll(timeout: .milliseconds(50))
            }
            generation.client.destroy()
            _ = generation.tracker.sweep(failure)
            return before
        }

        private func finishShutdown() {
            defer { releaseFlushRequests() }  // after the retirement every message has completed
            let generation = state.withLock { state in
                defer { state.generation = nil }
                return state.generation
            }
            if let generation {
                retire(
                    generation,
                    failure: .shutdown("the producer was shut down before the message was acknowledged"),
                    flushFirst: configuration.shutdownFlushTimeout
                )
            }
            state.withLock { $0.phase = .closed }
            logger.debug("Kafka producer shut down")
        }
    }
}

extension Array {
    /// The elements that satisfy `belongs`, and the others, each in order.
    fileprivate func partitioned(_ belongs: (Element) -> Bool) -> ([Element], [Element]) {
        var yes: [Element] = []
        var no: [Element] = []
        for element in self {
            if belongs(element) { yes.append(element) } else { no.append(element) }
        }
        return (yes, no)
    }
}
