import Common
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// The MQTT listener devices connect to (TCP, or TLS when given a context). One `DeviceConnectionHandler`
/// per connection. A TCP and a TLS listener share one `DeviceRegistry` (a client id is one device on both).
///
/// Graceful shutdown: stop accepting, then drain every device connection (no more reads; the stores it
/// has queued finish and are acknowledged; MQTT 5 devices get DISCONNECT 0x8B), closing whatever is still
/// open after `drainTimeout`.
final class DeviceListener: Service, Sendable {
    /// Sent through each device pipeline on shutdown.
    struct Drain {}

    struct BindState {
        var port: Int?
        var failed = false
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Int?, Never>] = [:]
    }

    let address: HostPort
    let lanes: RecordLanes
    let registry: DeviceRegistry
    let tls: NIOSSLContext?
    let receiveMaximum: UInt16
    let maximumPacketSize: Int
    let group: any EventLoopGroup
    let logger: Logger
    let drainTimeout: TimeAmount
    private let bindState = Mutex(BindState())
    /// Every open device connection (also those that have not sent CONNECT yet).
    private let children = Mutex<[ObjectIdentifier: any Channel]>([:])

    init(
        address: HostPort, tls: NIOSSLContext? = nil, lanes: RecordLanes,
        registry: DeviceRegistry = DeviceRegistry(), receiveMaximum: UInt16,
        maximumPacketSize: Int, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        drainTimeout: TimeAmount = .seconds(2)
    ) {
        self.tls = tls
        self.registry = registry
        self.drainTimeout = drainTimeout
        self.address = address
        self.lanes = lanes
        self.receiveMaximum = receiveMaximum
        self.maximumPacketSize = maximumPacketSize
        self.group = group
        self.logger = logger
    }

    /// The port bound, once listening.
    var port: Int? { bindState.withLock { $0.port } }

    /// The bound port once the listener is up; nil if binding failed or the waiting task was cancelled.
    func waitUntilBound() async -> Int? {
        let id = bindState.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Int?, Never>) in
                let known = bindState.withLock { state -> Int?? in
                    if let port = state.port { return .some(port) }
                    if state.failed || Task.isCancelled { return .some(nil) }
                    state.waiters[id] = continuation
                    return .none
                }
                if let known { continuation.resume(returning: known) }
            }
        } onCancel: {
            bindState.withLock { $0.waiters.removeValue(forKey: id) }?.resume(returning: nil)
        }
    }

    private func finishBinding(_ port: Int?) {
        let waiters = bindState.withLock { state in
            state.port = port
            state.failed = port == nil
            defer { state.waiters = [:] }
            return state.waiters.values
        }
        for waiter in waiters { waiter.resume(returning: port) }
    }

    func run() async throws {
        let lanes = self.lanes
        let registry = self.registry
        let receiveMaximum = self.receiveMaximum
        let maximumPacketSize = self.maximumPacketSize
        let logger = self.logger
        let tls = self.tls
        let listener = self
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.autoRead, value: true)
                .childChannelInitializer { channel in
                    let key = ObjectIdentifier(channel)
                    listener.children.withLock { $0[key] = channel }
                    channel.closeFuture.whenComplete { _ in _ = listener.children.withLock { $0.removeValue(forKey: key) } }
                    return channel.eventLoop.makeCompletedFuture {
                        let versionBox = MQTTVersionBox()
                        let operations = channel.pipeline.syncOperations
                        if let tls { try operations.addHandler(NIOSSLServerHandler(context: tls)) }
                        try operations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(maximumPacketSize: maximumPacketSize, versionBox: versionBox)))
                        try operations.addHandler(MessageToByteHandler(MQTTPacketEncoder(versionBox: versionBox)))
                        try operations.addHandler(DeviceConnectionHandler(
                            lanes: lanes, registry: registry, receiveMaximum: receiveMaximum, logger: logger))
                    }
                }
                .bind(host: address.host, port: address.port).get()
        } catch {
            finishBinding(nil)
            throw error
        }
        let port = channel.localAddress?.port ?? 0
        finishBinding(port)
        logger.info("Listening for devices", metadata: [
            "device.listen": "\(address.host):\(channel.localAddress?.port ?? 0)", "device.tls": "\(tls != nil)",
        ])
        // Also on cancellation: closeFuture.get() does not return on its own then.
        await withTaskCancellationOrGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onCancelOrGracefulShutdown: {
            channel.close(promise: nil)
        }
        await drainConnections()
    }

    /// Asks every device connection to finish its queued stores and close; closes the rest after the timeout.
    func drainConnections() async {
        let open = children.withLock { Array($0.values) }
        guard !open.isEmpty else { return }
        logger.info("Closing device connections", metadata: ["device.connections": "\(open.count)"])
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(Drain()) }
        let eventLoop = group.next()
        let deadline = eventLoop.scheduleTask(in: drainTimeout) {
            for channel in open { channel.close(promise: nil) }
        }
        try? await EventLoopFuture.andAllComplete(open.map(\.closeFuture), on: eventLoop).get()
        deadline.cancel()
    }
}
