import Foundation
import TestSupport
import Testing
import TributaryKafka

/// The harness itself: children log to files, are stopped by PID, and Tansu is ready when `startTansu` returns.
@Suite("Test harness", .serialized)
struct HarnessTests {
    @Test func childOutputIsCapturedAndStopIsByPid() async throws {
        let pid = try await withProcesses { scope in
            let child = try scope.launch(name: "sleeper", executable: "/bin/sh", arguments: ["-c", "echo started; exec sleep 600"])
            try await child.waitForLog(containing: "started", timeout: .seconds(10))
            #expect(child.isRunning)
            let status = await child.stop(signal: SIGTERM, grace: .seconds(5))
            #expect(status == .signalled(SIGTERM))
            return child.pid
        }
        #expect(kill(pid, 0) == -1, "the child must be gone after the scope ends")
    }

    @Test func scopeStopsEverythingWhenTheTestThrows() async throws {
        let pids = MutexPids()
        await #expect(throws: HarnessError.self) {
            try await withProcesses { scope in
                let child = try scope.launch(name: "orphan", executable: "/bin/sh", arguments: ["-c", "exec sleep 600"])
                pids.add(child.pid)
                throw HarnessError("the test body failed")
            }
        }
        for pid in pids.all { #expect(kill(pid, 0) == -1) }
    }

    /// CI once lost a test to a port taken between FreePort.next() and the child's bind: ports now come from
    /// below the ephemeral range, where outgoing connections never take one, and a port in use is passed over.
    @Test func freePortsAreBelowTheEphemeralRangeDistinctAndFree() throws {
        let ephemeralLow = FreePort.ephemeralRangeStart()
        let ports = try (0..<200).map { _ in try FreePort.next() }
        #expect(Set(ports).count == ports.count, "a port is handed out once")
        #expect(ports.allSatisfy { $0 >= 10_000 && $0 < ephemeralLow }, "ports: \(ports.prefix(5))..., ephemeral from \(ephemeralLow)")
        // A port someone listens on is never handed out: listen on the one that would come next and ask again.
        let listeners = try ports.suffix(1).map { try LoopbackSocket(port: $0 + 1, listen: true) }
        defer { listeners.forEach { $0.close() } }
        let following = try FreePort.next()
        #expect(following != ports.last! + 1, "the held port \(ports.last! + 1) was handed out")
    }

    @Test func tansuAnswersMetadataWhenStartReturns() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            #expect(TCPProbe.exchange(port: tansu.port, request: TansuBroker.metadataRequestForTests, minimumReply: 8))
            let status = await tansu.process.stop(signal: SIGINT, grace: .seconds(5))
            #expect(status == .exited(0) || status == .signalled(SIGINT))
        }
    }

    @Test func mosquittoAcceptsConnections() async throws {
        try await withProcesses { scope in
            let mosquitto = try await scope.startMosquitto()
            #expect(TCPProbe.exchange(port: mosquitto.port))
        }
    }
}

final class MutexPids: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var pids: [pid_t] = []
    func add(_ pid: pid_t) { lock.withLock { pids.append(pid) } }
    var all: [pid_t] { lock.withLock { pids } }
}

@Suite("Kafka topic reader", .serialized)
struct KafkaTopicReaderTests {
    /// Produce through the system-library target, read back every partition with keys and headers.
    @Test func readsEveryPartitionWithKeysAndHeaders() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            var configuration = KafkaConfiguration(bootstrapServers: tansu.bootstrapServers, clientId: "reader-test")
            configuration.properties["topic.metadata.refresh.interval.ms"] = "500"
            let admin = try KafkaAdmin(configuration: configuration)
            defer { admin.close() }
            _ = try await admin.createTopics([KafkaTopicSpecification(name: "reader.test", partitions: 3)])
            let producer = try KafkaProducer(configuration: configuration)
            defer { producer.shutdown() }
            for index in 0..<30 {
                _ = try await producer.send(KafkaOutgoingMessage(
                    topic: "reader.test", key: Array("key-\(index % 5)".utf8), value: Array("value-\(index)".utf8),
                    headers: [KafkaHeader("index", Array("\(index)".utf8))]))
            }
            let records = try await KafkaTopicReader.readAll(bootstrapServers: tansu.bootstrapServers, topic: "reader.test")
            #expect(records.count == 30)
            #expect(Set(records.compactMap { $0.header("index") }) == Set((0..<30).map(String.init)))
            #expect(Set(records.map(\.partition)).count > 1, "five keys over three partitions must use more than one")
            // Same key, same partition, in produce order.
            for key in 0..<5 {
                let values = records.filter { $0.key == Array("key-\(key)".utf8) }.map { Int($0.header("index")!)! }
                #expect(values == values.sorted())
                #expect(Set(records.filter { $0.key == Array("key-\(key)".utf8) }.map(\.partition)).count == 1)
            }
            #expect(KafkaTopicReader.latestByKey(records).count == 5)
        }
    }
}

