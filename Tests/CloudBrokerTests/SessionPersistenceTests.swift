import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import TestSupport
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// Persistent sessions in `mqtt.sessions`: they survive a broker restart (SIGTERM and SIGKILL), end with a
/// tombstone, and the snapshot encoding rejects what it cannot read.
@Suite("cloud-broker sessions in Kafka", .serialized)
struct SessionPersistenceTests {
    static let sessionsTopic = "mqtt.sessions"

    /// Reads `mqtt.sessions` until `predicate` holds for the records of `clientId` (deadline-bounded poll).
    static func waitForSessionRecords(
        _ tansu: TansuBroker, clientId: String, _ what: String, timeout: Duration = .seconds(30), _ predicate: ([KafkaRecord]) -> Bool
    ) async throws -> [KafkaRecord] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let records = (try? await KafkaTopicReader.readAll(bootstrapServers: tansu.bootstrapServers, topic: sessionsTopic)) ?? []
            let mine = records.filter { $0.key == Array(clientId.utf8) }
            if predicate(mine) { return mine }
            guard ContinuousClock.now < deadline else { throw HarnessError("timed out waiting for \(what); have \(mine.count) records for \(clientId)") }
            try await Task.sleep(for: .milliseconds(100))  // poll interval
        }
    }

    static func isTombstone(_ record: KafkaRecord) -> Bool { record.value?.isEmpty ?? true }

    func restartKeepsSession(signal: Int32, clientId: String, stayConnected: Bool = false) async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let first = try await scope.startBroker(tansu: tansu)
            let client = try await RawMQTTClient.connect(port: first.mqttPort)
            let ack = try await client.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            #expect(ack.sessionPresent == false)
            var properties = MQTTProperties()
            properties.subscriptionIdentifiers = [7]
            let filter = try MQTTTopicFilter("persist/\(clientId)/#")
            try await client.send(.subscribe(MQTTSubscribe(packetId: 1, subscriptions: [MQTTSubscription(topicFilter: filter, qos: .atLeastOnce)], properties: properties)))
            let suback = try await client.next { if case .suback(let ack) = $0 { ack } else { nil } }
            #expect(suback.reasonCodes == [.granted(.atLeastOnce)])
            if !stayConnected {
                try await client.send(.disconnect(MQTTDisconnect()))
                #expect(try await client.next() == .closed)
            }

            // The snapshot is in Kafka once the session changed or went offline (before any shutdown).
            let written = try await Self.waitForSessionRecords(tansu, clientId: clientId, "the session snapshot") { records in
                guard let last = records.last, !Self.isTombstone(last), let value = last.value else { return false }
                return (try? SessionSnapshot.decode(value))?.subscriptions.count == 1
            }
            let snapshot = try SessionSnapshot.decode(written.last!.value!)
            #expect(snapshot.clientId == clientId)
            #expect(snapshot.expiryInterval == 600)
            #expect(snapshot.subscriptions.map(\.identifier) == [7])

            if signal == SIGKILL {
                first.process.send(SIGKILL)
                _ = await first.process.waitForExit()
            } else {
                _ = await first.process.stop(signal: signal)
            }

            let second = try await scope.startBroker(tansu: tansu, name: "cloud-broker-2")
            let resumed = try await RawMQTTClient.connect(port: second.mqttPort)
            let again = try await resumed.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            #expect(again.sessionPresent)

            // No SUBSCRIBE on the new node: the restored subscription delivers.
            let publisher = try await RawMQTTClient.connect(port: second.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("\(clientId)-publisher"))
            try await BrokerProtocolTests.publishQoS1(publisher, "persist/\(clientId)/x", "after-restart", id: 1)
            let delivered = try await BrokerProtocolTests.nextPublish(resumed)
            #expect(delivered.topic == "persist/\(clientId)/x")
            #expect(String(buffer: delivered.payload) == "after-restart")
            #expect(delivered.properties.subscriptionIdentifiers == [7])
            await publisher.close()
            await resumed.close()
            await client.close()
        }
    }

    @Test func sessionSurvivesGracefulRestart() async throws {
        try await restartKeepsSession(signal: SIGTERM, clientId: "persist-term")
    }

    @Test func sessionSurvivesKilledNode() async throws {
        try await restartKeepsSession(signal: SIGKILL, clientId: "persist-kill")
    }

    /// The node dies while the client is connected: the snapshot written at SUBSCRIBE restores it.
    @Test func sessionSurvivesNodeKilledWhileConnected() async throws {
        try await restartKeepsSession(signal: SIGKILL, clientId: "persist-online", stayConnected: true)
    }

    /// MQTT 3.1.1 clean session 0 is a persistent session (expiry `mqtt.max_session_expiry`).
    @Test func v311PersistentSessionSurvivesKilledNode() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let first = try await scope.startBroker(tansu: tansu)
            let connect = MQTTConnect(protocolVersion: .v311, clientIdentifier: "persist-v311", cleanStart: false, keepAlive: 60)
            let client = try await RawMQTTClient.connect(port: first.mqttPort)
            #expect(try await client.handshake(connect).sessionPresent == false)
            try await BrokerProtocolTests.subscribe(client, "v311/#")
            try await client.send(.disconnect(MQTTDisconnect()))
            #expect(try await client.next() == .closed)
            let written = try await Self.waitForSessionRecords(tansu, clientId: "persist-v311", "the session snapshot") { records in
                guard let last = records.last, let value = last.value, !value.isEmpty else { return false }
                return (try? SessionSnapshot.decode(value))?.subscriptions.count == 1
            }
            #expect(try SessionSnapshot.decode(written.last!.value!).expiryInterval == 86_400)
            first.process.send(SIGKILL)
            _ = await first.process.waitForExit()

            let second = try await scope.startBroker(tansu: tansu, name: "cloud-broker-2")
            let resumed = try await RawMQTTClient.connect(port: second.mqttPort)
            #expect(try await resumed.handshake(connect).sessionPresent)
            let publisher = try await RawMQTTClient.connect(port: second.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("v311-publisher"))
            try await BrokerProtocolTests.publishQoS1(publisher, "v311/x", "after-restart", id: 1)
            #expect(String(buffer: try await BrokerProtocolTests.nextPublish(resumed).payload) == "after-restart")
            await publisher.close()
            await resumed.close()
            await client.close()
        }
    }

    /// "Kafka is the queue": messages queued in the killed node's memory and messages produced while no
    /// node ran reach the restored session, in order, followed by new ones.
    @Test func restoredSessionReplaysMessagesFromKafka() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let first = try await scope.startBroker(tansu: tansu)
            let clientId = "replay-me"
            let client = try await RawMQTTClient.connect(port: first.mqttPort)
            try await client.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            try await BrokerProtocolTests.subscribe(client, "replay/#")
            try await client.send(.disconnect(MQTTDisconnect()))
            #expect(try await client.next() == .closed)
            _ = try await Self.waitForSessionRecords(tansu, clientId: clientId, "the offline snapshot with offsets") { records in
                guard let last = records.last, let value = last.value, !value.isEmpty else { return false }
                return !((try? SessionSnapshot.decode(value))?.offsets.isEmpty ?? true)
            }

            // Queued in the first node's memory only.
            let publisher = try await RawMQTTClient.connect(port: first.mqttPort)
            try await publisher.handshake(BrokerProtocolTests.v5("replay-publisher"))
            try await BrokerProtocolTests.publishQoS1(publisher, "replay/a", "offline-1", id: 1)
            first.process.send(SIGKILL)
            _ = await first.process.waitForExit()
            await publisher.close()

            // Produced while no node runs.
            let producer = try KafkaProducer(configuration: KafkaConfiguration(bootstrapServers: tansu.bootstrapServers, clientId: "replay-test"))
            defer { producer.shutdown() }
            _ = try await producer.send(KafkaOutgoingMessage(topic: "mqtt.messages", key: Array("replay/a".utf8), value: Array("while-down".utf8)))

            let second = try await scope.startBroker(tansu: tansu, name: "cloud-broker-2")
            let resumed = try await RawMQTTClient.connect(port: second.mqttPort)
            let ack = try await resumed.handshake(BrokerProtocolTests.v5(clientId, cleanStart: false, expiry: 600))
            #expect(ack.sessionPresent)
            let after = try await RawMQTTClient.connect(port: second.mqttPort)
            try await after.handshake(BrokerProtocolTests.v5("replay-publisher-2"))
            try await BrokerProtocolTests.publishQoS1(after, "replay/a", "after", id: 1)
            var received: [String] = []
            for _ in 0..<3 {
                let publish = try await BrokerProtocolTests.nextPublish(resumed)
                received.append(String(buffer: publish.payload))
                if let id = publish.packetId { try await resumed.send(.puback(MQTTPublishAck(packetId: id))) }
            }
            #expect(received == ["offline-1", "while-down", "after"])
            await after.close()
            await resumed.close()
            await client.close()
        }
    }

    @Test func cleanStartAndExpiryWriteTombstones() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)

            // Clean start ends a stored session.
            let client = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await client.handshake(BrokerProtocolTests.v5("clean-me", cleanStart: false, expiry: 600))
            try await BrokerProtocolTests.subscribe(client, "clean/#")
            try await client.send(.disconnect(MQTTDisconnect()))
            #expect(try await client.next() == .closed)
            _ = try await Self.waitForSessionRecords(tansu, clientId: "clean-me", "the session snapshot") { $0.last.map { !Self.isTombstone($0) } ?? false }
            let clean = try await RawMQTTClient.connect(port: broker.mqttPort)
            let cleanAck = try await clean.handshake(BrokerProtocolTests.v5("clean-me", cleanStart: true))
            #expect(cleanAck.sessionPresent == false)
            _ = try await Self.waitForSessionRecords(tansu, clientId: "clean-me", "the tombstone after clean start") { $0.last.map(Self.isTombstone) ?? false }
            await clean.close()

            // An expired session is tombstoned by the sweep and not resumed.
            let short = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await short.handshake(BrokerProtocolTests.v5("expire-me", cleanStart: false, expiry: 1))
            try await BrokerProtocolTests.subscribe(short, "expire/#")
            try await short.send(.disconnect(MQTTDisconnect()))
            #expect(try await short.next() == .closed)
            let records = try await Self.waitForSessionRecords(tansu, clientId: "expire-me", "the tombstone after expiry") { records in
                records.contains { !Self.isTombstone($0) } && (records.last.map(Self.isTombstone) ?? false)
            }
            #expect(records.count >= 2)
            let all = try await KafkaTopicReader.readAll(bootstrapServers: tansu.bootstrapServers, topic: Self.sessionsTopic)
            let latest = KafkaTopicReader.latestByKey(all)
            #expect(latest[Array("expire-me".utf8)] == nil)
            #expect(latest[Array("clean-me".utf8)] == nil)
            let back = try await RawMQTTClient.connect(port: broker.mqttPort)
            let backAck = try await back.handshake(BrokerProtocolTests.v5("expire-me", cleanStart: false, expiry: 60))
            #expect(backAck.sessionPresent == false)
            await back.close()
            await short.close()
            await client.close()
        }
    }

    // MARK: Encoding (no processes)

    static func sampleSession() throws -> SessionState {
        var session = SessionState(clientId: "sensor-1", expiryInterval: 3600)
        let a = SubscriptionOptions(
            subscription: MQTTSubscription(topicFilter: try MQTTTopicFilter("a/+/c"), qos: .exactlyOnce, noLocal: true, retainAsPublished: true, retainHandling: .doNotSend),
            identifier: 42)
        let b = SubscriptionOptions(subscription: MQTTSubscription(topicFilter: try MQTTTopicFilter("$share/g/b/#"), qos: .atMostOnce), identifier: nil)
        session.subscriptions = ["a/+/c": a, "$share/g/b/#": b]
        session.inboundAwaitingRelease = [9, 3]
        return session
    }

    @Test func snapshotRoundTrip() throws {
        let session = try Self.sampleSession()
        let snapshot = SessionSnapshot(
            session: session, owner: "node-a", epoch: 5, storedAtMilliseconds: 1_795_000_000_000,
            offsets: [KafkaTopicPartition(topic: "mqtt.messages", partition: 2): 17, KafkaTopicPartition(topic: "t", partition: 0): 0])
        let decoded = try SessionSnapshot.decode(snapshot.encoded())
        #expect(decoded == snapshot)
        let restored = decoded.session
        #expect(restored.clientId == "sensor-1")
        #expect(restored.expiryInterval == 3600)
        #expect(restored.subscriptions == session.subscriptions)
        #expect(restored.inboundAwaitingRelease == [3, 9])
    }

    @Test func snapshotRejectsUnreadableRecords() throws {
        let good = String(decoding: SessionSnapshot(session: try Self.sampleSession(), owner: "n", epoch: 1, storedAtMilliseconds: 0).encoded(), as: UTF8.self)
        let bad: [String] = [
            "",
            "not json",
            "[1,2]",
            good.replacingOccurrences(of: "\"v\":1", with: "\"v\":2"),
            good.replacingOccurrences(of: "\"qos\":2", with: "\"qos\":3"),
            good.replacingOccurrences(of: "\"a\\/+\\/c\"", with: "\"a\\/#\\/c\""),
            "{\"v\":1}",
        ]
        #expect(good.contains("\"v\":1"))
        for text in bad {
            #expect(throws: BrokerError.self, "\(text)") { try SessionSnapshot.decode(Array(text.utf8)) }
        }
    }

    @Test func storeSkipsCorruptRecordsAndAppliesTombstones() throws {
        let written = Mutex<[KafkaOutgoingMessage]>([])
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let store = KafkaSessionStore(topic: "mqtt.sessions", nodeId: "node-b", logger: logger) { message in written.withLock { $0.append(message) } }
        let snapshot = SessionSnapshot(
            session: try Self.sampleSession(), owner: "node-a", epoch: 3, storedAtMilliseconds: Int64(Date().timeIntervalSince1970 * 1000))
        func record(_ offset: Int64, key: String, value: [UInt8]?) -> KafkaRecord {
            KafkaRecord(topic: "mqtt.sessions", partition: 0, offset: offset, key: Array(key.utf8), value: value, headers: [], timestampMilliseconds: nil)
        }
        store.apply(record(0, key: "sensor-1", value: snapshot.encoded()))
        store.apply(record(1, key: "sensor-1", value: Array("{\"v\":99}".utf8)))
        store.apply(record(2, key: "garbage", value: [0xFF, 0x00]))
        store.apply(KafkaRecord(topic: "mqtt.sessions", partition: 0, offset: 3, key: nil, value: [1], headers: [], timestampMilliseconds: nil))
        var extreme = snapshot
        extreme.epoch = .max
        extreme.storedAtMilliseconds = .min
        extreme.expiryInterval = .max
        store.apply(record(4, key: "extreme", value: extreme.encoded()))
        store.apply(record(4, key: "gone", value: snapshot.encoded()))
        store.apply(record(5, key: "gone", value: nil))
        #expect(store.nextOffsets() == [0: 6])
        let restored = store.restoredSessions()
        store.finishLoading()
        #expect(Set(restored.keys) == ["sensor-1", "extreme"])
        // Went offline "at the beginning of time": expired; taking it ends it with a tombstone, no trap.
        #expect(store.take(clientId: "extreme", now: .now) == nil)
        #expect(written.withLock { $0.map(\.value) } == [nil])
        #expect(written.withLock { $0.first?.headers.first { $0.name == KafkaSessionStore.epochHeader }?.value } == Array("\(UInt64.max)".utf8))
        written.withLock { $0.removeAll() }
        let session = store.take(clientId: "sensor-1", now: .now)
        #expect(session?.subscriptions.count == 2)
        #expect(store.take(clientId: "gone", now: .now) == nil)
        #expect(written.withLock { $0.isEmpty })

        // Going offline again writes the next epoch; ending it writes a tombstone with a higher one.
        store.put(session!, now: .now)
        store.remove(clientId: "sensor-1")
        let messages = written.withLock { $0 }
        #expect(messages.count == 2)
        let put = try SessionSnapshot.decode(messages[0].value ?? [])
        #expect(put.epoch == 4)
        #expect(put.owner == "node-b")
        #expect(messages[1].value == nil)
        #expect(messages[1].headers.first { $0.name == KafkaSessionStore.epochHeader }?.value == Array("5".utf8))
    }
}
