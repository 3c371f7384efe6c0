import Foundation
import NIOCore
import Testing

@testable import CloudBroker
@testable import Common

@Suite("Access rules (auth.acl)")
struct AccessRulesTests {
    static let rules = try! AccessRules(parsing: [
        "* write devices/%c/#",
        "alice readwrite users/%u/#",
        "ops read devices/+/status",
    ])

    @Test func publishIsAllowedOnlyWhereARuleSaysSo() {
        #expect(Self.rules.mayPublish(topic: "devices/d1/temp", user: nil, clientId: "d1"))
        #expect(!Self.rules.mayPublish(topic: "devices/d2/temp", user: nil, clientId: "d1"))
        #expect(Self.rules.mayPublish(topic: "users/alice/x", user: "alice", clientId: "c"))
        #expect(!Self.rules.mayPublish(topic: "users/bob/x", user: "alice", clientId: "c"))
        #expect(!Self.rules.mayPublish(topic: "devices/x/status", user: "ops", clientId: "c"))
        #expect(AccessRules().mayPublish(topic: "anything", user: nil, clientId: "c"), "no rules: everything allowed")
    }

    @Test func subscriptionsMustLieWithinAReadRule() throws {
        #expect(Self.rules.maySubscribe(filter: try MQTTTopicFilter("devices/+/status"), user: "ops", clientId: "c"))
        #expect(Self.rules.maySubscribe(filter: try MQTTTopicFilter("devices/d9/status"), user: "ops", clientId: "c"))
        #expect(!Self.rules.maySubscribe(filter: try MQTTTopicFilter("devices/#"), user: "ops", clientId: "c"))
        #expect(Self.rules.maySubscribe(filter: try MQTTTopicFilter("$share/g/users/alice/+"), user: "alice", clientId: "c"))
        #expect(!Self.rules.maySubscribe(filter: try MQTTTopicFilter("users/alice/#"), user: nil, clientId: "c"))
        #expect(throws: BrokerError.self) { try AccessRules(parsing: ["alice sometimes a/b"]) }
    }

    @Test func deniedPublishesAreRefusedInOrderAndDeniedSubscriptionsGet0x87() throws {
        var limits = StateMachineTests.limits
        limits.access = Self.rules
        var (machine, _) = StateMachineTests.connected(MQTTConnect(protocolVersion: .v5, clientIdentifier: "d1"), limits: limits)
        let allowed = StateMachineTests.produced(machine.packetReceived(StateMachineTests.publish("devices/d1/t", qos: .atLeastOnce, id: 1), now: .now(), wallClock: Date()))
        let denied = machine.packetReceived(StateMachineTests.publish("devices/d2/t", qos: .atLeastOnce, id: 2), now: .now(), wallClock: Date())
        #expect(StateMachineTests.produced(denied).isEmpty)
        #expect(StateMachineTests.sent(denied).isEmpty, "the refusal waits for the publish before it")
        let acks = StateMachineTests.sent(machine.deliveryCompleted(token: allowed[0].0, outcome: .delivered))
        #expect(acks == [.puback(MQTTPublishAck(packetId: 1)), .puback(MQTTPublishAck(packetId: 2, reasonCode: .notAuthorized))])
        let subscribe = MQTTSubscribe(packetId: 5, subscriptions: [MQTTSubscription(topicFilter: try MQTTTopicFilter("users/#"), qos: .atLeastOnce)])
        let suback = StateMachineTests.sent(machine.packetReceived(.subscribe(subscribe), now: .now(), wallClock: Date()))
        #expect(suback == [.suback(MQTTSubAck(packetId: 5, reasonCodes: [.notAuthorized]))])
    }
}
