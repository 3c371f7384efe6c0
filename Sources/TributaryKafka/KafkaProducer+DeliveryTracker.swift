import Synchronization

extension KafkaProducer {
    /// The per-message box carried through librdkafka as the message opaque (retained once by
    /// `send`, released once when the message is reported or swept).
    final class DeliveryBox: Sendable {
        let id: UInt64
        let completion: @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void

        init(id: UInt64, completion: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) {
            self.id = id
            self.completion = completion
        }
    }

    /// The messages of one `rd_kafka_t`. Being in `pending` means "holds the +1 retain of the
    /// opaque and has not been completed"; whoever removes an entry completes it, so each message
    /// completes exactly once.
    final class DeliveryTracker: Sendable {
        struct State {
            var pending: [UInt64: DeliveryBox] = [:]
            /// Time of the last successful delivery, or when `pending` last became non-empty.
            var lastProgress = ContinuousClock.now
            var consecutiveFailures = 0
            /// Why this instance must be recreated, once known.
            var recreationCause: KafkaError?
            /// Once set, failures are reported with this error instead of their own.
            var failureOverride: KafkaError?
            /// Producer id and epoch at the last statistics report, and whether a delivery
            /// succeeded since.
            var lastProducerId: Int64 = -1
            var lastProducerEpoch: Int64 = -1
            var deliveredSinceStatistics = false

            /// Records why the instance must be recreated (the first cause wins); failures from
            /// now on are reported as "producer recreated".
            mutating func markForRecreation(_ cause: KafkaError) {
                if recreationCause == nil { recreationCause = cause }
                if failureOverride == nil { failureOverride = .producerRecreated(cause: cause) }
            }
        }

        let state = Mutex(State())
        let failureThreshold: Int

        init(failureThreshold: Int) {
            self.failureThreshold = max(1, failureThreshold)
        }

        var count: Int { state.withLock { $0.pending.count } }

        func add(_ box: DeliveryBox) {
            state.withLock {
                if $0.pending.isEmpty { $0.lastProgress = .now }
                $0.pending[box.id] = box
            }
        }

        /// Removes `id` if still pending; true if the caller now owns completing it.
        func remove(_ id: UInt64) -> Bool {
            state.withLock { $0.pending.removeValue(forKey: id) != nil }
        }

        /// Records a cause for recreation (the first one wins) and reports later failures with it.
        func markFatal(_ cause: KafkaError) {
            state.withLock { $0.markForRecreation(cause) }
        }

        func overrideFailures(with error: KafkaError) {
            state.withLock { $0.failureOverride = error }
        }

        /// The delivery-report callback (poll thread).
        func deliveryReport(_ opaque: UnsafeMutableRawPointer?, _ result: Result<KafkaDeliveryReport, KafkaError>) {
            guard let opaque else { return }
            let unmanaged = Unmanaged<DeliveryBox>.fromOpaque(opaque)
            // Safe: the box is retained until it is removed from `pending` below or swept, and
            // sweeping happens only after rd_kafka_destroy, when no report can arrive.
            let id = unmanaged.takeUnretainedValue().id
            let outcome: Result<KafkaDeliveryReport, KafkaError>? = state.withLock { state in
                guard state.pending.removeValue(forKey: id) != nil else { return nil }
                switch result {
                case .success:
                    state.lastProgress = .now
                    state.consecutiveFailures = 0
                    state.deliveredSinceStatistics = true
                    return result
                case .failure(let error):
                    if KafkaError.producerStateCodes.contains(error.code) || error.code == KafkaError.Code.msgTimedOut {
                        state.consecutiveFailures += 1
                        if state.consecutiveFailures >= failureThreshold { state.markForRecreation(error) }
                    }
                    if error.isFatal { state.markForRecreation(error) }
                    return .failure(state.failureOverride ?? error)
                }
            }
            guard let outcome else { return }
            unmanaged.takeRetainedValue().completion(outcome)
        }

        /// Statistics (poll thread): an idempotent producer that keeps bumping its epoch without
        /// delivering anything is retrying UNKNOWN_PRODUCER_ID forever (librdkafka bumps the epoch
        /// locally and never asks the cluster for a new producer id; Tansu after a restart).
        func observe(producerId: Int64, epoch: Int64) {
            state.withLock { state in
                defer {
                    state.lastProducerId = producerId
                    state.lastProducerEpoch = epoch
                    state.deliveredSinceStatistics = false
                }
                guard producerId >= 0, producerId == state.lastProducerId, state.lastProducerEpoch >= 0,
                      epoch - state.lastProducerEpoch >= Int64(failureThreshold),
                      !state.deliveredSinceStatistics, !state.pending.isEmpty, state.recreationCause == nil
                else { return }
                state.markForRecreation(
                    KafkaError(
                        code: KafkaError.Code.unknownProducerId, name: "UNKNOWN_PRODUCER_ID",
                        message: "the idempotent producer bumped its epoch \(epoch - state.lastProducerEpoch) times (to \(epoch)) without a delivery: the cluster does not know its producer id",
                        isFatal: true, isRetriable: false
                    )
                )
            }
        }

        /// Why this instance must be recreated now, if it must: a recorded cause, or messages
        /// pending with no progress for `stallTimeout`.
        func recreationCause(stallTimeout: Duration?) -> KafkaError? {
            state.withLock { state in
                if let cause = state.recreationCause { return cause }
                guard let stallTimeout, !state.pending.isEmpty else { return nil }
                let waited = ContinuousClock.now - state.lastProgress
                guard waited > stallTimeout else { return nil }
                state.markForRecreation(
                    KafkaError(
                        code: KafkaError.Code.msgTimedOut, name: "_MSG_TIMED_OUT",
                        message: "\(state.pending.count) messages in flight and no delivery for \(waited)",
                        isFatal: false, isRetriable: true
                    )
                )
                return state.recreationCause
            }
        }

        /// Completes every message still pending with `error` and releases its retain. Only after
        /// the `rd_kafka_t` was destroyed.
        func sweep(_ error: KafkaError) -> Int {
            let boxes = state.withLock { state in
                defer { state.pending.removeAll() }
                return Array(state.pending.values)
            }
            for box in boxes {
                Unmanaged.passUnretained(box).release()
                box.completion(.failure(error))
            }
            return boxes.count
        }
    }
}
