import Foundation
import TestSupport
import Testing

/// The harness itself: children log to files, are stopped by PID, and Tansu is ready when `startTansu` returns.
@Suite("Test harness", .serialized)
struct HarnessTests {
    @Test func childOutputIsCapturedAndStopIsByPid() async throws {
        let pid = try await withProcesses { scope in
            let child = try scope.launch(name: "sleeper", executable: "/bin/sh", arguments: ["-c", "echo started; exec sleep 600"])
            try await child.waitForLog(containing: "started", timeout: .seconds(10))
            #expect(child.isRunning)
            let status = await child.stop(signal: SIGTERM, grace: .seconds(5))
            #expect(status == .signalled(SIGTERM))
            return child.pid
        }
        #expect(kill(pid, 0) == -1, "the child must be gone after the scope ends")
    }

    @Test func scopeStopsEverythingWhenTheTestThrows() async throws {
        let pids = MutexPids()
        await #expect(throws: HarnessError.self) {
            try await withProcesses { scope in
                let child = try scope.launch(name: "orphan", executable: "/bin/sh", arguments: ["-c", "exec sleep 600"])
                pids.add(child.pid)
                throw HarnessError("the test body failed")
            }
        }
        for pid in pids.all { #expect(kill(pid, 0) == -1) }
    }

    @Test func tansuAnswersMetadataWhenStartReturns() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            #expect(TCPProbe.exchange(port: tansu.port, request: TansuBroker.metadataRequestForTests, minimumReply: 8))
            let status = await tansu.process.stop(signal: SIGINT, grace: .seconds(5))
            #expect(status == .exited(0) || status == .signalled(SIGINT))
        }
    }

    @Test func mosquittoAcceptsConnections() async throws {
        try await withProcesses { scope in
            let mosquitto = try await scope.startMosquitto()
            #expect(TCPProbe.exchange(port: mosquitto.port))
        }
    }
}

final class MutexPids: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var pids: [pid_t] = []
    func add(_ pid: pid_t) { lock.withLock { pids.append(pid) } }
    var all: [pid_t] { lock.withLock { pids } }
}
