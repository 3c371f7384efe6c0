#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A running Tansu (Kafka-protocol broker, memory engine unless told otherwise).
public struct TansuBroker: Sendable {
    public let process: ChildProcess
    public let port: Int
    public var bootstrapServers: String { "127.0.0.1:\(port)" }

    /// A Kafka Metadata v0 request for all topics (size, api key 3, version 0, correlation id, client id "t").
    public static let metadataRequestForTests: [UInt8] = metadataRequest
    static let metadataRequest: [UInt8] = [0, 0, 0, 15, 0, 3, 0, 0, 0, 0, 0, 1, 0, 1, UInt8(ascii: "t"), 0, 0, 0, 0]
}

/// A running mosquitto on a loopback port.
public struct MosquittoBroker: Sendable {
    public let process: ChildProcess
    public let port: Int
    public var url: String { "mqtt://127.0.0.1:\(port)" }
}

/// A running binary of ours.
public struct TributaryProcess: Sendable {
    public let process: ChildProcess
    public let ports: [String: Int]
    public func port(_ name: String) -> Int { ports[name] ?? 0 }
}

/// The processes one test started. `withProcesses` stops them all (by PID) when the test ends, also when it
/// throws, and prints their log tails when it throws.
public final class ProcessScope: Sendable {
    private static let scopesCreated = Atomic<Int>(0)
    public let logDirectory: String
    private let processes = Mutex<[ChildProcess]>([])

    init(name: String) throws {
        let safe = name.map { $0.isLetter || $0.isNumber ? $0 : "-" }
        let stamp = Int(Date().timeIntervalSince1970 * 1000) % 100_000_000
        let serial = Self.scopesCreated.add(1, ordering: .relaxed).newValue
        logDirectory = TestEnvironment.packageRoot + "/.run/test-logs/\(String(safe))-\(stamp)-\(getpid())-\(serial)"
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
    }

    public var all: [ChildProcess] { processes.withLock { $0 } }

    public func launch(name: String, executable: String, arguments: [String], environment: [String: String] = [:]) throws -> ChildProcess {
        let index = processes.withLock { $0.count }
        let process = try ChildProcess.launch(
            name: name, executable: executable, arguments: arguments, environment: environment,
            logPath: "\(logDirectory)/\(index)-\(name).log")
        processes.withLock { $0.append(process) }
        return process
    }

    /// Starts Tansu on `port` (a free one by default) and returns once it answers a Metadata request.
    /// A free port can be taken by another process between the kernel handing it out and Tansu binding it;
    /// then Tansu exits at once, and (unless `port` was given) it is started again on another free port.
    public func startTansu(port: Int? = nil, storage: String? = nil, name: String = "tansu") async throws -> TansuBroker {
        var attempt = 0
        while true {
            attempt += 1
            let chosen = try port ?? FreePort.next()
            var arguments = ["broker", "--listener-url", "tcp://127.0.0.1:\(chosen)", "--advertised-listener-url", "tcp://127.0.0.1:\(chosen)"]
            if let storage { arguments += ["--storage-engine", storage] }
            let process = try launch(name: name, executable: TestEnvironment.tansuBinary, arguments: arguments)
            do {
                try await TCPProbe.waitUntilServing(
                    port: chosen, request: TansuBroker.metadataRequest, minimumReply: 8, timeout: .seconds(30), process: process)
                return TansuBroker(process: process, port: chosen)
            } catch {
                let lostThePort = process.exitStatus != nil && process.logText().contains("AddrInUse")
                guard lostThePort, port == nil, attempt < 5 else { throw error }
            }
        }
    }

    /// Starts mosquitto with no persistence on a free loopback port; `extraConfiguration` lines are appended.
    public func startMosquitto(extraConfiguration: [String] = [], name: String = "mosquitto") async throws -> MosquittoBroker {
        guard let executable = TestEnvironment.which("mosquitto") else {
            throw HarnessError("mosquitto not installed (run scripts/setup)")
        }
        let port = try FreePort.next()
        let configPath = "\(logDirectory)/\(name)-\(port).conf"
        let lines = [
            "listener \(port) 127.0.0.1", "allow_anonymous true", "persistence false",
            "max_inflight_messages 0", "max_queued_messages 0", "log_type error", "log_type warning",
        ] + extraConfiguration
        try (lines.joined(separator: "\n") + "\n").write(toFile: configPath, atomically: true, encoding: .utf8)
        let process = try launch(name: name, executable: executable, arguments: ["-c", configPath])
        try await TCPProbe.waitUntilServing(port: port, timeout: .seconds(10), process: process)
        return MosquittoBroker(process: process, port: port)
    }

    /// Stops every process, newest first: ours with SIGTERM, Tansu with SIGINT (it lingers on SIGTERM).
    func stopAll() async {
        for process in all.reversed() where process.isRunning {
            let signal = process.name.hasPrefix("tansu") ? SIGINT : SIGTERM
            await process.stop(signal: signal, grace: .seconds(5))
        }
    }

    func printLogTails() {
        for process in all {
            print("----- \(process.name) (pid \(process.pid), \(process.exitStatus.map(\.description) ?? "running")) \(process.logPath)")
            print(process.logTail(lines: 30))
        }
    }
}

/// Runs `body` with a fresh `ProcessScope`, then stops every process it started, also when `body` throws.
///
/// At most `ProcessScopeSlots.shared.limit` scopes run at once: `swift test` runs every suite in parallel,
/// and on a 2-core machine twenty tests each starting Tansu, brokers and clients in the same second starve
/// each other past their start-up timeouts. A test's own timeouts start once it has its slot.
public func withProcesses<T: Sendable>(
    _ name: String = #function, _ body: (ProcessScope) async throws -> T
) async throws -> T {
    await ProcessScopeSlots.shared.acquire()
    let scope: ProcessScope
    do {
        scope = try ProcessScope(name: name)
    } catch {
        await ProcessScopeSlots.shared.release()
        throw error
    }
    do {
        let result = try await body(scope)
        await scope.stopAll()
        await ProcessScopeSlots.shared.release()
        return result
    } catch {
        print("test '\(name)' failed: \(error)")
        scope.printLogTails()
        await scope.stopAll()
        await ProcessScopeSlots.shared.release()
        throw error
    }
}

/// A counting semaphore for `withProcesses` (limit from `TRIBUTARY_TEST_PROCESS_SCOPES`, default 4).
public actor ProcessScopeSlots {
    public static let shared = ProcessScopeSlots(
        limit: max(1, Int(ProcessInfo.processInfo.environment["TRIBUTARY_TEST_PROCESS_SCOPES"] ?? "") ?? 4))

    public let limit: Int
    private var available: Int
    private var waiters: [CheckedContinuation<Void, Never>] = []

    init(limit: Int) {
        self.limit = limit
        self.available = limit
    }

    func acquire() async {
        if available > 0 {
            available -= 1
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty {
            available += 1
        } else {
            waiters.removeFirst().resume()
        }
    }
}

