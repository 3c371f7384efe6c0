import Foundation
import Logging
import Synchronization
import TestSupport
import TributaryKafka

/// Shared pieces of the Kafka client tests (real Tansu, see docs/kafka-client.md).
enum KafkaTest {
    /// A configuration for tests against `tansu`: fast metadata refresh and short fetch waits
    /// (Tansu does not answer a waiting fetch early).
    static func configuration(_ tansu: TansuBroker, clientId: String = "kafka-test") -> KafkaConfiguration {
        var configuration = KafkaConfiguration(bootstrapServers: tansu.bootstrapServers, clientId: clientId)
        configuration.properties["topic.metadata.refresh.interval.ms"] = "500"
        configuration.properties["reconnect.backoff.max.ms"] = "500"
        configuration.fetchWaitMax = .milliseconds(20)
        configuration.pollTimeout = .milliseconds(50)
        return configuration
    }

    /// `scope.startTansu`, retried: a port from `FreePort` can be taken (e.g. as the ephemeral port
    /// of some client connection) before Tansu binds it, and Tansu then exits with AddrInUse.
    /// A fresh port is used for each attempt unless `port` is given.
    static func startTansu(_ scope: ProcessScope, port: Int? = nil, name: String = "tansu") async throws -> TansuBroker {
        var attempt = 1
        while true {
            do {
                return try await scope.startTansu(port: port, name: attempt == 1 ? name : "\(name)-\(attempt)")
            } catch where attempt < 3 && "\(error)".contains("before serving") {
                attempt += 1
            }
        }
    }

    static var logger: Logger {
        var logger = Logger(label: "kafka-test")
        logger.logLevel = ProcessInfo.processInfo.environment["KAFKA_TEST_DEBUG"] != nil ? .debug : .info
        return logger
    }

    /// Polls `condition` until it holds or `timeout` passes (a deadline-bounded wait, not a sleep).
    static func waitUntil(timeout: Duration, _ what: String, _ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition() {
            guard ContinuousClock.now < deadline else { throw HarnessError("timed out after \(timeout) waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }
}

/// Collects records delivered to a consumer handler.
final class RecordCollector: Sendable {
    private let records = Mutex<[KafkaRecord]>([])
    private let batches = Mutex(0)

    var handler: @Sendable ([KafkaRecord]) -> Void {
        { [self] batch in
            records.withLock { $0.append(contentsOf: batch) }
            batches.withLock { $0 += 1 }
        }
    }

    var all: [KafkaRecord] { records.withLock { $0 } }
    var count: Int { records.withLock { $0.count } }
    var batchCount: Int { batches.withLock { $0 } }

    func waitFor(count: Int, timeout: Duration = .seconds(20)) async throws -> [KafkaRecord] {
        try await KafkaTest.waitUntil(timeout: timeout, "\(count) records (have \(self.count))") { self.count >= count }
        return all
    }
}

/// Counts completions per message id, to prove each fires exactly once.
final class CompletionLedger: Sendable {
    struct Entry: Sendable {
        var calls = 0
        var result: Result<KafkaDeliveryReport, KafkaError>?
        var completedAt: ContinuousClock.Instant?
    }
    private let entries = Mutex<[Int: Entry]>([:])

    func completion(_ id: Int) -> @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void {
        entries.withLock { $0[id] = Entry() }
        return { [self] result in
            entries.withLock {
                $0[id, default: Entry()].calls += 1
                $0[id]?.result = result
                $0[id]?.completedAt = .now
            }
        }
    }

    /// Forget an id whose `send` threw (its completion must never be called).
    func rejected(_ id: Int) { entries.withLock { $0[id] = nil } }

    var snapshot: [Int: Entry] { entries.withLock { $0 } }
    var pending: Int { entries.withLock { $0.values.filter { $0.calls == 0 }.count } }
    var completed: Int { entries.withLock { $0.values.filter { $0.calls > 0 }.count } }
}
