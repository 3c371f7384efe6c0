import Common
import TestSupport
import Testing

@testable import DeviceSimulator

@Suite struct DeviceStateMachineTests {
    typealias Machine = DeviceConnection.StateMachine

    @Test func qos1WindowLimitsAndAcksFree() {
        var machine = Machine(qos: .atLeastOnce, limit: 5, window: 2)
        _ = machine.connected(receiveMaximum: nil, configuredWindow: 2)
        let first = machine.nextPublish(wallNanoseconds: 1, uptimeNanoseconds: 100, size: 10)
        let second = machine.nextPublish(wallNanoseconds: 2, uptimeNanoseconds: 200, size: 10)
        #expect(first?.sequence == 0 && first?.packetId == 1)
        #expect(second?.sequence == 1 && second?.packetId == 2)
        #expect(machine.nextPublish(wallNanoseconds: 3, uptimeNanoseconds: 300, size: 10) == nil)
        #expect(machine.completed(packetId: 1, failed: false, uptimeNanoseconds: 1_100) == .completed(sequence: 0, latencyNanoseconds: 1_000))
        #expect(machine.completed(packetId: 1, failed: false, uptimeNanoseconds: 1_200) == .unknown)
        #expect(machine.nextPublish(wallNanoseconds: 3, uptimeNanoseconds: 300, size: 10)?.sequence == 2)
    }

    @Test func receiveMaximumShrinksTheWindow() {
        var machine = Machine(qos: .atLeastOnce, limit: nil, window: 20)
        _ = machine.connected(receiveMaximum: 1, configuredWindow: 20)
        #expect(machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1) != nil)
        #expect(machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1) == nil)
    }

    @Test func qos2FlowAndResendAfterReconnect() {
        var machine = Machine(qos: .exactlyOnce, limit: 3, window: 10)
        _ = machine.connected(receiveMaximum: nil, configuredWindow: 10)
        for i in 0..<3 { _ = machine.nextPublish(wallNanoseconds: UInt64(i), uptimeNanoseconds: UInt64(i), size: 1) }
        #expect(machine.isExhausted && !machine.isDrained)
        #expect(machine.received(packetId: 1, failed: false) == .sendPubrel(1))
        #expect(machine.completed(packetId: 1, failed: false, uptimeNanoseconds: 10) == .completed(sequence: 0, latencyNanoseconds: 10))
        #expect(machine.received(packetId: 2, failed: false) == .sendPubrel(2))
        // Connection lost: id 2 is past PUBREC (PUBREL again), id 3 was never acknowledged (PUBLISH again, DUP).
        let resend = machine.connected(receiveMaximum: nil, configuredWindow: 10)
        #expect(resend == [
            .pubrel(2),
            .publish(Machine.Outgoing(sequence: 2, packetId: 3, sentAtWallNanoseconds: 2, size: 1, dup: true)),
        ])
        #expect(machine.completed(packetId: 2, failed: false, uptimeNanoseconds: 20) == .completed(sequence: 1, latencyNanoseconds: 19))
        #expect(machine.received(packetId: 3, failed: false) == .sendPubrel(3))
        _ = machine.completed(packetId: 3, failed: false, uptimeNanoseconds: 30)
        #expect(machine.isDrained)
    }

    @Test func packetIdsWrapAndSkipThoseInFlight() {
        var machine = Machine(qos: .atLeastOnce, limit: nil, window: 2)
        _ = machine.connected(receiveMaximum: nil, configuredWindow: 2)
        _ = machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1)  // id 1 stays in flight
        var last: UInt16 = 0
        for _ in 0..<70_000 {
            guard let outgoing = machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1) else { break }
            let id = outgoing.packetId!
            #expect(id != 1 && id != 0)
            last = id
            _ = machine.completed(packetId: id, failed: false, uptimeNanoseconds: 1)
        }
        #expect(last != 0)
    }

    @Test func qos0NeedsNoAcks() {
        var machine = Machine(qos: .atMostOnce, limit: 2, window: 1)
        #expect(machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1)?.packetId == nil)
        #expect(machine.nextPublish(wallNanoseconds: 0, uptimeNanoseconds: 0, size: 1) != nil)
        #expect(machine.isDrained)
    }

    @Test func inboundQoS2IsDeliveredOnceUntilReleased() {
        var inbound = DeviceConnection.InboundState()
        #expect(inbound.received(qos: .exactlyOnce, packetId: 7) == (.pubrec(7), true))
        #expect(inbound.received(qos: .exactlyOnce, packetId: 7) == (.pubrec(7), false))
        inbound.released(packetId: 7)
        #expect(inbound.received(qos: .exactlyOnce, packetId: 7) == (.pubrec(7), true))
        #expect(inbound.received(qos: .atLeastOnce, packetId: 8) == (.puback(8), true))
        #expect(inbound.received(qos: .atMostOnce, packetId: nil) == (.none, true))
    }

    @Test func settingsFromProfileAndFlags() throws {
        var settings = SimulatorSettings()
        try DeviceProfile.apply(file: TestPaths.profile("vibration-sensor.yaml"), to: &settings)
        #expect(settings.rate == 100)
        #expect(settings.qos == .atMostOnce)
        #expect(settings.size == SimulatorSettings.SizeRange(minimum: 64, maximum: 256))
        #expect(settings.burst == SimulatorSettings.Burst(on: .seconds(1), period: .seconds(10)))
        #expect(settings.protocolVersion == .v5)
        try DeviceProfile.apply(file: TestPaths.profile("temperature-sensor.yaml"), to: &settings)
        #expect(settings.size == SimulatorSettings.SizeRange(minimum: 1024, maximum: 1024))
        #expect(settings.rate == 0.1 && !settings.cleanSession)
        try DeviceProfile.apply(file: TestPaths.profile("camera-metadata.yaml"), to: &settings)
        #expect(settings.size.minimum == 16 * 1024)
        #expect(try SimulatorSettings.Broker(parsing: "mqtts://broker.example") == .init(host: "broker.example", port: 8883, tls: true))
        #expect(throws: ConfigError.self) { try SimulatorSettings.Broker(parsing: "http://x:1") }
        settings.topicTemplate = "sensors/+/{client}"
        settings.count = 1
        #expect(throws: ConfigError.self) { try settings.validate() }
    }
}

enum TestPaths {
    static func profile(_ name: String) -> String {
        TestEnvironment.packageRoot + "/devices/profiles/" + name
    }
}
