import Common
import Foundation
import NIOCore
import Testing
import TestSupport

@testable import CloudBroker

@Suite("Outbound topic aliases")
struct OutboundTopicAliasTests {
    static func send(_ aliases: inout OutboundTopicAliases, _ topic: String) -> (topic: String, alias: UInt16?) {
        let (wire, use) = aliases.plan(MQTTPublish(topic: topic, payload: ByteBuffer()))
        if let use { aliases.commit(use) }
        return (wire.topic, wire.properties.topicAlias)
    }

    @Test func aliasesAreDefinedThenUsedAndTheLeastRecentlyUsedIsReplaced() {
        var aliases = OutboundTopicAliases(maximum: 2)
        #expect(Self.send(&aliases, "a") == ("a", 1))
        #expect(Self.send(&aliases, "a") == ("", 1))
        #expect(Self.send(&aliases, "b") == ("b", 2))
        #expect(Self.send(&aliases, "a") == ("", 1))
        #expect(Self.send(&aliases, "c") == ("c", 2))  // b was used least recently
        #expect(Self.send(&aliases, "b") == ("b", 1))  // then a
        #expect(Self.send(&aliases, "c") == ("", 2))
        var none = OutboundTopicAliases(maximum: 0)
        #expect(Self.send(&none, "a") == ("a", nil))
    }

    @Test func aPlanNotCommittedLeavesTheTableUnchanged() {
        var aliases = OutboundTopicAliases(maximum: 4)
        _ = aliases.plan(MQTTPublish(topic: "a", payload: ByteBuffer()))  // e.g. too large for the client: discarded
        #expect(Self.send(&aliases, "a") == ("a", 1), "the client never saw the first definition")
    }

    /// A raw v5 subscriber announcing Topic Alias Maximum 2 sees the aliases on the wire; one announcing none
    /// gets full topics. (No client installed here resolves aliases it receives: libmosquitto 2.0.11 takes an
    /// empty topic for a protocol error even with `-D connect topic-alias-maximum`, paho 2.1 ignores them;
    /// so the wire is checked with the raw client.)
    @Test func subscribersGetAliasesUpToTheirMaximum() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            var properties = MQTTProperties()
            properties.topicAliasMaximum = 2
            let aliased = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await aliased.handshake(MQTTConnect(protocolVersion: .v5, clientIdentifier: "aliased", properties: properties))
            try await BrokerProtocolTests.subscribe(aliased, "alias/#", qos: .atMostOnce)
            let plain = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await plain.handshake(MQTTConnect(protocolVersion: .v5, clientIdentifier: "plain"))
            try await BrokerProtocolTests.subscribe(plain, "alias/#", qos: .atMostOnce)
            let publisher = try await RawMQTTClient.connect(port: broker.mqttPort)
            try await publisher.handshake(MQTTConnect(protocolVersion: .v311, clientIdentifier: "publisher"))
            var packetId: UInt16 = 0
            func publish(_ topic: String, _ payload: String) async throws {
                packetId += 1
                try await publisher.send(.publish(MQTTPublish(topic: topic, payload: ByteBuffer(string: payload), qos: .atLeastOnce, packetId: packetId)))
                _ = try await publisher.next { if case .puback(let ack) = $0 { ack } else { nil } }
            }
            func received(_ client: RawMQTTClient) async throws -> MQTTPublish {
                try await client.next { if case .publish(let publish) = $0 { publish } else { nil } }
            }
            // Each delivery is awaited before the next publish: topics may sit on different partitions.
            var wire: [(String, UInt16?)] = []
            for (topic, payload) in [("alias/a", "1"), ("alias/a", "2"), ("alias/b", "3"), ("alias/c", "4"), ("alias/a", "5")] {
                try await publish(topic, payload)
                let seen = try await received(aliased)
                wire.append((seen.topic, seen.properties.topicAlias))
                let full = try await received(plain)
                #expect(full.topic == topic && full.properties.topicAlias == nil)
            }
            // alias/c replaces alias/a (least recently used), then alias/a replaces alias/b.
            let expected: [(String, UInt16?)] = [("alias/a", 1), ("", 1), ("alias/b", 2), ("alias/c", 1), ("alias/a", 2)]
            #expect(wire.map(\.0) == expected.map(\.0), "\(wire)")
            #expect(wire.map(\.1) == expected.map(\.1), "\(wire)")
            for client in [aliased, plain, publisher] { await client.close() }
        }
    }
}
