#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import Testing
import TestSupport

@testable import CloudBroker
@testable import Common

/// `DeliveryDemand` end to end: a node on which nothing subscribes pauses its delivery consumer
/// (`kafka.delivery_idle_pause`, 1 s here), and whatever needs it again resumes it without losing a record
/// it owes anyone: a SUBSCRIBE, a resent publish (duplicate check), a session moved from a lost node.
@Suite("cloud-broker delivery consumer pause", .serialized)
struct DeliveryPauseTests {
    static let pauseSettings = ["kafka.delivery_idle_pause": "1s"]
    static let pausedLog = "delivery consumer paused"
    static let resumedLog = "delivery consumer resumed"

    static func metric(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    @Test("paused while nothing subscribes; a SUBSCRIBE resumes it: what is published after the SUBACK arrives, what was published during the pause does not")
    func subscribeResumes() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let node = try await scope.startBroker(tansu: tansu, settings: Self.pauseSettings)
            try await node.process.waitForLog(containing: Self.pausedLog, timeout: .seconds(20))
            var metrics = try await NodeLossDeduplicationTests.metrics(port: node.httpPort)
            #expect(Self.metric(metrics, "tributary_broker_delivery_consumer_paused") == 1)

            let publisher = try await RawMQTTClient.connect(port: node.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("pause-publisher"))
            for index in 1...5 { try await BrokerProtocolTests.publishQoS1(publisher, "pause/x", "during-\(index)", id: UInt16(index)) }
            // Acknowledged, so in Kafka, while the node read nothing back.
            #expect(try await NodeLossDeduplicationTests.payloads(tansu, prefix: "pause/", expected: 5).count == 5)

            let subscriber = try await RawMQTTClient.connect(port: node.mqttPort)
            try await subscriber.handshake(BrokerProtocolTests.v5("pause-subscriber"))
            // The SUBACK comes once the consumer reads again: published right after it, all arrive.
            try await BrokerProtocolTests.subscribe(subscriber, "pause/#", qos: .atLeastOnce)
            for index in 1...5 { try await BrokerProtocolTests.publishQoS1(publisher, "pause/x", "after-\(index)", id: UInt16(10 + index)) }
            let received = try await CrossNodeTakeoverTests.receive(subscriber, count: 5)
            #expect(received == (1...5).map { "after-\($0)" })
            try await node.process.waitForLog(containing: Self.resumedLog, timeout: .seconds(10))

            metrics = try await NodeLossDeduplicationTests.metrics(port: node.httpPort)
            #expect(Self.metric(metrics, "tributary_broker_delivery_consumer_paused") == 0)
            #expect(Self.metric(metrics, "tributary_broker_delivery_consumer_resumes_total") == 1)
            #expect((Self.metric(metrics, "tributary_broker_delivery_consumer_pauses_total") ?? 0) >= 1)
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test("a publish resent (DUP) to a paused node after its first node died is recognised from the look-back read on resuming: stored once")
    func resentPublishResumes() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let nodes = try await scope.startNodes(["node-a", "node-b"], tansu: tansu, settings: Self.pauseSettings)
            let (nodeA, nodeB) = (nodes[0], nodes[1])
            try await nodeB.process.waitForLog(containing: Self.pausedLog, timeout: .seconds(20))
            let clientId = "pause-resender"
            let first = try await RawMQTTClient.connect(port: nodeA.mqttPort)
            try await first.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            // PUBREC means Kafka acknowledged; the client "does not see" these acknowledgements.
            #expect(try await NodeLossDeduplicationTests.publishUntilPubRec(first, NodeLossDeduplicationTests.qos2("pr/a", "p1", id: 21)) == .success)
            #expect(
                try await NodeLossDeduplicationTests.publishUntilPubRec(first, NodeLossDeduplicationTests.qos2("pr/a", "s7", id: 22, agentSequence: 7)) == .success)
            #expect(try await NodeLossDeduplicationTests.payloads(tansu, prefix: "pr/", expected: 2) == ["p1", "s7"])
            nodeA.process.send(SIGKILL)
            _ = await nodeA.process.waitForExit()

            // Node B read none of those records (paused); the resent publishes make it read them back.
            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            #expect(try await NodeLossDeduplicationTests.publishUntilPubRec(second, NodeLossDeduplicationTests.qos2("pr/a", "p1", id: 21, dup: true)) == .success)
            #expect(
                try await NodeLossDeduplicationTests.publishUntilPubRec(second, NodeLossDeduplicationTests.qos2("pr/a", "s7", id: 22, dup: true, agentSequence: 7))
                    == .success)
            try await nodeB.process.waitForLog(containing: Self.resumedLog, timeout: .seconds(10))
            #expect(try await NodeLossDeduplicationTests.release(second, id: 21) == .success)
            #expect(try await NodeLossDeduplicationTests.release(second, id: 22) == .success)
            // A resent publish that was never stored is stored.
            #expect(try await NodeLossDeduplicationTests.publishUntilPubRec(second, NodeLossDeduplicationTests.qos2("pr/a", "p2", id: 23, dup: true)) == .success)
            #expect(try await NodeLossDeduplicationTests.payloads(tansu, prefix: "pr/", expected: 3) == ["p1", "p2", "s7"])
            let metrics = try await NodeLossDeduplicationTests.metrics(port: nodeB.httpPort)
            #expect(metrics.contains("tributary_broker_duplicates_suppressed_total{match=\"packet_id\"} 1"))
            #expect(metrics.contains("tributary_broker_duplicates_suppressed_total{match=\"agent_sequence\"} 1"))
            await second.close()
        }
    }

    @Test("a session moving to a paused node after its node died gets what was published meanwhile, then live messages")
    func movedSessionResumes() async throws {
        try await movedSessionToPausedNode()
    }

    /// Node A's only heartbeat is the one it writes as it starts, before it routes anything: it carries no
    /// routing position, and node B, paused, has no offset timeline of the meantime either. The replay must
    /// still start before what A owed the client (here: B's position when it paused) rather than skip it.
    @Test("a session moving to a paused node from a node that died before a heartbeat carried its routing positions gets what was published meanwhile")
    func movedSessionWithoutRoutingPositions() async throws {
        // A long lease on both nodes: node A is not judged lost meanwhile (nothing here depends on that).
        try await movedSessionToPausedNode(nodeA: ["cluster.heartbeat_interval": "30s", "cluster.node_lease": "60s"], nodeB: ["cluster.node_lease": "60s"])
    }

    private func movedSessionToPausedNode(
        nodeA settingsA: [String: String] = [:], nodeB settingsB: [String: String] = [:], test: String = #function
    ) async throws {
        try await withProcesses(test) { scope in
            let tansu = try await scope.startTansu()
            let nodeA = try await scope.startBroker(tansu: tansu, settings: Self.pauseSettings.merging(settingsA) { $1 }, name: "node-a", nodeId: "node-a")
            let nodeB = try await scope.startBroker(tansu: tansu, settings: Self.pauseSettings.merging(settingsB) { $1 }, name: "node-b", nodeId: "node-b")
            let clientId = "pause-moved-subscriber"
            _ = try await CrossNodeTakeoverTests.subscribedPersistently(tansu, port: nodeA.mqttPort, clientId: clientId, filter: "pm/\(clientId)")
            try await nodeB.process.waitForLog(containing: Self.pausedLog, timeout: .seconds(20))
            nodeA.process.send(SIGKILL)
            _ = await nodeA.process.waitForExit()

            // Published through the paused node B while the subscriber is between nodes.
            let commander = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            try await commander.handshake(BrokerProtocolTests.v5("pause-moved-commander"))
            try await BrokerProtocolTests.publishQoS1(commander, "pm/\(clientId)", "c1", id: 1)
            try await BrokerProtocolTests.publishQoS1(commander, "pm/\(clientId)", "c2", id: 2)

            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            #expect(try await CrossNodeTakeoverTests.receive(second, count: 2) == ["c1", "c2"])
            try await nodeB.process.waitForLog(containing: Self.resumedLog, timeout: .seconds(10))
            try await BrokerProtocolTests.publishQoS1(commander, "pm/\(clientId)", "c3", id: 3)
            #expect(try await CrossNodeTakeoverTests.receive(second, count: 1) == ["c3"])
            await second.close()
            await commander.close()
        }
    }
}
