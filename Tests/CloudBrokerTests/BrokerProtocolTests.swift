import Common
import Foundation
import NIOCore
import Testing
import TestSupport

/// Protocol behaviour against the real binary with exact packets (raw codec client).
@Suite("cloud-broker protocol behaviour (raw client, Tansu)", .serialized)
struct BrokerProtocolTests {
    static func v5(_ id: String, cleanStart: Bool = true, expiry: UInt32? = nil, will: MQTTWill? = nil, keepAlive: UInt16 = 60) -> MQTTConnect {
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = expiry
        return MQTTConnect(protocolVersion: .v5, clientIdentifier: id, cleanStart: cleanStart, keepAlive: keepAlive, will: will, properties: properties)
    }

    static func subscribe(_ client: RawMQTTClient, _ filter: String, qos: MQTTQoS = .atLeastOnce, id: UInt16 = 1) async throws {
        try await client.send(.subscribe(MQTTSubscribe(packetId: id, subscriptions: [MQTTSubscription(topicFilter: try MQTTTopicFilter(filter), qos: qos)])))
        let ack = try await client.next { if case .suback(let ack) = $0 { ack } else { nil } }
        #expect(ack.reasonCodes == [.granted(qos)])
    }

    static func publishQoS1(_ client: RawMQTTClient, _ topic: String, _ payload: String, id: UInt16, properties: MQTTProperties = MQTTProperties(), retain: Bool = false) async throws {
        try await client.send(.publish(MQTTPublish(topic: topic, payload: ByteBuffer(string: payload), qos: .atLeastOnce, retain: retain, packetId: id, properties: properties)))
        let ack = try await client.next { if case .puback(let ack) = $0, ack.packetId == id { ack } else { nil } }
        #expect(ack.reasonCode == .success)
    }

    static func nextPublish(_ client: RawMQTTClient, timeout: Duration = .seconds(10)) async throws -> MQTTPublish {
        try await client.next(timeout: timeout) { if case .publish(let publish) = $0 { publish } else { nil } }
    }

    @Test func willsSessionsAndExpiry() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            let watcher = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await watcher.handshake(Self.v5("watcher"))
            try await Self.subscribe(watcher, "will/#")

            // Abrupt loss: the will is published.
            let lost = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await lost.handshake(Self.v5("lost", will: MQTTWill(topic: "will/lost", payload: ByteBuffer(string: "gone"), qos: .atLeastOnce)))
            await lost.close()
            let will = try await Self.nextPublish(watcher)
            #expect(will.topic == "will/lost")
            #expect(String(buffer: will.payload) == "gone")

            // Normal DISCONNECT: no will. A marker on the same topic (same Kafka partition) comes first.
            let polite = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await polite.handshake(Self.v5("polite", will: MQTTWill(topic: "will/polite", payload: ByteBuffer(string: "should not"), qos: .atLeastOnce)))
            try await polite.send(.disconnect(MQTTDisconnect()))
            #expect(try await polite.next() == .closed)
            let marker = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await marker.handshake(Self.v5("marker"))
            try await Self.publishQoS1(marker, "will/polite", "marker", id: 1)
            let afterPolite = try await Self.nextPublish(watcher)
            #expect(String(buffer: afterPolite.payload) == "marker")

            // A persistent session keeps its subscription and queues QoS 1 messages while offline.
            let persistent = try await RawMQTTClient.connect(port: broker.mqttPort)
            let first = try await persistent.handshake(Self.v5("persistent", cleanStart: false, expiry: 60))
            #expect(first.sessionPresent == false)
            try await Self.subscribe(persistent, "sess/#")
            try await persistent.send(.disconnect(MQTTDisconnect()))
            _ = try await persistent.next()
            try await Self.publishQoS1(marker, "sess/a", "while-offline-1", id: 2)
            try await Self.publishQoS1(marker, "sess/a", "while-offline-2", id: 3)
            // The watcher proves the messages went round Kafka before the session resumes.
            try await Self.subscribe(watcher, "sess/#", id: 2)
            try await Self.publishQoS1(marker, "sess/a", "sync", id: 4)
            var seen: [String] = []
            while !seen.contains("sync") { seen.append(String(buffer: try await Self.nextPublish(watcher).payload)) }
            let resumed = try await RawMQTTClient.connect(port: broker.mqttPort)
            let second = try await resumed.handshake(Self.v5("persistent", cleanStart: false, expiry: 60))
            #expect(second.sessionPresent)
            var queued: [String] = []
            for _ in 0..<3 { queued.append(String(buffer: try await Self.nextPublish(resumed).payload)) }
            #expect(queued == ["while-offline-1", "while-offline-2", "sync"])

            // Message expiry: a retained message whose expiry passed is not sent; another one shows the
            // remaining interval.
            var shortLived = MQTTProperties()
            shortLived.messageExpiryInterval = 1
            try await Self.publishQoS1(marker, "exp/short", "short", id: 5, properties: shortLived, retain: true)
            var longLived = MQTTProperties()
            longLived.messageExpiryInterval = 100
            try await Self.publishQoS1(marker, "exp/long", "long", id: 6, properties: longLived, retain: true)
            try await Task.sleep(for: .milliseconds(2100))  // let the short expiry pass (the behaviour under test is time)
            let late = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await late.handshake(Self.v5("late"))
            try await Self.subscribe(late, "exp/#")
            let retained = try await Self.nextPublish(late)
            #expect(retained.topic == "exp/long")
            #expect(retained.retain)
            #expect((retained.properties.messageExpiryInterval ?? 0) <= 98)
            try await late.send(.pingreq)
            let nextPacket = try await late.next { packet -> MQTTPacket? in packet }
            #expect(nextPacket == .pingresp, "the expired retained message must not be sent")

            // Takeover: the same client id connecting again disconnects the first with 0x8E.
            let again = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await again.handshake(Self.v5("late"))
            let kicked = try await late.next { if case .disconnect(let d) = $0 { d } else { nil } }
            #expect(kicked.reasonCode == .sessionTakenOver)
        }
    }

    /// After a DISCONNECT answering what it sent (here 0x94, topic alias 0: MQTT 5.0 3.3.2-8), a client
    /// that is still writing reads the DISCONNECT and the end of the stream, and its writes do not fail for
    /// a moment: the broker ends its output and keeps reading instead of closing at once, which would answer
    /// the client's bytes with a TCP reset (and a write error before the client has read the reason code).
    @Test func aClientStillWritingAfterItsDisconnectIsNotReset() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            let socket = try BlockingSocket(port: broker.mqttPort)
            defer { socket.close() }
            try socket.send(.connect(Self.v5("still-writing")), version: .v5)
            guard case .connack(let connack) = try socket.receive(version: .v5), connack.reasonCode == .success else {
                Issue.record("no CONNACK")
                return
            }
            // PUBLISH QoS 0, topic "a", properties: Topic Alias (0x23) = 0, payload "x" (our encoder refuses alias 0).
            #expect(socket.sendRaw([0x30, 0x08, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00, 0x78]) == nil)
            #expect(try socket.receive(version: .v5) == .disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid)))
            #expect(try socket.receiveEndOfStream())
            // The broker has sent everything and ended its output, and still reads (for 1 s): the client's
            // next writes succeed. Closed at once, the first write would be answered with a reset and the
            // following ones would fail (broken pipe).
            var failures: [String] = []
            for _ in 0..<20 {
                if let error = socket.sendRaw([0xC0, 0x00]) { failures.append(error) }
            }
            #expect(failures.isEmpty, "writes after the DISCONNECT failed: \(failures)")
        }
    }

    @Test func badInputClosesOnlyItsOwnConnection() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            // The connect timeout must close the silent clients below but leave the slow one (about 0.4 s of bytes,
            // more on a loaded machine) ample time.
            let broker = try await scope.startBroker(tansu: tansu, settings: ["mqtt.max_packet_size": "4KiB", "mqtt.connect_timeout": "4s"])
            let healthy = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await healthy.handshake(Self.v5("healthy"))

            // Random bytes before CONNECT: closed.
            let noise = try await RawMQTTClient.connect(port: broker.mqttPort)
            var generator = SystemRandomNumberGenerator()
            try await noise.sendBytes([0x30] + (0..<64).map { _ in UInt8.random(in: 0...255, using: &generator) })
            #expect(try await noise.next() == .closed)

            // Unsupported protocol level: CONNACK 0x01 (3.1.1 form), then closed.
            let level9 = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await level9.setVersion(.v311)
            try await level9.sendBytes([0x10, 0x0D, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x09, 0x02, 0x00, 0x3C, 0x00, 0x01, 0x61])
            let refused = try await level9.next()
            #expect(refused == .packet(.connack(MQTTConnAck(reasonCode: .unsupportedProtocolVersion))))

            // Oversize PUBLISH after CONNECT: DISCONNECT 0x95.
            let big = try await RawMQTTClient.connect(port: broker.mqttPort)
            let connack = try await big.handshake(Self.v5("big"))
            #expect(connack.properties.maximumPacketSize == 4096)
            try await big.send(.publish(MQTTPublish(topic: "big", payload: ByteBuffer(repeating: 0x41, count: 8000), qos: .atLeastOnce, packetId: 1)))
            let disconnect = try await big.next { if case .disconnect(let d) = $0 { d } else { nil } }
            #expect(disconnect.reasonCode == .packetTooLarge)

            // Truncated packet then silence, and a client that never sends CONNECT: closed after the connect timeout.
            let truncated = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await truncated.sendBytes([0x10, 0x20, 0x00, 0x04, 0x4D])
            #expect(try await truncated.next(timeout: .seconds(15)) == .closed)

            // A slow client (one byte every 25 ms) still gets its CONNACK; others are not held up meanwhile.
            let slow = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await slow.setVersion(.v311)
            let bytes = Array(try MQTTPacket.connect(MQTTConnect(protocolVersion: .v311, clientIdentifier: "slow", keepAlive: 30)).encoded(version: .v311).readableBytesView)
            for byte in bytes {
                try await slow.sendBytes([byte])
                try await Task.sleep(for: .milliseconds(25))  // the slowness is the input under test
            }
            #expect(try await slow.next() == .packet(.connack(MQTTConnAck())))

            try await Self.publishQoS1(healthy, "still/alive", "yes", id: 1)
        }
    }

    @Test func gracefulShutdownSendsServerShuttingDownAndExitsCleanly() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            let client = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await client.handshake(Self.v5("leaving"))
            broker.process.send(SIGTERM)
            let disconnect = try await client.next { if case .disconnect(let d) = $0 { d } else { nil } }
            #expect(disconnect.reasonCode == .serverShuttingDown)
            #expect(await broker.process.waitForExit(timeout: .seconds(15)) == .exited(0))
        }
    }
}
