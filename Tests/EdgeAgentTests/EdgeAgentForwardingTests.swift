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
}
