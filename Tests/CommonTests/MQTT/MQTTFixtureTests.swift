import NIOCore
import Testing

@testable import Common

/// Byte-exact fixtures: each decodes to the packet and the packet encodes to the same bytes. One comment per
/// field. Fixtures marked "spec" reproduce the examples of the MQTT 3.1.1 / 5.0 specifications.
@Suite("MQTT fixtures")
struct MQTTFixtureTests {
    // MARK: CONNECT

    @Test func connectV311Minimal() throws {
        let bytes: [UInt8] = [
            0x10, 0x0E,  // CONNECT, remaining length 14
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,  // protocol name "MQTT"
            0x04,  // protocol level 4 (3.1.1)
            0x02,  // connect flags: clean session
            0x00, 0x0A,  // keep alive 10 s
            0x00, 0x02, 0x63, 0x31,  // client identifier "c1"
        ]
        try expectFixture(bytes, .connect(MQTTConnect(protocolVersion: .v311, clientIdentifier: "c1", keepAlive: 10)), version: .v311)
    }

    @Test func connectV311WillUserPassword() throws {
        // spec: MQTT 3.1.1 figure 3.6, connect flags 0xCE and keep alive 10.
        let bytes: [UInt8] = [
            0x10, 0x1F,  // CONNECT, remaining length 31
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,  // protocol name "MQTT"
            0x04,  // protocol level 4
            0xCE,  // flags: user name, password, will QoS 1, will, clean session
            0x00, 0x0A,  // keep alive 10
            0x00, 0x03, 0x64, 0x65, 0x76,  // client identifier "dev"
            0x00, 0x03, 0x77, 0x2F, 0x74,  // will topic "w/t"
            0x00, 0x03, 0x62, 0x79, 0x65,  // will payload "bye"
            0x00, 0x01, 0x75,  // user name "u"
            0x00, 0x01, 0x70,  // password "p"
        ]
        let connect = MQTTConnect(
            protocolVersion: .v311, clientIdentifier: "dev", cleanStart: true, keepAlive: 10, username: "u",
            password: buffer("p"), will: MQTTWill(topic: "w/t", payload: buffer("bye"), qos: .atLeastOnce))
        try expectFixture(bytes, .connect(connect), version: .v311)
    }

    @Test func connectV5WithPropertiesAndWillProperties() throws {
        // spec: MQTT 5.0 section 3.1.2.12 example (flags 0xCE, keep alive 10, session expiry interval 10).
        let bytes: [UInt8] = [
            0x10, 0x2B,  // CONNECT, remaining length 43
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,  // protocol name "MQTT"
            0x05,  // protocol level 5
            0xCE,  // flags: user name, password, will QoS 1, will, clean start
            0x00, 0x0A,  // keep alive 10
            0x05,  // property length 5
            0x11, 0x00, 0x00, 0x00, 0x0A,  // session expiry interval 10
            0x00, 0x03, 0x64, 0x65, 0x76,  // client identifier "dev"
            0x05,  // will property length 5
            0x18, 0x00, 0x00, 0x00, 0x05,  // will delay interval 5
            0x00, 0x03, 0x77, 0x2F, 0x74,  // will topic "w/t"
            0x00, 0x03, 0x62, 0x79, 0x65,  // will payload "bye"
            0x00, 0x01, 0x75,  // user name "u"
            0x00, 0x01, 0x70,  // password "p"
        ]
        var properties = MQTTProperties()
        properties.sessionExpiryInterval = 10
        var willProperties = MQTTProperties()
        willProperties.willDelayInterval = 5
        let connect = MQTTConnect(
            protocolVersion: .v5, clientIdentifier: "dev", cleanStart: true, keepAlive: 10, username: "u",
            password: buffer("p"),
            will: MQTTWill(topic: "w/t", payload: buffer("bye"), qos: .atLeastOnce, properties: willProperties),
            properties: properties)
        try expectFixture(bytes, .connect(connect), version: .v5)
    }

    @Test func connectV5AllConnectProperties() throws {
        let bytes: [UInt8] = [
            0x10, 0x3C,  // CONNECT, remaining length 60
            0x00, 0x04, 0x4D, 0x51, 0x54, 0x54,  // protocol name "MQTT"
            0x05,  // protocol level 5
            0x00,  // flags: none (clean start 0)
            0x00, 0x00,  // keep alive off
            0x2F,  // property length 47
            0x11, 0xFF, 0xFF, 0xFF, 0xFF,  // session expiry interval: never
            0x15, 0x00, 0x05, 0x53, 0x43, 0x52, 0x41, 0x4D,  // authentication method "SCRAM"
            0x16, 0x00, 0x02, 0x01, 0x02,  // authentication data 01 02
            0x17, 0x00,  // request problem information 0
            0x19, 0x01,  // request response information 1
            0x21, 0x00, 0x14,  // receive maximum 20
            0x22, 0x00, 0x0A,  // topic alias maximum 10
            0x26, 0x00, 0x01, 0x61, 0x00, 0x01, 0x62,  // user property a=b
            0x26, 0x00, 0x01, 0x61, 0x00, 0x01, 0x63,  // user property a=c (names may repeat)
            0x27, 0x00, 0x01, 0x00, 0x00,  // maximum packet size 65536
            0x00, 0x00,  // client identifier "" (the server assigns one)
        ]
        var properties = MQTTProperties(userProperties: [
            MQTTUserProperty(name: "a", value: "b"), MQTTUserProperty(name: "a", value: "c"),
        ])
        properties.sessionExpiryInterval = 0xFFFF_FFFF
        properties.authenticationMethod = "SCRAM"
        properties.authenticationData = ByteBuffer(bytes: [1, 2])
        properties.requestProblemInformation = false
        properties.requestResponseInformation = true
        properties.receiveMaximum = 20
        properties.topicAliasMaximum = 10
        properties.maximumPacketSize = 65536
        let connect = MQTTConnect(
            protocolVersion: .v5, clientIdentifier: "", cleanStart: false, keepAlive: 0, properties: properties)
        try expectFixture(bytes, .connect(connect), version: .v5)
    }

    // MARK: CONNACK

    @Test func connAckV311() throws {
        try expectFixture(
            [
                0x20, 0x02,  // CONNACK, remaining length 2
                0x01,  // acknowledge flags: session present
                0x00,  // return code 0: accepted
            ], .connack(MQTTConnAck(sessionPresent: true)), version: .v311)
        try expectFixture(
            [
                0x20, 0x02,  // CONNACK, remaining length 2
                0x00,  // acknowledge flags: none
                0x05,  // return code 5: not authorized
            ], .connack(MQTTConnAck(reasonCode: .notAuthorized)), version: .v311)
    }

    @Test func connAckV5() throws {
        try expectFixture(
            [
                0x20, 0x03,  // CONNACK, remaining length 3
                0x00,  // acknowledge flags: none
                0x87,  // reason code: not authorized
                0x00,  // property length 0
            ], .connack(MQTTConnAck(reasonCode: .notAuthorized)), version: .v5)
        var properties = MQTTProperties()
        properties.assignedClientIdentifier = "id1"
        properties.receiveMaximum = 10
        properties.maximumQoS = .atLeastOnce
        try expectFixture(
            [
                0x20, 0x0E,  // CONNACK, remaining length 14
                0x01,  // acknowledge flags: session present
                0x00,  // reason code: success
                0x0B,  // property length 11
                0x12, 0x00, 0x03, 0x69, 0x64, 0x31,  // assigned client identifier "id1"
                0x21, 0x00, 0x0A,  // receive maximum 10
                0x24, 0x01,  // maximum QoS 1
            ], .connack(MQTTConnAck(sessionPresent: true, properties: properties)), version: .v5)
    }

    // MARK: PUBLISH

    @Test func publishV311() throws {
        try expectFixture(
            [
                0x30, 0x07,  // PUBLISH, QoS 0, remaining length 7
                0x00, 0x03, 0x61, 0x2F, 0x62,  // topic "a/b"
                0x68, 0x69,  // payload "hi"
            ], .publish(MQTTPublish(topic: "a/b", payload: buffer("hi"))), version: .v311)
        // spec: MQTT 3.1.1 figure 3.11, topic "a/b" with packet identifier 10.
        try expectFixture(
            [
                0x3B, 0x09,  // PUBLISH, DUP, QoS 1, RETAIN, remaining length 9
                0x00, 0x03, 0x61, 0x2F, 0x62,  // topic "a/b"
                0x00, 0x0A,  // packet identifier 10
                0x68, 0x69,  // payload "hi"
            ],
            .publish(MQTTPublish(topic: "a/b", payload: buffer("hi"), qos: .atLeastOnce, retain: true, dup: true, packetId: 10)),
            version: .v311)
        try expectFixture(
            [
                0x34, 0x07,  // PUBLISH, QoS 2, remaining length 7
                0x00, 0x03, 0x61, 0x2F, 0x62,  // topic "a/b"
                0xFF, 0xFF,  // packet identifier 65535
                // empty payload
            ], .publish(MQTTPublish(topic: "a/b", payload: ByteBuffer(), qos: .exactlyOnce, packetId: 65535)),
            version: .v311)
    }

    @Test func publishV5QoS2WithProperties() throws {
        let bytes: [UInt8] = [
            0x34, 0x25,  // PUBLISH, QoS 2, remaining length 37
            0x00, 0x03, 0x61, 0x2F, 0x62,  // topic "a/b"
            0x00, 0x01,  // packet identifier 1
            0x1B,  // property length 27
            0x01, 0x01,  // payload format indicator: UTF-8
            0x02, 0x00, 0x00, 0x00, 0x3C,  // message expiry interval 60
            0x03, 0x00, 0x04, 0x6A, 0x73, 0x6F, 0x6E,  // content type "json"
            0x23, 0x00, 0x03,  // topic alias 3
            0x26, 0x00, 0x03, 0x73, 0x65, 0x71, 0x00, 0x02, 0x34, 0x32,  // user property seq=42
            0x68, 0x69,  // payload "hi"
        ]
        var properties = MQTTProperties(userProperties: [MQTTUserProperty(name: "seq", value: "42")])
        properties.payloadFormatIndicator = .utf8
        properties.messageExpiryInterval = 60
        properties.contentType = "json"
        properties.topicAlias = 3
        let publish = MQTTPublish(topic: "a/b", payload: buffer("hi"), qos: .exactlyOnce, packetId: 1, properties: properties)
        try expectFixture(bytes, .publish(publish), version: .v5)
    }

    @Test func publishV5TopicAliasOnly() throws {
        var properties = MQTTProperties()
        properties.topicAlias = 5
        try expectFixture(
            [
                0x30, 0x07,  // PUBLISH, QoS 0, remaining length 7
                0x00, 0x00,  // topic "" (alias follows)
                0x03,  // property length 3
                0x23, 0x00, 0x05,  // topic alias 5
                0x78,  // payload "x"
            ], .publish(MQTTPublish(topic: "", payload: buffer("x"), properties: properties)), version: .v5)
    }

    @Test func publishV5RequestResponseAndSubscriptionIdentifiers() throws {
        var properties = MQTTProperties()
        properties.responseTopic = "r"
        properties.correlationData = ByteBuffer(bytes: [0xCA, 0xFE])
        properties.subscriptionIdentifiers = [1, 200]
        try expectFixture(
            [
                0x30, 0x12,  // PUBLISH, QoS 0, remaining length 18
                0x00, 0x01, 0x74,  // topic "t"
                0x0E,  // property length 14
                0x08, 0x00, 0x01, 0x72,  // response topic "r"
                0x09, 0x00, 0x02, 0xCA, 0xFE,  // correlation data CA FE
                0x0B, 0x01,  // subscription identifier 1
                0x0B, 0xC8, 0x01,  // subscription identifier 200 (two byte variable byte integer)
                // empty payload
            ], .publish(MQTTPublish(topic: "t", payload: ByteBuffer(), properties: properties)), version: .v5)
    }

    // MARK: PUBACK, PUBREC, PUBREL, PUBCOMP

    @Test func publishAcksV311() throws {
        let ack = MQTTPublishAck(packetId: 10)
        try expectFixture([0x40, 0x02, 0x00, 0x0A], .puback(ack), version: .v311)  // PUBACK, length 2, packet id 10
        try expectFixture([0x50, 0x02, 0x00, 0x0A], .pubrec(ack), version: .v311)  // PUBREC, length 2, packet id 10
        try expectFixture([0x62, 0x02, 0x00, 0x0A], .pubrel(ack), version: .v311)  // PUBREL (flags 0010), packet id 10
        try expectFixture([0x70, 0x02, 0x00, 0x0A], .pubcomp(ack), version: .v311)  // PUBCOMP, length 2, packet id 10
    }

    @Test func publishAcksV5() throws {
        // Success without properties: reason code and property length left out.
        try expectFixture([0x40, 0x02, 0x00, 0x0A], .puback(MQTTPublishAck(packetId: 10)), version: .v5)
        try expectFixture(
            [
                0x40, 0x03,  // PUBACK, remaining length 3
                0x00, 0x0A,  // packet identifier 10
                0x10,  // reason code: no matching subscribers (property length left out)
            ], .puback(MQTTPublishAck(packetId: 10, reasonCode: .noMatchingSubscribers)), version: .v5)
        var properties = MQTTProperties()
        properties.reasonString = "q"
        try expectFixture(
            [
                0x50, 0x08,  // PUBREC, remaining length 8
                0x00, 0x0A,  // packet identifier 10
                0x97,  // reason code: quota exceeded
                0x04,  // property length 4
                0x1F, 0x00, 0x01, 0x71,  // reason string "q"
            ], .pubrec(MQTTPublishAck(packetId: 10, reasonCode: .quotaExceeded, properties: properties)), version: .v5)
        try expectFixture(
            [
                0x62, 0x03,  // PUBREL, remaining length 3
                0x00, 0x0A,  // packet identifier 10
                0x92,  // reason code: packet identifier not found
            ], .pubrel(MQTTPublishAck(packetId: 10, reasonCode: .packetIdentifierNotFound)), version: .v5)
        try expectFixture([0x70, 0x02, 0x00, 0x0A], .pubcomp(MQTTPublishAck(packetId: 10)), version: .v5)
    }

    // MARK: SUBSCRIBE, SUBACK

    @Test func subscribeV311() throws {
        // spec: MQTT 3.1.1 figure 3.22, packet id 10, "a/b" QoS 1, "c/d" QoS 2.
        let bytes: [UInt8] = [
            0x82, 0x0E,  // SUBSCRIBE (flags 0010), remaining length 14
            0x00, 0x0A,  // packet identifier 10
            0x00, 0x03, 0x61, 0x2F, 0x62,  // topic filter "a/b"
            0x01,  // requested QoS 1
            0x00, 0x03, 0x63, 0x2F, 0x64,  // topic filter "c/d"
            0x02,  // requested QoS 2
        ]
        let subscribe = MQTTSubscribe(
            packetId: 10,
            subscriptions: [
                MQTTSubscription(topicFilter: try filter("a/b"), qos: .atLeastOnce),
                MQTTSubscription(topicFilter: try filter("c/d"), qos: .exactlyOnce),
            ])
        try expectFixture(bytes, .subscribe(subscribe), version: .v311)
    }

    @Test func subscribeV5SharedAndOptions() throws {
        let bytes: [UInt8] = [
            0x82, 0x18,  // SUBSCRIBE, remaining length 24
            0x00, 0x0A,  // packet identifier 10
            0x02,  // property length 2
            0x0B, 0x07,  // subscription identifier 7
            0x00, 0x0C, 0x24, 0x73, 0x68, 0x61, 0x72, 0x65, 0x2F, 0x67, 0x2F, 0x61, 0x2F, 0x2B,  // "$share/g/a/+"
            0x29,  // options: QoS 1, retain as published, retain handling 2
            0x00, 0x01, 0x78,  // topic filter "x"
            0x04,  // options: QoS 0, no local
        ]
        var properties = MQTTProperties()
        properties.subscriptionIdentifiers = [7]
        let subscribe = MQTTSubscribe(
            packetId: 10,
            subscriptions: [
                MQTTSubscription(
                    topicFilter: try filter("$share/g/a/+"), qos: .atLeastOnce, retainAsPublished: true,
                    retainHandling: .doNotSend),
                MQTTSubscription(topicFilter: try filter("x"), qos: .atMostOnce, noLocal: true),
            ], properties: properties)
        try expectFixture(bytes, .subscribe(subscribe), version: .v5)
    }

    @Test func subAckV311() throws {
        // spec: MQTT 3.1.1 figure 3.26 return codes (0, 1, 2, 0x80 failure).
        try expectFixture(
            [
                0x90, 0x06,  // SUBACK, remaining length 6
                0x00, 0x0A,  // packet identifier 10
                0x00, 0x01, 0x02, 0x80,  // granted QoS 0, 1, 2, failure
            ],
            .suback(MQTTSubAck(packetId: 10, reasonCodes: [.grantedQoS0, .grantedQoS1, .grantedQoS2, .unspecifiedError])),
            version: .v311)
    }

    @Test func subAckV5() throws {
        var properties = MQTTProperties()
        properties.reasonString = "ok"
        try expectFixture(
            [
                0x90, 0x0B,  // SUBACK, remaining length 11
                0x00, 0x0A,  // packet identifier 10
                0x05,  // property length 5
                0x1F, 0x00, 0x02, 0x6F, 0x6B,  // reason string "ok"
                0x01, 0x87, 0x8F,  // granted QoS 1, not authorized, topic filter invalid
            ],
            .suback(MQTTSubAck(packetId: 10, reasonCodes: [.grantedQoS1, .notAuthorized, .topicFilterInvalid], properties: properties)),
            version: .v5)
    }

    @Test func subAckV5FailuresEncodeAs0x80InV311() throws {
        let suback = MQTTPacket.suback(MQTTSubAck(packetId: 1, reasonCodes: [.grantedQoS2, .notAuthorized]))
        let bytes = try suback.encoded(version: .v311)
        #expect(Array(bytes.readableBytesView) == [0x90, 0x04, 0x00, 0x01, 0x02, 0x80])
    }

    // MARK: UNSUBSCRIBE, UNSUBACK

    @Test func unsubscribeV311() throws {
        // spec: MQTT 3.1.1 figure 3.30, packet id 10, "a/b" and "c/d".
        try expectFixture(
            [
                0xA2, 0x0C,  // UNSUBSCRIBE (flags 0010), remaining length 12
                0x00, 0x0A,  // packet identifier 10
                0x00, 0x03, 0x61, 0x2F, 0x62,  // topic filter "a/b"
                0x00, 0x03, 0x63, 0x2F, 0x64,  // topic filter "c/d"
            ], .unsubscribe(MQTTUnsubscribe(packetId: 10, topicFilters: [try filter("a/b"), try filter("c/d")])),
            version: .v311)
    }

    @Test func unsubscribeV5() throws {
        try expectFixture(
            [
                0xA2, 0x0F,  // UNSUBSCRIBE, remaining length 15
                0x00, 0x0A,  // packet identifier 10
                0x07,  // property length 7
                0x26, 0x00, 0x01, 0x6B, 0x00, 0x01, 0x76,  // user property k=v
                0x00, 0x03, 0x61, 0x2F, 0x23,  // topic filter "a/#"
            ],
            .unsubscribe(
                MQTTUnsubscribe(
                    packetId: 10, topicFilters: [try filter("a/#")],
                    properties: MQTTProperties(userProperties: [MQTTUserProperty(name: "k", value: "v")]))),
            version: .v5)
    }

    @Test func unsubAck() throws {
        try expectFixture(
            [
                0xB0, 0x02,  // UNSUBACK, remaining length 2
                0x00, 0x0A,  // packet identifier 10
            ], .unsuback(MQTTUnsubAck(packetId: 10)), version: .v311)
        try expectFixture(
            [
                0xB0, 0x05,  // UNSUBACK, remaining length 5
                0x00, 0x0A,  // packet identifier 10
                0x00,  // property length 0
                0x00, 0x11,  // success, no subscription existed
            ], .unsuback(MQTTUnsubAck(packetId: 10, reasonCodes: [.success, .noSubscriptionExisted])), version: .v5)
    }

    // MARK: PINGREQ, PINGRESP, DISCONNECT, AUTH

    @Test func ping() throws {
        for version in MQTTProtocolVersion.allCases {
            try expectFixture([0xC0, 0x00], .pingreq, version: version)  // PINGREQ, remaining length 0
            try expectFixture([0xD0, 0x00], .pingresp, version: version)  // PINGRESP, remaining length 0
        }
    }

    @Test func disconnect() throws {
        try expectFixture([0xE0, 0x00], .disconnect(MQTTDisconnect()), version: .v311)  // DISCONNECT, length 0
        try expectFixture([0xE0, 0x00], .disconnect(MQTTDisconnect()), version: .v5)  // normal disconnection left out
        try expectFixture(
            [
                0xE0, 0x01,  // DISCONNECT, remaining length 1
                0x04,  // reason code: disconnect with will message
            ], .disconnect(MQTTDisconnect(reasonCode: .disconnectWithWillMessage)), version: .v5)
        var properties = MQTTProperties()
        properties.serverReference = "h:1"
        try expectFixture(
            [
                0xE0, 0x08,  // DISCONNECT, remaining length 8
                0x9D,  // reason code: server moved
                0x06,  // property length 6
                0x1C, 0x00, 0x03, 0x68, 0x3A, 0x31,  // server reference "h:1"
            ], .disconnect(MQTTDisconnect(reasonCode: .serverMoved, properties: properties)), version: .v5)
    }

    @Test func auth() throws {
        try expectFixture([0xF0, 0x00], .auth(MQTTAuth()), version: .v5)  // AUTH, success left out
        var properties = MQTTProperties()
        properties.authenticationMethod = "SCRAM"
        properties.authenticationData = ByteBuffer(bytes: [1, 2])
        try expectFixture(
            [
                0xF0, 0x0F,  // AUTH, remaining length 15
                0x18,  // reason code: continue authentication
                0x0D,  // property length 13
                0x15, 0x00, 0x05, 0x53, 0x43, 0x52, 0x41, 0x4D,  // authentication method "SCRAM"
                0x16, 0x00, 0x02, 0x01, 0x02,  // authentication data 01 02
            ], .auth(MQTTAuth(reasonCode: .continueAuthentication, properties: properties)), version: .v5)
    }

    // MARK: Data representations

    @Test func variableByteIntegerSpecExamples() throws {
        // spec: MQTT 5.0 table 1-1, the smallest and largest value of each length.
        let examples: [(Int, [UInt8])] = [
            (0, [0x00]), (127, [0x7F]), (128, [0x80, 0x01]), (16_383, [0xFF, 0x7F]), (16_384, [0x80, 0x80, 0x01]),
            (2_097_151, [0xFF, 0xFF, 0x7F]), (2_097_152, [0x80, 0x80, 0x80, 0x01]),
            (268_435_455, [0xFF, 0xFF, 0xFF, 0x7F]),
        ]
        for (value, bytes) in examples {
            var out = ByteBuffer()
            out.writeMQTTVariableByteInteger(value)
            #expect(Array(out.readableBytesView) == bytes)
            #expect(ByteBuffer.mqttVariableByteIntegerLength(value) == bytes.count)
            var input = ByteBuffer(bytes: bytes)
            #expect(try input.readMQTTVariableByteInteger() == UInt32(value))
        }
    }

    @Test func utf8StringSpecExamples() throws {
        // spec: MQTT 5.0 figure 1-1 / 3.1.1 figure 1.3: "A" U+2A6D4 is 00 05 41 F0 AA 9B 94.
        var input = ByteBuffer(bytes: [0x00, 0x05, 0x41, 0xF0, 0xAA, 0x9B, 0x94])
        #expect(try input.readMQTTString() == "A\u{2A6D4}")
        // spec: a leading U+FEFF must not be skipped or stripped (MQTT-1.5.4-3).
        var bom = ByteBuffer(bytes: [0x00, 0x03, 0xEF, 0xBB, 0xBF])
        #expect(try bom.readMQTTString() == "\u{FEFF}")
    }
}
