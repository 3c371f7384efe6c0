import Foundation
import TestSupport
import Testing

/// The command-line contract of the three executables (issue 2): complete --help, --version, and a one-line
/// error with exit code 2 for unknown flags and bad values. Runs the built binaries as child processes.
@Suite("Command-line contract")
struct CommandLineTests {
    static let executables = ["edge-agent", "cloud-broker", "device-sim"]

    /// Runs a binary to completion and returns (exit status, output).
    func run(_ name: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> (ChildProcess.ExitStatus, String) {
        try await withProcesses("cli-\(name)") { scope in
            let process = try scope.launch(name: name, executable: TestEnvironment.binary(name), arguments: arguments, environment: environment)
            guard let status = await process.waitForExit(timeout: .seconds(30)) else {
                throw HarnessError("\(name) \(arguments) did not exit within 30 s")
            }
            return (status, process.logText())
        }
    }

    @Test(arguments: executables)
    func helpIsCompleteAndExitsZero(name: String) async throws {
        let (status, output) = try await run(name, ["--help"])
        #expect(status == .exited(0))
        #expect(output.contains("USAGE:"))
        #expect(output.contains("--version"))
        let flags: [String: [String]] = [
            "edge-agent": ["--agent-id", "--device-listen", "--upstream", "--data-dir", "--http-listen", "--config"],
            "cloud-broker": ["--node-id", "--mqtt-listen", "--kafka-bootstrap", "--http-listen", "--config"],
            "device-sim": ["--broker", "--clients", "--rate", "--size", "--qos", "--clean-session", "--count", "--duration"],
        ]
        for flag in flags[name] ?? [] {
            #expect(output.contains(flag), "\(name) --help does not mention \(flag)")
        }
    }

    @Test(arguments: executables)
    func versionPrintsTheVersion(name: String) async throws {
        let (status, output) = try await run(name, ["--version"])
        #expect(status == .exited(0))
        #expect(output.trimmingCharacters(in: .whitespacesAndNewlines).range(of: #"^\d+\.\d+\.\d+"#, options: .regularExpression) != nil)
    }

    @Test(arguments: executables)
    func unknownFlagIsOneLineAndExitsTwo(name: String) async throws {
        let (status, output) = try await run(name, ["--no-such-flag"])
        #expect(status == .exited(2))
        let lines = output.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(output)")
        #expect(output.hasPrefix("\(name): error: "))
    }

    @Test(arguments: [
        ("cloud-broker", ["--node-id", "n1", "--kafka-bootstrap", "127.0.0.1:notaport"]),
        ("cloud-broker", ["--node-id", "n1"]),
        ("edge-agent", ["--agent-id", "a1", "--upstream", "http://x:1", "--data-dir", "/tmp/x"]),
        ("edge-agent", ["--agent-id", "a1", "--upstream", "mqtt://127.0.0.1:1883", "--data-dir", "/tmp/x", "--set", "no.such.key=1"]),
        ("device-sim", ["--qos", "3", "--count", "1"]),
        ("device-sim", ["--clients", "many", "--count", "1"]),
    ])
    func badValuesAreOneLineAndExitTwo(name: String, arguments: [String]) async throws {
        let (status, output) = try await run(name, arguments)
        #expect(status == .exited(2), "\(name) \(arguments): \(output)")
        #expect(output.split(separator: "\n").count == 1, "expected one line, got: \(output)")
        #expect(output.hasPrefix("\(name): error: "))
    }

    @Test func environmentAndConfigFileReachEveryKey() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tributary-cli-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let file = directory.appendingPathComponent("broker.yaml").path
        try "node_id: from-file\nkafka:\n  bootstrap_servers: 127.0.0.1:9999\n".write(toFile: file, atomically: true, encoding: .utf8)
        let (status, output) = try await run(
            "cloud-broker", ["--config", file, "--check-config"], environment: ["TRIBUTARY_MQTT_LISTEN": "127.0.0.1:1999"])
        #expect(status == .exited(0), "\(output)")
        #expect(output.contains("node_id: from-file"))
        #expect(output.contains("kafka.bootstrap_servers: 127.0.0.1:9999"))
        #expect(output.contains("mqtt.listen: 127.0.0.1:1999"))
    }
}
