import Common
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// The MQTT-over-TCP listener of a node. On graceful shutdown it stops accepting, sends DISCONNECT 0x8B
/// (server shutting down) to MQTT 5 clients, closes 3.1.1 clients, and waits up to `drainTimeout` for the
/// connections to close.
final class MQTTListener: Service, Sendable {
    private let address: HostPort
    private let broker: BrokerContext
    private let group: any EventLoopGroup
    private let drainTimeout: Duration
    private let tls: NIOSSLContext?
    private let boundPort = Mutex<Int?>(nil)
    private let waiters = Mutex<[CheckedContinuation<Int, any Error>]>([])

    init(
        address: HostPort, broker: BrokerContext, tls: NIOSSLContext? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, drainTimeout: Duration = .seconds(5)
    ) {
        self.address = address
        self.tls = tls
        self.broker = broker
        self.group = group
        self.drainTimeout = drainTimeout
    }

    /// The port actually bound; waits until listening.
    func port() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            if let port = boundPort.withLock({ $0 }) {
                continuation.resume(returning: port)
            } else {
                waiters.withLock { $0.append(continuation) }
                if let port = boundPort.withLock({ $0 }) { resumeWaiters(.success(port)) }
            }
        }
    }

    private func resumeWaiters(_ result: Result<Int, any Error>) {
        let pending = waiters.withLock { waiters in
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in pending { waiter.resume(with: result) }
    }

    func run() async throws {
        let broker = self.broker
        let tls = self.tls
        let children = ChildChannels()
        let server: any Channel
        do {
            server = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.backlog, value: 1024)
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.writeBufferWaterMark, value: .init(low: 32 * 1024, high: 64 * 1024))
                .childChannelOption(.maxMessagesPerRead, value: 4)
                // Reads start small and grow with the traffic (NIO's default starts at 2 KiB per read, which
                // an idle connection's decoder would keep).
                .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65_536))
                .childChannelInitializer { channel in
                    children.add(channel)
                    channel.closeFuture.whenComplete { _ in children.remove(channel) }
                    return channel.eventLoop.makeCompletedFuture {
                        if let tls { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                        try channel.pipeline.syncOperations.addHandlers([
                            ByteToMessageHandler(CountingMQTTPacketDecoder(maximumPacketSize: broker.limits.maximumPacketSize)),
                            MQTTServerConnection(broker: broker),
                        ])
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            let failure = BrokerError(.listener, "cannot listen on \(address): \(error)")
            resumeWaiters(.failure(failure))
            throw failure
        }
        let port = server.localAddress?.port ?? address.port
        boundPort.withLock { $0 = port }
        resumeWaiters(.success(port))
        broker.logger.info("MQTT listener started", metadata: ["mqtt.listen": "\(address.host):\(port)", "mqtt.tls": "\(tls != nil)"])
        await withGracefulShutdownHandler {
            try? await server.closeFuture.get()
        } onGracefulShutdown: {
            broker.logger.info("MQTT listener stopping: disconnecting clients")
            server.close(promise: nil)
            broker.registry.shutdownAll()
        }
        // Wait for clients to go (they were sent DISCONNECT 0x8B), then close what is left.
        let deadline = ContinuousClock.now + drainTimeout
        while children.count > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))  // polling a count with a deadline
        }
        for channel in children.all { channel.close(promise: nil) }
    }
}

/// The open client channels of a listener.
private final class ChildChannels: Sendable {
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])

    func add(_ channel: any Channel) { channels.withLock { $0[ObjectIdentifier(channel)] = channel } }
    func remove(_ channel: any Channel) { _ = channels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
    var count: Int { channels.withLock { $0.count } }
    var all: [any Channel] { channels.withLock { Array($0.values) } }
}

extension TLSSettings {
    /// The server context: certificate chain and key, and client certificate verification against
    /// `clientCA` when set (optional or required).
    func makeContext() throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: privateKey, format: .pem)
        var configuration: TLSConfiguration
        if let clientCA {
            configuration = .makeServerConfigurationWithMTLS(certificateChain: chain, privateKey: .privateKey(key), trustRoots: .file(clientCA))
            configuration.certificateVerification = requireClientCertificate ? .noHostnameVerification : .optionalVerification
        } else {
            configuration = .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        }
        return try NIOSSLContext(configuration: configuration)
    }
}
