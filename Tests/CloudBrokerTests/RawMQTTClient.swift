import Common
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import TestSupport

/// A minimal MQTT client on the shared codec, for tests that need exact control of what is sent
/// (malformed bytes, wills on abrupt close, packet ids). Received packets are queued; `next` awaits them.
final class RawMQTTClient: Sendable {
    enum Event: Sendable, Equatable {
        case packet(MQTTPacket)
        case closed
    }

    private final class Inbox: Sendable {
        let events = Mutex<[Event]>([])

        func push(_ event: Event) { events.withLock { $0.append(event) } }

        func pop() -> Event? {
            events.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        }
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = MQTTPacket
        let inbox: Inbox
        init(inbox: Inbox) { self.inbox = inbox }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) { inbox.push(.packet(unwrapInboundIn(data))) }
        func channelInactive(context: ChannelHandlerContext) { inbox.push(.closed) }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }

    let channel: any Channel
    private let inbox: Inbox
    private let version = Mutex<MQTTProtocolVersion?>(nil)
    private let versionBox: NIOLoopBound<MQTTVersionBox>

    private init(channel: any Channel, inbox: Inbox, versionBox: NIOLoopBound<MQTTVersionBox>) {
        self.channel = channel
        self.inbox = inbox
        self.versionBox = versionBox
    }

    static func connect(port: Int) async throws -> RawMQTTClient {
        let inbox = Inbox()
        let boxes = Mutex<[NIOLoopBound<MQTTVersionBox>]>([])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The client side learns the version from the CONNECT it sends (see `send`).
                    let box = MQTTVersionBox(.v5)
                    boxes.withLock { $0.append(NIOLoopBound(box, eventLoop: channel.eventLoop)) }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(MQTTPacketDecoder(versionBox: box)),
                        Collector(inbox: inbox),
                    ])
                }
            }
            .connect(host: "127.0.0.1", port: port)
            .get()
        let box = boxes.withLock { $0[0] }
        return RawMQTTClient(channel: channel, inbox: inbox, versionBox: box)
    }

    /// Sets the version used to decode what the server sends (for CONNECTs sent as raw bytes).
    func setVersion(_ newValue: MQTTProtocolVersion) async throws {
        version.withLock { $0 = newValue }
        let box = versionBox
        try await channel.eventLoop.submit { box.value.version = newValue }.get()
    }

    /// Encodes with the version of the CONNECT sent (5 before any).
    func send(_ packet: MQTTPacket) async throws {
        if case .connect(let connect) = packet {
            version.withLock { $0 = connect.protocolVersion }
            let box = versionBox
            try await channel.eventLoop.submit { box.value.version = connect.protocolVersion }.get()
        }
        let buffer = try packet.encoded(version: version.withLock { $0 } ?? .v5)
        try await channel.writeAndFlush(buffer)
    }

    func sendBytes(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    /// The next packet or `.closed`; throws on timeout.
    func next(timeout: Duration = .seconds(10)) async throws -> Event {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let event = inbox.pop() { return event }
            guard ContinuousClock.now < deadline else { throw HarnessError("no MQTT packet within \(timeout)") }
            try await Task.sleep(for: .milliseconds(5))  // polling the inbox with a deadline
        }
    }

    /// Skips packets until one satisfies `match`.
    func next<T>(timeout: Duration = .seconds(10), _ match: (MQTTPacket) -> T?) async throws -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            let event = try await next(timeout: deadline - .now)
            guard case .packet(let packet) = event else { throw HarnessError("connection closed while waiting") }
            if let value = match(packet) { return value }
        }
    }

    /// CONNECT and expect a CONNACK.
    @discardableResult
    func handshake(_ connect: MQTTConnect) async throws -> MQTTConnAck {
        try await send(.connect(connect))
        return try await next { if case .connack(let ack) = $0 { ack } else { nil } }
    }

    func close() async {
        try? await channel.close()
    }
}
