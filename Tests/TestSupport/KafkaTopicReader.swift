import Foundation
import Logging
import Synchronization
import TributaryKafka

/// Reads a Kafka topic back for assertions: every partition, from the beginning up to its high watermark,
/// with keys and headers.
///
/// The end of each partition is the high watermark taken from Fetch responses (`KafkaAdmin.highWatermarks`),
/// never a ListOffsets answer, which Tansu gets wrong (docs/TESTING.md). Compaction is not applied by Tansu,
/// so callers asserting on compacted topics should use `latestByKey`.
public enum KafkaTopicReader {
    public static func readAll(
        bootstrapServers: String, topic: String, timeout: Duration = .seconds(30)
    ) async throws -> [KafkaRecord] {
        var configuration = KafkaConfiguration(bootstrapServers: bootstrapServers, clientId: "tributary-test-reader")
        configuration.properties["topic.metadata.refresh.interval.ms"] = "500"
        configuration.fetchWaitMax = .milliseconds(20)
        configuration.pollTimeout = .milliseconds(50)
        var logger = Logger(label: "tributary.test.kafka-reader")
        logger.logLevel = .warning

        let admin = try KafkaAdmin(configuration: configuration, logger: logger)
        defer { admin.close() }
        let metadata = try await admin.metadata()
        guard let partitionCount = metadata.topics.first(where: { $0.name == topic })?.partitionCount, partitionCount > 0 else {
            throw HarnessError("topic \(topic) does not exist on \(bootstrapServers)")
        }
        let partitions = (0..<partitionCount).map { KafkaTopicPartition(topic: topic, partition: $0) }
        let ends = try await admin.highWatermarks(for: partitions, timeout: timeout)
        let wanted = partitions.filter { (ends[$0] ?? 0) > 0 }
        if wanted.isEmpty { return [] }

        let (stream, continuation) = AsyncStream<[KafkaRecord]>.makeStream()
        let consumer = try KafkaConsumer(configuration: configuration, logger: logger) { batch in
            continuation.yield(batch)
        }
        defer {
            consumer.close()
            continuation.finish()
        }
        try consumer.assign(wanted.map { KafkaPartitionAssignment(topic: topic, partition: $0.partition, offset: .beginning) })

        let timer = Task {
            try? await Task.sleep(for: timeout)  // the deadline
            continuation.finish()
        }
        defer { timer.cancel() }
        var records: [KafkaRecord] = []
        var next: [Int32: Int64] = [:]
        func complete() -> Bool { wanted.allSatisfy { (next[$0.partition] ?? 0) >= (ends[$0] ?? 0) } }
        for await batch in stream {
            for record in batch {
                records.append(record)
                next[record.partition] = max(next[record.partition] ?? 0, record.offset + 1)
            }
            if complete() { break }
        }
        guard complete() else {
            let progress = wanted.map { "[\($0.partition)] \(next[$0.partition] ?? 0)/\(ends[$0] ?? 0)" }.joined(separator: " ")
            throw HarnessError("reading \(topic) timed out after \(timeout): \(progress)")
        }
        return records.sorted { ($0.partition, $0.offset) < ($1.partition, $1.offset) }
    }

    /// What a compacted reader would keep: the latest record per key (tombstones remove the key).
    public static func latestByKey(_ records: [KafkaRecord]) -> [[UInt8]: KafkaRecord] {
        var latest: [[UInt8]: KafkaRecord] = [:]
        for record in records {
            guard let key = record.key else { continue }
            if record.value == nil { latest[key] = nil } else { latest[key] = record }
        }
        return latest
    }
}

extension KafkaRecord {
    /// The first header named `name`, as UTF-8 text.
    public func header(_ name: String) -> String? {
        headers.first(where: { $0.name == name }).map { String(decoding: $0.value, as: UTF8.self) }
    }
}
