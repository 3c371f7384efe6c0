import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle
import Synchronization

/// The HTTP side door of every Tributary process: `GET /metrics` (Prometheus text), `GET /health` (the
/// process is alive and its event loops answer) and `GET /ready` (it can do its job: the broker reaches
/// Kafka, the agent's buffer is open). Load balancers and systemd-style supervisors poll these.
public final class ObservabilityServer: Service, Sendable {
    /// Returns nil when ready, or the reason it is not.
    public typealias ReadinessCheck = @Sendable () -> String?

    private let address: HostPort
    private let registry: PrometheusCollectorRegistry
    private let readiness: ReadinessCheck
    private let logger: Logger
    private let group: any EventLoopGroup
    private let boundPort = Mutex<Int?>(nil)
    private let bound = Mutex<[CheckedContinuation<Int, any Error>]>([])

    public init(
        address: HostPort,
        registry: PrometheusCollectorRegistry,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger,
        readiness: @escaping ReadinessCheck
    ) {
        self.address = address
        self.registry = registry
        self.group = group
        self.logger = logger
        self.readiness = readiness
    }

    /// The port actually bound (useful with port 0); waits until the server is listening.
    public func port() async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            let known: Int? = boundPort.withLock { $0 }
            if let known {
                continuation.resume(returning: known)
            } else {
                bound.withLock { $0.append(continuation) }
                // A bind that finished between the two reads above resumes us here.
                if let late = boundPort.withLock({ $0 }) { resumeWaiters(with: .success(late)) }
            }
        }
    }

    public func run() async throws {
        let registry = self.registry
        let readiness = self.readiness
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.pipeline.configureHTTPServerPipeline().flatMap {
                        channel.pipeline.addHandler(HTTPEndpointHandler(registry: registry, readiness: readiness))
                    }
                }
                .bind(host: address.host, port: address.port)
                .get()
        } catch {
            logger.error("HTTP endpoint could not bind", metadata: ["http.listen": "\(address)", "error": "\(error)"])
            resumeWaiters(with: .failure(error))
            throw error
        }
        let port = channel.localAddress?.port ?? address.port
        boundPort.withLock { $0 = port }
        resumeWaiters(with: .success(port))
        logger.info("HTTP endpoint listening", metadata: ["http.listen": "\(address.host):\(port)"])
        // Also on cancellation (the service group cancels when shutdown overruns or another service ends early):
        // closeFuture.get() does not return on its own then.
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await channel.closeFuture.get()
        } onCancelOrGracefulShutdown: {
            channel.close(promise: nil)
        }
    }

    private func resumeWaiters(with result: Result<Int, any Error>) {
        let waiters = bound.withLock { waiters in
            defer { waiters.removeAll() }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }
}

/// Answers the three endpoints; anything else is 404, any method but GET/HEAD is 405.
final class HTTPEndpointHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private let readiness: ObservabilityServer.ReadinessCheck

    init(registry: PrometheusCollectorRegistry, readiness: @escaping ObservabilityServer.ReadinessCheck) {
        self.registry = registry
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data) else { return }
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let (status, contentType, body): (HTTPResponseStatus, String, [UInt8])
        if request.method != .GET && request.method != .HEAD {
            (status, contentType, body) = (.methodNotAllowed, "text/plain", Array("use GET\n".utf8))
        } else {
            switch path {
            case "/metrics":
                (status, contentType, body) = (.ok, "text/plain; version=0.0.4", registry.emitToBuffer())
            case "/health":
                (status, contentType, body) = (.ok, "text/plain", Array("ok\n".utf8))
            case "/ready":
                if let reason = readiness() {
                    (status, contentType, body) = (.serviceUnavailable, "text/plain", Array("not ready: \(reason)\n".utf8))
                } else {
                    (status, contentType, body) = (.ok, "text/plain", Array("ready\n".utf8))
                }
            default:
                (status, contentType, body) = (.notFound, "text/plain", Array("endpoints: /metrics /health /ready\n".utf8))
            }
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: request.isKeepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let keepAlive = request.isKeepAlive
        // The write completes on the channel's loop, where the context may be used.
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !keepAlive { context.close(promise: nil) }
        }
    }
}
