import Foundation
import Logging
import Synchronization
import TestSupport
import TributaryKafka

/// A running `cloud-broker` child process.
struct BrokerNode: Sendable {
    let process: ChildProcess
    let mqttPort: Int
    let httpPort: Int
}

extension ProcessScope {
    /// Starts `cloud-broker` against `tansu` on free ports and returns once its Kafka consumers are positioned
    /// (from then on every record produced reaches subscribers).
    func startBroker(
        tansu: TansuBroker, settings: [String: String] = [:], name: String = "cloud-broker", nodeId: String = "test-node"
    ) async throws -> BrokerNode {
        let mqttPort = try FreePort.next()
        let httpPort = try FreePort.next()
        var arguments = [
            "--node-id", nodeId, "--mqtt-listen", "127.0.0.1:\(mqttPort)", "--kafka-bootstrap", tansu.bootstrapServers,
            "--set", "http.listen=127.0.0.1:\(httpPort)", "--set", "kafka.fetch_wait_max=20ms",
        ]
        if ProcessInfo.processInfo.environment["BROKER_TEST_DEBUG"] != nil { arguments += ["--set", "log.level=debug"] }
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) { arguments += ["--set", "\(key)=\(value)"] }
        let process = try launch(
            name: name, executable: TestEnvironment.binary("cloud-broker"), arguments: arguments,
            environment: TestEnvironment.kafkaClientEnvironment)
        try await process.waitForLog(containing: "Kafka consumers positioned", timeout: .seconds(60))
        try await TCPProbe.waitUntilServing(port: mqttPort, timeout: .seconds(10), process: process)
        return BrokerNode(process: process, mqttPort: mqttPort, httpPort: httpPort)
    }

    /// Starts one node per id (process name and node id alike) against `tansu`, in order.
    func startNodes(_ ids: [String], tansu: TansuBroker, settings: [String: String] = [:]) async throws -> [BrokerNode] {
        var nodes: [BrokerNode] = []
        for id in ids { nodes.append(try await startBroker(tansu: tansu, settings: settings, name: id, nodeId: id)) }
        return nodes
    }
}

enum Tools {
    static var python: String {
        ProcessInfo.processInfo.environment["TRIBUTARY_PYTHON"] ?? TestEnvironment.toolsDirectory + "/venv/bin/python"
    }

    static func require(_ program: String) throws -> String {
        for directory in ["/usr/bin", "/usr/local/bin"] where FileManager.default.isExecutableFile(atPath: "\(directory)/\(program)") {
            return "\(directory)/\(program)"
        }
        guard let path = TestEnvironment.which(program) else { throw HarnessError("\(program) is not installed (run scripts/setup)") }
        return path
    }

    /// Writes `source` to a file in the scope's log folder and returns its path.
    static func script(_ scope: ProcessScope, _ name: String, _ source: String) throws -> String {
        let path = scope.logDirectory + "/" + name
        try source.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// Reads Kafka topics back for assertions (all partitions from the beginning).
final class KafkaReader: Sendable {
    private final class Store: Sendable {
        let records = Mutex<[KafkaRecord]>([])
    }
    private let store = Store()
    private let consumer: KafkaConsumer

    init(tansu: TansuBroker, topic: String, partitions: Int32) throws {
        var configuration = KafkaConfiguration(bootstrapServers: tansu.bootstrapServers, clientId: "broker-test-reader")
        configuration.fetchWaitMax = .milliseconds(20)
        configuration.pollTimeout = .milliseconds(50)
        configuration.properties["topic.metadata.refresh.interval.ms"] = "500"
        configuration.properties["auto.offset.reset"] = "earliest"
        let store = self.store
        var logger = Logger(label: "broker-test-reader")
        logger.logLevel = .warning
        consumer = try KafkaConsumer(configuration: configuration, logger: logger) { batch in
            store.records.withLock { $0.append(contentsOf: batch) }
        }
        try consumer.assign(topic: topic, partitionCount: partitions, from: .beginning)
    }

    var all: [KafkaRecord] { store.records.withLock { $0 } }

    /// Waits until `predicate` holds for what was read (deadline-bounded poll).
    func waitUntil(timeout: Duration = .seconds(20), _ what: String, _ predicate: ([KafkaRecord]) -> Bool) async throws -> [KafkaRecord] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let snapshot = all
            if predicate(snapshot) { return snapshot }
            guard ContinuousClock.now < deadline else { throw HarnessError("timed out waiting for \(what); have \(snapshot.count) records") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func close() { consumer.close() }
}

extension KafkaRecord {
    func header(_ name: String) -> String? {
        headers.first { $0.name == name }.map { String(decoding: $0.value, as: UTF8.self) }
    }

    var keyString: String? { key.map { String(decoding: $0, as: UTF8.self) } }
    var valueString: String? { value.map { String(decoding: $0, as: UTF8.self) } }
}
