import Common
import DiskBuffer
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import EdgeAgent

/// A buffer whose appends finish only when the test says so: each pending append is handed to the test.
final class GatedSink: RecordSink {
    /// One append call: one body, or a batch (`append(contentsOf:)`); resumed with the first sequence.
    struct Pending: Sendable {
        var bodies: [[UInt8]]
        var continuation: CheckedContinuation<UInt64, Never>
        var body: [UInt8] { bodies[0] }
    }

    let requests: AsyncStream<Pending>
    private let input: AsyncStream<Pending>.Continuation
    private let last = Mutex<UInt64>(0)

    init() { (requests, input) = AsyncStream.makeStream(of: Pending.self) }

    func append(_ body: [UInt8]) async throws(DiskBufferError) -> UInt64 {
        let sequence = await withCheckedContinuation { input.yield(Pending(bodies: [body], continuation: $0)) }
        last.withLock { $0 = max($0, sequence) }
        return sequence
    }

    func append(contentsOf bodies: [[UInt8]]) async throws(DiskBufferError) -> Range<UInt64> {
        let first = await withCheckedContinuation { input.yield(Pending(bodies: bodies, continuation: $0)) }
        let end = first + UInt64(bodies.count)
        last.withLock { $0 = max($0, end - 1) }
        return first..<end
    }

    var lastSequence: UInt64 { last.withLock { $0 } }
}

func makeDeviceChannel(sink: GatedSink, sessionsPath: String) async throws -> NIOAsyncTestingChannel {
    try await makeDeviceChannel(sink: sink, sessions: try DeviceSessionStore.load(path: sessionsPath), registry: DeviceRegistry())
}

/// Counts the flushes that pass it (outbound, in front of the handler under test).
final class FlushCounter: ChannelOutboundHandler, Sendable {
    typealias OutboundIn = MQTTPacket
    private let flushes = Mutex(0)
    var count: Int { flushes.withLock { $0 } }

    func flush(context: ChannelHandlerContext) {
        flushes.withLock { $0 += 1 }
        context.flush()
    }
}

func makeDeviceChannel(
    sink: GatedSink, sessions: DeviceSessionStore, registry: DeviceRegistry, flushCounter: FlushCounter? = nil
) async throws -> NIOAsyncTestingChannel {
    let channel = NIOAsyncTestingChannel()
    try await channel.testingEventLoop.executeInContext {
        if let flushCounter { try channel.pipeline.syncOperations.addHandler(flushCounter) }
        try channel.pipeline.syncOperations.addHandler(DeviceConnectionHandler(
            lanes: RecordLanes(sink: sink, sessions: sessions), registry: registry, receiveMaximum: 10, logger: Logger(label: "test")))
    }
    try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883))
    return channel
}

@Suite("Device connection handler (NIOAsyncTestingChannel)")
struct DeviceConnectionHandlerTests {
    @Test("G1: PUBACK and PUBREC go out only after the buffer append returned, in the order received")
    func ackAfterDurableAppend() async throws {
        let sink = GatedSink()
        let directory = try AgentHarness.temporaryDirectory("handler-g1")
        let channel = try await makeDeviceChannel(sink: sink, sessionsPath: directory + "/device-sessions")
        try await channel.writeInbound(deviceConnect("d1", cleanStart: false))
        guard case .connack = try await channel.waitForOutboundWrite(as: MQTTPacket.self) else {
            Issue.record("expected CONNACK")
            return
        }
        try await channel.writeInbound(MQTTPacket.publish(MQTTPublish(topic: "s/1", payload: ByteBuffer(string: "a"), qos: .atLeastOnce, packetId: 1)))
        try await channel.writeInbound(qos2(2))
        var pending = sink.requests.makeAsyncIterator()
        let first = try #require(await pending.next())
        #expect(AgentRecord(decoding: first.body)?.payload == Array("a".utf8))
        // The append has not returned: nothing may be acknowledged yet.
        #expect(try await channel.readOutbound(as: MQTTPacket.self) == nil)
        first.continuation.resume(returning: 1)
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .puback(MQTTPublishAck(packetId: 1)))
        let second = try #require(await pending.next())
        #expect(AgentRecord(decoding: second.body)?.devicePacketId == 2)
        #expect(try await channel.readOutbound(as: MQTTPacket.self) == nil)
        second.continuation.resume(returning: 2)
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .pubrec(MQTTPublishAck(packetId: 2)))
        // The id was written to device-sessions before PUBREC.
        #expect(try DeviceSessionStore.load(path: directory + "/device-sessions").session("d1") == [2])
        _ = try? await channel.finish()
    }

    @Test("publishes read while a store runs are appended as one batch, acknowledged in order after it with one flush; a session write splits the batch")
    func publishesWaitingBehindAStoreAreBatched() async throws {
        let sink = GatedSink()
        let directory = try AgentHarness.temporaryDirectory("handler-batch")
        let flushes = FlushCounter()
        let channel = try await makeDeviceChannel(
            sink: sink, sessions: try DeviceSessionStore.load(path: directory + "/device-sessions"), registry: DeviceRegistry(),
            flushCounter: flushes)
        try await channel.writeInbound(deviceConnect("d4", cleanStart: false))
        _ = try await channel.waitForOutboundWrite(as: MQTTPacket.self)
        func qos1(_ id: UInt16) -> MQTTPacket {
            .publish(MQTTPublish(topic: "s/\(id)", payload: ByteBuffer(string: "\(id)"), qos: .atLeastOnce, packetId: id))
        }
        func ids(_ pending: GatedSink.Pending) -> [UInt16?] { pending.bodies.map { AgentRecord(decoding: $0)?.devicePacketId } }
        var pending = sink.requests.makeAsyncIterator()
        try await channel.writeInbound(qos1(1))
        let first = try #require(await pending.next())
        #expect(ids(first) == [1])
        for id: UInt16 in [2, 3, 4] { try await channel.writeInbound(qos1(id)) }
        try await channel.writeInbound(qos2(5))  // QoS 2, persistent session: its own store, after 2...4
        try await channel.writeInbound(qos1(6))
        #expect(try await channel.readOutbound(as: MQTTPacket.self) == nil)
        first.continuation.resume(returning: 1)
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .puback(MQTTPublishAck(packetId: 1)))
        let batch = try #require(await pending.next())
        #expect(ids(batch) == [2, 3, 4])
        #expect(try await channel.readOutbound(as: MQTTPacket.self) == nil)
        let flushesBefore = flushes.count
        batch.continuation.resume(returning: 2)
        for id: UInt16 in [2, 3, 4] {
            #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .puback(MQTTPublishAck(packetId: id)))
        }
        #expect(flushes.count == flushesBefore + 1, "the batch's acks go out with one flush")
        let session = try #require(await pending.next())
        #expect(ids(session) == [5])
        session.continuation.resume(returning: 5)
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .pubrec(MQTTPublishAck(packetId: 5)))
        let last = try #require(await pending.next())
        #expect(ids(last) == [6])
        last.continuation.resume(returning: 6)
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .puback(MQTTPublishAck(packetId: 6)))
        _ = try? await channel.finish()
    }

    @Test("a batch takes the stores of one lane only: a publish routed to another lane starts a new one")
    func batchesStayInTheirLane() async throws {
        let normal = GatedSink()
        let alarms = GatedSink()
        let directory = try AgentHarness.temporaryDirectory("handler-batch-lanes")
        let lanes = RecordLanes(lanes: [
            .init(priority: 5, sink: alarms, sessions: try DeviceSessionStore.load(path: directory + "/sessions-5")),
            .init(priority: 0, sink: normal, sessions: try DeviceSessionStore.load(path: directory + "/sessions-0")),
        ], routes: [try Route(parsing: "alarm/# priority=5")])
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(DeviceConnectionHandler(
                lanes: lanes, registry: DeviceRegistry(), receiveMaximum: 10, logger: Logger(label: "test")))
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883))
        try await channel.writeInbound(deviceConnect("d5", cleanStart: true))
        _ = try await channel.waitForOutboundWrite(as: MQTTPacket.self)
        func publish(_ topic: String, _ id: UInt16) -> MQTTPacket {
            .publish(MQTTPublish(topic: topic, payload: ByteBuffer(string: "\(id)"), qos: .atLeastOnce, packetId: id))
        }
        func ids(_ pending: GatedSink.Pending) -> [UInt16?] { pending.bodies.map { AgentRecord(decoding: $0)?.devicePacketId } }
        var normalRequests = normal.requests.makeAsyncIterator()
        var alarmRequests = alarms.requests.makeAsyncIterator()
        try await channel.writeInbound(publish("s/1", 1))
        let first = try #require(await normalRequests.next())
        for (topic, id) in [("s/2", UInt16(2)), ("s/3", 3), ("alarm/x", 4), ("s/5", 5)] { try await channel.writeInbound(publish(topic, id)) }
        first.continuation.resume(returning: 1)
        let second = try #require(await normalRequests.next())
        #expect(ids(second) == [2, 3])
        second.continuation.resume(returning: 2)
        let alarm = try #require(await alarmRequests.next())
        #expect(ids(alarm) == [4])
        alarm.continuation.resume(returning: 1)
        let third = try #require(await normalRequests.next())
        #expect(ids(third) == [5])
        third.continuation.resume(returning: 4)
        for id: UInt16 in 1...5 {
            #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .puback(MQTTPublishAck(packetId: id)))
        }
        _ = try? await channel.finish()
    }

    @Test("a malformed packet closes the connection with DISCONNECT 0x81 (MQTT 5)")
    func malformedCloses() async throws {
        let sink = GatedSink()
        let directory = try AgentHarness.temporaryDirectory("handler-malformed")
        let channel = try await makeDeviceChannel(sink: sink, sessionsPath: directory + "/device-sessions")
        try await channel.writeInbound(deviceConnect("d2", cleanStart: true))
        _ = try await channel.waitForOutboundWrite(as: MQTTPacket.self)
        channel.pipeline.fireErrorCaught(MQTTCodecError(reasonCode: .malformedPacket, message: "test"))
        #expect(try await channel.waitForOutboundWrite(as: MQTTPacket.self) == .disconnect(MQTTDisconnect(reasonCode: .malformedPacket)))
        try await channel.closeFuture.get()
    }

    @Test("takeover: a reconnecting device's CONNACK waits for the old connection's stores, so its DUP is not stored twice")
    func takeoverWaitsForStores() async throws {
        let sink = GatedSink()
        let directory = try AgentHarness.temporaryDirectory("handler-takeover")
        let sessions = try DeviceSessionStore.load(path: directory + "/device-sessions")
        let registry = DeviceRegistry()
        let old = try await makeDeviceChannel(sink: sink, sessions: sessions, registry: registry)
        try await old.writeInbound(deviceConnect("d3", cleanStart: false))
        _ = try await old.waitForOutboundWrite(as: MQTTPacket.self)
        try await old.writeInbound(qos2(5))
        var pending = sink.requests.makeAsyncIterator()
        let store = try #require(await pending.next())

        let new = try await makeDeviceChannel(sink: sink, sessions: sessions, registry: registry)
        try await new.writeInbound(deviceConnect("d3", cleanStart: false))
        try await old.closeFuture.get()
        #expect(try await new.readOutbound(as: MQTTPacket.self) == nil, "CONNACK must wait for the old store")
        store.continuation.resume(returning: 1)
        guard case .connack(let connack) = try await new.waitForOutboundWrite(as: MQTTPacket.self) else {
            Issue.record("expected CONNACK")
            return
        }
        #expect(connack.sessionPresent)
        try await new.writeInbound(qos2(5, dup: true))
        #expect(try await new.waitForOutboundWrite(as: MQTTPacket.self) == .pubrec(MQTTPublishAck(packetId: 5)))
        _ = try? await new.finish()
    }
}
