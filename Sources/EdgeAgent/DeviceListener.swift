import Common
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The MQTT listener devices connect to (TCP). One `DeviceConnectionHandler` per connection.
final class DeviceListener: Service, Sendable {
    let address: HostPort
    let sink: any RecordSink
    let sessions: DeviceSessionStore
    let registry = DeviceRegistry()
    let receiveMaximum: UInt16
    let maximumPacketSize: Int
    let group: any EventLoopGroup
    let logger: Logger
    private let boundPort = Mutex<(port: Int?, waiters: [CheckedContinuation<Int, Never>])>((nil, []))

    init(
        address: HostPort, sink: any RecordSink, sessions: DeviceSessionStore, receiveMaximum: UInt16,
        maximumPacketSize: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
    ) {
        self.address = address
        self.sink = sink
        self.sessions = sessions
        self.receiveMaximum = receiveMaximum
        self.maximumPacketSize = maximumPacketSize
        self.group = group
        self.logger = logger
    }

    /// The port bound, once listening.
    var port: Int? { boundPort.withLock { $0.port } }

    /// Returns the bound port once the listener is up.
    func waitUntilBound() async -> Int {
        await withCheckedContinuation { continuation in
            let known = boundPort.withLock { state -> Int? in
                if let port = state.port { return port }
                state.waiters.append(continuation)
                return nil
            }
            if let known { continuation.resume(returning: known) }
        }
    }

    func run() async throws {
        let sink = self.sink
        let sessions = self.sessions
        let registry = self.registry
        let receiveMaximum = self.receiveMaximum
        let maximumPacketSize = self.maximumPacketSize
        let logger = self.logger
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let versionBox = MQTTVersionBox()
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(maximumPacketSize: maximumPacketSize, versionBox: versionBox)))
                    try operations.addHandler(MessageToByteHandler(MQTTPacketEncoder(versionBox: versionBox)))
                    try operations.addHandler(DeviceConnectionHandler(
                        sink: sink, sessions: sessions, registry: registry, receiveMaximum: receiveMaximum, logger: logger))
                }
            }
            .bind(host: address.host, port: address.port).get()
        let port = channel.localAddress?.port ?? 0
        let waiters = boundPort.withLock { state in
            state.port = port
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: port) }
        logger.info("Listening for devices", metadata: ["device.listen": "\(address.host):\(channel.localAddress?.port ?? 0)"])
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}
