#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Where things are: the package root, our built binaries, the tools `scripts/setup` installed.
public enum TestEnvironment {
    /// The package root, found from this file's location (Tests/TestSupport/TestEnvironment.swift).
    public static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    /// The folder of the built executables: `TRIBUTARY_BIN_DIR`, else the folder of the running test bundle
    /// (SwiftPM puts products and the test bundle side by side).
    public static let binDirectory: String = {
        if let explicit = ProcessInfo.processInfo.environment["TRIBUTARY_BIN_DIR"] { return explicit }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: executable).deletingLastPathComponent()
        // On Linux the bundle is an executable file; on Darwin it's a directory bundle: walk up past it.
        while url.path.hasSuffix(".xctest") || url.path.contains(".xctest/") { url.deleteLastPathComponent() }
        return url.path
    }()

    public static func binary(_ name: String) -> String { binDirectory + "/" + name }

    public static let toolsDirectory = packageRoot + "/.tools"

    /// Tansu, from `TANSU_BIN` or `.tools/bin/tansu`.
    public static var tansuBinary: String {
        ProcessInfo.processInfo.environment["TANSU_BIN"] ?? toolsDirectory + "/bin/tansu"
    }

    /// The folder holding the newer librdkafka that talks to Tansu (see KAFKA-TESTING notes in docs/TESTING.md).
    public static var kafkaLibraryPath: String {
        ProcessInfo.processInfo.environment["TRIBUTARY_KAFKA_LIBRARY_PATH"] ?? toolsDirectory + "/lib"
    }

    /// Environment for a child that links librdkafka and must reach Tansu.
    public static var kafkaClientEnvironment: [String: String] {
        let existing = ProcessInfo.processInfo.environment["LD_LIBRARY_PATH"].map { ":" + $0 } ?? ""
        return ["LD_LIBRARY_PATH": kafkaLibraryPath + existing]
    }

    public static func which(_ program: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        // swift test may run with a PATH of its own: the usual folders are searched as well.
        for directory in path.split(separator: ":") + ["/usr/local/bin", "/usr/bin", "/usr/sbin", "/sbin"] {
            let candidate = "\(directory)/\(program)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }
}

/// Free TCP ports on 127.0.0.1 for the children a test starts, never hard-coded.
///
/// They are taken below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default).
/// A port the kernel hands out for bind(0) comes from that range, and so does the local port of every outgoing
/// connection: between the test asking for a port and the child binding it, a librdkafka or client connection
/// could take it (CI saw `cloud-broker: cannot listen on 127.0.0.1:51277: Address already in use`). Below the
/// range only a process that binds that very port can collide. Each port is checked free (bind without
/// SO_REUSEADDR, so a port still in TIME_WAIT is passed over) and handed out once per test process, from a
/// random start so that two test processes on one machine rarely meet.
public enum FreePort {
    private static let nextCandidate = Mutex<Int?>(nil)

    public static func next() throws -> Int {
        let ephemeralLow = ephemeralRangeStart()
        let low = 10_000
        guard ephemeralLow - low >= 2_000 else { return try kernelChosen() }
        let span = ephemeralLow - low
        for _ in 0..<span {
            let candidate = nextCandidate.withLock { next -> Int in
                let current = next ?? low + Int.random(in: 0..<span)
                next = current + 1 >= ephemeralLow ? low : current + 1
                return current
            }
            if isFree(candidate) { return candidate }
        }
        return try kernelChosen()
    }

    /// The first port of the kernel's ephemeral range (32768 when it cannot be read).
    public static func ephemeralRangeStart() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8),
            let first = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).first,
            let value = Int(first)
        else { return 32_768 }
        return value
    }

    private static func isFree(_ port: Int) -> Bool {
        guard let socket = try? LoopbackSocket(port: port) else { return false }
        socket.close()
        return true
    }

    private static func kernelChosen() throws -> Int {
        let socket = try LoopbackSocket(port: 0)
        defer { socket.close() }
        return socket.port
    }
}

/// A TCP socket bound to 127.0.0.1:`port` (0: one the kernel chooses), listening when asked; close it when done.
public struct LoopbackSocket: Sendable {
    public let descriptor: Int32
    /// The port bound (the kernel's choice when 0 was asked for).
    public let port: Int

    public init(port: Int, listen shouldListen: Bool = false) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket() failed: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0, !shouldListen || listen(fd, 16) == 0 else {
            let failure = errno
            Glibc.close(fd)
            throw HarnessError("bind/listen 127.0.0.1:\(port) failed: \(failure)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        descriptor = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    public func close() { _ = Glibc.close(descriptor) }
}

/// Minimal blocking TCP probes used to decide that a child is serving.
public enum TCPProbe {
    /// Connects to 127.0.0.1:port, optionally writes `request` and waits up to `timeout` for `minimumReply`
    /// bytes. Returns true when that much came back (or, with no request, when the connection was accepted).
    public static func exchange(port: Int, request: [UInt8] = [], minimumReply: Int = 0, timeout: Duration = .seconds(1)) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let millis = Int(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        var tv = timeval(tv_sec: millis / 1000, tv_usec: (millis % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { return false }
        if !request.isEmpty {
            let written = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard written == request.count else { return false }
        }
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 4096)
        while received < minimumReply {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { return false }
            received += count
        }
        return true
    }

    /// Retries `exchange` until it succeeds or `timeout` passes (a deadline-bounded readiness poll).
    public static func waitUntilServing(
        port: Int, request: [UInt8] = [], minimumReply: Int = 0, timeout: Duration, process: ChildProcess? = nil
    ) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if exchange(port: port, request: request, minimumReply: minimumReply, timeout: .milliseconds(500)) { return }
            if let process, let status = process.exitStatus {
                throw HarnessError("\(process.name) exited (\(status)) before serving on port \(port); log tail:\n\(process.logTail())")
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw HarnessError("nothing served on 127.0.0.1:\(port) within \(timeout)\(process.map { "; \($0.name) log tail:\n\($0.logTail())" } ?? "")")
    }
}
