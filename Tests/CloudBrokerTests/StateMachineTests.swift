import Foundation
import NIOCore
import Testing

@testable import CloudBroker
@testable import Common

/// The connection state machine without IO: events in, actions out.
@Suite("MQTTServerConnection.StateMachine")
struct StateMachineTests {
    typealias Machine = MQTTServerConnection.StateMachine

    static var limits: BrokerLimits {
        var limits = BrokerLimits()
        limits.receiveMaximum = 3
        limits.maxInflightOutbound = 2
        limits.sessionQueueLimit = 2
        limits.topicAliasMaximum = 4
        return limits
    }

    /// A machine that accepted `connect` and attached a fresh session.
    static func connected(_ connect: MQTTConnect, limits: BrokerLimits = limits, session: SessionState? = nil) -> (Machine, [Machine.Action]) {
        var machine = Machine(limits: limits)
        let first = machine.packetReceived(.connect(connect), now: .now(), wallClock: Date())
        guard case .attachSession(let request) = first.last else {
            Issue.record("expected attachSession, got \(first)")
            return (machine, first)
        }
        let state = session ?? SessionState(clientId: request.clientId, expiryInterval: request.expiryInterval)
        let actions = machine.sessionAttached(state, present: session != nil, requestedKeepAlive: connect.keepAlive, now: Date())
        return (machine, actions)
    }

    static func v5(_ id: String = "c1", properties: MQTTProperties = MQTTProperties(), keepAlive: UInt16 = 60) -> MQTTConnect {
        MQTTConnect(protocolVersion: .v5, clientIdentifier: id, keepAlive: keepAlive, properties: properties)
    }

    static func sent(_ actions: [Machine.Action]) -> [MQTTPacket] {
        actions.compactMap { if case .send(let packet) = $0 { packet } else { nil } }
    }

    static func produced(_ actions: [Machine.Action]) -> [(UInt64, MQTTPublish)] {
        actions.compactMap { if case .produce(let token, let publish) = $0 { (token, publish) } else { nil } }
    }

    static func publish(_ topic: String, qos: MQTTQoS, id: UInt16? = nil, properties: MQTTProperties = MQTTProperties()) -> MQTTPacket {
        .publish(MQTTPublish(topic: topic, payload: ByteBuffer(string: "x"), qos: qos, packetId: id, properties: properties))
    }

    @Test func connackAdvertisesLimitsAndAssignsAClientIdentifier() throws {
        let (_, actions) = Self.connected(Self.v5(""))
        guard case .connack(let connack) = Self.sent(actions).first else {
            Issue.record("no CONNACK in \(actions)")
            return
        }
        #expect(connack.reasonCode == .success)
        #expect(connack.sessionPresent == false)
        #expect(connack.properties.assignedClientIdentifier?.hasPrefix("auto-") == true)
        #expect(connack.properties.receiveMaximum == 3)
        #expect(connack.properties.topicAliasMaximum == 4)
        #expect(connack.properties.maximumPacketSize == UInt32(Self.limits.maximumPacketSize))
        #expect(actions.contains { if case .scheduleKeepAlive(.seconds(30)) = $0 { true } else { false } })
    }

    /// MQTT 5.0 allows a zero-length client identifier with Clean Start 0: the server assigns one and
    /// "MUST then process the CONNECT packet as if the Client had provided that unique ClientID" (3.1.3-7).
    /// No session can exist for a fresh identifier, so the attach is a clean start (no wait for Kafka's
    /// session topic) and Session Present is 0.
    @Test func anAssignedClientIdentifierAttachesAsACleanStart() {
        var machine = Machine(limits: Self.limits)
        var connect = Self.v5("")
        connect.cleanStart = false
        let actions = machine.packetReceived(.connect(connect), now: .now(), wallClock: Date())
        guard case .attachSession(let request) = actions.last else {
            Issue.record("expected attachSession, got \(actions)")
            return
        }
        #expect(request.clientId.hasPrefix("auto-"))
        #expect(request.cleanStart)
        var named = Machine(limits: Self.limits)
        var resume = Self.v5("named")
        resume.cleanStart = false
        guard case .attachSession(let kept) = named.packetReceived(.connect(resume), now: .now(), wallClock: Date()).last else { return }
        #expect(!kept.cleanStart)
    }

    @Test func enhancedAuthenticationIsRefusedWithBadAuthenticationMethod() {
        var properties = MQTTProperties()
        properties.authenticationMethod = "SCRAM-SHA-1"
        var machine = Machine(limits: Self.limits)
        let actions = machine.packetReceived(.connect(Self.v5(properties: properties)), now: .now(), wallClock: Date())
        #expect(Self.sent(actions) == [.connack(MQTTConnAck(reasonCode: .badAuthenticationMethod))])
        #expect(actions.last.map { if case .close = $0 { true } else { false } } == true)
    }

    @Test func serverKeepAliveReplacesAnUnboundedKeepAlive() {
        var limits = Self.limits
        limits.maxKeepAlive = 30
        let (_, actions) = Self.connected(Self.v5(keepAlive: 0), limits: limits)
        guard case .connack(let connack) = Self.sent(actions).first else { return }
        #expect(connack.properties.serverKeepAlive == 30)
    }

    @Test func qos1IsAcknowledgedOnlyAfterKafkaAndInArrivalOrder() {
        var (machine, _) = Self.connected(Self.v5())
        let a = Self.produced(machine.packetReceived(Self.publish("t/a", qos: .atLeastOnce, id: 10), now: .now(), wallClock: Date()))
        let b = Self.produced(machine.packetReceived(Self.publish("t/b", qos: .atLeastOnce, id: 11), now: .now(), wallClock: Date()))
        #expect(a.count == 1 && b.count == 1)
        // The second delivery report arrives first: nothing may be acknowledged yet (order).
        #expect(Self.sent(machine.deliveryCompleted(token: b[0].0, outcome: .delivered)).isEmpty)
        let acks = Self.sent(machine.deliveryCompleted(token: a[0].0, outcome: .delivered))
        #expect(acks == [.puback(MQTTPublishAck(packetId: 10)), .puback(MQTTPublishAck(packetId: 11))])
    }

    @Test func qos2IsProducedOnceAndPubrecRepeatedForARetransmission() {
        var (machine, _) = Self.connected(Self.v5())
        let first = Self.produced(machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: 7), now: .now(), wallClock: Date()))
        #expect(first.count == 1)
        // DUP while Kafka has not answered yet: no second produce, no ack.
        let dupEarly = machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: 7), now: .now(), wallClock: Date())
        #expect(Self.produced(dupEarly).isEmpty && Self.sent(dupEarly).isEmpty)
        #expect(Self.sent(machine.deliveryCompleted(token: first[0].0, outcome: .delivered)) == [.pubrec(MQTTPublishAck(packetId: 7))])
        // DUP after PUBREC: PUBREC again, no produce.
        let dupLate = machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: 7), now: .now(), wallClock: Date())
        #expect(Self.produced(dupLate).isEmpty)
        #expect(Self.sent(dupLate) == [.pubrec(MQTTPublishAck(packetId: 7))])
        #expect(Self.sent(machine.packetReceived(.pubrel(MQTTPublishAck(packetId: 7)), now: .now(), wallClock: Date())) == [.pubcomp(MQTTPublishAck(packetId: 7))])
        // Released: the id is new again and is produced.
        #expect(Self.produced(machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: 7), now: .now(), wallClock: Date())).count == 1)
        // PUBREL for an unknown id: PUBCOMP with 0x92.
        #expect(Self.sent(machine.packetReceived(.pubrel(MQTTPublishAck(packetId: 99)), now: .now(), wallClock: Date())) == [
            .pubcomp(MQTTPublishAck(packetId: 99, reasonCode: .packetIdentifierNotFound))
        ])
    }

    @Test func kafkaFailureGivesMQTT5AReasonCodeAndClosesMQTT311() {
        var (v5, _) = Self.connected(Self.v5())
        let token = Self.produced(v5.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 1), now: .now(), wallClock: Date()))[0].0
        let acks = Self.sent(v5.deliveryCompleted(token: token, outcome: .failed(reason: "Kafka: _MSG_TIMED_OUT")))
        guard case .puback(let ack) = acks.first else {
            Issue.record("expected PUBACK, got \(acks)")
            return
        }
        #expect(ack.reasonCode == .unspecifiedError)

        var (v311, _) = Self.connected(MQTTConnect(protocolVersion: .v311, clientIdentifier: "old"))
        let token2 = Self.produced(v311.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 1), now: .now(), wallClock: Date()))[0].0
        let actions = v311.deliveryCompleted(token: token2, outcome: .failed(reason: "x"))
        #expect(Self.sent(actions).isEmpty)
        #expect(actions.contains { if case .close = $0 { true } else { false } })
    }

    @Test func readingPausesAtReceiveMaximumAndExceedingItDisconnects() {
        var (machine, _) = Self.connected(Self.v5())
        var tokens: [UInt64] = []
        var last: [Machine.Action] = []
        for id in UInt16(1)...3 {
            last = machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: id), now: .now(), wallClock: Date())
            tokens += Self.produced(last).map(\.0)
        }
        #expect(last.contains { if case .pauseReading = $0 { true } else { false } })
        let resumed = machine.deliveryCompleted(token: tokens[0], outcome: .delivered)
        #expect(resumed.contains { if case .resumeReading = $0 { true } else { false } })
        _ = machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 4), now: .now(), wallClock: Date())
        let exceeded = machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 5), now: .now(), wallClock: Date())
        #expect(Self.sent(exceeded) == [.disconnect(MQTTDisconnect(reasonCode: .receiveMaximumExceeded))])
    }

    /// MQTT 5.0 section 4.9: the client's send quota is returned by PUBACK or PUBCOMP, so a QoS 2 publish
    /// counts against the Receive Maximum (3 here) from its arrival until the PUBCOMP, not only while it
    /// waits for Kafka; "If it receives more than Receive Maximum QoS 1 and QoS 2 PUBLISH packets where it
    /// has not sent a PUBACK or PUBCOMP in response, the Server uses a DISCONNECT packet with Reason Code
    /// 0x93" (3.3.4).
    @Test func unreleasedQoS2PublishesCountAgainstReceiveMaximumUntilPubcomp() {
        var (machine, _) = Self.connected(Self.v5())
        for id in UInt16(1)...3 {
            let token = Self.produced(machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: id), now: .now(), wallClock: Date()))[0].0
            #expect(Self.sent(machine.deliveryCompleted(token: token, outcome: .delivered)) == [.pubrec(MQTTPublishAck(packetId: id))])
        }
        // Three PUBRECs sent, no PUBREL yet: three publishes in flight. PUBREL 1 -> PUBCOMP frees one.
        #expect(Self.sent(machine.packetReceived(.pubrel(MQTTPublishAck(packetId: 1)), now: .now(), wallClock: Date())) == [.pubcomp(MQTTPublishAck(packetId: 1))])
        #expect(Self.produced(machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 4), now: .now(), wallClock: Date())).count == 1)
        // Two unreleased + one waiting for Kafka: the fourth publish in flight exceeds the Receive Maximum.
        let exceeded = machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: 5), now: .now(), wallClock: Date())
        #expect(Self.sent(exceeded) == [.disconnect(MQTTDisconnect(reasonCode: .receiveMaximumExceeded))])
    }

    /// The send quota starts afresh on each connection (MQTT 5.0 section 4.9): QoS 2 publishes a resumed
    /// session still waits to see released do not count against the new connection's Receive Maximum.
    @Test func qos2PublishesOfAnEarlierConnectionDoNotCountAgainstReceiveMaximum() {
        var session = SessionState(clientId: "c1", expiryInterval: 60)
        session.inboundAwaitingRelease = [7, 8, 9]
        var (machine, _) = Self.connected(Self.v5(), session: session)
        var tokens: [UInt64] = []
        for id in UInt16(1)...2 {
            tokens += Self.produced(machine.packetReceived(Self.publish("t", qos: .exactlyOnce, id: id), now: .now(), wallClock: Date())).map(\.0)
        }
        for token in tokens { _ = machine.deliveryCompleted(token: token, outcome: .delivered) }
        // The earlier connection's PUBREL is answered; it frees nothing on this one.
        #expect(Self.sent(machine.packetReceived(.pubrel(MQTTPublishAck(packetId: 7)), now: .now(), wallClock: Date())) == [.pubcomp(MQTTPublishAck(packetId: 7))])
        #expect(Self.produced(machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 3), now: .now(), wallClock: Date())).count == 1)
        let exceeded = machine.packetReceived(Self.publish("t", qos: .atLeastOnce, id: 4), now: .now(), wallClock: Date())
        #expect(Self.sent(exceeded) == [.disconnect(MQTTDisconnect(reasonCode: .receiveMaximumExceeded))])
    }

    @Test func topicAliasesAreResolvedAndInvalidOnesDisconnect() {
        var (machine, _) = Self.connected(Self.v5())
        var withAlias = MQTTProperties()
        withAlias.topicAlias = 2
        let first = Self.produced(machine.packetReceived(Self.publish("a/b", qos: .atMostOnce, properties: withAlias), now: .now(), wallClock: Date()))
        #expect(first.first?.1.topic == "a/b")
        #expect(first.first?.1.properties.topicAlias == nil)
        let second = Self.produced(machine.packetReceived(Self.publish("", qos: .atMostOnce, properties: withAlias), now: .now(), wallClock: Date()))
        #expect(second.first?.1.topic == "a/b")
        var tooLarge = MQTTProperties()
        tooLarge.topicAlias = 5
        let actions = machine.packetReceived(Self.publish("a", qos: .atMostOnce, properties: tooLarge), now: .now(), wallClock: Date())
        #expect(Self.sent(actions) == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
    }

    /// A DISCONNECT answering what the client sent lingers (the client may still be writing: closing at once
    /// would answer its bytes with a reset before it reads the reason code); the others close at once.
    @Test func disconnectsForWhatTheClientSentLingerOthersCloseAtOnce() {
        var (machine, _) = Self.connected(Self.v5())
        var aliasZero = MQTTProperties()
        aliasZero.topicAlias = 0
        let invalid = machine.packetReceived(Self.publish("a", qos: .atMostOnce, properties: aliasZero), now: .now(), wallClock: Date())
        #expect(Self.sent(invalid) == [.disconnect(MQTTDisconnect(reasonCode: .topicAliasInvalid))])
        #expect(invalid.last.map { if case .lingerAndClose = $0 { true } else { false } } == true)
        var (idle, _) = Self.connected(Self.v5(keepAlive: 10))
        let start = NIODeadline.now()
        _ = idle.packetReceived(.pingreq, now: start, wallClock: Date())
        let expired = idle.keepAliveCheck(now: start + .seconds(16))
        #expect(expired.last.map { if case .close = $0 { true } else { false } } == true)
        var (taken, _) = Self.connected(Self.v5())
        #expect(taken.takenOver().last.map { if case .close = $0 { true } else { false } } == true)
    }

    @Test func keepAliveExpiresAfterOneAndAHalfIntervals() {
        var (machine, _) = Self.connected(Self.v5(keepAlive: 10))
        let start = NIODeadline.now()
        _ = machine.packetReceived(.pingreq, now: start, wallClock: Date())
        #expect(machine.keepAliveCheck(now: start + .seconds(15)).isEmpty)
        let actions = machine.keepAliveCheck(now: start + .milliseconds(15_001))
        #expect(Self.sent(actions) == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
        let ending = machine.channelClosed()
        #expect(ending.attached)
    }

    @Test func willIsKeptOnlyForAbnormalEndsOrDisconnectWithWill() {
        let will = MQTTWill(topic: "w", payload: ByteBuffer(string: "gone"))
        var connect = Self.v5()
        connect.will = will
        var (normal, _) = Self.connected(connect)
        _ = normal.packetReceived(.disconnect(MQTTDisconnect()), now: .now(), wallClock: Date())
        #expect(normal.channelClosed().will == nil)

        var (withWill, _) = Self.connected(connect)
        _ = withWill.packetReceived(.disconnect(MQTTDisconnect(reasonCode: .disconnectWithWillMessage)), now: .now(), wallClock: Date())
        #expect(withWill.channelClosed().will == will)

        var (dropped, _) = Self.connected(connect)
        #expect(dropped.channelClosed().will == will)
    }

    @Test func sessionExpiryCannotBeRaisedFromZeroAtDisconnect() {
        var (machine, _) = Self.connected(Self.v5())
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 60
        let actions = machine.packetReceived(.disconnect(MQTTDisconnect(properties: properties)), now: .now(), wallClock: Date())
        #expect(Self.sent(actions) == [.disconnect(MQTTDisconnect(reasonCode: .protocolError))])
    }

    @Test func outboundWindowQueueAndResendOnResume() {
        var (machine, _) = Self.connected(Self.v5())
        func message(_ n: Int, qos: MQTTQoS = .atLeastOnce) -> OutboundMessage {
            OutboundMessage(
                message: BrokerMessage(topic: "t/\(n)", payload: ByteBuffer(string: "\(n)"), qos: qos, retain: false, properties: MQTTProperties()),
                qos: qos, retain: false, subscriptionIdentifiers: [])
        }
        let first = Self.sent(machine.deliver(message(1), now: Date()))
        let second = Self.sent(machine.deliver(message(2), now: Date()))
        #expect(first.count == 1 && second.count == 1)
        // Window (2) full: queued; the queue holds 2; the next QoS 1 is dropped.
        #expect(Self.sent(machine.deliver(message(3), now: Date())).isEmpty)
        #expect(Self.sent(machine.deliver(message(4), now: Date())).isEmpty)
        let dropped = machine.deliver(message(5), now: Date())
        #expect(dropped.contains { if case .dropped(.atLeastOnce) = $0 { true } else { false } })
        guard case .publish(let p1) = first[0] else { return }
        let afterAck = Self.sent(machine.packetReceived(.puback(MQTTPublishAck(packetId: p1.packetId!)), now: .now(), wallClock: Date()))
        guard case .publish(let p3) = afterAck.first else {
            Issue.record("expected the queued message, got \(afterAck)")
            return
        }
        #expect(p3.topic == "t/3")
        // The connection drops; the session resumes elsewhere: unacknowledged messages are resent with DUP.
        let session = machine.channelClosed().session!
        let (_, resumed) = Self.connected(Self.v5(), session: session)
        let resent = Self.sent(resumed).compactMap { if case .publish(let p) = $0 { p } else { nil } }
        // t/4 stays queued: the window (2) is full with the two resent ones.
        #expect(resent.map(\.topic) == ["t/2", "t/3"])
        let allDup = resent.allSatisfy { $0.dup }
        #expect(allDup)
    }

    /// Every connection holds a state machine inline; the idle connection's budget is 6 KB (BENCHMARKS.md).
    /// Session 6 lost that budget unnoticed when 296 bytes of read-back configuration joined a struct copied
    /// into each connection; this keeps the inline parts from growing back.
    @Test func perConnectionStateStaysSmall() {
        #expect(MemoryLayout<Machine>.size <= 160, "state machine: \(MemoryLayout<Machine>.size) bytes inline per connection")
        #expect(MemoryLayout<Machine.State>.size <= 16, "state enum: \(MemoryLayout<Machine.State>.size) bytes (box large payloads)")
        #expect(MemoryLayout<BrokerContext>.size == MemoryLayout<AnyObject>.size, "the node's context is shared, not copied")
    }

    @Test func qos2OutboundGoesThroughPubrelAndPubcomp() {
        var (machine, _) = Self.connected(Self.v5())
        let message = OutboundMessage(
            message: BrokerMessage(topic: "t", payload: ByteBuffer(), qos: .exactlyOnce, retain: false, properties: MQTTProperties()),
            qos: .exactlyOnce, retain: false, subscriptionIdentifiers: [4])
        guard case .publish(let publish) = Self.sent(machine.deliver(message, now: Date())).first else { return }
        #expect(publish.properties.subscriptionIdentifiers == [4])
        let id = publish.packetId!
        #expect(Self.sent(machine.packetReceived(.pubrec(MQTTPublishAck(packetId: id)), now: .now(), wallClock: Date())) == [.pubrel(MQTTPublishAck(packetId: id))])
        _ = machine.packetReceived(.pubcomp(MQTTPublishAck(packetId: id)), now: .now(), wallClock: Date())
        #expect(machine.channelClosed().session?.outbound.inflightCount == 0)
    }

    @Test func subscribeGrantsRequestedQoSAndAsksForRetainedPerRetainHandling() {
        var (machine, _) = Self.connected(Self.v5())
        let subscribe = MQTTSubscribe(packetId: 3, subscriptions: [
            MQTTSubscription(topicFilter: try! MQTTTopicFilter("a/#"), qos: .exactlyOnce),
            MQTTSubscription(topicFilter: try! MQTTTopicFilter("b"), qos: .atMostOnce, retainHandling: .doNotSend),
            MQTTSubscription(topicFilter: try! MQTTTopicFilter("$share/g/c"), qos: .atLeastOnce),
        ])
        let actions = machine.packetReceived(.subscribe(subscribe), now: .now(), wallClock: Date())
        #expect(Self.sent(actions) == [.suback(MQTTSubAck(packetId: 3, reasonCodes: [.grantedQoS2, .grantedQoS0, .grantedQoS1]))])
        let retained = actions.compactMap { if case .sendRetained(let options) = $0 { options.subscription.topicFilter.string } else { nil } }
        #expect(retained == ["a/#"])
        let again = machine.packetReceived(.unsubscribe(MQTTUnsubscribe(packetId: 4, topicFilters: [try! MQTTTopicFilter("b"), try! MQTTTopicFilter("zz")])), now: .now(), wallClock: Date())
        #expect(Self.sent(again) == [.unsuback(MQTTUnsubAck(packetId: 4, reasonCodes: [.success, .noSubscriptionExisted]))])
    }

    @Test func badInputBeforeConnectClosesAndAfterConnectSendsTheReasonCode() {
        var fresh = Machine(limits: Self.limits)
        let refused = fresh.decodeFailed(MQTTCodecError(reasonCode: .unsupportedProtocolVersion, message: "level 9"))
        #expect(Self.sent(refused) == [.connack(MQTTConnAck(reasonCode: .unsupportedProtocolVersion))])
        var (machine, _) = Self.connected(Self.v5())
        let actions = machine.decodeFailed(MQTTCodecError(reasonCode: .packetTooLarge, message: "big"))
        #expect(Self.sent(actions) == [.disconnect(MQTTDisconnect(reasonCode: .packetTooLarge))])
    }
}
