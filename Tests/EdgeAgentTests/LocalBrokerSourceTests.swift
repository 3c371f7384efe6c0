#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// The local broker source with real processes: devices (paho) → local mosquitto → edge-agent (persistent
/// QoS 2 subscription) → upstream mosquitto → the QoS 2 subscriber counting by (agent, seq).
@Suite("Edge agent local broker source")
struct LocalBrokerSourceTests {
    @Test("local mosquitto → agent → upstream mosquitto: every message exactly once and in order per device, two of them in a priority lane, with the agent SIGKILLed twice mid-run (10 devices × 100, QoS 2)")
    func exactlyOnceAcrossKills() async throws {
        try await withProcesses { scope in
            let devices = 10, messages = 100
            let data = try AgentHarness.temporaryDirectory("local-broker")
            let upstream = try await scope.startMosquitto(name: "upstream")
            let local = try await scope.startMosquitto(name: "local")
            let output = data + "/upstream.txt"
            _ = try await AgentHarness.startSubscriber(scope, brokerPort: upstream.port, output: output)
            let ports = try AgentHarness.ports()
            let extra = [
                "--set", "local_broker.url=mqtt://127.0.0.1:\(local.port)", "--set", "local_broker.topics=devices/#",
                "--set", "local_broker.device_from=topic:2", "--set", "local_broker.keep_alive=5s",
                // Two devices' messages go to a priority lane: batches from the local broker are split by lane.
                "--set", "routes=devices/dev-1/# priority=4, devices/dev-6/# priority=4",
            ]
            var agent = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: upstream.port, extra: extra)
            try await agent.waitForLog(containing: "Local broker subscribed", timeout: .seconds(10))
            // 10 msg/s per device: the fleet runs ~10 s, so both kills hit live traffic.
            let fleet = try AgentHarness.startDevices(scope, port: local.port, devices: devices, messages: messages, qos: 2, rate: 10)
            for round in 1...2 {
                // The test's schedule of faults, not synchronisation.
                try await Task.sleep(for: .milliseconds(Int.random(in: 2_000...3_500)))
                agent.send(SIGKILL)
                _ = await agent.waitForExit()
                agent = try await AgentHarness.startAgent(
                    scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: upstream.port, extra: extra,
                    name: "edge-agent-\(round + 1)")
            }
            try await agent.waitForLog(containing: "Local broker connected", timeout: .seconds(10))
            #expect(agent.logText().contains("local_broker.session_present=true"), "the local broker kept the agent's session")
            let exit = await fleet.waitForExit(timeout: .seconds(60))
            #expect(exit == .exited(0), "devices: \(fleet.logTail(lines: 5))")
            let tally = try await UpstreamTally.waitFor(path: output, expected: devices * messages, timeout: .seconds(30))
            let missing = tally.missing(devices: devices, messages: messages, prefix: "dev-")
            print("e2e local broker: upstream=\(tally.lines.count) missing=\(missing.count) duplicate_payloads=\(tally.duplicatePayloads)")
            #expect(missing.isEmpty, "missing: \(missing.prefix(20))")
            #expect(tally.duplicateSequences == 0)
            #expect(tally.duplicatePayloads == 0)
            #expect(tally.devicesOutOfOrder.isEmpty, "out of order: \(tally.devicesOutOfOrder)")
            // tributary-device is the publisher's id, from topic level 2.
            #expect(tally.lines.allSatisfy { $0.payload.hasPrefix($0.device + ":") })
            #expect(Set(tally.lines.filter { $0.sequence >> 56 == 4 }.map(\.device)) == ["dev-1", "dev-6"])
        }
    }

    @Test("instead of the device listener (device.listen: off): ready without a listener, no device port open, and a message published to the local broker reaches upstream with the publisher's user property as tributary-device")
    func insteadOfTheListener() async throws {
        try await withProcesses { scope in
            let data = try AgentHarness.temporaryDirectory("local-broker-only")
            let upstream = try await scope.startMosquitto(name: "upstream")
            let local = try await scope.startMosquitto(name: "local")
            let subscriber = try await AgentHarness.startMosquittoSub(scope, port: upstream.port, topic: "plant/#", count: 1, format: "MSG|%t|%P|%p")
            let ports = try AgentHarness.ports()
            let agent = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: upstream.port, deviceListen: "off",
                extra: [
                    "--set", "local_broker.url=mqtt://127.0.0.1:\(local.port)", "--set", "local_broker.topics=plant/#",
                    "--set", "local_broker.device_from=property:sensor",
                ])
            try await agent.waitForLog(containing: "Local broker subscribed", timeout: .seconds(10))
            #expect(!agent.logText().contains("Listening for devices"))
            _ = try await AgentHarness.httpGet(scope, port: ports.http, path: "/ready")  // throws unless 200
            #expect((try? RawMQTTPeer(port: ports.device, version: .v5)) == nil, "no device listener")
            let (status, output) = try await scope.run("pub-local", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(local.port)", "-V", "5", "-q", "2", "-t", "plant/line-1/temp", "-m", "21.5",
                "-D", "publish", "user-property", "sensor", "t-17",
            ])
            #expect(status == .exited(0), "\(output)")
            #expect(try await AgentHarness.messageLines(subscriber) == [
                "MSG|plant/line-1/temp|sensor:t-17 tributary-agent:gw-e2e tributary-seq:1 tributary-device:t-17|21.5",
            ])
        }
    }
}
