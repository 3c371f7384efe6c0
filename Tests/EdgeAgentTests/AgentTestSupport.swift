#if canImport(Glibc)
import Glibc
#endif
import Common
import Foundation
import NIOCore
import Testing
import TestSupport

/// Starting the agent and the Python helpers (bench/agent-devices.py, bench/agent-subscriber.py).
enum AgentHarness {
    static var python: String {
        ProcessInfo.processInfo.environment["TRIBUTARY_PYTHON"] ?? TestEnvironment.toolsDirectory + "/venv/bin/python"
    }

    static func script(_ name: String) -> String { TestEnvironment.packageRoot + "/bench/" + name }

    struct AgentPorts: Sendable {
        var device: Int
        var http: Int
    }

    static func ports() throws -> AgentPorts { AgentPorts(device: try FreePort.next(), http: try FreePort.next()) }

    /// Starts edge-agent and waits for its "Edge agent ready" log line.
    static func startAgent(
        _ scope: ProcessScope, ports: AgentPorts, dataDirectory: String, upstreamPort: Int, agentId: String = "gw-e2e",
        upstreamURL: String? = nil, deviceListen: String? = nil, extra: [String] = [], environment: [String: String] = [:],
        name: String = "edge-agent"
    ) async throws -> ChildProcess {
        let process = try scope.launch(
            name: name, executable: TestEnvironment.binary("edge-agent"),
            arguments: [
                "--agent-id", agentId, "--device-listen", deviceListen ?? "127.0.0.1:\(ports.device)",
                "--upstream", upstreamURL ?? "mqtt://127.0.0.1:\(upstreamPort)", "--data-dir", dataDirectory,
                "--http-listen", "127.0.0.1:\(ports.http)",
                "--set", "upstream.keep_alive=5s", "--set", "upstream.response_timeout=3s",
                "--set", "upstream.reconnect_max=2s",
            ] + extra, environment: environment)
        try await process.waitForLog(containing: "Edge agent ready", timeout: .seconds(30))
        return process
    }

    /// An installed program (mosquitto_pub, mosquitto_sub).
    static func tool(_ name: String) throws -> String {
        guard let path = TestEnvironment.which(name) else { throw HarnessError("\(name) is not installed (run scripts/setup)") }
        return path
    }

    /// mosquitto_sub -V 5 with QoS 2, printing each message as `format` (which must start with "MSG|"),
    /// exiting after `count` messages; returns once its SUBACK arrived (its -d debug output says so).
    static func startMosquittoSub(
        _ scope: ProcessScope, port: Int, topic: String, count: Int, format: String, extra: [String] = [],
        name: String = "mosquitto_sub"
    ) async throws -> ChildProcess {
        // stdbuf: line-buffered stdout, so the debug lines reach the log file as they happen.
        let process = try scope.launch(
            name: name, executable: try tool("stdbuf"),
            arguments: ["-oL", try tool("mosquitto_sub"), "-h", "127.0.0.1", "-p", "\(port)", "-V", "5", "-q", "2", "-d", "-t", topic, "-C", "\(count)", "-F", format] + extra)
        try await process.waitForLog(containing: "received SUBACK", timeout: .seconds(10))
        return process
    }

    /// The lines of a mosquitto_sub started with `startMosquittoSub` once it exited (after its `count` messages).
    static func messageLines(_ subscriber: ChildProcess, timeout: Duration = .seconds(30)) async throws -> [String] {
        guard await subscriber.waitForExit(timeout: timeout) == .exited(0) else {
            throw HarnessError("mosquitto_sub did not receive its messages: \(subscriber.logTail(lines: 10))")
        }
        return subscriber.logText().split(separator: "\n").filter { $0.hasPrefix("MSG|") }.map(String.init)
    }

    static func messageLine(_ subscriber: ChildProcess, timeout: Duration = .seconds(30)) async throws -> String {
        guard let line = try await messageLines(subscriber, timeout: timeout).first else { throw HarnessError("no message line") }
        return line
    }

    static func startSubscriber(_ scope: ProcessScope, brokerPort: Int, output: String, topic: String = "devices/#") async throws -> ChildProcess {
        let process = try scope.launch(
            name: "subscriber", executable: python,
            arguments: [script("agent-subscriber.py"), "--port", "\(brokerPort)", "--topic", topic, "--output", output])
        try await process.waitForLog(containing: "subscriber ready", timeout: .seconds(20))
        return process
    }

    static func startDevices(
        _ scope: ProcessScope, port: Int, devices: Int, messages: Int, qos: Int, rate: Double = 0, prefix: String = "dev-"
    ) throws -> ChildProcess {
        try scope.launch(
            name: "devices", executable: python,
            arguments: [
                script("agent-devices.py"), "--port", "\(port)", "--devices", "\(devices)", "--messages", "\(messages)",
                "--qos", "\(qos)", "--rate", "\(rate)", "--prefix", prefix, "--timeout", "600",
            ])
    }

    /// GET http://127.0.0.1:<port><path> (Python urllib: the test has no HTTP client of its own).
    static func httpGet(_ scope: ProcessScope, port: Int, path: String) async throws -> String {
        let process = try scope.launch(
            name: "http-get", executable: python,
            arguments: ["-c", "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
                        "http://127.0.0.1:\(port)\(path)"])
        guard await process.waitForExit(timeout: .seconds(10)) == .exited(0) else {
            throw HarnessError("GET \(path) failed: \(process.logTail(lines: 3))")
        }
        return process.logText()
    }

    /// The value of an unlabelled metric on the agent's /metrics (nil if absent).
    static func metric(_ scope: ProcessScope, port: Int, _ name: String) async throws -> Double? {
        let text = try await httpGet(scope, port: port, path: "/metrics")
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    /// Polls a process's log until `text` occurs `count` times (the log is a file the process appends to).
    static func waitForLog(_ process: ChildProcess, _ text: String, count: Int, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while process.logText().components(separatedBy: text).count - 1 < count {
            guard ContinuousClock.now < deadline else { throw HarnessError("\(process.name) did not log '\(text)' \(count) times within \(timeout)") }
            try await Task.sleep(for: .milliseconds(100))  // polling a file another process appends to
        }
    }

    /// Polls /metrics until `name` satisfies `condition` (the agent exposes no event to await for it).
    static func waitForMetric(
        _ scope: ProcessScope, port: Int, _ name: String, timeout: Duration = .seconds(30), _ condition: (Double) -> Bool
    ) async throws -> Double {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let value = try await metric(scope, port: port, name), condition(value) { return value }
            guard ContinuousClock.now < deadline else { throw HarnessError("\(name) did not reach the expected value within \(timeout)") }
            try await Task.sleep(for: .milliseconds(200))  // polling an HTTP endpoint
        }
    }

    static func temporaryDirectory(_ name: String) throws -> String {
        let path = TestEnvironment.packageRoot + "/.run/agent-tests/\(name)-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// What the upstream subscriber saw, line by line: "<agent> <seq> <device> <device>:<n>".
struct UpstreamTally {
    struct Line: Hashable {
        var agent: String
        var sequence: UInt64
        var device: String
        var payload: String
    }

    var lines: [Line] = []

    init(path: String) {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        for row in text.split(separator: "\n") {
            let fields = row.split(separator: " ", maxSplits: 3)
            // "-" for agent, seq and device: forwarded with MQTT 3.1.1 (no user properties); seq counts as 0.
            guard fields.count == 4, let sequence = fields[1] == "-" ? 0 : UInt64(fields[1]) else { continue }
            lines.append(Line(agent: String(fields[0]), sequence: sequence, device: String(fields[2]), payload: String(fields[3])))
        }
    }

    /// Waits (polling the file the subscriber appends to) until `expected` distinct payloads arrived.
    static func waitFor(path: String, expected: Int, timeout: Duration) async throws -> UpstreamTally {
        let deadline = ContinuousClock.now + timeout
        var tally = UpstreamTally(path: path)
        while Set(tally.lines.map(\.payload)).count < expected && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(250))  // polling a file another process appends to
            tally = UpstreamTally(path: path)
        }
        return tally
    }

    /// Counted by (agent, seq): sequences seen more than once.
    var duplicateSequences: Int {
        var seen = Set<String>()
        return lines.filter { !seen.insert("\($0.agent)/\($0.sequence)").inserted }.count
    }

    /// Device messages seen more than once (under different sequences).
    var duplicatePayloads: Int {
        var seen = Set<String>()
        return lines.filter { !seen.insert($0.payload).inserted }.count
    }

    /// Expected "<prefix><d>:<n>" payloads that never arrived.
    func missing(devices: Int, messages: Int, prefix: String) -> [String] {
        let seen = Set(lines.map(\.payload))
        var missing: [String] = []
        for device in 0..<devices {
            for n in 0..<messages where !seen.contains("\(prefix)\(device):\(n)") {
                missing.append("\(prefix)\(device):\(n)")
            }
        }
        return missing
    }

    /// Devices whose messages, sorted by agent sequence, are not in the order the device sent them.
    var devicesOutOfOrder: [String] {
        var byDevice: [String: [(UInt64, Int)]] = [:]
        for line in lines {
            guard let n = line.payload.split(separator: ":").last.flatMap({ Int($0) }) else { continue }
            byDevice[line.device, default: []].append((line.sequence, n))
        }
        return byDevice.compactMap { device, items in
            let ordered = items.sorted { $0.0 < $1.0 }.map(\.1)
            return ordered == ordered.sorted() ? nil : device
        }.sorted()
    }
}

/// A blocking MQTT peer on a raw socket, for byte-level device conformance tests.
final class RawMQTTPeer {
    let fd: Int32
    let version: MQTTProtocolVersion
    private var inbound = ByteBuffer()

    init(port: Int, version: MQTTProtocolVersion) throws {
        self.version = version
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(fd)
            throw HarnessError("connect to \(port) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    func send(_ packet: MQTTPacket) throws {
        try sendRaw(Array(try packet.encoded(version: version).readableBytesView))
    }

    func sendRaw(_ bytes: [UInt8]) throws {
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw HarnessError("short write") }
    }

    /// The next packet, or nil if the connection closed; throws on timeout.
    func receive(timeout: Duration = .seconds(10)) throws -> MQTTPacket? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let packet = try MQTTPacket.decode(from: &inbound, version: version, maximumPacketSize: 1 << 20) {
                return packet
            }
            var pollfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let remaining = max(0, Int32((deadline - ContinuousClock.now).components.seconds * 1000 + 1))
            guard poll(&pollfd, 1, remaining) > 0 else { throw HarnessError("no packet within \(timeout)") }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { return nil }
            inbound.writeBytes(chunk[0..<count])
        }
    }

    /// True if the peer closed the connection within `timeout` (after any packets it sent first).
    func closedByPeer(timeout: Duration = .seconds(10)) -> Bool {
        while true {
            do {
                guard try receive(timeout: timeout) != nil else { return true }
            } catch {
                return false
            }
        }
    }
}
