import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Name resolution for the uplink, once per connection attempt: a gateway whose cloud endpoint moves (DNS
/// failover, a load balancer's new address) follows it on the next reconnect. `resolve` runs getaddrinfo on
/// the thread pool and counts each lookup (`tributary_agent_uplink_dns_resolutions_total`); the addresses go
/// to NIO's Happy Eyeballs connector through `Resolved`, so IPv6 and IPv4 are both tried.
enum UplinkResolver {
    struct ResolutionError: Error, CustomStringConvertible {
        var host: String
        var message: String
        var description: String { "cannot resolve \(host): \(message)" }
    }

    static func resolve(host: String, port: Int) async throws -> [SocketAddress] {
        AgentMetrics.uplinkResolutions.increment()
        return try await NIOThreadPool.singleton.runIfActive {
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
