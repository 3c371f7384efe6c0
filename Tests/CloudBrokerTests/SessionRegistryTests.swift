import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import CloudBroker
@testable import Common

/// Routing of consumed messages to sessions: overlapping subscriptions, No Local, Retain As Published,
/// shared subscriptions, offline queues.
@Suite("SessionRegistry routing")
struct SessionRegistryTests {
    final class Endpoint: ConnectionEndpoint {
        let delivered = Mutex<[OutboundMessage]>([])
        let loop = EmbeddedEventLoop()
        func deliver(_ message: OutboundMessage) { delivered.withLock { $0.append(message) } }
        func takeOver() -> EventLoopFuture<SessionState?> { loop.makeSucceededFuture(nil) }
        func shutdown() {}
        var messages: [OutboundMessage] { delivered.withLock { $0 } }
    }

    static func registry() -> SessionRegistry {
        SessionRegistry(store: InMemorySessionStore(), limits: BrokerLimits(), logger: Logger(label: "test")) { _, _, _, _ in }
    }

    static func attach(_ registry: SessionRegistry, _ clientId: String, expiry: UInt32 = 0) throws -> Endpoint {
        let endpoint = Endpoint()
        _ = try registry.attach(.init(clientId: clientId, cleanStart: true, expiryInterval: expiry), endpoint: endpoint, eventLoop: endpoint.loop).wait()
        return endpoint
    }

    static func subscribe(_ registry: SessionRegistry, _ clientId: String, _ filter: String, qos: MQTTQoS = .exactlyOnce, noLocal: Bool = false, rap: Bool = false, id: UInt32? = nil) throws {
        let subscription = MQTTSubscription(topicFilter: try MQTTTopicFilter(filter), qos: qos, noLocal: noLocal, retainAsPublished: rap)
        registry.register(clientId: clientId, [SubscriptionOptions(subscription: subscription, identifier: id)])
    }

    static func message(_ topic: String, qos: MQTTQoS = .atLeastOnce, retain: Bool = false, from publisher: String? = nil) -> BrokerMessage {
        BrokerMessage(topic: topic, payload: ByteBuffer(string: "m"), qos: qos, retain: retain, publisherClientId: publisher, properties: MQTTProperties())
    }

    @Test func overlappingSubscriptionsGiveOneMessageWithMaxQoSAndAllIdentifiers() throws {
        let registry = Self.registry()
        let a = try Self.attach(registry, "a")
        try Self.subscribe(registry, "a", "s/#", qos: .atMostOnce, id: 1)
        try Self.subscribe(registry, "a", "s/+", qos: .atLeastOnce, id: 2)
        #expect(registry.route(Self.message("s/x", qos: .exactlyOnce)) == 1)
        let messages = a.messages
        #expect(messages.count == 1)
        #expect(messages.first?.qos == .atLeastOnce)
        #expect(Set(messages.first?.subscriptionIdentifiers ?? []) == [1, 2])
    }

    @Test func noLocalAndRetainAsPublished() throws {
        let registry = Self.registry()
        let a = try Self.attach(registry, "a")
        let b = try Self.attach(registry, "b")
        try Self.subscribe(registry, "a", "t", noLocal: true)
        try Self.subscribe(registry, "b", "t", rap: true)
        registry.route(Self.message("t", retain: true, from: "a"))
        #expect(a.messages.isEmpty, "No Local: not sent back to its publisher")
        #expect(b.messages.first?.retain == true, "Retain As Published keeps the flag")
        registry.route(Self.message("t", retain: true, from: "b"))
        #expect(a.messages.first?.retain == false, "without Retain As Published the flag is cleared")
    }

    @Test func sharedSubscriptionDeliversToOneMemberInTurn() throws {
        let registry = Self.registry()
        let a = try Self.attach(registry, "a")
        let b = try Self.attach(registry, "b")
        try Self.subscribe(registry, "a", "$share/g/jobs/#")
        try Self.subscribe(registry, "b", "$share/g/jobs/#")
        for _ in 0..<4 { registry.route(Self.message("jobs/1")) }
        #expect(a.messages.count == 2)
        #expect(b.messages.count == 2)
    }

    @Test func offlinePersistentSessionQueuesQoS1AndDropsQoS0() throws {
        let registry = Self.registry()
        let a = try Self.attach(registry, "a", expiry: 60)
        try Self.subscribe(registry, "a", "q/#")
        var session = SessionState(clientId: "a", expiryInterval: 60)
        session.subscriptions["q/#"] = SubscriptionOptions(subscription: MQTTSubscription(topicFilter: try MQTTTopicFilter("q/#"), qos: .atLeastOnce), identifier: nil)
        registry.detach(endpoint: a, session: session, will: nil, takenOver: false)
        registry.route(Self.message("q/1", qos: .atMostOnce))
        registry.route(Self.message("q/2", qos: .atLeastOnce))
        #expect(registry.store.statistics().queuedMessages == 1)
        let resumed = Endpoint()
        let (state, present) = try registry.attach(.init(clientId: "a", cleanStart: false, expiryInterval: 60), endpoint: resumed, eventLoop: resumed.loop).wait()
        #expect(present)
        #expect(state.outbound.queue.map(\.message.topic) == ["q/2"])
    }

    @Test func delayedWillIsCancelledByAReconnectAndPublishedOtherwise() async throws {
        let published = Mutex<[String]>([])
        let registry = SessionRegistry(store: InMemorySessionStore(), limits: BrokerLimits(), logger: Logger(label: "test")) { will, _, _, _ in
            published.withLock { $0.append(will.topic) }
        }
        var properties = MQTTProperties()
        properties.willDelayInterval = 1
        for (clientId, reconnects) in [("comes-back", true), ("stays-away", false)] {
            let endpoint = try Self.attach(registry, clientId, expiry: 60)
            let will = MQTTWill(topic: "will/\(clientId)", payload: ByteBuffer(string: "w"), properties: properties)
            registry.detach(endpoint: endpoint, session: SessionState(clientId: clientId, expiryInterval: 60), will: will, takenOver: false)
            #expect(published.withLock { $0 }.isEmpty, "not before the delay")
            if reconnects { _ = try Self.attach(registry, clientId, expiry: 60) }
        }
        let deadline = ContinuousClock.now + .seconds(5)
        while published.withLock({ $0 }).isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))  // waiting for the delay under test
        }
        try await Task.sleep(for: .milliseconds(200))  // a cancelled will would have fired with the other
        #expect(published.withLock { $0 } == ["will/stays-away"])
    }
}

/// A session that moved here from another node is replayed once, and live messages wait for the replay.
@Suite("SessionRegistry moved-session replay")
struct MovedSessionReplayRegistryTests {
    @Test("replayed once even if the client reconnects during the replay; what routing held is never dropped")
    func reconnectDuringReplay() throws {
        let store = InMemorySessionStore()
        let registry = SessionRegistry(store: store, limits: BrokerLimits(), logger: Logger(label: "test")) { _, _, _, _ in }
        let replays = Mutex<[SessionRegistry.ReplayStart]>([])
        registry.setSessionMovedHandler { _, _, start in replays.withLock { $0.append(start) } }
        var moved = SessionState(clientId: "m", expiryInterval: 600)
        let subscription = MQTTSubscription(topicFilter: try MQTTTopicFilter("cmd/m"), qos: .atLeastOnce)
        moved.subscriptions["cmd/m"] = SubscriptionOptions(subscription: subscription, identifier: nil)
        moved.movedFrom = "node-a"
        store.put(moved, now: .now)

        let first = SessionRegistryTests.Endpoint()
        let (session, present) = try registry.attach(.init(clientId: "m", cleanStart: false, expiryInterval: 600), endpoint: first, eventLoop: first.loop).wait()
        #expect(present)
        #expect(session.movedFrom == nil, "the connection's copy no longer asks for a replay")
        #expect(replays.withLock { $0.count } == 1)
        // Live while the replay runs: held back.
        #expect(registry.route(SessionRegistryTests.message("cmd/m")) == 1)
        #expect(first.messages.isEmpty)

        // The client drops and comes back before the replay ends.
        registry.detach(endpoint: first, session: session, will: nil, takenOver: false)
        let second = SessionRegistryTests.Endpoint()
        _ = try registry.attach(.init(clientId: "m", cleanStart: false, expiryInterval: 600), endpoint: second, eventLoop: second.loop).wait()
        #expect(replays.withLock { $0.count } == 1, "not replayed a second time")
        registry.endReplay(clientId: "m")
        #expect(second.messages.count == 1, "the message held during the replay reaches the new connection")
        #expect(registry.route(SessionRegistryTests.message("cmd/m")) == 1)
        #expect(second.messages.count == 2, "after the replay, live messages go straight out")
    }
}
