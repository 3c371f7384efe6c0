import NIOCore
import PropertyBased

@testable import Common

/// Random valid packets for property-based tests: every packet type, every property allowed in it, both
/// versions, strings with multi-byte characters.
struct MQTTPacketGenerator<RNG: RandomNumberGenerator> {
    var rng: RNG

    mutating func bool() -> Bool { Bool.random(using: &rng) }
    mutating func int(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &rng) }
    mutating func maybe<T>(_ make: (inout Self) -> T) -> T? { bool() ? make(&self) : nil }

    static var characters: [Character] { ["a", "b", "z", "0", "9", "-", "_", " ", "é", "ß", "漢", "😀", "$", "\u{FEFF}"] }

    mutating func string(_ length: ClosedRange<Int> = 0...12) -> String {
        String((0..<int(length)).map { _ in Self.characters[int(0...Self.characters.count - 1)] })
    }

    mutating func level() -> String { string(0...6) }

    mutating func topic() -> String {
        var topic = (0..<int(1...5)).map { _ in level() }.joined(separator: "/")
        if topic.isEmpty { topic = "t" }
        return topic
    }

    mutating func topicFilter() -> MQTTTopicFilter {
        var levels = (0..<int(1...4)).map { _ in int(0...3) == 0 ? "+" : level() }
        if bool() { levels.append("#") }
        var string = levels.joined(separator: "/")
        if int(0...4) == 0 { string = "$share/" + "g\(int(0...9))" + "/" + string }
        return (try? MQTTTopicFilter(string)) ?? (try? MQTTTopicFilter("fallback/#"))!
    }

    mutating func bytes(_ length: ClosedRange<Int> = 0...40) -> ByteBuffer {
        ByteBuffer(bytes: (0..<int(length)).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    mutating func qos() -> MQTTQoS { MQTTQoS(rawValue: UInt8(int(0...2)))! }
    mutating func packetId() -> UInt16 { UInt16.random(in: 1...UInt16.max, using: &rng) }
    mutating func u32() -> UInt32 { UInt32.random(in: 0...UInt32.max, using: &rng) }
    mutating func u16(_ range: ClosedRange<UInt16> = 0...UInt16.max) -> UInt16 { UInt16.random(in: range, using: &rng) }

    /// Random properties, each only where `context` allows it.
    mutating func properties(_ context: MQTTProperties.Context, version: MQTTProtocolVersion) -> MQTTProperties {
        var p = MQTTProperties()
        guard version == .v5 else { return p }
        func allowed(_ id: UInt8) -> Bool { MQTTProperties.allowedContexts[Int(id)] & context.bit != 0 }
        typealias I = MQTTProperties.Identifier
        if allowed(I.payloadFormatIndicator) { p.payloadFormatIndicator = maybe { $0.bool() ? .utf8 : .unspecified } }
        if allowed(I.messageExpiryInterval) { p.messageExpiryInterval = maybe { $0.u32() } }
        if allowed(I.contentType) { p.contentType = maybe { $0.string() } }
        if allowed(I.responseTopic) { p.responseTopic = maybe { $0.topic() } }
        if allowed(I.correlationData) { p.correlationData = maybe { $0.bytes() } }
        if allowed(I.subscriptionIdentifier) {
            let count = context == .subscribe ? int(0...1) : int(0...3)
            p.subscriptionIdentifiers = (0..<count).map { _ in UInt32.random(in: 1...268_435_455, using: &rng) }
        }
        if allowed(I.sessionExpiryInterval) { p.sessionExpiryInterval = maybe { $0.u32() } }
        if allowed(I.assignedClientIdentifier) { p.assignedClientIdentifier = maybe { $0.string() } }
        if allowed(I.serverKeepAlive) { p.serverKeepAlive = maybe { $0.u16() } }
        if allowed(I.authenticationMethod) { p.authenticationMethod = maybe { $0.string() } }
        if allowed(I.authenticationData), p.authenticationMethod != nil { p.authenticationData = maybe { $0.bytes() } }
        if allowed(I.requestProblemInformation) { p.requestProblemInformation = maybe { $0.bool() } }
        if allowed(I.willDelayInterval) { p.willDelayInterval = maybe { $0.u32() } }
        if allowed(I.requestResponseInformation) { p.requestResponseInformation = maybe { $0.bool() } }
        if allowed(I.responseInformation) { p.responseInformation = maybe { $0.string() } }
        if allowed(I.serverReference) { p.serverReference = maybe { $0.string() } }
        if allowed(I.reasonString) { p.reasonString = maybe { $0.string() } }
        if allowed(I.receiveMaximum) { p.receiveMaximum = maybe { $0.u16(1...UInt16.max) } }
        if allowed(I.topicAliasMaximum) { p.topicAliasMaximum = maybe { $0.u16() } }
        if allowed(I.topicAlias) { p.topicAlias = maybe { $0.u16(1...UInt16.max) } }
        if allowed(I.maximumQoS) { p.maximumQoS = maybe { $0.bool() ? .atMostOnce : .atLeastOnce } }
        if allowed(I.retainAvailable) { p.retainAvailable = maybe { $0.bool() } }
        if allowed(I.maximumPacketSize) { p.maximumPacketSize = maybe { UInt32.random(in: 1...UInt32.max, using: &$0.rng) } }
        if allowed(I.wildcardSubscriptionAvailable) { p.wildcardSubscriptionAvailable = maybe { $0.bool() } }
        if allowed(I.subscriptionIdentifierAvailable) { p.subscriptionIdentifiersAvailable = maybe { $0.bool() } }
        if allowed(I.sharedSubscriptionAvailable) { p.sharedSubscriptionAvailable = maybe { $0.bool() } }
        p.userProperties = (0..<int(0...3)).map { _ in MQTTUserProperty(name: string(), value: string()) }
        return p
    }

    mutating func reasonCode(_ allowed: MQTTReasonCode.AllowedSet) -> MQTTReasonCode {
        while true {
            let code = MQTTReasonCode(UInt8.random(in: 0...255, using: &rng))
            if allowed.contains(code) { return code }
        }
    }

    mutating func packet(version: MQTTProtocolVersion) -> MQTTPacket {
        switch int(0...14) {
        case 0:
            var will: MQTTWill? = nil
            if bool() {
                will = MQTTWill(topic: topic(), payload: bytes(), qos: qos(), retain: bool(), properties: properties(.will, version: version))
            }
            let username = maybe { $0.string() }
            let password = version == .v5 || username != nil ? maybe { $0.bytes() } : nil
            var clientIdentifier = string()
            let cleanStart = bool()
            if version == .v311 && !cleanStart && clientIdentifier.isEmpty { clientIdentifier = "c" }
            return .connect(
                MQTTConnect(
                    protocolVersion: version, clientIdentifier: clientIdentifier, cleanStart: cleanStart,
                    keepAlive: u16(), username: username, password: password, will: will,
                    properties: properties(.connect, version: version)))
        case 1:
            let code: MQTTReasonCode =
                version == .v5
                ? reasonCode(MQTTReasonCode.allowedInConnAck)
                : MQTTReasonCode(v311ConnectReturnCode: UInt8(int(0...5)))!
            return .connack(MQTTConnAck(sessionPresent: !code.isFailure && bool(), reasonCode: code, properties: properties(.connack, version: version)))
        case 2:
            let qos = qos()
            var properties = properties(.publish, version: version)
            let topic = version == .v5 && properties.topicAlias != nil && bool() ? "" : topic()
            if topic.isEmpty && properties.topicAlias == nil { properties.topicAlias = 1 }
            return .publish(
                MQTTPublish(
                    topic: topic, payload: bytes(0...300), qos: qos, retain: bool(), dup: qos != .atMostOnce && bool(),
                    packetId: qos == .atMostOnce ? nil : packetId(), properties: properties))
        case 3, 4, 5, 6:
            let kind: MQTTPublishAck.Kind = [.puback, .pubrec, .pubrel, .pubcomp][int(0...3)]
            var ack = MQTTPublishAck(packetId: packetId())
            if version == .v5 {
                ack.reasonCode = reasonCode(kind.allowedReasonCodes)
                ack.properties = properties(kind.context, version: version)
            }
            switch kind {
            case .puback: return .puback(ack)
            case .pubrec: return .pubrec(ack)
            case .pubrel: return .pubrel(ack)
            case .pubcomp: return .pubcomp(ack)
            }
        case 7:
            let subscriptions = (0..<int(1...4)).map { _ in
                var s = MQTTSubscription(topicFilter: topicFilter(), qos: qos())
                if version == .v5 {
                    s.noLocal = !s.topicFilter.isShared && bool()
                    s.retainAsPublished = bool()
                    s.retainHandling = MQTTRetainHandling(rawValue: UInt8(int(0...2)))!
                }
                return s
            }
            return .subscribe(MQTTSubscribe(packetId: packetId(), subscriptions: subscriptions, properties: properties(.subscribe, version: version)))
        case 8:
            let codes = (0..<int(1...4)).map { _ in
                version == .v5 ? reasonCode(MQTTReasonCode.allowedInSubAck) : [.grantedQoS0, .grantedQoS1, .grantedQoS2, .unspecifiedError][int(0...3)]
            }
            return .suback(MQTTSubAck(packetId: packetId(), reasonCodes: codes, properties: properties(.suback, version: version)))
        case 9:
            return .unsubscribe(
                MQTTUnsubscribe(
                    packetId: packetId(), topicFilters: (0..<int(1...4)).map { _ in topicFilter() },
                    properties: properties(.unsubscribe, version: version)))
        case 10:
            let codes = version == .v5 ? (0..<int(1...4)).map { _ in reasonCode(MQTTReasonCode.allowedInUnsubAck) } : []
            return .unsuback(MQTTUnsubAck(packetId: packetId(), reasonCodes: codes, properties: properties(.unsuback, version: version)))
        case 11:
            return .pingreq
        case 12:
            return .pingresp
        case 13:
            guard version == .v5 else { return .disconnect(MQTTDisconnect()) }
            return .disconnect(MQTTDisconnect(reasonCode: reasonCode(MQTTReasonCode.allowedInDisconnect), properties: properties(.disconnect, version: version)))
        default:
            guard version == .v5 else { return .pingreq }
            return .auth(MQTTAuth(reasonCode: reasonCode(MQTTReasonCode.allowedInAuth), properties: properties(.auth, version: version)))
        }
    }
}

/// A generator of (version, packets) for `propertyCheck`.
func packetsGenerator(count: ClosedRange<Int>) -> Generator<(MQTTProtocolVersion, [MQTTPacket]), Shrink.None<(MQTTProtocolVersion, [MQTTPacket])>> {
    Generator { rng in
        var generator = MQTTPacketGenerator(rng: SystemRandomNumberGeneratorAdapter(base: rng))
        let version: MQTTProtocolVersion = generator.bool() ? .v5 : .v311
        let packets = (0..<generator.int(count)).map { _ in generator.packet(version: version) }
        rng = generator.rng.base
        return (version, packets)
    }
}

/// Wraps the property checker's existential generator so the packet generator can be generic.
struct SystemRandomNumberGeneratorAdapter: RandomNumberGenerator {
    var base: any SeededRandomNumberGenerator
    mutating func next() -> UInt64 { base.next() }
}
