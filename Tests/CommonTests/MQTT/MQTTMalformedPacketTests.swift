import NIOCore
import Testing

@testable import Common

/// One test per malformation, each asserting the reason code a server must send (MQTT 5.0 section 4.13 and
/// the section named in each test) and that the connection closes.
@Suite("MQTT malformed packets")
struct MQTTMalformedPacketTests {
    // MARK: Fixed header

    @Test func remainingLengthLongerThanFourBytes() {
        // MQTT-1.5.5: at most four bytes; a fifth continuation byte is malformed.
        expectDecodeError([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], version: .v5, .malformedPacket)
    }

    @Test func remainingLengthNotMinimallyEncoded() {
        // MQTT-1.5.5-1: 0x80 0x00 encodes 0 in two bytes.
        expectDecodeError([0xC0, 0x80, 0x00], version: .v5, .malformedPacket)
    }

    @Test func remainingLengthLongerThanContent() {
        // PUBACK claims 3 bytes but its packet identifier and reason code need... a truncated property length.
        expectDecodeError([0x40, 0x04, 0x00, 0x01, 0x10, 0x05], version: .v5, .malformedPacket)
        // A string length pointing past the packet end.
        expectDecodeError([0x30, 0x04, 0x00, 0x09, 0x61, 0x62], version: .v311, .malformedPacket)
    }

    @Test func bytesLeftOverAfterPacket() {
        expectDecodeError([0x40, 0x03, 0x00, 0x01, 0x00], version: .v311, .malformedPacket)  // 3.1.1 PUBACK is 2 bytes
        expectDecodeError([0xC0, 0x01, 0x00], version: .v5, .malformedPacket)  // PINGREQ has no body
        expectDecodeError([0xE0, 0x01, 0x00], version: .v311, .malformedPacket)  // 3.1.1 DISCONNECT has no body
    }

    @Test func reservedFlagBits() {
        // MQTT-2.1.3-1: the flags of every packet but PUBLISH are fixed.
        expectDecodeError([0x60, 0x02, 0x00, 0x01], version: .v5, .malformedPacket)  // PUBREL must be 0010
        expectDecodeError([0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00], version: .v311, .malformedPacket)  // SUBSCRIBE
        expectDecodeError([0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 0x61], version: .v311, .malformedPacket)  // UNSUBSCRIBE
        expectDecodeError([0x41, 0x02, 0x00, 0x01], version: .v311, .malformedPacket)  // PUBACK must be 0000
        expectDecodeError([0xC8, 0x00], version: .v5, .malformedPacket)  // PINGREQ
    }

    @Test func reservedPacketTypes() {
        expectDecodeError([0x00, 0x00], version: .v5, .malformedPacket)  // type 0
        expectDecodeError([0xF0, 0x00], version: .v311, .malformedPacket)  // AUTH does not exist in 3.1.1
    }

    @Test func connectReservedFlag() {
        // MQTT-3.1.2-3: bit 0 of the connect flags is reserved.
        expectDecodeError(connectBytes(level: 4, flags: 0x03), version: nil, .malformedPacket)
    }

    @Test func connackReservedAcknowledgeFlags() {
        expectDecodeError([0x20, 0x02, 0x02, 0x00], version: .v311, .malformedPacket)
    }

    @Test func subscriptionOptionsReservedBits() {
        // MQTT-3.8.3-5: bits 6 and 7 (5.0), bits 2-7 (3.1.1) are reserved.
        expectDecodeError([0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0xC0], version: .v5, .malformedPacket)
        expectDecodeError([0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x04], version: .v311, .malformedPacket)
    }

    // MARK: Strings

    @Test(arguments: [
        [0xC3, 0x28] as [UInt8],  // invalid continuation byte
        [0xC0, 0xAF],  // overlong encoding of "/"
        [0xED, 0xA0, 0x80],  // UTF-16 surrogate U+D800 (MQTT-1.5.4-1)
        [0xF4, 0x90, 0x80, 0x80],  // beyond U+10FFFF
        [0x61, 0xE2, 0x82],  // truncated sequence
    ])
    func invalidUTF8(_ bad: [UInt8]) {
        // In a topic name, a client identifier and a user property.
        expectDecodeError(publishBytes(topic: bad), version: .v311, .malformedPacket)
        expectDecodeError(connectBytes(level: 4, flags: 0x02, clientIdentifier: bad), version: nil, .malformedPacket)
        let property: [UInt8] = [0x26, 0x00, UInt8(bad.count)] + bad + [0x00, 0x00]
        expectDecodeError(
            [0x40, UInt8(4 + property.count), 0x00, 0x01, 0x00, UInt8(property.count)] + property, version: .v5,
            .malformedPacket)
    }

    @Test func nullCharacterInStrings() {
        // MQTT-1.5.4-2: U+0000 must not appear.
        expectDecodeError(publishBytes(topic: [0x61, 0x00]), version: .v5, .malformedPacket)
        expectDecodeError(connectBytes(level: 5, flags: 0x02, clientIdentifier: [0x00]), version: nil, .malformedPacket)
        // In a topic filter.
        expectDecodeError([0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 0x61, 0x00, 0x00], version: .v311, .malformedPacket)
    }

    // MARK: QoS

    @Test func publishQoS3() {
        // MQTT-3.3.1-4.
        expectDecodeError([0x36, 0x07, 0x00, 0x01, 0x61, 0x00, 0x01, 0x68, 0x69], version: .v311, .malformedPacket)
    }

    @Test func subscriptionQoS3() {
        expectDecodeError([0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x03], version: .v311, .malformedPacket)
    }

    @Test func willQoS3() {
        // MQTT-3.1.2-12.
        expectDecodeError(connectBytes(level: 4, flags: 0x1E), version: nil, .malformedPacket)
    }

    @Test func willQoSWithoutWill() {
        // MQTT-3.1.2-11 / -13: will QoS and will retain must be 0 without the will flag.
        expectDecodeError(connectBytes(level: 4, flags: 0x0A), version: nil, .malformedPacket)
        expectDecodeError(connectBytes(level: 4, flags: 0x22), version: nil, .malformedPacket)
    }

    @Test func dupOnQoS0() {
        // MQTT-3.3.1-2.
        expectDecodeError([0x38, 0x03, 0x00, 0x01, 0x61], version: .v311, .malformedPacket)
    }

    // MARK: Packet identifiers

    @Test func packetIdentifierZero() {
        // MQTT-2.2.1-3: PUBLISH QoS > 0, SUBSCRIBE, UNSUBSCRIBE and the acknowledgements need a non-zero id.
        expectDecodeError([0x32, 0x05, 0x00, 0x01, 0x61, 0x00, 0x00], version: .v311, .protocolError)
        expectDecodeError([0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 0x61, 0x00], version: .v311, .protocolError)
        expectDecodeError([0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, 0x61], version: .v311, .protocolError)
        expectDecodeError([0x40, 0x02, 0x00, 0x00], version: .v5, .protocolError)
        expectDecodeError([0x62, 0x02, 0x00, 0x00], version: .v5, .protocolError)
        expectDecodeError([0x90, 0x03, 0x00, 0x00, 0x00], version: .v311, .protocolError)
    }

    // MARK: Properties

    @Test func duplicateProperty() {
        // MQTT 5.0 section 3.3.2.3: "It is a Protocol Error to include the Message Expiry Interval more than once".
        let properties: [UInt8] = [0x02, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x02]
        expectDecodeError(
            [0x30, UInt8(4 + properties.count), 0x00, 0x01, 0x61, UInt8(properties.count)] + properties,
            version: .v5, .protocolError)
        // Subscription identifier more than once in SUBSCRIBE (section 3.8.2.1.2).
        expectDecodeError(
            [
                0x82, 0x0B,  // SUBSCRIBE, remaining length 11
                0x00, 0x01,  // packet identifier 1
                0x04, 0x0B, 0x01, 0x0B, 0x02,  // properties: subscription identifier 1, subscription identifier 2
                0x00, 0x01, 0x61, 0x00,  // "a", QoS 0
            ],
            version: .v5, .protocolError)
    }

    @Test func repeatableProperties() throws {
        // User properties anywhere, subscription identifiers in PUBLISH: both may repeat.
        var properties = MQTTProperties(userProperties: [
            MQTTUserProperty(name: "x", value: "1"), MQTTUserProperty(name: "x", value: "2"),
        ])
        properties.subscriptionIdentifiers = [1, 2]
        var bytes = try MQTTPacket.publish(MQTTPublish(topic: "a", payload: ByteBuffer(), properties: properties))
            .encoded(version: .v5)
        let decoded = try MQTTPacket.decode(from: &bytes, version: .v5, maximumPacketSize: 1000)
        guard case .publish(let publish) = decoded else {
            Issue.record("not a PUBLISH")
            return
        }
        #expect(publish.properties.subscriptionIdentifiers == [1, 2])
        #expect(publish.properties.userProperties.map(\.value) == ["1", "2"])
    }

    @Test func propertyNotAllowedInPacket() {
        // MQTT 5.0 section 2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
        // Session expiry interval (0x11) in PUBLISH:
        expectDecodeError([0x30, 0x09, 0x00, 0x01, 0x61, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01], version: .v5, .malformedPacket)
        // Topic alias (0x23) in PUBACK:
        expectDecodeError([0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01], version: .v5, .malformedPacket)
        // Will delay interval (0x18) in CONNECT (it belongs in the will properties):
        expectDecodeError(
            connectBytes(level: 5, flags: 0x02, properties: [0x18, 0x00, 0x00, 0x00, 0x01]), version: nil,
            .malformedPacket)
    }

    @Test func unknownPropertyIdentifier() {
        expectDecodeError([0x30, 0x06, 0x00, 0x01, 0x61, 0x02, 0x7F, 0x00], version: .v5, .malformedPacket)
    }

    @Test func propertyLengthBeyondPacket() {
        expectDecodeError([0x30, 0x05, 0x00, 0x01, 0x61, 0x09, 0x01], version: .v5, .malformedPacket)
    }

    @Test func propertyValuesOutOfRange() {
        // Topic alias 0 (MQTT-3.3.2-8): Topic Alias invalid.
        expectDecodeError([0x30, 0x07, 0x00, 0x01, 0x61, 0x03, 0x23, 0x00, 0x00], version: .v5, .topicAliasInvalid)
        // Receive maximum 0 (section 3.1.2.11.3): Protocol Error.
        expectDecodeError(connectBytes(level: 5, flags: 0x02, properties: [0x21, 0x00, 0x00]), version: nil, .protocolError)
        // Request problem information 2: Protocol Error.
        expectDecodeError(connectBytes(level: 5, flags: 0x02, properties: [0x17, 0x02]), version: nil, .protocolError)
        // Subscription identifier 0 (section 3.8.2.1.2).
        expectDecodeError([0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, 0x61, 0x00], version: .v5, .protocolError)
        // Maximum QoS 2 in CONNACK.
        expectDecodeError([0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02], version: .v5, .protocolError)
        // Authentication data without authentication method in CONNECT (section 3.1.2.11.10).
        expectDecodeError(connectBytes(level: 5, flags: 0x02, properties: [0x16, 0x00, 0x00]), version: nil, .protocolError)
    }

    // MARK: Topics

    @Test(arguments: ["a/+", "+", "a/#", "#", "a+b"])
    func topicNameWithWildcards(_ topic: String) {
        // MQTT-3.3.2-2: the topic name in PUBLISH must not contain wildcards.
        expectDecodeError(publishBytes(topic: Array(topic.utf8)), version: .v5, .topicNameInvalid)
        expectDecodeError(publishBytes(topic: Array(topic.utf8)), version: .v311, .topicNameInvalid)
    }

    @Test func emptyTopicWithoutAlias() {
        // MQTT 5.0 section 3.3.2.1 / MQTT-4.7.3-1.
        expectDecodeError(publishBytes(topic: []), version: .v5, .protocolError)
        expectDecodeError(publishBytes(topic: []), version: .v311, .protocolError)
    }

    @Test func willTopicWithWildcards() {
        expectDecodeError(connectBytes(level: 4, flags: 0x06, will: (Array("a/#".utf8), [])), version: nil, .topicNameInvalid)
    }

    @Test(arguments: ["a/#/b", "a+", "+a", "a/b#", "##", "", "$share/g", "$share//a", "$share/g+/a", "$share/g/"])
    func invalidTopicFilter(_ topicFilter: String) {
        // MQTT 5.0 section 4.7.1 and 4.8.2.
        let bytes = Array(topicFilter.utf8)
        let body: [UInt8] = [0x00, 0x01, 0x00, UInt8(bytes.count)] + bytes + [0x00]
        expectDecodeError([0x82, UInt8(body.count)] + body, version: .v311, .topicFilterInvalid)
        let unsubscribe: [UInt8] = [0x00, 0x01, 0x00, 0x00, UInt8(bytes.count)] + bytes
        expectDecodeError([0xA2, UInt8(unsubscribe.count)] + unsubscribe, version: .v5, .topicFilterInvalid)
    }

    // MARK: Subscriptions

    @Test func emptySubscribe() {
        // MQTT-3.8.3-2: at least one topic filter.
        expectDecodeError([0x82, 0x02, 0x00, 0x01], version: .v311, .protocolError)
        expectDecodeError([0x82, 0x03, 0x00, 0x01, 0x00], version: .v5, .protocolError)
    }

    @Test func emptyUnsubscribe() {
        // MQTT-3.10.3-2.
        expectDecodeError([0xA2, 0x02, 0x00, 0x01], version: .v311, .protocolError)
        expectDecodeError([0xA2, 0x03, 0x00, 0x01, 0x00], version: .v5, .protocolError)
    }

    @Test func retainHandling3() {
        // Section 3.8.3.1: retain handling 3 is a Protocol Error.
        expectDecodeError([0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 0x61, 0x30], version: .v5, .protocolError)
    }

    @Test func noLocalOnSharedSubscription() {
        // MQTT-3.8.3-4.
        let filter = Array("$share/g/a".utf8)
        let body: [UInt8] = [0x00, 0x01, 0x00, 0x00, UInt8(filter.count)] + filter + [0x04]
        expectDecodeError([0x82, UInt8(body.count)] + body, version: .v5, .protocolError)
    }

    // MARK: Sizes

    @Test func packetLargerThanMaximum() {
        // MQTT 5.0 section 3.1.2.11.4: Packet too large. Only the fixed header has arrived, so the decoder
        // rejects it before buffering the body.
        expectDecodeError([0x30, 0xC8, 0x01], version: .v5, maximumPacketSize: 100, .packetTooLarge)
        // Exactly at the maximum is fine.
        var atMaximum = ByteBuffer(bytes: [0x30, 0x03, 0x00, 0x01, 0x61])
        #expect((try? MQTTPacket.decode(from: &atMaximum, version: .v311, maximumPacketSize: 5)) != nil)
        var overMaximum = ByteBuffer(bytes: [0x30, 0x03, 0x00, 0x01, 0x61])
        #expect(throws: MQTTCodecError.self) { try MQTTPacket.decode(from: &overMaximum, version: .v311, maximumPacketSize: 4) }
    }

    // MARK: Connection order and CONNECT

    @Test func firstPacketMustBeConnect() {
        // MQTT-3.1.0-1: detected from the first byte.
        expectDecodeError([0x30], version: nil, .protocolError)
    }

    @Test func unsupportedProtocolLevel() {
        // MQTT 5.0 section 3.1.2.2: CONNACK 0x84 (3.1.1: return code 0x01).
        expectDecodeError(connectBytes(level: 6, flags: 0x02), version: nil, .unsupportedProtocolVersion)
        expectDecodeError(connectBytes(level: 3, flags: 0x02, name: "MQIsdp"), version: nil, .unsupportedProtocolVersion)
        #expect(MQTTReasonCode.unsupportedProtocolVersion.v311ConnectReturnCode == 0x01)
    }

    @Test func wrongProtocolName() {
        expectDecodeError(connectBytes(level: 4, flags: 0x02, name: "MQTX"), version: nil, .protocolError)
    }

    @Test func passwordWithoutUserNameV311() {
        // MQTT-3.1.2-22 (3.1.1 only; 5.0 allows it).
        expectDecodeError(connectBytes(level: 4, flags: 0x42, password: [0x70]), version: nil, .protocolError)
        var v5 = ByteBuffer(bytes: connectBytes(level: 5, flags: 0x42, password: [0x70]))
        #expect((try? MQTTPacket.decode(from: &v5, version: nil, maximumPacketSize: 1000)) != nil)
    }

    @Test func emptyClientIdentifierWithoutCleanSessionV311() {
        // MQTT-3.1.3-8: CONNACK return code 0x02.
        expectDecodeError(connectBytes(level: 4, flags: 0x00, clientIdentifier: []), version: nil, .clientIdentifierNotValid)
    }

    // MARK: Reason codes

    @Test func reasonCodeNotAllowedInPacket() {
        expectDecodeError([0x40, 0x03, 0x00, 0x01, 0x92], version: .v5, .protocolError)  // PUBACK 0x92
        expectDecodeError([0x62, 0x03, 0x00, 0x01, 0x10], version: .v5, .protocolError)  // PUBREL 0x10
        expectDecodeError([0xE0, 0x01, 0x19], version: .v5, .protocolError)  // DISCONNECT 0x19
        expectDecodeError([0xF0, 0x01, 0x87], version: .v5, .protocolError)  // AUTH 0x87
        expectDecodeError([0x20, 0x03, 0x00, 0x04, 0x00], version: .v5, .protocolError)  // CONNACK 0x04
        expectDecodeError([0x20, 0x02, 0x00, 0x06], version: .v311, .malformedPacket)  // 3.1.1 return code 6
        expectDecodeError([0x90, 0x03, 0x00, 0x01, 0x87], version: .v311, .malformedPacket)  // 3.1.1 SUBACK 0x87
        expectDecodeError([0x20, 0x02, 0x01, 0x05], version: .v311, .protocolError)  // session present on refusal
    }

    // MARK: Encoder

    @Test func encoderRefusesWhatAVersionCannotCarry() {
        let cases: [(MQTTPacket, MQTTProtocolVersion)] = [
            (.auth(MQTTAuth()), .v311),
            (.puback(MQTTPublishAck(packetId: 1, reasonCode: .quotaExceeded)), .v311),
            (.publish(MQTTPublish(topic: "a/+", payload: ByteBuffer())), .v5),
            (.publish(MQTTPublish(topic: "a", payload: ByteBuffer(), qos: .atLeastOnce)), .v5),
            (.publish(MQTTPublish(topic: "", payload: ByteBuffer())), .v5),
            (.connack(MQTTConnAck(reasonCode: .malformedPacket)), .v311) as (MQTTPacket, MQTTProtocolVersion),
            (.disconnect(MQTTDisconnect(reasonCode: .serverBusy)), .v311),
            (.disconnect(MQTTDisconnect(reasonCode: .grantedQoS1)), .v5),
            (.subscribe(MQTTSubscribe(packetId: 1, subscriptions: [])), .v5),
        ]
        for (packet, version) in cases {
            var out = ByteBuffer()
            do {
                try packet.encode(into: &out, version: version)
                Issue.record("encoded \(packet) in \(version)")
            } catch {
                #expect(!error.closesConnection)
                #expect(out.readableBytes == 0, "nothing written on failure")
            }
        }
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 1
        var out = ByteBuffer()
        #expect(throws: MQTTCodecError.self) {
            try MQTTPacket.publish(MQTTPublish(topic: "a", payload: ByteBuffer(), properties: properties)).encode(into: &out, version: .v5)
        }
        #expect(throws: MQTTCodecError.self) {
            try MQTTPacket.publish(MQTTPublish(topic: "a", payload: ByteBuffer(), properties: properties)).encode(into: &out, version: .v311)
        }
    }

    @Test func encoderRespectsPeerMaximumPacketSize() {
        let publish = MQTTPacket.publish(MQTTPublish(topic: "a", payload: ByteBuffer(repeating: 0, count: 100)))
        var out = ByteBuffer()
        // 1 header + 1 length + 3 topic + 1 property length + 100 payload = 106 bytes.
        let error = #expect(throws: MQTTCodecError.self) {
            try publish.encode(into: &out, version: .v5, maximumPacketSize: 105)
        }
        #expect(error?.reasonCode == .packetTooLarge)
        #expect(error?.closesConnection == false)
        #expect(out.readableBytes == 0)
        #expect(throws: Never.self) { try publish.encode(into: &out, version: .v5, maximumPacketSize: 106) }
        #expect(out.readableBytes == 106)
    }
}

// MARK: Builders for hand-made packets

/// A 3.1.1 / 5.0 PUBLISH QoS 0 with `topic` (raw bytes) and payload "x".
func publishBytes(topic: [UInt8]) -> [UInt8] {
    // 5.0 needs a property length; 3.1.1 would read it as payload, which is harmless here.
    let body: [UInt8] = [0x00, UInt8(topic.count)] + topic + [0x00, 0x78]
    return [0x30, UInt8(body.count)] + body
}

/// A CONNECT with the given fields, written by hand so that it can be wrong.
func connectBytes(
    level: UInt8,
    flags: UInt8,
    name: String = "MQTT",
    clientIdentifier: [UInt8] = [0x63],
    properties: [UInt8] = [],
    will: (topic: [UInt8], payload: [UInt8])? = nil,
    password: [UInt8]? = nil
) -> [UInt8] {
    var body: [UInt8] = [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [level, flags, 0x00, 0x3C]
    if level == 5 { body += [UInt8(properties.count)] + properties }
    body += [0x00, UInt8(clientIdentifier.count)] + clientIdentifier
    if let will {
        if level == 5 { body += [0x00] }
        body += [0x00, UInt8(will.topic.count)] + will.topic + [0x00, UInt8(will.payload.count)] + will.payload
    }
    if let password { body += [0x00, UInt8(password.count)] + password }
    return [0x10, UInt8(body.count)] + body
}
