import Foundation
import TestSupport

/// A cluster on loopback for tests: Tansu, N cloud-broker nodes (distinct node ids, sessions in Kafka) and
/// HAProxy in front, its configuration rendered from config/haproxy-cluster.cfg.in exactly as scripts/cluster
/// renders it.
struct TestCluster: Sendable {
    let tansu: TansuBroker
    let nodes: [ClusterNode]
    let haproxy: ChildProcess
    let frontendPort: Int
    let statsPort: Int
    var url: String { "mqtt://127.0.0.1:\(frontendPort)" }
}

struct ClusterNode: Sendable {
    let id: String
    let broker: BrokerNode
}

enum HAProxyConfig {
    static var templatePath: String { TestEnvironment.packageRoot + "/config/haproxy-cluster.cfg.in" }

    /// The backend's health check for cloud-broker nodes (also in config/haproxy.cfg and scripts/cluster).
    static let brokerHealthCheck = [
        "option httpchk",
        "http-check send meth GET uri /ready ver HTTP/1.1 hdr Host tributary",
        "http-check expect status 200",
        "default-server check inter 500ms fastinter 500ms downinter 2s fall 2 rise 2 on-marked-down shutdown-sessions slowstart 10s",
    ]

    /// Renders the template: `{{NAME}}` alone on a line becomes the lines of `values[NAME]` (same indent),
    /// elsewhere the value; comment lines stay as they are. An unknown placeholder is an error.
    static func render(template: String, values: [String: String]) throws -> String {
        var lines: [String] = []
        for line in template.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#") {  // comments name the placeholders; they stay as they are
                lines.append(String(line))
                continue
            }
            if trimmed.hasPrefix("{{") && trimmed.hasSuffix("}}") && trimmed.dropFirst(2).dropLast(2).allSatisfy({ $0.isUppercase || $0 == "_" }) {
                let name = String(trimmed.dropFirst(2).dropLast(2))
                guard let value = values[name] else { throw HarnessError("haproxy template: no value for {{\(name)}}") }
                let indent = line.prefix { $0 == " " || $0 == "\t" }
                lines += value.split(separator: "\n").map { String(indent) + String($0) }
                continue
            }
            var rendered = String(line)
            while let open = rendered.range(of: "{{"), let close = rendered.range(of: "}}", range: open.upperBound..<rendered.endIndex) {
                let name = String(rendered[open.upperBound..<close.lowerBound])
                guard let value = values[name] else { throw HarnessError("haproxy template: no value for {{\(name)}}") }
                rendered.replaceSubrange(open.lowerBound..<close.upperBound, with: value)
            }
            lines.append(rendered)
        }
        return lines.joined(separator: "\n")
    }
}

extension ProcessScope {
    /// Starts a cloud-broker node with its own id on free ports; returns once its Kafka consumers are positioned.
    func startClusterNode(tansu: TansuBroker, id: String, settings: [String: String] = [:]) async throws -> ClusterNode {
        let mqttPort = try FreePort.next()
        let httpPort = try FreePort.next()
        var arguments = [
            "--node-id", id, "--mqtt-listen", "127.0.0.1:\(mqttPort)", "--kafka-bootstrap", tansu.bootstrapServers,
            "--set", "http.listen=127.0.0.1:\(httpPort)", "--set", "kafka.fetch_wait_max=20ms", "--set", "sessions.store=kafka",
        ]
        if ProcessInfo.processInfo.environment["BROKER_TEST_DEBUG"] != nil { arguments += ["--set", "log.level=debug"] }
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) { arguments += ["--set", "\(key)=\(value)"] }
        let process = try launch(
            name: id, executable: TestEnvironment.binary("cloud-broker"), arguments: arguments,
            environment: TestEnvironment.kafkaClientEnvironment)
        try await process.waitForLog(containing: "Kafka consumers positioned", timeout: .seconds(60))
        try await TCPProbe.waitUntilServing(port: mqttPort, timeout: .seconds(10), process: process)
        return ClusterNode(id: id, broker: BrokerNode(process: process, mqttPort: mqttPort, httpPort: httpPort))
    }

    /// Tansu, `nodes` cloud-broker nodes (node-1 ...) and one HAProxy in front; returns once HAProxy reports
    /// every node UP.
    func startCluster(nodes count: Int = 3, settings: [String: String] = [:]) async throws -> TestCluster {
        let tansu = try await startTansu()
        var nodes: [ClusterNode] = []
        for index in 1...count {
            nodes.append(try await startClusterNode(tansu: tansu, id: "node-\(index)", settings: settings))
        }
        let (haproxy, frontendPort, statsPort) = try await startHAProxy(
            servers: nodes.map { "server \($0.id) 127.0.0.1:\($0.broker.mqttPort) port \($0.broker.httpPort)" },
            healthCheck: HAProxyConfig.brokerHealthCheck)
        return TestCluster(tansu: tansu, nodes: nodes, haproxy: haproxy, frontendPort: frontendPort, statsPort: statsPort)
    }

    func startHAProxy(servers: [String], healthCheck: [String], maxconn: Int = 4_000) async throws -> (ChildProcess, Int, Int) {
        let executable = try Tools.require("haproxy")
        let frontendPort = try FreePort.next()
        let statsPort = try FreePort.next()
        let template = try String(contentsOfFile: HAProxyConfig.templatePath, encoding: .utf8)
        let config = try HAProxyConfig.render(template: template, values: [
            "MAXCONN": String(maxconn), "FRONTEND_BIND": "127.0.0.1:\(frontendPort)", "STATS_BIND": "127.0.0.1:\(statsPort)",
            "HEALTH_CHECK": healthCheck.joined(separator: "\n"), "SERVERS": servers.joined(separator: "\n"),
        ])
        let path = try Tools.script(self, "haproxy-\(frontendPort).cfg", config)
        let process = try launch(name: "haproxy", executable: executable, arguments: ["-db", "-f", path])
        try await TCPProbe.waitUntilServing(port: frontendPort, timeout: .seconds(10), process: process)
        try await waitForBackends(statsPort: statsPort, up: servers.count, process: process)
        return (process, frontendPort, statsPort)
    }

    /// HAProxy's view of the backend servers: name → status (UP, DOWN, ...), from its CSV stats.
    static func backendStatus(statsPort: Int) -> [String: String] {
        let text = httpGet("http://127.0.0.1:\(statsPort)/stats;csv")
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("tributary_brokers,") {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false)
            guard fields.count > 17, fields[1] != "BACKEND" else { continue }
            result[String(fields[1])] = String(fields[17])
        }
        return result
    }

    /// The body of an HTTP GET (curl, 2 s at most), empty on any failure.
    static func httpGet(_ url: String) -> String {
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        curl.arguments = ["-fs", "--max-time", "2", url]
        let pipe = Pipe()
        curl.standardOutput = pipe
        curl.standardError = FileHandle.nullDevice
        guard (try? curl.run()) != nil else { return "" }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        curl.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    func waitForBackends(statsPort: Int, up: Int, process: ChildProcess, timeout: Duration = .seconds(20)) async throws {
        let deadline = ContinuousClock.now + timeout
        while true {
            let status = Self.backendStatus(statsPort: statsPort)
            if status.values.filter({ $0 == "UP" }).count == up { return }
            guard process.isRunning, ContinuousClock.now < deadline else {
                throw HarnessError("HAProxy does not report \(up) servers UP: \(status)\n\(process.logTail())")
            }
            try await Task.sleep(for: .milliseconds(100))  // poll interval
        }
    }
}

/// The `device-sim summary key=value ...` line of a finished simulator, as a dictionary.
enum SimulatorOutput {
    static func summary(_ log: String, prefix: String = "device-sim summary ") -> [String: String]? {
        guard let line = log.split(separator: "\n").last(where: { $0.hasPrefix(prefix) }) else { return nil }
        var fields: [String: String] = [:]
        for pair in line.dropFirst(prefix.count).split(separator: " ") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    /// The latest progress line's fields (standard error of a running simulator).
    static func progress(_ log: String) -> [String: String]? { summary(log, prefix: "device-sim progress ") }

    /// Unix seconds with nanoseconds, as `date +%s.%N` prints them (for `--failover-mark`).
    static func wallClockText() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return "\(spec.tv_sec).\(String(format: "%09ld", spec.tv_nsec))"
    }
}
