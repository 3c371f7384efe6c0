import Foundation
import Synchronization
import TestSupport
import Testing
import TributaryKafka

/// The librdkafka wrapper against a real Tansu (memory engine), one broker per test.
@Suite("Kafka client", .serialized)
struct KafkaClientTests {
    @Test func produceWithKeyAndHeadersThenReadBackAllPartitions() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            let configuration = KafkaTest.configuration(tansu)
            let admin = try KafkaAdmin(configuration: configuration, logger: KafkaTest.logger)
            defer { admin.close() }
            let created = try await admin.ensureTopics([KafkaTopicSpecification(name: "readback", partitions: 6)])
            #expect(created == ["readback"])
            #expect(try await admin.metadata().topic("readback")?.partitionCount == 6)

            let producer = try KafkaProducer(configuration: configuration, logger: KafkaTest.logger)
            defer { producer.shutdown() }
            var sent: [KafkaDeliveryReport: KafkaOutgoingMessage] = [:]
            for i in 0..<300 {
                let message = KafkaOutgoingMessage(
                    topic: "readback",
                    key: KafkaTest.bytes("device-\(i % 17)"),
                    value: KafkaTest.bytes("value-\(i)"),
                    headers: [
                        KafkaHeader("mqtt.client_id", KafkaTest.bytes("c\(i % 17)")),
                        KafkaHeader("seq", KafkaTest.bytes("\(i)")),
                        KafkaHeader("mqtt.client_id", []),  // repeated name and empty value: order kept
                    ]
                )
                let report = try await producer.send(message)
                #expect(report.topic == "readback")
                sent[report] = message
            }
            #expect(sent.count == 300)
            #expect(Set(sent.keys.map(\.partition)).count > 1, "keys spread over partitions")
            // The same key always lands on the same partition.
            let partitionsByKey = Dictionary(grouping: sent, by: { $0.value.key! }).mapValues { Set($0.map(\.key.partition)) }
            #expect(partitionsByKey.values.allSatisfy { $0.count == 1 })

            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: configuration, logger: KafkaTest.logger, handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign(topic: "readback", partitionCount: 6, from: .beginning)
            let records = try await collector.waitFor(count: 300)
            #expect(records.count == 300)
            for record in records {
                let report = KafkaDeliveryReport(topic: record.topic, partition: record.partition, offset: record.offset)
                let message = try #require(sent[report], "record at \(report) was never produced")
                #expect(record.key == message.key)
                #expect(record.value == message.value)
                #expect(record.headers == message.headers)
                #expect(record.timestampMilliseconds != nil)
            }
            // Offsets within each partition arrive in order.
            for partition in Int32(0)..<6 {
                let offsets = records.filter { $0.partition == partition }.map(\.offset)
                #expect(offsets == offsets.sorted())
                // The cached high watermark (from Fetch, correct on Tansu) equals the records written.
                let expected = Int64(sent.keys.filter { $0.partition == partition }.count)
                try await KafkaTest.waitUntil(timeout: .seconds(5), "high watermark of partition \(partition)") {
                    consumer.highWatermark(topic: "readback", partition: partition) == expected
                }
            }
        }
    }

    /// "From now on" without ListOffsets (wrong on Tansu): high watermarks from Fetch responses.
    @Test func highWatermarksFromFetchAreRightOnTansu() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            let configuration = KafkaTest.configuration(tansu)
            let admin = try KafkaAdmin(configuration: configuration)
            defer { admin.close() }
            try await admin.ensureTopics([KafkaTopicSpecification(name: "marks", partitions: 3)])
            let producer = try KafkaProducer(configuration: configuration)
            defer { producer.shutdown() }
            // Several batches per partition (ListOffsets "latest" on Tansu points into the last one).
            for round in 0..<5 {
                let ledger = CompletionLedger()
                for i in 0..<20 {
                    try producer.send(KafkaOutgoingMessage(topic: "marks", value: KafkaTest.bytes("\(round)-\(i)"), partition: Int32(i % 2)), completion: ledger.completion(i))
                }
                try producer.flush(timeout: .seconds(10))
            }
            let partitions = (Int32(0)..<3).map { KafkaTopicPartition(topic: "marks", partition: $0) }
            var marks: [KafkaTopicPartition: Int64] = [:]
            for _ in 0..<5 {  // every probe (leaders first, short fetch wait) sees the same ends
                marks = try await admin.highWatermarks(for: partitions)
                #expect(marks == [partitions[0]: 50, partitions[1]: 50, partitions[2]: 0])
            }

            // Consuming from there yields exactly the records produced afterwards.
            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: configuration, handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign(partitions.map { KafkaPartitionAssignment(topic: "marks", partition: $0.partition, offset: .offset(marks[$0]!)) })
            let new = try await producer.send(KafkaOutgoingMessage(topic: "marks", value: KafkaTest.bytes("new"), partition: 1))
            let records = try await collector.waitFor(count: 1)
            #expect(records.map(\.value) == [KafkaTest.bytes("new")])
            #expect(records.first?.offset == new.offset)
            #expect(new.offset == 50)
        }
    }

    @Test func tombstoneAndEmptyValueAreDistinct() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            let configuration = KafkaTest.configuration(tansu)
            let admin = try KafkaAdmin(configuration: configuration)
            try await admin.ensureTopics([.compacted(name: "retained", partitions: 1)])
            let producer = try KafkaProducer(configuration: configuration, logger: KafkaTest.logger)
            defer { producer.shutdown() }
            let key = KafkaTest.bytes("sensors/1/temp")
            _ = try await producer.send(KafkaOutgoingMessage(topic: "retained", key: key, value: KafkaTest.bytes("21.5")))
            _ = try await producer.send(KafkaOutgoingMessage(topic: "retained", key: key, value: nil))
            _ = try await producer.send(KafkaOutgoingMessage(topic: "retained", key: key, value: []))

            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: configuration, handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign([KafkaPartitionAssignment(topic: "retained", partition: 0, offset: .offset(1))])
            let records = try await collector.waitFor(count: 2)
            #expect(records.map(\.offset) == [1, 2])
            #expect(records[0].key == key)
            #expect(records[0].value == nil, "tombstone")
            #expect(records[1].value == [], "empty value")
        }
    }

    @Test func topicCreationWithConfigsAndAlreadyExists() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            let admin = try KafkaAdmin(configuration: KafkaTest.configuration(tansu))
            defer { admin.close() }
            let topics = [
                KafkaTopicSpecification(name: "mqtt.messages", partitions: 6, configs: ["retention.ms": "604800000"]),
                KafkaTopicSpecification.compacted(name: "mqtt.sessions", partitions: 3),
            ]
            #expect(topics[1].configs["cleanup.policy"] == "compact")
            let first = try await admin.createTopics(topics)
            #expect(first == ["mqtt.messages": .created, "mqtt.sessions": .created])
            let second = try await admin.createTopics(topics)
            #expect(second == ["mqtt.messages": .alreadyExists, "mqtt.sessions": .alreadyExists])
            let metadata = try await admin.metadata()
            #expect(metadata.topic("mqtt.messages")?.partitionCount == 6)
            #expect(metadata.topic("mqtt.sessions")?.partitionCount == 3)
            #expect(metadata.brokers.map(\.port) == [Int32(tansu.port)])
            // ensureTopics creates only what is missing.
            let created = try await admin.ensureTopics(topics + [KafkaTopicSpecification(name: "mqtt.connections", partitions: 2)])
            #expect(created == ["mqtt.connections"])
            // A refusal is an error that names the topic and the reason. Tansu accepts any
            // specification, so this one is refused by our validation before it is sent.
            do throws(KafkaError) {
                try await admin.createTopics([KafkaTopicSpecification(name: "bad", partitions: 0)])
                Issue.record("zero partitions accepted")
            } catch {
                #expect(error.message.contains("bad"), "\(error)")
                #expect(error.message.contains("partitions"), "\(error)")
                #expect(!error.isRetriable)
            }
            // A cluster that does not answer: a clear, retriable error, not a hang.
            _ = await tansu.process.stop(signal: SIGINT)
            do throws(KafkaError) {
                try await admin.createTopics([KafkaTopicSpecification(name: "late", partitions: 1)], timeout: .seconds(1))
                Issue.record("created a topic on a stopped broker")
            } catch {
                #expect(error.code == KafkaError.Code.timedOut || error.code == KafkaError.Code.transport, "\(error)")
                #expect(error.isRetriable, "\(error)")
            }
        }
    }

    @Test func deliveryFailuresAreErrorsNeverSuccess() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            var configuration = KafkaTest.configuration(tansu)
            configuration.deliveryTimeout = .seconds(2)
            configuration.stallTimeout = nil
            let admin = try KafkaAdmin(configuration: configuration)
            try await admin.ensureTopics([KafkaTopicSpecification(name: "one", partitions: 1)])
            admin.close()
            let producer = try KafkaProducer(configuration: configuration, logger: KafkaTest.logger)
            defer { producer.shutdown() }

            // A partition that does not exist.
            await #expect(throws: KafkaError.self) {
                _ = try await producer.send(KafkaOutgoingMessage(topic: "one", value: [1], partition: 7))
            }
            _ = try await producer.send(KafkaOutgoingMessage(topic: "one", value: [1]))

            // A stopped broker: every message fails once the delivery timeout passes.
            _ = await tansu.process.stop(signal: SIGINT)
            let ledger = CompletionLedger()
            for i in 0..<20 {
                try producer.send(KafkaOutgoingMessage(topic: "one", value: [UInt8(i)]), completion: ledger.completion(i))
            }
            // A flush cannot finish while the broker is away: it times out as asked.
            let flushStarted = ContinuousClock.now
            do throws(KafkaError) {
                try producer.flush(timeout: .milliseconds(300))
                Issue.record("flush succeeded with a stopped broker")
            } catch {
                #expect(error.code == KafkaError.Code.timedOut, "\(error)")
            }
            #expect(ContinuousClock.now - flushStarted < .seconds(1))
            try await KafkaTest.waitUntil(timeout: .seconds(10), "all completions") { ledger.pending == 0 }
            for (id, entry) in ledger.snapshot {
                #expect(entry.calls == 1, "message \(id)")
                guard case .failure(let error) = entry.result else {
                    Issue.record("message \(id) reported delivered by a stopped broker")
                    continue
                }
                // Timed out; after `recreateAfterConsecutiveFailures` timeouts in a row the
                // producer is recreated and the rest fail with that (fatal, retriable) error.
                #expect(error.code == KafkaError.Code.msgTimedOut || error.code == KafkaError.Code.fatal, "\(error)")
                #expect(error.isRetriable)
            }
        }
    }

    @Test func fullLocalQueueRejectsAtOnce() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            var configuration = KafkaTest.configuration(tansu)
            configuration.maxQueuedMessages = 10
            configuration.linger = .seconds(2)  // keep them queued
            let producer = try KafkaProducer(configuration: configuration, logger: KafkaTest.logger)
            let ledger = CompletionLedger()
            var rejected: KafkaError?
            for i in 0..<11 {
                do throws(KafkaError) {
                    try producer.send(KafkaOutgoingMessage(topic: "queue", value: [1]), completion: ledger.completion(i))
                } catch {
                    ledger.rejected(i)
                    rejected = error
                }
            }
            #expect(rejected?.code == KafkaError.Code.queueFull)
            #expect(rejected?.isRetriable == true)
            #expect(producer.inFlightCount == 10)
            producer.shutdown()
            // Shutdown flushed them (or failed them); each completed once; none leaked.
            #expect(ledger.snapshot.count == 10)
            #expect(ledger.snapshot.values.allSatisfy { $0.calls == 1 })
            #expect(throws: KafkaError.self) {
                try producer.send(KafkaOutgoingMessage(topic: "queue", value: [1])) { _ in }
            }
            producer.shutdown()  // idempotent
        }
    }

    /// Completions run on the producer's poll thread only, also while another thread flushes, and a
    /// completion that calls flush gets an error instead of waiting for itself.
    @Test func completionsRunOnThePollThread() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            var configuration = KafkaTest.configuration(tansu)
            configuration.linger = .milliseconds(300)
            let admin = try KafkaAdmin(configuration: configuration)
            defer { admin.close() }
            try await admin.ensureTopics([KafkaTopicSpecification(name: "threads", partitions: 1)])
            let producer = try KafkaProducer(configuration: configuration)
            defer { producer.shutdown() }
            _ = try await producer.send(KafkaOutgoingMessage(topic: "threads", value: [0]))  // metadata known
            let threads = Mutex<Set<String>>([])
            let flushFromCompletion = Mutex<KafkaError?>(nil)
            let ledger = CompletionLedger()
            for i in 0..<50 {
                let record = ledger.completion(i)
                try producer.send(KafkaOutgoingMessage(topic: "threads", value: [UInt8(i)])) { result in
                    let name = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "?"
                    threads.withLock { _ = $0.insert("\(pthread_self()) \(name.trimmingCharacters(in: .whitespacesAndNewlines))") }
                    if i == 0 {
                        do throws(KafkaError) { try producer.flush(timeout: .seconds(1)) } catch { flushFromCompletion.withLock { $0 = error } }
                    }
                    record(result)
                }
            }
            let started = ContinuousClock.now
            try producer.flush(timeout: .seconds(10))  // returns before the 300 ms linger would end
            #expect(ContinuousClock.now - started < .milliseconds(250))
            #expect(ledger.pending == 0)
            #expect(ledger.snapshot.values.allSatisfy { if case .success = $0.result { $0.calls == 1 } else { false } })
            let seen = threads.withLock { $0 }
            #expect(seen.count == 1 && seen.first?.hasSuffix(" kafka-producer") == true, "\(seen)")
            #expect(flushFromCompletion.withLock { $0 }?.code == KafkaError.Code.state)
        }
    }

    @Test func statisticsAreDelivered() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            var configuration = KafkaTest.configuration(tansu)
            configuration.statisticsInterval = .milliseconds(100)
            let admin = try KafkaAdmin(configuration: configuration)
            defer { admin.close() }
            try await admin.ensureTopics([KafkaTopicSpecification(name: "stats", partitions: 1)])
            let latest = Mutex<KafkaStatistics?>(nil)
            let producer = try KafkaProducer(configuration: configuration, statistics: { stats in latest.withLock { $0 = stats } })
            defer { producer.shutdown() }
            for i in 0..<50 {
                _ = try await producer.send(KafkaOutgoingMessage(topic: "stats", value: KafkaTest.bytes("\(i)")))
            }
            try await KafkaTest.waitUntil(timeout: .seconds(5), "statistics with 50 messages sent") {
                (latest.withLock { $0?.transmittedMessages } ?? 0) >= 50
            }
            let stats = try #require(latest.withLock { $0 })
            #expect(stats.transmittedBytes > 0)
            #expect(stats.brokers.contains { $0.state == "UP" })

            // The consumer's statistics count what it received.
            let consumed = Mutex<KafkaStatistics?>(nil)
            let consumer = try KafkaConsumer(
                configuration: configuration, statistics: { stats in consumed.withLock { $0 = stats } }, handler: { _ in }
            )
            defer { consumer.close() }
            try consumer.assign(topic: "stats", partitionCount: 1, from: .beginning)
            try await KafkaTest.waitUntil(timeout: .seconds(5), "consumer statistics with 50 messages received") {
                (consumed.withLock { $0?.receivedMessages } ?? 0) >= 50
            }
        }
    }
}
