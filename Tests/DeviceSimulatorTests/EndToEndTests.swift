import Foundation
import TestSupport
import Testing

/// Runs the built `device-sim` against real mosquitto and Tansu processes.
@Suite(.serialized) struct EndToEndTests {
    /// Runs device-sim to its exit and returns the fields of its summary line.
    static func runSimulator(
        _ scope: ProcessScope, _ arguments: [String], name: String = "device-sim", expectExit: Int32 = 0,
        environment: [String: String] = [:]
    ) async throws -> [String: String] {
        let process = try scope.launch(
            name: name, executable: TestEnvironment.binary("device-sim"), arguments: arguments, environment: environment)
        guard let status = await process.waitForExit(timeout: .seconds(60)) else {
            throw HarnessError("device-sim did not finish within 60 s")
        }
        let log = process.logText()
        #expect(status == .exited(expectExit), "device-sim: \(status)\n\(process.logTail())")
        guard let line = log.split(separator: "\n").last(where: { $0.hasPrefix("device-sim summary ") }) else {
            throw HarnessError("no summary line in:\n\(process.logTail())")
        }
        var fields: [String: String] = [:]
        for pair in line.split(separator: " ").dropFirst(2) {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    @Test(arguments: [1, 2])
    func subscriberCountsExactlyWhatWasPublished(qos: Int) async throws {
        try await withProcesses("device-sim-qos\(qos)") { scope in
            let mosquitto = try await scope.startMosquitto()
            let fields = try await Self.runSimulator(scope, [
                "--broker", mosquitto.url, "--clients", "20", "--rate", "50", "--jitter", "0.3", "--count", "25",
                "--qos", String(qos), "--subscribe", "sensors/#", "--ramp-up", "0.5", "--check",
            ])
            #expect(fields["sent"] == "500")
            #expect(fields["acked"] == "500")
            #expect(fields["received"] == "500")
            #expect(fields["distinct"] == "500")
            #expect(fields["lost"] == "0")
            #expect(fields["duplicates"] == "0")
            #expect(fields["out_of_order"] == "0")
            #expect(fields["connects"] == "21")
            #expect(Double(fields["ack_p50_ms"] ?? "0")! > 0)
            #expect(Double(fields["e2e_p99_ms"] ?? "0")! > 0)
        }
    }

    @Test func mqtt5WorkersAndSessionPresent() async throws {
        try await withProcesses { scope in
            let mosquitto = try await scope.startMosquitto()
            // Two worker processes (merged by the parent), persistent sessions over MQTT 5.
            let arguments = [
                "--broker", mosquitto.url, "--clients", "10", "--rate", "0", "--count", "200", "--qos", "1",
                "--protocol", "5", "--clean-session", "false", "--processes", "2", "--subscribe", "sensors/#", "--check",
            ]
            let first = try await Self.runSimulator(scope, arguments, name: "first")
            #expect(first["processes"] == "2")
            #expect(first["acked"] == "2000")
            #expect(first["distinct"] == "2000")
            #expect(first["lost"] == "0")
            #expect(first["session_present"] == "0")
            // The same client ids again: mosquitto kept their sessions (the subscriber's too).
            let second = try await Self.runSimulator(scope, arguments, name: "second")
            #expect(second["session_present"] == "11")
            #expect(second["acked"] == "2000")
        }
    }

    @Test func reconnectsAfterTheBrokerRestarts() async throws {
        try await withProcesses { scope in
            let port = try FreePort.next()
            let config = scope.logDirectory + "/restart.conf"
            try "listener \(port) 127.0.0.1\nallow_anonymous true\npersistence false\n".write(toFile: config, atomically: true, encoding: .utf8)
            let mosquitto = try scope.launch(name: "mosquitto", executable: TestEnvironment.which("mosquitto")!, arguments: ["-c", config])
            try await TCPProbe.waitUntilServing(port: port, timeout: .seconds(10), process: mosquitto)
            let simulator = try scope.launch(name: "device-sim", executable: TestEnvironment.binary("device-sim"), arguments: [
                "--broker", "mqtt://127.0.0.1:\(port)", "--clients", "5", "--rate", "20", "--count", "60", "--qos", "1",
                "--reconnect-min", "0.05", "--reconnect-max", "0.2", "--progress-interval", "0.2",
            ])
            try await simulator.waitForLog(containing: "connected=5 ", timeout: .seconds(20))
            await mosquitto.stop()
            let again = try scope.launch(name: "mosquitto-again", executable: TestEnvironment.which("mosquitto")!, arguments: ["-c", config])
            try await TCPProbe.waitUntilServing(port: port, timeout: .seconds(10), process: again)
            guard let status = await simulator.waitForExit(timeout: .seconds(60)) else { throw HarnessError("device-sim hung") }
            #expect(status == .exited(0))
            let line = simulator.logText().split(separator: "\n").last { $0.hasPrefix("device-sim summary ") } ?? ""
            #expect(line.contains(" acked=300 "), "\(line)")
            #expect(line.contains(" reconnects=5 "), "\(line)")
            #expect(line.contains(" session_present=0 "), "\(line)")
        }
    }

    @Test func givesUpAtTheTimeoutWhenNoBrokerAnswers() async throws {
        try await withProcesses { scope in
            let port = try FreePort.next()  // nothing listens here
            let fields = try await Self.runSimulator(scope, [
                "--broker", "mqtt://127.0.0.1:\(port)", "--clients", "3", "--count", "5", "--timeout", "1",
                "--reconnect-min", "0.05", "--reconnect-max", "0.1", "--check",
            ], expectExit: 1)
            #expect(fields["connects"] == "0")
            #expect(Int(fields["connect_failures"] ?? "0")! >= 3)
            #expect(fields["acked"] == "0")
        }
    }

    @Test func rejectsBadInputWithExitTwo() async throws {
        try await withProcesses { scope in
            for arguments in [["--qos", "3", "--count", "1"], ["--clients", "1"], ["--topic", "a/+/b", "--count", "1"]] {
                let process = try scope.launch(name: "bad", executable: TestEnvironment.binary("device-sim"), arguments: arguments)
                let status = await process.waitForExit(timeout: .seconds(20))
                #expect(status == .exited(2), "\(arguments): \(process.logText())")
                #expect(process.logText().split(separator: "\n").count == 1, "\(process.logText())")
            }
        }
    }
}
