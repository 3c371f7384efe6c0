import Foundation
import Testing
import TestSupport

/// An edge agent forwarding to the cluster through HAProxy while the node holding its connection is killed:
/// every record it took from its devices is in Kafka exactly once, by (tributary-agent, tributary-seq).
@Suite("cloud-broker cluster: edge agent across a node kill", .serialized)
struct ClusterAgentTests {
    @Test func agentForwardsExactlyOnceAcrossANodeKill() async throws {
        try await withProcesses { scope in
            let cluster = try await scope.startCluster(nodes: 3)
            let devicePort = try FreePort.next()
            let agentHTTP = try FreePort.next()
            let data = scope.logDirectory + "/agent-data"
            let agent = try scope.launch(
                name: "edge-agent", executable: TestEnvironment.binary("edge-agent"),
                arguments: [
                    "--agent-id", "gw-cluster", "--device-listen", "127.0.0.1:\(devicePort)", "--upstream", cluster.url,
                    "--data-dir", data, "--http-listen", "127.0.0.1:\(agentHTTP)",
                    "--set", "upstream.keep_alive=5s", "--set", "upstream.response_timeout=3s", "--set", "upstream.reconnect_max=1s",
                ])
            try await agent.waitForLog(containing: "Edge agent ready", timeout: .seconds(30))

            // 10 devices × 150 messages at 15 msg/s each (10 s), QoS 1 into the agent.
            let devices = try scope.launch(
                name: "device-sim", executable: TestEnvironment.binary("device-sim"),
                arguments: [
                    "--broker", "mqtt://127.0.0.1:\(devicePort)", "--clients", "10", "--rate", "15", "--count", "150",
                    "--qos", "1", "--size", "256", "--client-id-prefix", "agentdev", "--progress-interval", "0.5",
                ])
            // The node holding the agent's upstream connection, once the agent has forwarded something.
            let victim = try await Self.nodeHoldingConnections(cluster, timeout: .seconds(30))
            try await ClusterNodeDownTests.waitUntil("devices publishing", timeout: .seconds(30), devices) { progress in
                (Int(progress["acked"] ?? "") ?? 0) >= 300
            }
            victim.broker.process.send(SIGKILL)
            _ = await victim.broker.process.waitForExit()
            print("cluster agent: killed \(victim.id) holding the agent's connection")

            guard await devices.waitForExit(timeout: .seconds(60)) == .exited(0) else {
                throw HarnessError("device-sim did not finish cleanly\n\(devices.logTail())")
            }
            guard let run = SimulatorOutput.summary(devices.logText()), let acked = Int(run["acked"] ?? "") else {
                throw HarnessError("no device-sim summary\n\(devices.logTail())")
            }
            #expect(acked == 1_500)

            let (status, output) = try await scope.run(
                "verify-kafka", TestEnvironment.binary("device-sim"),
                ["verify-kafka", "--bootstrap", cluster.tansu.bootstrapServers, "--topic", "mqtt.messages", "--expect", String(acked),
                 "--client-header", "tributary-agent", "--seq-header", "tributary-seq", "--idle-timeout", "10", "--timeout", "90"],
                environment: TestEnvironment.kafkaClientEnvironment, timeout: .seconds(120))
            guard let kafka = SimulatorOutput.summary(output) else { throw HarnessError("verify-kafka printed no summary:\n\(output)") }
            print("cluster agent kafka: \(kafka.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
            #expect(kafka["distinct"] == String(acked), "records of the agent in Kafka (by agent sequence)")
            #expect(kafka["lost"] == "0", "agent sequences missing in Kafka")
            #expect(kafka["duplicates"] == "0", "agent sequences produced twice (resent to another node after the kill)")
            #expect(status == .exited(0), "verify-kafka: \(status)\n\(output)")
            #expect(agent.isRunning)
        }
    }

    /// The first node whose `tributary_broker_connections` gauge is above zero.
    static func nodeHoldingConnections(_ cluster: TestCluster, timeout: Duration) async throws -> ClusterNode {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            for node in cluster.nodes {
                let metrics = ProcessScope.httpGet("http://127.0.0.1:\(node.broker.httpPort)/metrics")
                let value = metrics.split(separator: "\n").first { $0.hasPrefix("tributary_broker_connections ") }
                    .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
                if value > 0 { return node }
            }
            try await Task.sleep(for: .milliseconds(100))  // poll interval
        }
        throw HarnessError("no node reports a connection")
    }
}
