import Foundation
import Logging

/// Cluster metadata and topic creation.
///
/// The calls block (up to their timeout) on the calling thread; from async code use the `async`
/// variants, which run them on a dedicated thread.
public final class KafkaAdmin: Sendable {
    /// What `createTopics` did with a topic.
    public enum TopicCreation: Sendable, Hashable {
        case created
        case alreadyExists
    }

    private let client: RDKafkaClient
    private let configuration: KafkaConfiguration
    private let logger: Logger

    public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "tributary.kafka.admin")) throws(KafkaError) {
        self.client = try RDKafkaClient.make(role: .admin, configuration: configuration, events: RDKafkaClient.Events(), logger: logger)
        self.configuration = configuration
        self.logger = logger
    }

    deinit {
        client.destroy()
    }

    /// Destroys the client; later calls throw `_DESTROY`. Idempotent.
    public func close() {
        client.destroy()
    }

    /// Brokers and all topics with their partition counts.
    public func metadata(timeout: Duration = .seconds(10)) throws(KafkaError) -> KafkaClusterMetadata {
        try client.metadata(timeout: timeout)
    }

    /// Creates `topics`. A topic that already exists counts as success (`.alreadyExists`; its
    /// partitions and configs are not compared). If the cluster refuses any other topic, throws
    /// one error naming every refused topic with the cluster's reason (the others may have been
    /// created). Invalid specifications (name, partitions, replication factor) are refused before
    /// anything is sent, because some clusters (Tansu) accept them.
    @discardableResult
    public func createTopics(_ topics: [KafkaTopicSpecification], timeout: Duration = .seconds(30)) throws(KafkaError) -> [String: TopicCreation] {
        guard !topics.isEmpty else { return [:] }
        for topic in topics {
            if let problem = topic.validationProblem {
                throw KafkaError.invalidArgument("topic \(topic.name): \(problem)")
            }
        }
        let outcome = try client.createTopics(topics, timeout: timeout)
        var result: [String: TopicCreation] = [:]
        var refused: [(String, KafkaError)] = []
        for topic in topics {
            switch outcome[topic.name] {
            case .some(.none):
                result[topic.name] = .created
            case .some(.some(let error)) where error.code == KafkaError.Code.topicAlreadyExists:
                result[topic.name] = .alreadyExists
            case .some(.some(let error)):
                refused.append((topic.name, error))
            case .none:
                refused.append((topic.name, KafkaError(code: KafkaError.Code.fail, name: "_FAIL", message: "no result for this topic")))
            }
            if let created = result[topic.name] {
                logger.debug("Kafka topic ensured", metadata: ["kafka.topic": "\(topic.name)", "kafka.outcome": "\(created)"])
            }
        }
        if let first = refused.first?.1 {
            let detail = refused.map { "\($0.0): \($0.1.name) (\($0.1.message))" }.joined(separator: "; ")
            throw KafkaError(
                code: first.code,
                name: first.name,
                message: "the cluster refused to create topics: \(detail)",
                isFatal: false,
                isRetriable: refused.allSatisfy { $0.1.isRetriable }
            )
        }
        return result
    }

    /// Creates those of `topics` that the cluster does not report yet, then waits (up to
    /// `timeout`) until Metadata lists all of them. Returns the names it created.
    @discardableResult
    public func ensureTopics(_ topics: [KafkaTopicSpecification], timeout: Duration = .seconds(30)) throws(KafkaError) -> [String] {
        let deadline = ContinuousClock.now + timeout
        let existing = Set(try metadata(timeout: timeout).topics.filter { $0.error == nil }.map(\.name))
        let missing = topics.filter { !existing.contains($0.name) }
        let outcome = try createTopics(missing, timeout: timeout)
        // Creation is asynchronous on Kafka: poll Metadata until every topic is listed.
        while true {
            let listed = try metadata(timeout: max(.milliseconds(100), deadline - .now))
            if topics.allSatisfy({ listed.topic($0.name) != nil }) { break }
            guard ContinuousClock.now < deadline else {
                throw KafkaError(code: KafkaError.Code.timedOut, name: "_TIMED_OUT", message: "created topics did not appear in metadata", isRetriable: true)
            }
            Thread.sleep(forTimeInterval: 0.05)  // polling a condition with a deadline
        }
        return missing.map(\.name).filter { outcome[$0] == .created }
    }

    /// The high watermark (offset of the next record to be written) of each partition, learnt
    /// from Fetch responses: a short-lived consumer fetches (at most about 1 KiB per partition)
    /// from the start of each partition and reads the watermark librdkafka caches from the
    /// responses (`rd_kafka_get_watermark_offsets`). Unlike ListOffsets "latest" (what
    /// `KafkaOffset.end` and `rd_kafka_query_watermark_offsets` use), this is right on Tansu, so
    /// "consume from now on" is `.offset(highWatermarks(...)[partition])`. A probe takes a few round
    /// trips (10–80 ms on Tansu). Throws `_TIMED_OUT` if some partition did not answer within `timeout`.
    public func highWatermarks(
        for partitions: [KafkaTopicPartition], timeout: Duration = .seconds(10)
    ) throws(KafkaError) -> [KafkaTopicPartition: Int64] {
        guard !partitions.isEmpty else { return [:] }
        var probe = configuration
        probe.clientId = configuration.clientId + "-watermarks"
        probe.statisticsInterval = nil
        // One small Fetch per partition is all a probe reads; prefetch limits above what that returns, so
        // that no partition waits out fetch.queue.backoff.ms (1 s) for a "full" queue before its Fetch.
        probe.maxPrefetchMessages = 1000
        probe.maxPrefetchKilobytes = 256
        probe.properties["max.partition.fetch.bytes"] = "1024"
        // Only the Fetch response's high watermark is wanted: a broker that holds a Fetch of an empty
        // partition until fetch.wait.max.ms (Tansu does) should answer it soon.
        probe.fetchWaitMax = .milliseconds(5)
        let consumer = try RDKafkaClient.make(role: .consumer, configuration: probe, events: RDKafkaClient.Events(), logger: logger)
        defer { consumer.destroy() }
        // Leaders first: a partition assigned before the client knows its leader waits for librdkafka's
        // offset-query retry timer (500 ms) before its first Fetch; with the metadata in the cache the
        // offset query and the Fetch go out at once.
        _ = try? consumer.metadata(timeout: timeout)
        try consumer.assign(partitions.map { KafkaPartitionAssignment(topic: $0.topic, partition: $0.partition, offset: .beginning) })
        let deadline = ContinuousClock.now + timeout
        var result: [KafkaTopicPartition: Int64] = [:]
        while true {
            for partition in partitions where result[partition] == nil {
                if let marks = consumer.cachedWatermarks(topic: partition.topic, partition: partition.partition) {
                    result[partition] = marks.high
                }
            }
            if result.count == partitions.count { return result }
            guard ContinuousClock.now < deadline else {
                let missing = partitions.filter { result[$0] == nil }.map { "\($0.topic)[\($0.partition)]" }
                throw KafkaError(
                    code: KafkaError.Code.timedOut, name: "_TIMED_OUT",
                    message: "no Fetch response within \(timeout) for \(missing.joined(separator: ", "))", isRetriable: true
                )
            }
            // Waits for the next event (records are discarded); the fetches run on librdkafka's threads.
            _ = consumer.consumerPoll(timeout: .milliseconds(20), maxCount: 100)
        }
    }

    /// `highWatermarks` on a dedicated thread.
    public func highWatermarks(
        for partitions: [KafkaTopicPartition], timeout: Duration = .seconds(10)
    ) async throws(KafkaError) -> [KafkaTopicPartition: Int64] {
        try await offload { () throws(KafkaError) in try self.highWatermarks(for: partitions, timeout: timeout) }
    }

    /// `metadata` on a dedicated thread.
    public func metadata(timeout: Duration = .seconds(10)) async throws(KafkaError) -> KafkaClusterMetadata {
        try await offload { () throws(KafkaError) in try self.metadata(timeout: timeout) }
    }

    /// `createTopics` on a dedicated thread.
    @discardableResult
    public func createTopics(_ topics: [KafkaTopicSpecification], timeout: Duration = .seconds(30)) async throws(KafkaError) -> [String: TopicCreation] {
        try await offload { () throws(KafkaError) in try self.createTopics(topics, timeout: timeout) }
    }

    /// `ensureTopics` on a dedicated thread.
    @discardableResult
    public func ensureTopics(_ topics: [KafkaTopicSpecification], timeout: Duration = .seconds(30)) async throws(KafkaError) -> [String] {
        try await offload { () throws(KafkaError) in try self.ensureTopics(topics, timeout: timeout) }
    }
}

/// Runs a blocking call on a new thread and awaits its result.
func offload<T: Sendable>(_ body: @escaping @Sendable () throws(KafkaError) -> T) async throws(KafkaError) -> T {
    let result: Result<T, KafkaError> = await withCheckedContinuation { continuation in
        let thread = Thread {
            continuation.resume(returning: Result { () throws(KafkaError) in try body() })
        }
        thread.name = "kafka-admin"
        thread.start()
    }
    return try result.get()
}
