import Foundation
import Synchronization
import TestSupport
import Testing
@_spi(Testing) import TributaryKafka

/// The fatal-error policy of `KafkaProducer`: Tansu's memory engine forgets everything on restart,
/// so an idempotent producer never delivers again; the producer must recreate itself, complete
/// every message exactly once, never report a message delivered that is not in the log, and
/// deliver new messages after the restart.
@Suite("Kafka producer recovery", .serialized)
struct KafkaProducerRecoveryTests {
    /// A fatal error raised by librdkafka (fabricated with rd_kafka_test_fatal_error, as a fenced
    /// producer cannot be provoked on demand): every queued message fails once with a fatal,
    /// retriable error, none of them reaches the log, the producer recreates itself and new sends
    /// succeed.
    @Test func fatalErrorFailsQueuedMessagesOnceAndRecreates() async throws {
        try await withProcesses { scope in
            let tansu = try await KafkaTest.startTansu(scope)
            var configuration = KafkaTest.configuration(tansu)
            configuration.linger = .milliseconds(500)  // keep messages queued when the error hits
            let admin = try KafkaAdmin(configuration: configuration)
            defer { admin.close() }
            try await admin.ensureTopics([KafkaTopicSpecification(name: "fenced", partitions: 2)])
            let recreated = Mutex<[KafkaError]>([])
            let producer = try KafkaProducer(
                configuration: configuration, logger: KafkaTest.logger,
                onRecreated: { cause in recreated.withLock { $0.append(cause) } }
            )
            defer { producer.shutdown() }
            _ = try await producer.send(KafkaOutgoingMessage(topic: "fenced", value: KafkaTest.bytes("before")))

            let ledger = CompletionLedger()
            for i in 0..<100 {
                try producer.send(KafkaOutgoingMessage(topic: "fenced", value: KafkaTest.bytes("queued-\(i)")), completion: ledger.completion(i))
            }
            #expect(producer.triggerFatalErrorForTesting())
            try await KafkaTest.waitUntil(timeout: .seconds(10), "completions after the fatal error") { ledger.pending == 0 }
            try await KafkaTest.waitUntil(timeout: .seconds(10), "recreation") { producer.producerRecreations == 1 }
            for (id, entry) in ledger.snapshot {
                #expect(entry.calls == 1, "message \(id)")
                guard case .failure(let error) = entry.result else {
                    Issue.record("message \(id) reported delivered although it was queued when the producer failed")
                    continue
                }
                #expect(error.isFatal && error.isRetriable && error.code == KafkaError.Code.fatal, "\(error)")
            }
            let cause = try #require(recreated.withLock { $0.first })
            #expect(cause.isFatal)
            #expect(cause.code == KafkaError.Code.outOfOrderSequenceNumber, "\(cause)")

            let report = try await producer.send(KafkaOutgoingMessage(topic: "fenced", value: KafkaTest.bytes("after")))
            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: configuration, handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign(topic: "fenced", partitionCount: 2, from: .beginning)
            let records = try await collector.waitFor(count: 2)
            #expect(Set(records.compactMap(\.value)) == [KafkaTest.bytes("before"), KafkaTest.bytes("after")])
            #expect(records.contains { $0.partition == report.partition && $0.offset == report.offset })
            // Nothing else arrives (the failed messages were never written).
            for partition in Int32(0)..<2 {
                try await KafkaTest.waitUntil(timeout: .seconds(5), "high watermark of partition \(partition)") {
                    consumer.highWatermark(topic: "fenced", partition: partition) != nil
                }
            }
            let total = (Int32(0)..<2).compactMap { consumer.highWatermark(topic: "fenced", partition: $0) }.reduce(0, +)
            #expect(total == 2)
        }
    }

    /// Run twice: with the epoch watchdog (stall timeout at a realistic 10 s, so the epoch
    /// watchdog or a fatal error must be what recovers), and with only the stall watchdog (3 s).
    @Test(arguments: [true, false])
    func producerRecreatesItselfWhenTansuRestartsUnderLoad(watchProducerEpoch: Bool) async throws {
        try await withProcesses("producerRecreatesItselfWhenTansuRestartsUnderLoad-\(watchProducerEpoch)") { scope in
            let first = try await KafkaTest.startTansu(scope, name: "tansu-before")
            let port = first.port
            var configuration = KafkaTest.configuration(first, clientId: "recovery")
            configuration.watchProducerEpoch = watchProducerEpoch
            configuration.stallTimeout = watchProducerEpoch ? .seconds(10) : .seconds(3)
            configuration.deliveryTimeout = .seconds(20)
            let topic = KafkaTopicSpecification(name: "load", partitions: 3)
            let admin = try KafkaAdmin(configuration: configuration)
            try await admin.ensureTopics([topic])

            let recreatedAt = Mutex<[ContinuousClock.Instant]>([])
            let causes = Mutex<[String]>([])
            let producer = try KafkaProducer(
                configuration: configuration, logger: KafkaTest.logger,
                onRecreated: { cause in
                    recreatedAt.withLock { $0.append(.now) }
                    causes.withLock { $0.append("\(cause.name)\(cause.isFatal ? " (fatal)" : "")") }
                }
            )
            let ledger = CompletionLedger()
            let load = LoadState()
            // A steady stream of sends (about 500/s), as the broker would produce under load.
            let sender = Task.detached { @Sendable [producer, ledger, load] in
                var id = 0
                while !load.stop.load(ordering: .relaxed) {
                    let message = KafkaOutgoingMessage(topic: "load", key: KafkaTest.bytes("k\(id % 7)"), value: KafkaTest.bytes("m\(id)"))
                    let now = ContinuousClock.now
                    do throws(KafkaError) {
                        try producer.send(message, completion: ledger.completion(id))
                        load.sentAt.withLock { $0[id] = now }
                    } catch {
                        ledger.rejected(id)
                        load.rejections.withLock { $0[error.name, default: 0] += 1 }
                    }
                    id += 1
                    try? await Task.sleep(for: .milliseconds(2))
                }
                return id
            }
            func successes(sentAfter instant: ContinuousClock.Instant) -> [Int: ContinuousClock.Instant] {
                let times = load.sentAt.withLock { $0 }
                var result: [Int: ContinuousClock.Instant] = [:]
                for (id, entry) in ledger.snapshot {
                    if case .success = entry.result, let sent = times[id], sent > instant, let done = entry.completedAt {
                        result[id] = done
                    }
                }
                return result
            }
            let start = ContinuousClock.now
            try await KafkaTest.waitUntil(timeout: .seconds(20), "deliveries before the restart") {
                successes(sentAfter: start).count >= 200
            }

            // Kill Tansu (SIGKILL: no goodbye) and start a new, empty one on the same port.
            first.process.send(SIGKILL)
            _ = await first.process.waitForExit()
            let killedAt = ContinuousClock.now
            let second = try await KafkaTest.startTansu(scope, port: port, name: "tansu-after")
            let listeningAt = ContinuousClock.now
            // The memory engine lost the topic; recreate it (the producer's own metadata requests
            // may have auto-created it first, which ensureTopics accepts).
            try await admin.ensureTopics([topic], timeout: .seconds(20))
            let topicAt = ContinuousClock.now

            try await KafkaTest.waitUntil(timeout: .seconds(60), "a delivery of a message sent after the restart") {
                !successes(sentAfter: killedAt).isEmpty
            }
            let firstSuccessAfterRestart = successes(sentAfter: killedAt).values.min()!
            // Keep sending a little longer under steady state, then stop and drain.
            try await KafkaTest.waitUntil(timeout: .seconds(30), "200 deliveries after the restart") {
                successes(sentAfter: killedAt).count >= 200
            }
            load.stop.store(true, ordering: .relaxed)
            let sentCount = await sender.value
            try producer.flush(timeout: .seconds(20))
            try await KafkaTest.waitUntil(timeout: .seconds(30), "every completion") { ledger.pending == 0 }

            // New sends after the restart succeed.
            for i in 0..<20 {
                _ = try await producer.send(KafkaOutgoingMessage(topic: "load", value: KafkaTest.bytes("after-\(i)")))
            }
            producer.shutdown()

            // Every accepted send completed exactly once.
            let entries = ledger.snapshot
            #expect(entries.values.allSatisfy { $0.calls == 1 })
            let failures = entries.values.compactMap { entry -> KafkaError? in
                if case .failure(let error) = entry.result { return error } else { return nil }
            }
            #expect(failures.allSatisfy { $0.isRetriable }, "\(Set(failures.map(\.name)))")
            let recreations = producer.producerRecreations
            #expect(recreations >= 1)
            if watchProducerEpoch {
                // Recovered by librdkafka's fatal error or the epoch watchdog, not the 10 s stall timeout.
                #expect(causes.withLock { $0 }.allSatisfy { $0.hasPrefix("UNKNOWN_PRODUCER_ID") }, "\(causes.withLock { $0 })")
                #expect(firstSuccessAfterRestart - killedAt < .seconds(8))
            }
            #expect(recreatedAt.withLock { $0.count } == recreations)

            // Nothing reported delivered after the restart is missing from the new log, and
            // nothing is in it twice.
            let afterRestart = entries.compactMap { id, entry -> (Int, KafkaDeliveryReport)? in
                guard case .success(let report) = entry.result, let done = entry.completedAt, done > killedAt else { return nil }
                return (id, report)
            }
            let collector = RecordCollector()
            let consumer = try KafkaConsumer(configuration: KafkaTest.configuration(second), handler: collector.handler)
            defer { consumer.close() }
            try consumer.assign(topic: "load", partitionCount: 3, from: .beginning)
            let expectedCount = afterRestart.count + 20
            let records = try await collector.waitFor(count: expectedCount, timeout: .seconds(30))
            let logByPosition = Dictionary(uniqueKeysWithValues: records.map { (KafkaDeliveryReport(topic: $0.topic, partition: $0.partition, offset: $0.offset), $0.value) })
            for (id, report) in afterRestart {
                #expect(logByPosition[report] == .some(KafkaTest.bytes("m\(id)")), "message \(id) acknowledged at \(report)")
            }
            let values = records.compactMap(\.value)
            #expect(Set(values).count == values.count, "duplicates in the log")

            let failedNames = Dictionary(grouping: failures, by: \.name).mapValues(\.count)
            print(
                """
                Tansu restart under load (epoch watchdog \(watchProducerEpoch ? "on" : "off"), stall timeout \(configuration.stallTimeout!)): \(sentCount) sends, \(entries.count) accepted, \(failures.count) failed \(failedNames), \
                rejected at send \(load.rejections.withLock { $0 }), recreations \(recreations) \(causes.withLock { $0 }); \
                kill→listening \(listeningAt - killedAt), kill→topic recreated \(topicAt - killedAt), \
                kill→recreated \(recreatedAt.withLock { $0.first.map { $0 - killedAt } }.map { "\($0)" } ?? "-"), \
                kill→first delivery of a new message \(firstSuccessAfterRestart - killedAt)
                """
            )
            admin.close()
        }
    }
}

/// What the sending task and the test share.
private final class LoadState: Sendable {
    let sentAt = Mutex<[Int: ContinuousClock.Instant]>([:])
    let rejections = Mutex<[String: Int]>([:])
    let stop = Atomic<Bool>(false)
}
