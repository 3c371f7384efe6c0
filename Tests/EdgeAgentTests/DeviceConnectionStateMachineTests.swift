import Common
import NIOCore
import Testing

@testable import EdgeAgent

typealias DeviceMachine = DeviceConnection.StateMachine

func deviceConnect(_ id: String = "d1", cleanStart: Bool = false, version: MQTTProtocolVersion = .v5) -> MQTTPacket {
    .connect(MQTTConnect(protocolVersion: version, clientIdentifier: id, cleanStart: cleanStart, keepAlive: 30))
}

func qos2(_ id: UInt16, dup: Bool = false) -> MQTTPacket {
    .publish(MQTTPublish(topic: "s/1", payload: ByteBuffer(string: "x"), qos: .exactlyOnce, dup: dup, packetId: id))
}

/// A machine past CONNACK, with `existing` persisted QoS 2 ids.
func connectedDevice(existing: Set<UInt16>? = nil, receiveMaximum: UInt16 = 10, version: MQTTProtocolVersion = .v5) -> DeviceMachine {
    var machine = DeviceMachine(receiveMaximum: receiveMaximum)
    _ = machine.received(deviceConnect(version: version))
    _ = machine.sessionLoaded(existing: existing)
    return machine
}

@Suite("Device connection state machine")
struct DeviceConnectionStateMachineTests {
    @Test("CONNECT loads the session; CONNACK says session present and announces the receive maximum")
    func connect() {
        var machine = DeviceMachine(receiveMaximum: 7)
        #expect(machine.received(deviceConnect()) == [.loadSession(clientId: "d1", cleanStart: false)])
        let actions = machine.sessionLoaded(existing: [3])
        guard case .send(.connack(let connack)) = actions.first else {
            Issue.record("expected CONNACK, got \(actions)")
            return
        }
        #expect(connack.sessionPresent)
        #expect(connack.properties.receiveMaximum == 7)
        #expect(machine.awaitingRelease == [3])
    }

    @Test("the first packet must be CONNECT; an empty client id with clean start 0 is refused")
    func badStart() {
        var machine = DeviceMachine()
        #expect(machine.received(.pingreq) == [.close(nil, "the first packet must be CONNECT")])
        var empty = DeviceMachine()
        let actions = empty.received(deviceConnect("", cleanStart: false))
        #expect(actions == [.close(.clientIdentifierNotValid, "empty client id without clean start")])
    }

    @Test("QoS 2: stored once; a DUP while storing is ignored; PUBREC only after the store")
    func qos2StoredOnce() {
        var machine = connectedDevice()
        guard case .store(_, .pubrec(5, persist: true))? = machine.received(qos2(5)).first else {
            Issue.record("expected a store")
            return
        }
        #expect(machine.received(qos2(5, dup: true)).isEmpty)
        #expect(machine.stored(.pubrec(5, persist: true)) == [.send(.pubrec(MQTTPublishAck(packetId: 5)))])
        // Resent after PUBREC: acknowledged again, not stored.
        #expect(machine.received(qos2(5, dup: true)) == [.send(.pubrec(MQTTPublishAck(packetId: 5)))])
        #expect(machine.received(.pubrel(MQTTPublishAck(packetId: 5))) == [.release(packetId: 5, persist: true)])
        #expect(machine.released(5) == [.send(.pubcomp(MQTTPublishAck(packetId: 5)))])
        // The id is free again: a new message with it is stored.
        guard case .store? = machine.received(qos2(5)).first else {
            Issue.record("expected a store after release")
            return
        }
    }

    @Test("after a restart, a persisted id answers PUBREC to its DUP without storing, and PUBREL with PUBCOMP")
    func restoredSession() {
        var machine = connectedDevice(existing: [9])
        #expect(machine.received(qos2(9, dup: true)) == [.send(.pubrec(MQTTPublishAck(packetId: 9)))])
        #expect(machine.received(.pubrel(MQTTPublishAck(packetId: 9))) == [.release(packetId: 9, persist: true)])
        #expect(machine.released(9) == [.send(.pubcomp(MQTTPublishAck(packetId: 9)))])
        #expect(machine.released(9) == [.send(.pubcomp(MQTTPublishAck(packetId: 9, reasonCode: .packetIdentifierNotFound)))])
    }

    @Test("clean start sessions keep QoS 2 ids in memory only")
    func cleanSession() {
        var machine = DeviceMachine()
        _ = machine.received(deviceConnect(cleanStart: true))
        _ = machine.sessionLoaded(existing: nil)
        guard case .store(_, .pubrec(1, persist: false))? = machine.received(qos2(1)).first else {
            Issue.record("expected a non-persistent store")
            return
        }
    }

    @Test("more unacknowledged QoS 1/2 publishes than the receive maximum close with 0x93")
    func receiveMaximum() {
        var machine = connectedDevice(receiveMaximum: 2)
        let publish = { (id: UInt16) in MQTTPacket.publish(MQTTPublish(topic: "s", payload: ByteBuffer(), qos: .atLeastOnce, packetId: id)) }
        _ = machine.received(publish(1))
        _ = machine.received(publish(2))
        #expect(machine.received(publish(3)) == [.close(.receiveMaximumExceeded, "more unacknowledged publishes than the receive maximum")])
    }

    @Test("a refused store answers MQTT 5 with the reason code and MQTT 3.1.1 with nothing")
    func storeFailed() {
        var v5 = connectedDevice()
        _ = v5.received(.publish(MQTTPublish(topic: "s", payload: ByteBuffer(), qos: .atLeastOnce, packetId: 4)))
        #expect(v5.storeFailed(.puback(4), reasonCode: .quotaExceeded) == [.send(.puback(MQTTPublishAck(packetId: 4, reasonCode: .quotaExceeded)))])
        var v311 = connectedDevice(version: .v311)
        _ = v311.received(.publish(MQTTPublish(topic: "s", payload: ByteBuffer(), qos: .atLeastOnce, packetId: 4)))
        #expect(v311.storeFailed(.puback(4), reasonCode: .quotaExceeded).isEmpty)
    }

    @Test("PINGREQ gets PINGRESP; keep-alive expiry closes with 0x8D; a second CONNECT is a protocol error")
    func pingAndErrors() {
        var machine = connectedDevice()
        #expect(machine.received(.pingreq) == [.send(.pingresp)])
        var idle = connectedDevice()
        #expect(idle.keepAliveExpired() == [.close(.keepAliveTimeout, "no packet within 1.5 × keep-alive")])
        #expect(machine.received(deviceConnect()) == [.close(.protocolError, "second CONNECT")])
    }
}
