#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// A process started by a test (Tansu, mosquitto, HAProxy, our binaries): stdout and stderr go to a log file,
/// it is stopped by PID, and it is killed at the latest when the test process exits.
public final class ChildProcess: Sendable {
    public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
        case exited(Int32)
        case signalled(Int32)

        public var description: String {
            switch self {
            case .exited(let code): return "exit code \(code)"
            case .signalled(let signal): return "signal \(signal)"
            }
        }
    }

    private struct State {
        var exitStatus: ExitStatus?
        var waiters: [Int: CheckedContinuation<ExitStatus?, Never>] = [:]
        var nextWaiter = 0
    }

    public let name: String
    public let pid: pid_t
    public let logPath: String
    public let commandLine: [String]
    private let state = Mutex(State())

    /// Starts `executable` with `arguments`; `environment` entries are added to (or replace) this process's.
    public static func launch(
        name: String,
        executable: String,
        arguments: [String],
        environment: [String: String] = [:],
        logPath: String
    ) throws -> ChildProcess {
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw HarnessError("\(name): no executable at \(executable) (run scripts/setup and swift build)")
        }
        // Empties the log (a failure shows when posix_spawn cannot open it below).
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        var fileActions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fileActions)
        defer { posix_spawn_file_actions_destroy(&fileActions) }
        posix_spawn_file_actions_addopen(&fileActions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fileActions, 1, logPath, O_WRONLY | O_APPEND | O_CREAT, 0o644)
        posix_spawn_file_actions_adddup2(&fileActions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Its own process group: a Ctrl-C meant for the test runner reaches children only through us.
        // Reset the signal mask and dispositions: the test runner's threads may block or ignore signals
        // (SIGTERM, SIGPIPE), and a child inheriting that would survive `stop`.
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var emptyMask = sigset_t()
        sigemptyset(&emptyMask)
        posix_spawnattr_setsigmask(&attributes, &emptyMask)
        var defaultSignals = sigset_t()
        sigfillset(&defaultSignals)
        sigdelset(&defaultSignals, SIGKILL)
        sigdelset(&defaultSignals, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)

        var mergedEnvironment = ProcessInfo.processInfo.environment
        for (key, value) in environment { mergedEnvironment[key] = value }
        let argv = [executable] + arguments
        let envp = mergedEnvironment.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let result = withCStrings(argv) { cArgv in
            withCStrings(envp) { cEnvp in
                posix_spawn(&pid, executable, &fileActions, &attributes, cArgv, cEnvp)
            }
        }
        guard result == 0 else {
            throw HarnessError("\(name): posix_spawn failed: \(String(cString: strerror(result)))")
        }
        let process = ChildProcess(name: name, pid: pid, logPath: logPath, commandLine: argv)
        ChildProcessRegistry.shared.add(pid)
        process.startReaper()
        return process
    }

    private init(name: String, pid: pid_t, logPath: String, commandLine: [String]) {
        self.name = name
        self.pid = pid
        self.logPath = logPath
        self.commandLine = commandLine
    }

    /// A thread blocks in waitpid and records the exit: the exit is an event tests can await.
    private func startReaper() {
        let pid = self.pid
        Thread.detachNewThread { [self] in
            var status: Int32 = 0
            var result: pid_t
            repeat {
                result = waitpid(pid, &status, 0)
            } while result == -1 && errno == EINTR
            let exit: ExitStatus
            if result == -1 {
                exit = .exited(-1)
            } else if status & 0x7f == 0 {
                exit = .exited((status >> 8) & 0xff)
            } else {
                exit = .signalled(status & 0x7f)
            }
            ChildProcessRegistry.shared.remove(pid)
            let waiters = state.withLock { state in
                state.exitStatus = exit
                defer { state.waiters.removeAll() }
                return state.waiters
            }
            for waiter in waiters.values { waiter.resume(returning: exit) }
        }
    }

    public var exitStatus: ExitStatus? { state.withLock { $0.exitStatus } }
    public var isRunning: Bool { exitStatus == nil }

    public func send(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Waits for the process to exit on its own.
    public func waitForExit() async -> ExitStatus {
        await withCheckedContinuation { (continuation: CheckedContinuation<ExitStatus?, Never>) in
            let known: ExitStatus? = state.withLock { state in
                if let status = state.exitStatus { return status }
                state.waiters[state.nextWaiter] = continuation
                state.nextWaiter += 1
                return nil
            }
            if let known { continuation.resume(returning: known) }
        } ?? .exited(-1)  // never nil: only cancellable waiters are resumed with nil
    }

    /// Waits at most `timeout`; nil if it is still running then.
    public func waitForExit(timeout: Duration) async -> ExitStatus? {
        await withTaskGroup(of: ExitStatus?.self) { group in
            group.addTask { await self.waitForExitOrCancellation() }
            group.addTask {
                try? await Task.sleep(for: timeout)  // the deadline, not synchronisation
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? exitStatus
        }
    }

    /// The exit status, or nil when the waiting task is cancelled first.
    private func waitForExitOrCancellation() async -> ExitStatus? {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<ExitStatus?, Never>) in
                let immediate: ExitStatus?? = state.withLock { state in
                    if let status = state.exitStatus { return .some(status) }
                    if Task.isCancelled { return .some(nil) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let immediate { continuation.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
    }

    /// Sends `signal`, waits up to `grace`, then SIGKILL. Returns how it ended.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, grace: Duration = .seconds(5)) async -> ExitStatus {
        if let status = exitStatus { return status }
        send(signal)
        if let status = await waitForExit(timeout: grace) { return status }
        send(SIGKILL)
        return await waitForExit()
    }

    public func logText() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    public func logTail(lines: Int = 40) -> String {
        logText().split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Polls the log until it contains `text` (a deadline-bounded poll of a file; there is no event to await).
    public func waitForLog(containing text: String, timeout: Duration = .seconds(30)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if logText().contains(text) { return }
            if let status = exitStatus {
                throw HarnessError("\(name) exited (\(status)) before logging '\(text)'; log tail:\n\(logTail())")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw HarnessError("\(name) did not log '\(text)' within \(timeout); log tail:\n\(logTail())")
    }
}

/// Every live child, so that they are killed even when a test crashes or forgets them.
final class ChildProcessRegistry: Sendable {
    static let shared: ChildProcessRegistry = {
        let registry = ChildProcessRegistry()
        atexit { ChildProcessRegistry.shared.killAll() }
        return registry
    }()

    private let pids = Mutex<Set<pid_t>>([])

    func add(_ pid: pid_t) { pids.withLock { _ = $0.insert(pid) } }
    func remove(_ pid: pid_t) { pids.withLock { _ = $0.remove(pid) } }

    func killAll() {
        for pid in pids.withLock({ $0 }) { kill(pid, SIGKILL) }
    }
}

public struct HarnessError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
