#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import ServiceLifecycle

/// systemd's readiness protocol without libsystemd: datagrams such as `READY=1` sent to the unix socket named
/// by `NOTIFY_SOCKET` (a leading `@` means the abstract namespace). Does nothing when the variable is unset,
/// so the binaries behave the same outside systemd.
public struct SystemdNotifier: Sendable {
    public let socketPath: String?

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    }

    public var isEnabled: Bool { socketPath != nil }

    /// `READY=1`: start-up finished (listeners bound, buffer recovered).
    @discardableResult public func ready(status: String? = nil) -> Bool {
        send("READY=1" + (status.map { "\nSTATUS=\($0)" } ?? ""))
    }

    @discardableResult public func stopping() -> Bool { send("STOPPING=1") }
    @discardableResult public func watchdog() -> Bool { send("WATCHDOG=1") }
    @discardableResult public func status(_ text: String) -> Bool { send("STATUS=\(text)") }

    /// Sends one datagram; returns false if it could not be delivered (never throws: supervision is best effort).
    @discardableResult public func send(_ message: String) -> Bool {
        guard let socketPath else { return false }
        #if os(Linux)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }  // abstract namespace
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + (pathBytes.first == 0 ? 0 : 1))
        let sent = message.utf8CString.withUnsafeBufferPointer { text in
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                    sendto(fd, text.baseAddress, text.count - 1, 0, socketAddress, length)
                }
            }
        }
        return sent >= 0
    }

    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if this process is the one meant.
    public static func watchdogInterval(environment: [String: String] = ProcessInfo.processInfo.environment) -> Duration? {
        guard let text = environment["WATCHDOG_USEC"], let micros = Int64(text), micros > 0 else { return nil }
        if let pid = environment["WATCHDOG_PID"], let owner = Int32(pid), owner != getpid() { return nil }
        return .microseconds(micros)
    }
}

/// Pings systemd's watchdog at half its interval while `isHealthy` holds; stops pinging (so systemd restarts
/// the unit) when it does not. Runs as one service of the process's ServiceGroup.
public struct SystemdWatchdogService: Service {
    let notifier: SystemdNotifier
    let interval: Duration
    let isHealthy: @Sendable () -> Bool
    let logger: Logger

    public init(notifier: SystemdNotifier, interval: Duration, logger: Logger, isHealthy: @escaping @Sendable () -> Bool) {
        self.notifier = notifier
        self.interval = interval
        self.isHealthy = isHealthy
        self.logger = logger
    }

    public func run() async throws {
        let period = interval / 2
        while !Task.isShuttingDownGracefully {
            if isHealthy() {
                notifier.watchdog()
            } else {
                logger.warning("Health check failed; withholding the systemd watchdog ping")
            }
            try? await Task.sleep(for: period)  // a periodic timer, not synchronisation
            if Task.isCancelled { return }
        }
    }
}
