#if canImport(Glibc)
import Glibc
#endif
import Common
import Foundation
import NIOCore
import Testing
import TestSupport

/// What a forwarded record carries upstream, with real processes: mosquitto_pub → edge-agent → mosquitto →
/// mosquitto_sub.
@Suite("Edge agent forwarding")
struct EdgeAgentForwardingTests {
    @Test("a device's MQTT 5 PUBLISH properties arrive upstream with the tributary-* user properties (mosquitto_pub -V 5 → agent → mosquitto → mosquitto_sub -V 5)")
    func propertiesForwarded() async throws {
        try await withProcesses { scope in
            let data = try AgentHarness.temporaryDirectory("properties")
            let broker = try await scope.startMosquitto()
            let subscriber = try await AgentHarness.startMosquittoSub(
                scope, port: broker.port, topic: "props/#", count: 1, format: "MSG|%t|%C|%E|%F|%R|%D|%P|%p")
            let ports = try AgentHarness.ports()
            _ = try await AgentHarness.startAgent(scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port)
            let (status, output) = try await scope.run("mosquitto_pub", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(ports.device)", "-V", "5", "-q", "2", "-i", "props-dev", "-t", "props/a", "-m", "hello",
                "-D", "publish", "user-property", "site", "north", "-D", "publish", "user-property", "site", "south",
                "-D", "publish", "content-type", "text/plain", "-D", "publish", "payload-format-indicator", "1",
                "-D", "publish", "message-expiry-interval", "3600", "-D", "publish", "response-topic", "reply/props-dev",
                "-D", "publish", "correlation-data", "corr-7",
            ])
            #expect(status == .exited(0), "mosquitto_pub: \(output)")
            let line = try await AgentHarness.messageLine(subscriber)
            let fields = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            try #require(fields.count == 9, "\(line)")
            #expect(fields[1] == "props/a")
            #expect(fields[2] == "text/plain")
            let expiry = Int(fields[3]) ?? -1
            #expect((3590...3600).contains(expiry), "message expiry left: \(fields[3])")
            #expect(fields[4] == "1")
            #expect(fields[5] == "reply/props-dev")
            #expect(fields[6] == "corr-7")
            // The device's user properties first, in order (a name may repeat), then the agent's.
            #expect(fields[7] == "site:north site:south tributary-agent:gw-e2e tributary-seq:1 tributary-device:props-dev")
            #expect(fields[8] == "hello")
        }
    }

    @Test("upstream MQTT 3.1.1: every record still arrives exactly once across an agent SIGKILL (QoS 2 session state), without user properties (5 devices × 60, QoS 2)")
    func mqtt311Upstream() async throws {
        try await withProcesses { scope in
            let devices = 5, messages = 60
            let data = try AgentHarness.temporaryDirectory("v311")
            let broker = try await scope.startMosquitto()
            let output = data + "/upstream.txt"
            _ = try await AgentHarness.startSubscriber(scope, brokerPort: broker.port, output: output)
            let ports = try AgentHarness.ports()
            let extra = ["--set", "upstream.protocol=3.1.1"]
            let agent = try await AgentHarness.startAgent(scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, extra: extra)
            let fleet = try AgentHarness.startDevices(scope, port: ports.device, devices: devices, messages: messages, qos: 2, rate: 20)
            // Mid-run (the fleet runs ~3 s): the test's fault schedule, not synchronisation.
            try await Task.sleep(for: .milliseconds(1_500))
            agent.send(SIGKILL)
            _ = await agent.waitForExit()
            _ = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, extra: extra, name: "edge-agent-2")
            #expect(await fleet.waitForExit(timeout: .seconds(60)) == .exited(0), "devices: \(fleet.logTail(lines: 5))")
            let tally = try await UpstreamTally.waitFor(path: output, expected: devices * messages, timeout: .seconds(30))
            let missing = tally.missing(devices: devices, messages: messages, prefix: "dev-")
            #expect(missing.isEmpty, "missing: \(missing.prefix(20))")
            #expect(tally.duplicatePayloads == 0)
            #expect(tally.lines.allSatisfy { $0.agent == "-" && $0.device == "-" }, "3.1.1 carries no user properties")
        }
    }

    @Test("DNS: the upstream host (localhost) is resolved again on every connection attempt; a forced reconnect resolves it again and forwarding goes on")
    func resolvedOnEveryReconnect() async throws {
        try await withProcesses { scope in
            let data = try AgentHarness.temporaryDirectory("dns")
            let broker = try await scope.startMosquitto()
            let subscriber = try await AgentHarness.startMosquittoSub(scope, port: broker.port, topic: "dns/#", count: 1, format: "MSG|%t|%p")
            let ports = try AgentHarness.ports()
            let agent = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port,
                upstreamURL: "mqtt://localhost:\(broker.port)", extra: ["--set", "log.level=debug"])
            try await AgentHarness.waitForLog(agent, "Uplink connected", count: 1)
            // A client taking the agent's client id makes mosquitto close the agent's connection: a real reconnect.
            _ = try await scope.run("takeover", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(broker.port)", "-i", "tributary-gw-e2e", "-t", "other", "-m", "x",
            ])
            try await AgentHarness.waitForLog(agent, "Uplink connected", count: 2)
            let resolutions = try await AgentHarness.metric(scope, port: ports.http, "tributary_agent_uplink_dns_resolutions_total") ?? 0
            let reconnects = try await AgentHarness.metric(scope, port: ports.http, "tributary_agent_uplink_reconnects_total") ?? 0
            #expect(reconnects >= 1)
            #expect(resolutions == reconnects + 1, "one lookup per connection attempt: \(resolutions) lookups, \(reconnects) reconnects")
            #expect(agent.logText().components(separatedBy: "uplink.host=localhost [EdgeAgent] Uplink host resolved").count - 1 == Int(resolutions))
            let (status, output) = try await scope.run("pub", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "1", "-t", "dns/a", "-m", "after-reconnect",
            ])
            #expect(status == .exited(0), "\(output)")
            #expect(try await AgentHarness.messageLines(subscriber) == ["MSG|dns/a|after-reconnect"])
        }
    }

    @Test("upstream user name and password (password from TRIBUTARY_UPSTREAM_PASSWORD), topic prefix, upstream.qos 1 and a route with qos=2: a wrong password forwards nothing (the record waits); the right one forwards each record on <prefix><topic> at its QoS")
    func credentialsPrefixAndQoS() async throws {
        try await withProcesses { scope in
            let data = try AgentHarness.temporaryDirectory("credentials")
            let passwords = scope.logDirectory + "/passwords"
            let (made, madeOutput) = try await scope.run("mosquitto_passwd", try AgentHarness.tool("mosquitto_passwd"), ["-b", "-c", passwords, "gw-e2e", "s3cret"])
            try #require(made == .exited(0), "\(madeOutput)")
            chmod(passwords, 0o644)  // mosquitto drops to its own user
            let broker = try await scope.startMosquitto(extraConfiguration: ["allow_anonymous false", "password_file \(passwords)"])
            let subscriber = try await AgentHarness.startMosquittoSub(
                scope, port: broker.port, topic: "site-7/#", count: 3, format: "MSG|%t|%q|%p", extra: ["-u", "gw-e2e", "-P", "s3cret"])
            let ports = try AgentHarness.ports()
            let settings = [
                "--set", "upstream.username=gw-e2e", "--set", "upstream.topic_prefix=site-7/", "--set", "upstream.qos=1",
                "--set", "routes=alarms/# qos=2",
            ]
            let wrong = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, extra: settings,
                environment: ["TRIBUTARY_UPSTREAM_PASSWORD": "wrong"], name: "agent-wrong-password")
            try await wrong.waitForLog(containing: "the server refused the connection", timeout: .seconds(10))
            let (held, heldOutput) = try await scope.run("pub-held", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "1", "-t", "devices/d-1/data", "-m", "held",
            ])
            #expect(held == .exited(0), "\(heldOutput)")
            _ = try await AgentHarness.waitForMetric(scope, port: ports.http, "tributary_agent_uplink_reconnects_total") { $0 >= 2 }
            #expect(try await AgentHarness.metric(scope, port: ports.http, "tributary_agent_forwarded_messages_total") == 0)
            _ = await wrong.stop()
            #expect(!subscriber.logText().contains("MSG|"))
            _ = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, extra: settings,
                environment: ["TRIBUTARY_UPSTREAM_PASSWORD": "s3cret"])
            for (topic, message) in [("devices/d-1/data", "reading"), ("alarms/door", "open")] {
                let (status, output) = try await scope.run("pub", try AgentHarness.tool("mosquitto_pub"), [
                    "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "2", "-t", topic, "-m", message,
                ])
                #expect(status == .exited(0), "\(output)")
            }
            #expect(try await AgentHarness.messageLines(subscriber) == [
                "MSG|site-7/devices/d-1/data|1|held", "MSG|site-7/devices/d-1/data|1|reading", "MSG|site-7/alarms/door|2|open",
            ])
        }
    }
}
