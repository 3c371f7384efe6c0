import Dispatch
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Name resolution for the uplink, once per connection attempt: a gateway whose cloud endpoint moves (DNS
/// failover, a load balancer's new address) follows it on the next reconnect. `resolve` runs getaddrinfo on
/// a Dispatch queue (not NIO's blocking pool) and counts each lookup (`tributary_agent_uplink_dns_resolutions_total`); the addresses go
/// to NIO's Happy Eyeballs connector through `Resolved`, so IPv6 and IPv4 are both tried.
enum UplinkResolver {
    struct ResolutionError: Error, CustomStringConvertible {
        var host: String
        var message: String
        var description: String { "cannot resolve \(host): \(message)" }
    }

    static func resolve(host: String, port: Int) async throws -> [SocketAddress] {
        AgentMetrics.uplinkResolutions.increment()
        // Not on NIO's blocking pool: with `runtime.blocking_threads: 1` a slow DNS server would hold up the
        // device session and in-flight writes that share it. (NIO's own resolver offloads the same way.)
        // Cancellable (e.g. by graceful shutdown during a DNS timeout): the wait ends at once, the lookup
        // finishes on its own and its result is dropped.
        let pending = Pending()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                guard pending.start(continuation) else { return }
                DispatchQueue.global().async {
                    pending.finish(Result { try lookup(host: host, port: port) })
                }
            }
        } onCancel: {
            pending.finish(.failure(CancellationError()))
        }
    }

    /// The one continuation of a lookup, resumed once: by its result or by cancellation.
    private final class Pending: Sendable {
        private let state = Mutex<(continuation: CheckedContinuation<[SocketAddress], any Error>?, finished: Bool)>((nil, false))

        /// false if cancelled already (the continuation is resumed here then).
        func start(_ continuation: CheckedContinuation<[SocketAddress], any Error>) -> Bool {
            let cancelled = state.withLock { state -> Bool in
                if state.finished { return true }
                state.continuation = continuation
                return false
            }
            if cancelled { continuation.resume(throwing: CancellationError()) }
            return !cancelled
        }

        func finish(_ result: Result<[SocketAddress], any Error>) {
            let continuation = state.withLock { state -> CheckedContinuation<[SocketAddress], any Error>? in
                guard !state.finished else { return nil }
                state.finished = true
                defer { state.continuation = nil }
                return state.continuation
            }
            continuation?.resume(with: result)
        }
    }

    private static func lookup(host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        var list: UnsafeMutablePointer<addrinfo>? = nil
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else { throw ResolutionError(host: host, message: String(cString: gai_strerror(status))) }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry = list
        while let current = entry {
            if let raw = current.pointee.ai_addr {
                switch current.pointee.ai_family {
                case AF_INET:
                    addresses.append(raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee, host: host) })
                case AF_INET6:
                    addresses.append(raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee, host: host) })
                default:
                    break
                }
            }
            entry = current.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw ResolutionError(host: host, message: "no address") }
        return addresses
    }

    /// Hands addresses resolved beforehand to the bootstrap (on its event loop).
    struct Resolved: Resolver, Sendable {
        let addresses: [SocketAddress]
        let eventLoop: any EventLoop

        func initiateAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
            eventLoop.makeSucceededFuture(addresses.filter { if case .v4 = $0 { true } else { false } })
        }

        func initiateAAAAQuery(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
            eventLoop.makeSucceededFuture(addresses.filter { if case .v6 = $0 { true } else { false } })
        }

        func cancelQueries() {}
    }
}
