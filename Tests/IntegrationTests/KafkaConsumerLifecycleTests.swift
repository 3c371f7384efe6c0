import Foundation
import Synchronization
import TestSupport
import Testing
import TributaryKafka

/// Closing and releasing clients at awkward moments must neither crash nor leak completions
/// (swift-kafka-client #147 crashed when a consumer was dropped early).
@Suite("Kafka client lifecycle", .serialized)
struct KafkaConsumerLifecycleTests {
    /// Produces `count` small records to a fresh `topic` with `partitions` partitions.
    private func seed(_ tansu: TansuBroker, topic: String, partitions: Int32 = 2, count: Int) async throws {
        let admin = try KafkaAdmin(configuration: KafkaTest.configuration(tansu))
        defer { admin.close() }
        try await admin.ensureTopics([KafkaTopicSpecification(name: topic, partitions: partitions)])
        let producer = try KafkaProducer(configuration: KafkaTest.configuration(tansu))
        defer { producer.shutdown() }
        let ledger = CompletionLedger()
        for i in 0..<count {
            try producer.send(KafkaOutgoingMessage(topic: topic, value: KafkaTest.bytes("r\(i)")), completion: ledger.completion(i))
        }
        try producer.flush(timeout: .seconds(10))
        #expect(ledger.snapshot.values.allSatisfy { if case .success = $0.result { true } else { false } })
    }

    @Test func closeWhileTheHandlerIsBusy() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            try await seed(tansu, topic: "busy", count: 2_000)
            var configuration = KafkaTest.configuration(tansu)
            configuration.maxBatchSize = 50
            let closed = Atomic<Bool>(false)
            let callsAfterClose = Atomic<Int>(0)
            let batches = Atomic<Int>(0)
            let consumer = try KafkaConsumer(configuration: configuration) { _ in
                if closed.load(ordering: .acquiring) { callsAfterClose.add(1, ordering: .relaxed) }
                batches.add(1, ordering: .relaxed)
                usleep(20_000)  // a slow handler: nothing is polled meanwhile (backpressure)
            }
            try consumer.assign(topic: "busy", partitionCount: 2, from: .beginning)
            try await KafkaTest.waitUntil(timeout: .seconds(10), "a first batch") { batches.load(ordering: .relaxed) > 0 }
            consumer.close()  // waits for the running handler, then stops
            closed.store(true, ordering: .releasing)
            let seen = batches.load(ordering: .relaxed)
            #expect(seen < 2_000 / 50, "the slow handler did not see everything before close")
            consumer.close()  // idempotent
            #expect(consumer.highWatermark(topic: "busy", partition: 0) == nil, "closed consumer answers without crashing")
            #expect(throws: KafkaError.self) { try consumer.assign(topic: "busy", partitionCount: 1, from: .beginning) }
            #expect(callsAfterClose.load(ordering: .relaxed) == 0)
        }
    }

    @Test func closeFromInsideTheHandler() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            try await seed(tansu, topic: "inside", count: 200)
            let holder = Mutex<KafkaConsumer?>(nil)
            let batches = Atomic<Int>(0)
            let consumer = try KafkaConsumer(configuration: KafkaTest.configuration(tansu)) { _ in
                batches.add(1, ordering: .relaxed)
                holder.withLock { $0 }?.close()  // must not deadlock on its own thread
            }
            holder.withLock { $0 = consumer }
            try consumer.assign(topic: "inside", partitionCount: 2, from: .beginning)
            try await KafkaTest.waitUntil(timeout: .seconds(10), "a batch") { batches.load(ordering: .relaxed) > 0 }
            consumer.close()
            #expect(batches.load(ordering: .relaxed) == 1)
            holder.withLock { $0 = nil }
        }
    }

    @Test func releasingClientsEarlyIsSafe() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            try await seed(tansu, topic: "early", count: 500)
            // A consumer released right after assign, while its thread polls.
            for _ in 0..<5 {
                let collector = RecordCollector()
                var consumer: KafkaConsumer? = try KafkaConsumer(configuration: KafkaTest.configuration(tansu), handler: collector.handler)
                try consumer?.assign(topic: "early", partitionCount: 2, from: .beginning)
                consumer = nil
                _ = consumer
            }
            // A consumer released while records flow.
            let collector = RecordCollector()
            var consumer: KafkaConsumer? = try KafkaConsumer(configuration: KafkaTest.configuration(tansu), handler: collector.handler)
            try consumer?.assign(topic: "early", partitionCount: 2, from: .beginning)
            _ = try await collector.waitFor(count: 1)
            consumer = nil
            _ = consumer

            // A producer released with messages in flight, without shutdown: each completion
            // still fires exactly once (delivered, or failed by the background shutdown).
            let ledger = CompletionLedger()
            var producer: KafkaProducer? = try KafkaProducer(configuration: KafkaTest.configuration(tansu))
            for i in 0..<1_000 {
                try producer?.send(KafkaOutgoingMessage(topic: "early", value: [1]), completion: ledger.completion(i))
            }
            producer = nil
            _ = producer
            try await KafkaTest.waitUntil(timeout: .seconds(15), "completions of a released producer") { ledger.pending == 0 }
            #expect(ledger.snapshot.values.allSatisfy { $0.calls == 1 })

            // An admin released without close.
            var admin: KafkaAdmin? = try KafkaAdmin(configuration: KafkaTest.configuration(tansu))
            _ = try await admin?.metadata()
            admin = nil
            _ = admin
        }
    }

    /// A consumer keeps running across a Tansu restart: its position is beyond the end of the new
    /// log (Tansu answers such fetches with nothing, not OFFSET_OUT_OF_RANGE), so it restarts the
    /// partition from the beginning and delivers what is produced after the restart.
    @Test func consumerContinuesAfterTansuRestart() async throws {
        try await withProcesses { scope in
            let first = try await KafkaTest.startTansu(scope, name: "tansu-before")
            let port = first.port
            try await seed(first, topic: "again", partitions: 1, count: 10)
            let collector = RecordCollector()
            let errors = Mutex<[KafkaError]>([])
            let consumer = try KafkaConsumer(
                configuration: KafkaTest.configuration(first), logger: KafkaTest.logger,
                errors: { error in errors.withLock { $0.append(error) } },
                handler: collector.handler
            )
            defer { consumer.close() }
            try consumer.assign(topic: "again", partitionCount: 1, from: .beginning)
            _ = try await collector.waitFor(count: 10)

            first.process.send(SIGKILL)
            _ = await first.process.waitForExit()
            let second = try await KafkaTest.startTansu(scope, port: port, name: "tansu-after")
            try await seed(second, topic: "again", partitions: 1, count: 5)
            let records = try await collector.waitFor(count: 15, timeout: .seconds(30))
            #expect(records.suffix(5).map(\.offset) == Array(0..<5))
            #expect(records.suffix(5).map(\.value) == (0..<5).map { KafkaTest.bytes("r\($0)") })
            #expect(consumer.highWatermark(topic: "again", partition: 0) == 5)
            // Reported, whether Kafka said so (a real broker) or the consumer noticed (Tansu).
            #expect(errors.withLock { $0 }.contains { $0.code == KafkaError.Code.offsetOutOfRange }, "\(errors.withLock { $0 })")
        }
    }

    @Test func pauseStopsDeliveryAndResumeContinues() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            try await seed(tansu, topic: "paused", partitions: 1, count: 10)
            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: KafkaTest.configuration(tansu), handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign(topic: "paused", partitionCount: 1, from: .beginning)
            _ = try await collector.waitFor(count: 10)
            try consumer.pause()
            try await seed(tansu, topic: "paused", partitions: 1, count: 10)
            // Negative check: nothing arrives while paused (several fetch cycles of 20 ms).
            try await Task.sleep(for: .milliseconds(500))
            #expect(collector.count == 10)
            try consumer.resume()
            let records = try await collector.waitFor(count: 20)
            #expect(records.map(\.offset) == Array(0..<20))
        }
    }
}
