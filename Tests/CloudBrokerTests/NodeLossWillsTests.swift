#if canImport(Glibc)
import Glibc
#endif
import Foundation
import NIOCore
import Testing
import TestSupport
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// The bookkeeping of `NodeLossWills` (no Kafka): who is lost, who is responsible, when a will is due.
@Suite("NodeLossWills")
struct NodeLossWillsTests {
    static let will = NodeLossWills.encode(MQTTWill(topic: "wills/x", payload: ByteBuffer(string: "gone"), qos: .exactlyOnce))!

    static func heartbeat(_ node: String, _ incarnation: String, at: Int64) -> (String, ConnectionAnnouncement) {
        (ConnectionAnnouncement.heartbeatKey(node: node), ConnectionAnnouncement(node: node, connection: 0, atMilliseconds: at, kind: .heartbeat, incarnation: incarnation))
    }

    static func connected(_ client: String, node: String, incarnation: String, connection: UInt64, at: Int64, delay: UInt32 = 0, will: String? = will)
        -> (String, ConnectionAnnouncement)
    {
        (client, ConnectionAnnouncement(node: node, connection: connection, atMilliseconds: at, incarnation: incarnation, will: will, willDelay: will == nil ? nil : delay))
    }

    static func ended(_ client: String, node: String, incarnation: String, connection: UInt64, at: Int64) -> (String, ConnectionAnnouncement) {
        (client, ConnectionAnnouncement(node: node, connection: connection, atMilliseconds: at, kind: .ended, incarnation: incarnation))
    }

    /// A node `node` whose own incarnation is `i` + node (as in the records of the tests).
    static func make(_ node: String, incarnation: String? = nil, records: [(String, ConnectionAnnouncement)]) -> NodeLossWills {
        let wills = NodeLossWills(nodeId: node, incarnation: incarnation ?? "i\(node)", lease: .seconds(5))
        for (key, announcement) in records { wills.apply(clientId: key, announcement) }
        wills.finishLoading()
        return wills
    }

    @Test("the will round-trips through its announcement encoding")
    func willEncoding() throws {
        var properties = MQTTProperties()
        properties.contentType = "text/plain"
        properties.userProperties = [MQTTUserProperty(name: "k", value: "v")]
        let will = MQTTWill(topic: "a/b", payload: ByteBuffer(string: "bye"), qos: .atLeastOnce, retain: true, properties: properties)
        let encoded = try #require(NodeLossWills.encode(will))
        let publish = try #require(NodeLossWills.decode(encoded))
        #expect(publish.topic == "a/b")
        #expect(String(buffer: publish.payload) == "bye")
        #expect(publish.qos == .atLeastOnce && publish.retain && publish.packetId == nil)
        #expect(publish.properties.contentType == "text/plain")
        #expect(publish.properties.userProperties == [MQTTUserProperty(name: "k", value: "v")])
        #expect(NodeLossWills.decode("not base64!") == nil)
    }

    @Test("a node without heartbeat for the lease is lost; the live node with the smallest id publishes, once; the others wait")
    func leaseAndResponsibility() {
        let records = [
            Self.heartbeat("a", "ia", at: 1_000), Self.heartbeat("b", "ib", at: 1_000), Self.heartbeat("c", "ic", at: 1_000),
            Self.connected("client-1", node: "a", incarnation: "ia", connection: 1, at: 1_000),
            Self.connected("client-2", node: "c", incarnation: "ic", connection: 4, at: 1_000),
        ]
        let b = Self.make("b", records: records)
        let c = Self.make("c", records: records)
        // Within the lease: nothing.
        #expect(b.evaluate(nowMilliseconds: 5_900).due.isEmpty)
        // b and c keep beating; a does not.
        for node in [b, c] {
            node.apply(clientId: "heartbeat/b", Self.heartbeat("b", "ib", at: 6_500).1)
            node.apply(clientId: "heartbeat/c", Self.heartbeat("c", "ic", at: 6_500).1)
        }
        let fromB = b.evaluate(nowMilliseconds: 6_500)
        #expect(fromB.due.map(\.clientId) == ["client-1"])
        #expect(fromB.newlyLost.map(\.node) == ["a"] && fromB.newlyLost.map(\.responsible) == ["b"])
        let fromC = c.evaluate(nowMilliseconds: 6_500)
        #expect(fromC.due.isEmpty)
        #expect(fromC.newlyLost.map(\.node) == ["a"] && fromC.newlyLost.map(\.responsible) == ["b"])
        // Due once while it is being published.
        #expect(b.evaluate(nowMilliseconds: 6_600).due.isEmpty)
        // b published it and announced the end: nobody keeps it.
        let end = Self.ended("client-1", node: "a", incarnation: "ia", connection: 1, at: 6_700)
        b.apply(clientId: end.0, end.1)
        c.apply(clientId: end.0, end.1)
        #expect(b.connectionCount == 1 && c.connectionCount == 1)
        // The `ended` written by b did not revive a.
        c.apply(clientId: "heartbeat/c", Self.heartbeat("c", "ic", at: 20_000).1)
        #expect(c.evaluate(nowMilliseconds: 20_000).due.isEmpty)
    }

    @Test("a heartbeat's routing positions are kept per node (where a moved session's replay starts)")
    func routingPositions() throws {
        var beat = Self.heartbeat("a", "ia", at: 1_000).1
        beat.positions = [.init(topic: "mqtt.messages", partition: 2, offset: 40), .init(topic: "mqtt.messages", partition: 0, offset: 7)]
        let encoded = try #require(beat.record(topic: "mqtt.connections", clientId: "heartbeat/a").value)
        let record = KafkaRecord(
            topic: "mqtt.connections", partition: 0, offset: 0, key: Array("heartbeat/a".utf8), value: encoded, headers: [], timestampMilliseconds: nil)
        let (key, decoded) = try #require(ConnectionAnnouncement.decode(record))
        let b = Self.make("b", records: [(key, decoded)])
        #expect(b.routingPositions(node: "a") == [
            KafkaTopicPartition(topic: "mqtt.messages", partition: 2): 40, KafkaTopicPartition(topic: "mqtt.messages", partition: 0): 7,
        ])
        #expect(b.routingPositions(node: "c").isEmpty)
    }

    @Test("if the responsible node is lost too, the next one takes over; a failed publication is due again")
    func responsibleLost() {
        let records = [
            Self.heartbeat("a", "ia", at: 1_000), Self.heartbeat("b", "ib", at: 1_000),
            Self.connected("client-1", node: "a", incarnation: "ia", connection: 1, at: 1_000),
        ]
        let c = Self.make("c", records: records)
        c.apply(clientId: "heartbeat/b", Self.heartbeat("b", "ib", at: 6_000).1)
        #expect(c.evaluate(nowMilliseconds: 6_500).due.isEmpty)  // b is responsible
        let due = c.evaluate(nowMilliseconds: 12_000).due  // b silent too
        #expect(due.map(\.clientId) == ["client-1"])
        c.publishFailed(due[0])
        #expect(c.evaluate(nowMilliseconds: 12_500).due.map(\.clientId) == ["client-1"])
    }

    @Test("a node restarted under the same id is a new incarnation: the old one's connections are lost at once")
    func newIncarnation() {
        let records = [
            Self.heartbeat("a", "ia-1", at: 1_000), Self.heartbeat("b", "ib", at: 1_000),
            Self.connected("client-1", node: "a", incarnation: "ia-1", connection: 7, at: 1_000),
        ]
        let b = Self.make("b", records: records)
        #expect(b.evaluate(nowMilliseconds: 1_500).due.isEmpty)
        // a restarts (new incarnation); it has read the topic from its beginning and is the smallest live id.
        let restarted = Self.make("a", incarnation: "ia-2", records: records + [Self.heartbeat("a", "ia-2", at: 1_600)])
        b.apply(clientId: "heartbeat/a", Self.heartbeat("a", "ia-2", at: 1_600).1)
        let fromB = b.evaluate(nowMilliseconds: 1_700)
        #expect(fromB.due.isEmpty && fromB.newlyLost.map(\.responsible) == ["a"])
        #expect(restarted.evaluate(nowMilliseconds: 1_700).due.map(\.connection.connection) == [7])
    }

    @Test("will delay: due only after it; cancelled by a reconnect; a will without delay stays due after a reconnect")
    func delays() {
        let records = [
            Self.heartbeat("a", "ia", at: 1_000),
            Self.connected("delayed", node: "a", incarnation: "ia", connection: 1, at: 1_000, delay: 10),
            Self.connected("immediate", node: "a", incarnation: "ia", connection: 2, at: 1_000),
            Self.connected("no-will", node: "a", incarnation: "ia", connection: 3, at: 1_000, will: nil),
        ]
        let b = Self.make("b", records: records)
        // Both clients reconnect to b before a is judged lost.
        let delayedBack = Self.connected("delayed", node: "b", incarnation: "self-b", connection: 1, at: 2_000, will: nil)
        let immediateBack = Self.connected("immediate", node: "b", incarnation: "self-b", connection: 2, at: 2_000, will: nil)
        b.apply(clientId: delayedBack.0, delayedBack.1)
        b.apply(clientId: immediateBack.0, immediateBack.1)
        let due = b.evaluate(nowMilliseconds: 7_000).due
        #expect(due.map(\.clientId) == ["immediate"])

        let other = Self.make("b", records: records)
        #expect(other.evaluate(nowMilliseconds: 7_000).due.map(\.clientId) == ["immediate"])
        #expect(other.evaluate(nowMilliseconds: 16_000).due.isEmpty)
        #expect(other.evaluate(nowMilliseconds: 17_000).due.map(\.clientId) == ["delayed"])
    }
}

/// Wills of clients whose node was killed, with three real nodes.
@Suite("cloud-broker wills on node loss", .serialized)
struct NodeLossWillsEndToEndTests {
    static let settings = ["cluster.node_lease": "2s", "cluster.heartbeat_interval": "500ms"]

    static func willConnect(_ clientId: String, topic: String, payload: String) -> MQTTConnect {
        var connect = BrokerProtocolTests.v5(clientId, cleanStart: true)
        connect.will = MQTTWill(topic: topic, payload: ByteBuffer(string: payload), qos: .atLeastOnce)
        return connect
    }

    @Test("node-a killed: its client's will is published once, by node-b (smallest live id), not by node-c; wills already handled are not repeated")
    func willsOfKilledNode() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            // node-b's lease is longer than node-c's: node-c judges the loss (and leaves the will to node-b, the
            // smallest live id) before node-b publishes it. With equal leases node-c may read node-b's `ended` for
            // the connection before its own next judgement and never see a loss at all (the will-check probe
            // takes ~30 ms since every watermark probe asks for metadata first).
            let a = try await scope.startBroker(tansu: tansu, settings: Self.settings, name: "node-a", nodeId: "node-a")
            let b = try await scope.startBroker(tansu: tansu, settings: Self.settings.merging(["cluster.node_lease": "4s"]) { $1 }, name: "node-b", nodeId: "node-b")
            let c = try await scope.startBroker(tansu: tansu, settings: Self.settings, name: "node-c", nodeId: "node-c")
            let watcher = try await RawMQTTClient.connect(port: c.mqttPort)
            try await watcher.handshake(BrokerProtocolTests.v5("will-watcher"))
            try await BrokerProtocolTests.subscribe(watcher, "lost/#", qos: .atLeastOnce)

            // On node-a: one client stays (its will is due when a dies), one disconnects normally (no will),
            // one drops its connection while a lives (a publishes that will itself).
            let staying = try await RawMQTTClient.connect(port: a.mqttPort)
            try await staying.handshake(Self.willConnect("will-staying", topic: "lost/staying", payload: "staying-gone"))
            let polite = try await RawMQTTClient.connect(port: a.mqttPort)
            try await polite.handshake(Self.willConnect("will-polite", topic: "lost/polite", payload: "polite-gone"))
            try await polite.send(.disconnect(MQTTDisconnect()))
            let dropping = try await RawMQTTClient.connect(port: a.mqttPort)
            try await dropping.handshake(Self.willConnect("will-dropping", topic: "lost/dropping", payload: "dropping-gone"))
            await dropping.close()
            let first = try await BrokerProtocolTests.nextPublish(watcher, timeout: .seconds(15))
            #expect(String(buffer: first.payload) == "dropping-gone")
            // Whether or not a's announcement of that connection's end is read before a dies, the will is in
            // Kafka with its `mqtt.will_of`, so no survivor publishes it again.

            a.process.send(SIGKILL)
            _ = await a.process.waitForExit()
            let second = try await BrokerProtocolTests.nextPublish(watcher, timeout: .seconds(20))
            #expect(String(buffer: second.payload) == "staying-gone")
            // node-c judged the loss first and left it to node-b.
            try await c.process.waitForLog(containing: "tributary.responsible_node=node-b [CloudBroker] node lost", timeout: .seconds(10))
            try await b.process.waitForLog(containing: "publishing the will of a client whose node was lost", timeout: .seconds(10))

            let records = try await KafkaTopicReader.readAll(bootstrapServers: tansu.bootstrapServers, topic: "mqtt.messages")
            let wills = records.filter { ($0.header("mqtt.topic") ?? "").hasPrefix("lost/") }.map { String(decoding: $0.value ?? [], as: UTF8.self) }.sorted()
            #expect(wills == ["dropping-gone", "staying-gone"])
            #expect(records.filter { $0.header("mqtt.will_of") != nil }.count == 2)
            await watcher.close()
        }
    }
}
