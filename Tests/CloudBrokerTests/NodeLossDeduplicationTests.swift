#if canImport(Glibc)
import Glibc
#endif
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import NIOCore
import Testing
import TestSupport
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// G2 across node loss: a publish whose node died after Kafka acknowledged it but before the client saw the
/// acknowledgement is resent (DUP) to another node, or to the same node restarted, and must not be stored
/// twice; one that was never stored must be stored.
@Suite("cloud-broker deduplication across node loss", .serialized)
struct NodeLossDeduplicationTests {
    static let topic = "mqtt.messages"

    static func qos2(_ topic: String, _ payload: String, id: UInt16, dup: Bool = false, agentSequence: UInt64? = nil) -> MQTTPublish {
        var properties = MQTTProperties()
        if let agentSequence {
            properties.userProperties = [
                MQTTUserProperty(name: "tributary-agent", value: "gw-dedupe"), MQTTUserProperty(name: "tributary-seq", value: "\(agentSequence)"),
            ]
        }
        return MQTTPublish(topic: topic, payload: ByteBuffer(string: payload), qos: .exactlyOnce, retain: false, dup: dup, packetId: id, properties: properties)
    }

    /// Sends `publish` and returns the reason code of its PUBREC.
    static func publishUntilPubRec(_ client: RawMQTTClient, _ publish: MQTTPublish) async throws -> MQTTReasonCode {
        try await client.send(.publish(publish))
        return try await client.next { if case .pubrec(let ack) = $0, ack.packetId == publish.packetId { ack.reasonCode } else { nil } }
    }

    static func release(_ client: RawMQTTClient, id: UInt16) async throws -> MQTTReasonCode {
        try await client.send(.pubrel(MQTTPublishAck(packetId: id)))
        return try await client.next { if case .pubcomp(let ack) = $0, ack.packetId == id { ack.reasonCode } else { nil } }
    }

    /// Payloads of the messages-topic records with MQTT topic prefix `prefix`, once `expected` are there.
    static func payloads(_ tansu: TansuBroker, prefix: String, expected: Int) async throws -> [String] {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let records = try await KafkaTopicReader.readAll(bootstrapServers: tansu.bootstrapServers, topic: topic)
            let mine = records.filter { ($0.header("mqtt.topic") ?? "").hasPrefix(prefix) }.compactMap { $0.value.map { String(decoding: $0, as: UTF8.self) } }
            if mine.count >= expected || ContinuousClock.now > deadline { return mine.sorted() }
            try await Task.sleep(for: .milliseconds(100))  // poll interval while the records arrive
        }
    }

    static func metrics(port: Int) async throws -> String {
        let url = try #require(URL(string: "http://127.0.0.1:\(port)/metrics"))
        let (data, _) = try await URLSession.shared.data(from: url)
        return String(decoding: data, as: UTF8.self)
    }

    @Test("resent to another node after the first died: stored once (QoS 2 packet id and agent sequence); never stored: stored")
    func resentToAnotherNode() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let nodes = try await scope.startNodes(["node-a", "node-b"], tansu: tansu)
            let (nodeA, nodeB) = (nodes[0], nodes[1])
            let clientId = "dedupe-other-node"
            let first = try await RawMQTTClient.connect(port: nodeA.mqttPort)
            #expect(try await first.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == false)
            // PUBREC means Kafka acknowledged; the client "does not see" these acknowledgements.
            #expect(try await Self.publishUntilPubRec(first, Self.qos2("dd/a", "m1", id: 7)) == .success)
            #expect(try await Self.publishUntilPubRec(first, Self.qos2("dd/a", "m2", id: 8)) == .success)
            #expect(try await Self.publishUntilPubRec(first, Self.qos2("dd/a", "s41", id: 9, agentSequence: 41)) == .success)
            #expect(try await Self.payloads(tansu, prefix: "dd/", expected: 3) == ["m1", "m2", "s41"])
            nodeA.process.send(SIGKILL)
            _ = await nodeA.process.waitForExit()

            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            // Resent: recognised from the Kafka log, acknowledged, not stored again.
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dd/a", "m1", id: 7, dup: true)) == .success)
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dd/a", "s41", id: 9, dup: true, agentSequence: 41)) == .success)
            // PUBREL for a message acknowledged by the dead node: completed (it is stored).
            #expect(try await Self.release(second, id: 8) == .success)
            #expect(try await Self.release(second, id: 7) == .success)
            // Resent but never stored (same packet id as a stored one, another message; a new agent sequence): stored.
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dd/a", "m3", id: 8, dup: true)) == .success)
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dd/a", "s42", id: 10, dup: true, agentSequence: 42)) == .success)
            // A first attempt (DUP clear) is new even with a known agent sequence (an agent whose buffer was wiped).
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dd/a", "s41-again", id: 11, agentSequence: 41)) == .success)
            #expect(try await Self.payloads(tansu, prefix: "dd/", expected: 6) == ["m1", "m2", "m3", "s41", "s41-again", "s42"])
            let metrics = try await Self.metrics(port: nodeB.httpPort)
            #expect(metrics.contains("tributary_broker_duplicates_suppressed_total{match=\"packet_id\"} 1"))
            #expect(metrics.contains("tributary_broker_duplicates_suppressed_total{match=\"agent_sequence\"} 1"))
            await second.close()
        }
    }

    @Test("resent to the same node after it was SIGKILLed and restarted: stored once (start-up look-back)")
    func resentToRestartedNode() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let node = try await scope.startBroker(tansu: tansu, name: "node-1", nodeId: "node-1")
            let clientId = "dedupe-restart"
            let first = try await RawMQTTClient.connect(port: node.mqttPort)
            try await first.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            #expect(try await Self.publishUntilPubRec(first, Self.qos2("dr/a", "r1", id: 3)) == .success)
            #expect(try await Self.payloads(tansu, prefix: "dr/", expected: 1) == ["r1"])
            node.process.send(SIGKILL)
            _ = await node.process.waitForExit()

            let restarted = try await scope.startBroker(tansu: tansu, name: "node-1-restarted", nodeId: "node-1")
            let second = try await RawMQTTClient.connect(port: restarted.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dr/a", "r1", id: 3, dup: true)) == .success)
            #expect(try await Self.publishUntilPubRec(second, Self.qos2("dr/a", "r2", id: 4)) == .success)
            #expect(try await Self.payloads(tansu, prefix: "dr/", expected: 2) == ["r1", "r2"])
            await second.close()
        }
    }
}

/// Unit tests of the index itself (no Kafka).
@Suite("PublishDeduplicator")
struct PublishDeduplicatorTests {
    static func record(clientId: String, packetId: UInt16?, topic: String, payload: String, agent: (String, UInt64)? = nil, offset: Int64 = 0) -> KafkaRecord {
        var headers = [KafkaHeader("mqtt.topic", Array(topic.utf8)), KafkaHeader("mqtt.client_id", Array(clientId.utf8))]
        if let packetId { headers.append(KafkaHeader("mqtt.packet_id", Array("\(packetId)".utf8))) }
        if let agent {
            headers.append(KafkaHeader("tributary-agent", Array(agent.0.utf8)))
            headers.append(KafkaHeader("tributary-seq", Array("\(agent.1)".utf8)))
        }
        return KafkaRecord(
            topic: "mqtt.messages", partition: 0, offset: offset, key: nil, value: Array(payload.utf8), headers: headers, timestampMilliseconds: nil)
    }

    @Test("a record produced from a publish has the key the resent publish has")
    func keysAgree() throws {
        let publish = NodeLossDeduplicationTests.qos2("a/b", "hello", id: 12)
        let produced = KafkaRecordMapping.record(for: publish, clientId: "c1", destination: .init(kafkaTopic: "mqtt.messages", key: "a/b"))
        let consumed = KafkaRecord(
            topic: produced.topic, partition: 0, offset: 0, key: produced.key, value: produced.value, headers: produced.headers, timestampMilliseconds: nil)
        #expect(PublishDeduplicator.key(for: consumed) == PublishDeduplicator.key(for: publish, clientId: "c1"))
        let agentPublish = NodeLossDeduplicationTests.qos2("a/b", "x", id: 1, agentSequence: 9)
        #expect(PublishDeduplicator.key(for: agentPublish, clientId: "gw") == .agentSequence(agent: "gw-dedupe", sequence: 9))
        // QoS 1 without agent headers: nothing to match by.
        var qos1 = publish
        qos1.qos = .atLeastOnce
        #expect(PublishDeduplicator.key(for: qos1, clientId: "c1") == nil)
    }

    @Test("packet id: same id and content within the window is a duplicate; other content, another client or an old use is not")
    func packetIdentifiers() {
        let index = PublishDeduplicator(clientWindow: 3)
        index.observe(Self.record(clientId: "c1", packetId: 1, topic: "t", payload: "a"))
        let fingerprint = PublishDeduplicator.fingerprint(topic: "t", payload: Array("a".utf8))
        #expect(index.contains(.packet(clientId: "c1", packetId: 1, fingerprint: fingerprint)))
        #expect(!index.contains(.packet(clientId: "c2", packetId: 1, fingerprint: fingerprint)))
        #expect(!index.contains(.packet(clientId: "c1", packetId: 1, fingerprint: PublishDeduplicator.fingerprint(topic: "t", payload: Array("b".utf8)))))
        #expect(!index.contains(.packet(clientId: "c1", packetId: 2, fingerprint: fingerprint)))
        // Three more QoS 2 records of c1: id 1's record is older than the window (3), so it was completed.
        for id: UInt16 in 2...4 { index.observe(Self.record(clientId: "c1", packetId: id, topic: "t", payload: "x\(id)")) }
        #expect(!index.contains(.packet(clientId: "c1", packetId: 1, fingerprint: fingerprint)))
        // The topic is part of the fingerprint.
        #expect(PublishDeduplicator.fingerprint(topic: "ta", payload: Array("b".utf8)) != PublishDeduplicator.fingerprint(topic: "t", payload: Array("ab".utf8)))
    }

    @Test("fingerprint: a change of any byte, of the length or of the topic/payload boundary changes it; the payload's container does not")
    func fingerprintCoversEveryByte() {
        // Lengths around the eight-byte steps and the tail.
        for length in [0, 1, 7, 8, 9, 15, 16, 17, 1024] {
            let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let base = PublishDeduplicator.fingerprint(topic: "t/1", payload: payload)
            // As the publish side computes it (a ByteBuffer's view) and as the consumer side does (an array).
            #expect(PublishDeduplicator.fingerprint(topic: "t/1", payload: ByteBuffer(bytes: payload).readableBytesView) == base)
            for index in payload.indices {
                var changed = payload
                changed[index] ^= 0x01
                #expect(PublishDeduplicator.fingerprint(topic: "t/1", payload: changed) != base, "byte \(index) of \(length)")
            }
            #expect(PublishDeduplicator.fingerprint(topic: "t/1", payload: payload + [0]) != base, "a trailing zero byte after \(length)")
        }
        #expect(PublishDeduplicator.fingerprint(topic: "t/1", payload: [UInt8]()) != PublishDeduplicator.fingerprint(topic: "t/", payload: Array("1".utf8)))
        #expect(PublishDeduplicator.fingerprint(topic: "t/2", payload: Array("x".utf8)) != PublishDeduplicator.fingerprint(topic: "t/1", payload: Array("x".utf8)))
    }

    @Test("agent sequences: a set over a window, any order")
    func agentSequences() {
        let index = PublishDeduplicator(agentWindow: 4)
        for sequence: UInt64 in [5, 3, 4, 6] { index.observe(Self.record(clientId: "gw", packetId: nil, topic: "t", payload: "p", agent: ("a1", sequence))) }
        for sequence: UInt64 in [3, 4, 5, 6] { #expect(index.contains(.agentSequence(agent: "a1", sequence: sequence))) }
        #expect(!index.contains(.agentSequence(agent: "a1", sequence: 7)))
        #expect(!index.contains(.agentSequence(agent: "a2", sequence: 5)))
        // A fifth forgets the oldest inserted (5).
        index.observe(Self.record(clientId: "gw", packetId: nil, topic: "t", payload: "p", agent: ("a1", 9)))
        #expect(!index.contains(.agentSequence(agent: "a1", sequence: 5)))
        #expect(index.contains(.agentSequence(agent: "a1", sequence: 9)))
        #expect(index.statistics().agents == 1)
    }
}

/// Takeover across nodes through `mqtt.connections`.
@Suite("cloud-broker takeover across nodes", .serialized)
struct CrossNodeTakeoverTests {
    /// A persistent MQTT 5 client on `port` subscribed to `filter` (QoS 1), once its snapshot with the
    /// subscription is in `mqtt.sessions`.
    static func subscribedPersistently(_ tansu: TansuBroker, port: Int, clientId: String, filter: String) async throws -> RawMQTTClient {
        let client = try await RawMQTTClient.connect(port: port)
        #expect(try await client.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == false)
        try await BrokerProtocolTests.subscribe(client, filter, qos: .atLeastOnce)
        _ = try await SessionPersistenceTests.waitForSessionRecords(tansu, clientId: clientId, "the snapshot with the subscription") { records in
            guard let value = records.last?.value, let snapshot = try? SessionSnapshot.decode(value) else { return false }
            return snapshot.subscriptions.count == 1
        }
        return client
    }

    /// The payloads of the next `count` PUBLISHes to `client`, each acknowledged.
    static func receive(_ client: RawMQTTClient, count: Int) async throws -> [String] {
        var received: [String] = []
        while received.count < count {
            let publish = try await BrokerProtocolTests.nextPublish(client, timeout: .seconds(15))
            received.append(String(buffer: publish.payload))
            if let id = publish.packetId { try await client.send(.puback(MQTTPublishAck(packetId: id))) }
        }
        return received
    }

    @Test("messages queued or unacknowledged when a session went offline reach it on another node after the first died")
    func undeliveredMessagesOfAnOfflineSession() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let nodes = try await scope.startNodes(["node-a", "node-b"], tansu: tansu)
            let (nodeA, nodeB) = (nodes[0], nodes[1])
            let clientId = "slow-subscriber"
            let first = try await RawMQTTClient.connect(port: nodeA.mqttPort)
            var connect = BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)
            connect.properties.receiveMaximum = 1  // one message in flight: the others wait in the session's queue
            try await first.handshake(connect)
            try await BrokerProtocolTests.subscribe(first, "slow/#", qos: .atLeastOnce)
            let publisher = try await RawMQTTClient.connect(port: nodeA.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("slow-publisher"))
            for (index, payload) in ["s1", "s2", "s3"].enumerated() {
                try await BrokerProtocolTests.publishQoS1(publisher, "slow/x", payload, id: UInt16(index + 1))
            }
            // s1 arrives and is never acknowledged; s2 and s3 stay queued on node A.
            #expect(String(buffer: try await BrokerProtocolTests.nextPublish(first).payload) == "s1")
            try await first.send(.disconnect(MQTTDisconnect()))
            // The offline snapshot is written; then node A dies with the queue in its memory.
            _ = try await SessionPersistenceTests.waitForSessionRecords(tansu, clientId: clientId, "the offline snapshot") { records in
                guard let value = records.last?.value, let snapshot = try? SessionSnapshot.decode(value) else { return false }
                return !snapshot.connected && !snapshot.offsets.isEmpty
            }
            nodeA.process.send(SIGKILL)
            _ = await nodeA.process.waitForExit()

            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            let received = try await Self.receive(second, count: 3)
            #expect(received == ["s1", "s2", "s3"])
            await second.close()
            await publisher.close()
        }
    }

    @Test("messages published while a subscriber's node is dead reach it on the node it reconnects to (replayed from Kafka)")
    func messagesForMovedSession() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let nodes = try await scope.startNodes(["node-a", "node-b"], tansu: tansu)
            let (nodeA, nodeB) = (nodes[0], nodes[1])
            let clientId = "moved-subscriber"
            _ = try await Self.subscribedPersistently(tansu, port: nodeA.mqttPort, clientId: clientId, filter: "cmd/\(clientId)")
            nodeA.process.send(SIGKILL)
            _ = await nodeA.process.waitForExit()

            // Published through node B while the subscriber is between nodes: B does not route to it yet.
            let commander = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            try await commander.handshake(BrokerProtocolTests.v5("moved-commander"))
            try await BrokerProtocolTests.publishQoS1(commander, "cmd/\(clientId)", "c1", id: 1)
            try await BrokerProtocolTests.publishQoS1(commander, "cmd/\(clientId)", "c2", id: 2)

            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            let received = try await Self.receive(second, count: 2)
            #expect(received == ["c1", "c2"])
            await second.close()
            await commander.close()
        }
    }

    @Test("a client connecting to node B is disconnected from node A with 0x8E; B keeps the session and A writes nothing after")
    func takeoverAcrossNodes() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let nodes = try await scope.startNodes(["node-a", "node-b"], tansu: tansu)
            let (nodeA, nodeB) = (nodes[0], nodes[1])
            let clientId = "takeover-across"
            // The subscription is in Kafka before the client moves.
            let first = try await Self.subscribedPersistently(tansu, port: nodeA.mqttPort, clientId: clientId, filter: "takeover/#")

            let second = try await RawMQTTClient.connect(port: nodeB.mqttPort)
            #expect(try await second.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600)).sessionPresent == true)
            let disconnect = try await first.next(timeout: .seconds(10)) { if case .disconnect(let packet) = $0 { packet } else { nil } }
            #expect(disconnect.reasonCode == .sessionTakenOver)
            #expect(try await first.next() == .closed)

            // The moved session still receives what is published to its subscription (through Kafka, from A).
            let publisher = try await RawMQTTClient.connect(port: nodeA.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("takeover-publisher"))
            try await BrokerProtocolTests.publishQoS1(publisher, "takeover/x", "after", id: 1)
            let received = try await BrokerProtocolTests.nextPublish(second)
            #expect(String(buffer: received.payload) == "after")

            // Node A wrote nothing for the client after B claimed it: the newest snapshot is B's.
            let records = try await SessionPersistenceTests.waitForSessionRecords(tansu, clientId: clientId, "B's snapshot") { records in
                records.contains { $0.header(KafkaSessionStore.nodeHeader) == "node-b" }
            }
            let newest = try #require(records.max { (UInt64($0.header(KafkaSessionStore.epochHeader) ?? "") ?? 0) < (UInt64($1.header(KafkaSessionStore.epochHeader) ?? "") ?? 0) })
            #expect(newest.header(KafkaSessionStore.nodeHeader) == "node-b")
            let metrics = try await NodeLossDeduplicationTests.metrics(port: nodeA.httpPort)
            #expect(metrics.contains("tributary_broker_takeovers_total{where=\"remote\"} 1"))
            await second.close()
            await publisher.close()
        }
    }
}
