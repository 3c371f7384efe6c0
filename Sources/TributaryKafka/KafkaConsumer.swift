import Logging
import Synchronization

/// A consumer of manually assigned partitions (no consumer group, no offset commits).
///
/// - **Delivery**: a dedicated thread polls librdkafka and calls `handler` with batches of up to
///   `maxBatchSize` records, in offset order per partition. It waits for the first record of a
///   batch (at most `pollTimeout`, returning as soon as one arrives) and then takes only what is
///   already buffered, so batches never wait to fill up.
/// - **Backpressure**: `handler` runs on the poll thread and nothing is polled while it runs. If
///   it is slow, librdkafka's prefetch queue fills up to `maxPrefetchKilobytes` /
///   `maxPrefetchMessages` and fetching stops: memory stays bounded. `pause` / `resume` stop and
///   restart fetching of partitions explicitly.
/// - **End of log**: `highWatermark` returns the value cached from Fetch responses
///   (`rd_kafka_get_watermark_offsets`), not a ListOffsets query
///   (`rd_kafka_query_watermark_offsets`): Tansu answers ListOffsets "latest" wrongly, while the
///   high watermark in its Fetch responses is right. The cached value is `nil` until the first
///   fetch of that partition has been answered.
/// - **Recreated logs**: a partition whose position is beyond the end of its log (the cluster lost
///   its data) is reported to `errors` as OFFSET_OUT_OF_RANGE and consumed again from the
///   beginning, as Kafka does with `auto.offset.reset=earliest` (Tansu does not report it).
/// - **Closing**: `close()` may be called at any time, from any thread, several times; after it
///   returns (when not called from `handler`) the handler is not called again. Releasing the last
///   reference closes in the background.
public final class KafkaConsumer: Sendable {
    private let core: Core

    /// Creates the consumer and starts its poll thread; nothing is consumed until `assign`.
    /// - Parameters:
    ///   - statistics: called on the poll thread every `statisticsInterval` (if set).
    ///   - errors: consumer errors not tied to a record (e.g. a partition that does not exist),
    ///     called on the poll thread.
    ///   - handler: receives each batch on the poll thread.
    public init(
        configuration: KafkaConfiguration,
        logger: Logger = Logger(label: "tributary.kafka.consumer"),
        statistics: (@Sendable (KafkaStatistics) -> Void)? = nil,
        errors: (@Sendable (KafkaError) -> Void)? = nil,
        handler: @escaping @Sendable ([KafkaRecord]) -> Void
    ) throws(KafkaError) {
        var events = RDKafkaClient.Events()
        events.error = { error in errors?(error) }
        if let statistics {
            events.statistics = { json in
                if let parsed = KafkaStatistics(json: json) { statistics(parsed) }
            }
        }
        let client = try RDKafkaClient.make(role: .consumer, configuration: configuration, events: events, logger: logger)
        core = Core(client: client, configuration: configuration, logger: logger, errors: errors, handler: handler)
        core.start()
    }

    deinit {
        core.beginClose()
    }

    /// Consumes exactly these partitions from these offsets, replacing any previous assignment.
    public func assign(_ assignments: [KafkaPartitionAssignment]) throws(KafkaError) {
        try core.client.assign(assignments)
    }

    /// Assigns every partition `0..<partitionCount` of `topic` from `offset`.
    public func assign(topic: String, partitionCount: Int32, from offset: KafkaOffset) throws(KafkaError) {
        try assign((0..<partitionCount).map { KafkaPartitionAssignment(topic: topic, partition: $0, offset: offset) })
    }

    /// Moves assigned partitions to these offsets; records librdkafka had already fetched beyond them
    /// are discarded. Waits up to `timeout` for librdkafka to apply it.
    public func seek(_ assignments: [KafkaPartitionAssignment], timeout: Duration = .seconds(1)) throws(KafkaError) {
        try core.client.seek(assignments, timeout: timeout)
    }

    /// Stops fetching `partitions` (all assigned ones if `nil`); records already buffered may
    /// still be delivered.
    public func pause(_ partitions: [KafkaTopicPartition]? = nil) throws(KafkaError) {
        try core.client.setPaused(true, partitions: partitions)
    }

    /// Resumes fetching `partitions` (all assigned ones if `nil`).
    public func resume(_ partitions: [KafkaTopicPartition]? = nil) throws(KafkaError) {
        try core.client.setPaused(false, partitions: partitions)
    }

    /// The partition's high watermark (offset of the next record to be written) as of the last
    /// Fetch response, or `nil` before the first one (see the type's documentation for why this
    /// is not a ListOffsets query).
    public func highWatermark(topic: String, partition: Int32) -> Int64? {
        core.client.cachedWatermarks(topic: topic, partition: partition)?.high
    }

    /// Stops polling and destroys the client. Idempotent; safe from any thread. From `handler`
    /// it returns at once and the poll thread stops after the handler returns.
    public func close() {
        core.beginClose()
        core.thread.join()
    }
}

extension KafkaConsumer {
    final class Core: Sendable {
        let client: RDKafkaClient
        let configuration: KafkaConfiguration
        let logger: Logger
        let errors: (@Sendable (KafkaError) -> Void)?
        let handler: @Sendable ([KafkaRecord]) -> Void
        let closing = Atomic<Bool>(false)
        let thread = KafkaPollThread(name: "kafka-consumer")
        /// How often the poll thread looks for positions beyond the end of the log.
        static let endCheckInterval = Duration.milliseconds(500)

        init(
            client: RDKafkaClient, configuration: KafkaConfiguration, logger: Logger,
            errors: (@Sendable (KafkaError) -> Void)?, handler: @escaping @Sendable ([KafkaRecord]) -> Void
        ) {
            self.client = client
            self.configuration = configuration
            self.logger = logger
            self.errors = errors
            self.handler = handler
        }

        func start() {
            thread.start { [self] in run() }
        }

        func beginClose() {
            guard closing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
            client.wakeUp()
        }

        private func run() {
            let batchSize = max(1, configuration.maxBatchSize)
            var lastEndCheck = ContinuousClock.now
            while !closing.load(ordering: .acquiring) {
                let records = client.consumerPoll(timeout: configuration.pollTimeout, maxCount: batchSize)
                if !records.isEmpty, !closing.load(ordering: .acquiring) {
                    handler(records)
                }
                if ContinuousClock.now - lastEndCheck >= Self.endCheckInterval {
                    lastEndCheck = .now
                    restartPartitionsBeyondEnd()
                }
            }
            client.destroy()
            logger.debug("Kafka consumer closed")
        }

        /// Does what Kafka's OFFSET_OUT_OF_RANGE with `auto.offset.reset=earliest` does, for
        /// clusters (Tansu) that answer a fetch beyond the end of a recreated log with nothing:
        /// reports the partition (`errors`, code OFFSET_OUT_OF_RANGE) and restarts it from the
        /// beginning.
        private func restartPartitionsBeyondEnd() {
            let beyond = client.partitionsBeyondEnd()
            guard !beyond.isEmpty else { return }
            for (partition, position, high) in beyond {
                let error = KafkaError(
                    code: KafkaError.Code.offsetOutOfRange,
                    name: "OFFSET_OUT_OF_RANGE",
                    message: "\(partition.topic)[\(partition.partition)]: position \(position) is beyond the end of the log (\(high)); the log was truncated or recreated, consuming it from the beginning",
                    isRetriable: false
                )
                logger.debug(
                    "Kafka partition restarted from the beginning",
                    metadata: ["kafka.topic": "\(partition.topic)", "kafka.partition": "\(partition.partition)", "kafka.error": "\(error)"]
                )
                errors?(error)
            }
            do {
                try client.seek(beyond.map { KafkaPartitionAssignment(topic: $0.partition.topic, partition: $0.partition.partition, offset: .beginning) }, timeout: .seconds(1))
            } catch {
                logger.debug("Kafka seek failed", metadata: ["kafka.error": "\(error)"])
                errors?(error)
            }
        }
    }
}
