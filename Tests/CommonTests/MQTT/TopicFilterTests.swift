import PropertyBased
import Testing

@testable import Common

@Suite("MQTT topics")
struct TopicFilterTests {
    @Test(arguments: [
        // spec: MQTT 5.0 section 4.7.1.2 and 4.7.1.3 examples.
        ("sport/tennis/player1/#", "sport/tennis/player1", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
        ("sport/#", "sport", true),
        ("#", "sport/tennis", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/+", "sport", false),
        ("sport/+", "sport/", true),
        ("+/+", "/finance", true),
        ("/+", "/finance", true),
        ("+", "/finance", false),
        ("+/tennis/#", "sport/tennis", true),
        // spec: section 4.7.2, topics starting with $.
        ("#", "$SYS/broker/load", false),
        ("+/monitor/Clients", "$SYS/monitor/Clients", false),
        ("$SYS/#", "$SYS/monitor/Clients", true),
        ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
        // Exact and case-sensitive.
        ("a/b", "a/b", true),
        ("a/b", "A/b", false),
        ("a/b", "a/bc", false),
        ("a/bc", "a/b", false),
        ("a//b", "a//b", true),
        ("a/+/b", "a//b", true),
        ("a/#", "a/", true),
        ("$share/g/a/+", "a/b", true),
    ])
    func matching(_ filter: String, _ topic: String, _ expected: Bool) throws {
        #expect(try MQTTTopicFilter(filter).matches(topic) == expected)
        // The subscription tree agrees with the single-filter matcher.
        var tree = SubscriptionTree<Int, Int>()
        tree.insert(try MQTTTopicFilter(filter), key: 1, value: 1)
        #expect(!tree.match(topic).isEmpty == expected)
    }

    @Test(arguments: ["a", "/", "a/b/c", "+/+", "#", "a/+/b", "a/#", "+", "//", "$SYS/#", "$share/g/#", "$share/g/a/+/b"])
    func validFilters(_ filter: String) {
        #expect(throws: Never.self) { try MQTTTopicFilter(filter) }
    }

    @Test(arguments: ["", "a/#/b", "a+", "+a", "a#", "#/", "a/#/", "++", "$share/", "$share/g", "$share//a", "$share/g#/a", "a\u{0}b"])
    func invalidFilters(_ filter: String) {
        let error = #expect(throws: MQTTCodecError.self) { try MQTTTopicFilter(filter) }
        #expect(error?.reasonCode == .topicFilterInvalid)
    }

    @Test func sharedSubscriptionParts() throws {
        let shared = try MQTTTopicFilter("$share/consumers/sensors/+/temp")
        #expect(shared.shareGroup == "consumers")
        #expect(shared.filter == "sensors/+/temp")
        #expect(shared.isShared)
        #expect(shared.hasWildcards)
        let plain = try MQTTTopicFilter("sensors/1/temp")
        #expect(plain.shareGroup == nil)
        #expect(plain.filter == plain.string)
        #expect(!plain.hasWildcards)
    }

    @Test func topicNames() {
        #expect(throws: Never.self) { try MQTTTopicName("a/b/c") }
        #expect(throws: Never.self) { try MQTTTopicName("$SYS/x") }
        for bad in ["", "a/+", "#", "a\u{0}"] {
            let error = #expect(throws: MQTTCodecError.self) { try MQTTTopicName(bad) }
            #expect(error?.reasonCode == .topicNameInvalid)
        }
    }
}
