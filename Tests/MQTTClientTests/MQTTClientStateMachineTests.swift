import NIOCore
import Testing

@testable import Common

typealias Machine = MQTTClientConnection.StateMachine
typealias Action = MQTTClientConnection.StateMachine.Action

let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)

func message(_ topic: String = "t", _ payload: String = "p", qos: MQTTQoS = .exactlyOnce) -> MQTTPublish {
    MQTTPublish(topic: topic, payload: ByteBuffer(string: payload), qos: qos)
}

func configuration(maximumInflight: Int = 100, keepAlive: UInt16 = 10) -> MQTTClientConnection.Configuration {
    .init(
        protocolVersion: .v5, clientIdentifier: "agent-1", cleanStart: false, sessionExpiryInterval: 3600,
        keepAlive: keepAlive, responseTimeout: .seconds(5), maximumInflight: maximumInflight)
}

func connack(sessionPresent: Bool = false, receiveMaximum: UInt16? = nil, code: MQTTReasonCode = .success) -> MQTTPacket {
    var properties = MQTTProperties()
    properties.receiveMaximum = receiveMaximum
    return .connack(MQTTConnAck(sessionPresent: sessionPresent, reasonCode: code, properties: properties))
}

/// A machine past CONNACK.
func connectedMachine(
    _ config: MQTTClientConnection.Configuration = configuration(),
    session: MQTTClientSession = MQTTClientSession(),
    sessionPresent: Bool = false,
    receiveMaximum: UInt16? = nil
) -> (Machine, [Action]) {
    var machine = Machine(configuration: config, session: session)
    _ = machine.connectionEstablished(now: t0)
    let actions = machine.received(connack(sessionPresent: sessionPresent, receiveMaximum: receiveMaximum), now: t0)
    return (machine, actions)
}

func sent(_ actions: [Action]) -> [MQTTPacket] {
    actions.compactMap { if case .send(let packet) = $0 { packet } else { nil } }
}

func persisted(_ actions: [Action]) -> [MQTTClientSession.InflightChange] {
    actions.compactMap { if case .persist(let change) = $0 { change } else { nil } }
}

func acknowledged(_ actions: [Action]) -> [UInt64] {
    actions.compactMap { if case .event(.acknowledged(let tag, _)) = $0 { tag } else { nil } }
}

func published(_ packet: MQTTPacket) -> MQTTPublish? {
    if case .publish(let publish) = packet { publish } else { nil }
}

@Suite("MQTT client state machine")
struct MQTTClientStateMachineTests {
    @Test("CONNECT carries clean start 0 and the session expiry; CONNACK sets the window from receive maximum")
    func connectAndWindow() {
        var machine = Machine(configuration: configuration(maximumInflight: 50))
        let actions = machine.connectionEstablished(now: t0)
        guard case .send(.connect(let connect)) = actions.first else {
            Issue.record("expected CONNECT, got \(actions)")
            return
        }
        #expect(connect.cleanStart == false)
        #expect(connect.properties.sessionExpiryInterval == 3600)
        #expect(connect.clientIdentifier == "agent-1")
        let connected = machine.received(connack(receiveMaximum: 20), now: t0)
        #expect(connected.first == .event(.connected(MQTTConnAck(properties: { var p = MQTTProperties(); p.receiveMaximum = 20; return p }()), inflightWindow: 20)))
        #expect(machine.inflightWindow == 20)
    }

    @Test("a refused CONNACK closes with connectionRefused and its reason code")
    func refused() {
        var machine = Machine(configuration: configuration())
        _ = machine.connectionEstablished(now: t0)
        let actions = machine.received(connack(code: .notAuthorized), now: t0)
        #expect(actions == [.close(MQTTClientError(.connectionRefused, reasonCode: .notAuthorized, "the server refused the connection"))])
    }

    @Test("QoS 2: persist before PUBLISH, persist PUBREC before PUBREL, acknowledge on PUBCOMP")
    func qos2Flow() {
        var (machine, _) = connectedMachine()
        let publish = machine.publish(message(), tag: 41, now: t0)
        #expect(publish.count == 2)
        #expect(publish.first == .persist(.stored(packetId: 1, tag: 41, qos: .exactlyOnce)))
        let packet = sent(publish).first.flatMap(published)
        #expect(packet?.packetId == 1)
        #expect(packet?.dup == false)

        let rec = machine.received(.pubrec(MQTTPublishAck(packetId: 1)), now: t0)
        #expect(rec == [.persist(.released(packetId: 1)), .send(.pubrel(MQTTPublishAck(packetId: 1)))])
        #expect(machine.session.outgoing.first?.phase == .awaitingPubComp)

        let comp = machine.received(.pubcomp(MQTTPublishAck(packetId: 1)), now: t0)
        #expect(comp == [.persist(.removed(packetId: 1)), .event(.acknowledged(tag: 41, reasonCode: .success))])
        #expect(machine.session.inflightCount == 0)
    }

    @Test("QoS 1: PUBACK acknowledges; a PUBACK for an unknown id is a protocol violation")
    func qos1Flow() {
        var (machine, _) = connectedMachine()
        _ = machine.publish(message(qos: .atLeastOnce), tag: 7, now: t0)
        let ack = machine.received(.puback(MQTTPublishAck(packetId: 1)), now: t0)
        #expect(acknowledged(ack) == [7])
        let bogus = machine.received(.puback(MQTTPublishAck(packetId: 9)), now: t0)
        guard case .close(let error?) = bogus.last else {
            Issue.record("expected close, got \(bogus)")
            return
        }
        #expect(error.code == .protocolViolation)
    }

    @Test("a refusing PUBREC (reason code >= 0x80) completes the publish without PUBREL")
    func refusingPubRec() {
        var (machine, _) = connectedMachine()
        _ = machine.publish(message(), tag: 3, now: t0)
        let actions = machine.received(.pubrec(MQTTPublishAck(packetId: 1, reasonCode: .quotaExceeded)), now: t0)
        #expect(actions == [.persist(.removed(packetId: 1)), .event(.acknowledged(tag: 3, reasonCode: .quotaExceeded))])
    }

    @Test("the in-flight window is bounded by the server's receive maximum; completions release queued publishes")
    func window() {
        var (machine, _) = connectedMachine(receiveMaximum: 2)
        var sends: [MQTTPacket] = []
        for tag in 1...5 { sends += sent(machine.publish(message(), tag: UInt64(tag), now: t0)) }
        #expect(sends.count == 2)
        #expect(machine.queuedCount == 3)
        _ = machine.received(.pubrec(MQTTPublishAck(packetId: 1)), now: t0)
        // PUBREC does not free the slot; only PUBCOMP does.
        #expect(machine.queuedCount == 3)
        let comp = machine.received(.pubcomp(MQTTPublishAck(packetId: 1)), now: t0)
        let next = sent(comp).compactMap(published)
        #expect(next.count == 1)
        #expect(next.first?.packetId == 3)
        #expect(machine.session.inflightCount == 2)
    }

    @Test("publishes before CONNACK wait and go out after it, in order")
    func queuedBeforeConnAck() {
        var machine = Machine(configuration: configuration())
        _ = machine.connectionEstablished(now: t0)
        #expect(machine.publish(message(), tag: 1, now: t0).isEmpty)
        #expect(machine.publish(message(), tag: 2, now: t0).isEmpty)
        let actions = machine.received(connack(), now: t0)
        #expect(sent(actions).compactMap(published).map(\.packetId) == [1, 2])
    }

    @Test("reconnect with session present: PUBLISH(DUP) and PUBREL for unfinished ones first, in order, then new ones")
    func resendOnSessionPresent() {
        var (first, _) = connectedMachine()
        for tag in 10...12 { _ = first.publish(message("t", "m\(tag)"), tag: UInt64(tag), now: t0) }
        _ = first.received(.pubrec(MQTTPublishAck(packetId: 2)), now: t0)
        first.connectionClosed()

        var second = Machine(configuration: configuration(), session: first.session)
        _ = second.connectionEstablished(now: t0)
        _ = second.publish(message("t", "new"), tag: 13, now: t0)
        let actions = second.received(connack(sessionPresent: true), now: t0)
        let packets = sent(actions)
        #expect(packets.count == 4)
        #expect(published(packets[0])?.dup == true)
        #expect(published(packets[0])?.packetId == 1)
        #expect(packets[1] == .pubrel(MQTTPublishAck(packetId: 2)))
        #expect(published(packets[2])?.dup == true)
        #expect(published(packets[2])?.packetId == 3)
        #expect(published(packets[3])?.dup == false)
        #expect(published(packets[3])?.packetId == 4)
        #expect(published(packets[3])?.payload == ByteBuffer(string: "new"))
    }

    @Test("reconnect without session: released ones count as delivered, unreleased ones are sent again as new")
    func sessionLost() {
        var (first, _) = connectedMachine()
        for tag in 1...2 { _ = first.publish(message(), tag: UInt64(tag), now: t0) }
        _ = first.received(.pubrec(MQTTPublishAck(packetId: 1)), now: t0)
        first.connectionClosed()
        var second = Machine(configuration: configuration(), session: first.session)
        _ = second.connectionEstablished(now: t0)
        let actions = second.received(connack(sessionPresent: false), now: t0)
        #expect(acknowledged(actions) == [1])
        #expect(persisted(actions) == [.removed(packetId: 1)])
        let resent = sent(actions).compactMap(published)
        #expect(resent.map(\.packetId) == [2])
        #expect(resent.first?.dup == false)
    }

    @Test("a session restored from persisted records resends exactly what the records say")
    func restoreFromMirror() {
        var (machine, _) = connectedMachine()
        var mirror: [UInt16: MQTTClientSession.InflightRecord] = [:]
        func run(_ actions: [Action]) {
            for change in persisted(actions) { MQTTClientSession.InflightRecord.apply(change, to: &mirror) }
        }
        for tag in 100...103 { run(machine.publish(message("t", "\(tag)"), tag: UInt64(tag), now: t0)) }
        run(machine.received(.pubrec(MQTTPublishAck(packetId: 1)), now: t0))
        run(machine.received(.pubrec(MQTTPublishAck(packetId: 2)), now: t0))
        run(machine.received(.pubcomp(MQTTPublishAck(packetId: 1)), now: t0))
        // "Crash": rebuild from the mirror only; the owner rebuilds the publishes from its tags.
        let entries = mirror.values.map {
            MQTTClientSession.Outgoing(packetId: $0.packetId, tag: $0.tag, phase: $0.phase, publish: message("t", "\($0.tag)"))
        }
        let (restored, actions) = connectedMachine(session: MQTTClientSession(restoring: entries), sessionPresent: true)
        let packets = sent(actions)
        #expect(packets.first == .pubrel(MQTTPublishAck(packetId: 2)))
        #expect(packets.dropFirst().compactMap(published).map { $0.payload } == ["102", "103"].map { ByteBuffer(string: $0) })
        let allDup = packets.dropFirst().compactMap(published).allSatisfy { $0.dup }
        #expect(allDup)
        #expect(restored.session.records.map(\.tag) == [101, 102, 103])
    }

    @Test("packet ids skip ids in flight and wrap after 65535")
    func packetIds() {
        var session = MQTTClientSession(restoring: [
            .init(packetId: 65_535, tag: 1, phase: .awaitingPubRec, publish: message()),
            .init(packetId: 1, tag: 0, phase: .awaitingPubRec, publish: message()),
        ])
        #expect(session.allocatePacketId() == 2)
        #expect(session.allocatePacketId(reserved: [3]) == 4)
    }

    @Test("keep-alive: PINGREQ after the keep-alive; no PINGRESP within the response timeout closes")
    func keepAlive() {
        var (machine, _) = connectedMachine(configuration(keepAlive: 10))
        #expect(machine.tick(now: t0 + .seconds(9)).isEmpty)
        #expect(machine.tick(now: t0 + .seconds(10)) == [.send(.pingreq)])
        #expect(machine.received(.pingresp, now: t0 + .seconds(11)).isEmpty)
        #expect(machine.tick(now: t0 + .seconds(19)).isEmpty)
        #expect(machine.tick(now: t0 + .seconds(20)) == [.send(.pingreq)])
        let dead = machine.tick(now: t0 + .seconds(25))
        guard case .close(let error?) = dead.first else {
            Issue.record("expected close, got \(dead)")
            return
        }
        #expect(error.code == .keepAliveTimeout)
    }

    @Test("incoming QoS 2: delivered once, PUBREC every time, PUBCOMP on PUBREL")
    func incomingQoS2() {
        var (machine, _) = connectedMachine()
        var inbound = message("cmd/1", "go")
        inbound.packetId = 7
        let first = machine.received(.publish(inbound), now: t0)
        #expect(first.contains(.event(.message(inbound))))
        #expect(sent(first) == [.pubrec(MQTTPublishAck(packetId: 7))])
        inbound.dup = true
        let again = machine.received(.publish(inbound), now: t0)
        #expect(!again.contains { if case .event(.message) = $0 { true } else { false } })
        #expect(sent(again) == [.pubrec(MQTTPublishAck(packetId: 7))])
        let rel = machine.received(.pubrel(MQTTPublishAck(packetId: 7)), now: t0)
        #expect(sent(rel) == [.pubcomp(MQTTPublishAck(packetId: 7))])
    }

    @Test("manual acknowledgement: nothing is acknowledged until the owner says so; QoS 2 is delivered once, also while the owner stores it; a restored id gets PUBREC without delivery")
    func manualAcknowledgement() {
        var config = configuration()
        config.manualAcknowledgement = true
        var (machine, _) = connectedMachine(config, session: MQTTClientSession(restoring: [], incomingAwaitingRelease: [3]), sessionPresent: true)
        var one = message("s/1", "a", qos: .atLeastOnce)
        one.packetId = 5
        #expect(machine.received(.publish(one), now: t0) == [.event(.message(one))])
        #expect(sent(machine.acknowledge(packetId: 5, qos: .atLeastOnce, now: t0)) == [.puback(MQTTPublishAck(packetId: 5))])

        var two = message("s/2", "b")
        two.packetId = 7
        #expect(machine.received(.publish(two), now: t0) == [.event(.message(two))])
        two.dup = true
        #expect(machine.received(.publish(two), now: t0).isEmpty, "still being stored: no second delivery, no PUBREC yet")
        let ack = machine.acknowledge(packetId: 7, qos: .exactlyOnce, now: t0)
        #expect(ack == [.persist(.incomingReceived(packetId: 7)), .send(.pubrec(MQTTPublishAck(packetId: 7)))])
        #expect(machine.received(.publish(two), now: t0) == [.send(.pubrec(MQTTPublishAck(packetId: 7)))])
        #expect(sent(machine.received(.pubrel(MQTTPublishAck(packetId: 7)), now: t0)) == [.pubcomp(MQTTPublishAck(packetId: 7))])

        var restored = message("s/3", "c")
        restored.packetId = 3
        restored.dup = true
        #expect(machine.received(.publish(restored), now: t0) == [.send(.pubrec(MQTTPublishAck(packetId: 3)))])
        let release = machine.received(.pubrel(MQTTPublishAck(packetId: 3)), now: t0)
        #expect(release == [.persist(.incomingReleased(packetId: 3)), .send(.pubcomp(MQTTPublishAck(packetId: 3)))])
    }

    @Test("subscribe gets a packet id distinct from publishes and reports the SUBACK")
    func subscribe() throws {
        var (machine, _) = connectedMachine()
        _ = machine.publish(message(), tag: 1, now: t0)
        let actions = machine.subscribe([MQTTSubscription(topicFilter: try MQTTTopicFilter("cmd/#"), qos: .exactlyOnce)], properties: MQTTProperties(), now: t0)
        guard case .send(.subscribe(let subscribe)) = actions.first else {
            Issue.record("expected SUBSCRIBE, got \(actions)")
            return
        }
        #expect(subscribe.packetId == 2)
        let suback = machine.received(.suback(MQTTSubAck(packetId: 2, reasonCodes: [.grantedQoS2])), now: t0)
        #expect(suback == [.event(.subscribed(packetId: 2, reasonCodes: [.grantedQoS2]))])
    }

    @Test("server DISCONNECT closes with its reason code; packets before CONNACK are a protocol violation")
    func disconnects() {
        var (machine, _) = connectedMachine()
        let actions = machine.received(.disconnect(MQTTDisconnect(reasonCode: .serverShuttingDown)), now: t0)
        guard case .close(let error?) = actions.first else {
            Issue.record("expected close")
            return
        }
        #expect(error.reasonCode == .serverShuttingDown)
        var early = Machine(configuration: configuration())
        _ = early.connectionEstablished(now: t0)
        guard case .close(let violation?) = early.received(.pingresp, now: t0).first else {
            Issue.record("expected close")
            return
        }
        #expect(violation.code == .protocolViolation)
    }
}
