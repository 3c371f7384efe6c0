#if canImport(Glibc)
import Glibc
#endif
import Logging
import Testing
@testable import DiskBuffer

/// The real crash test: a child process (this test binary, re-run with an environment variable so that
/// only `crashChild` does anything) appends with `fsync: always` (or `interval`, where the syncer thread
/// runs beside the writer) from several tasks and prints each sequence once `append` returned; the
/// parent SIGKILLs it at a random moment, reopens the buffer and checks that every reported sequence is
/// there, with its body, in order.
@Suite struct CrashTests {
    static let directoryVariable = "TRIBUTARY_BUFFER_CRASH_CHILD_DIR"
    static let seedVariable = "TRIBUTARY_BUFFER_CRASH_CHILD_SEED"
    static let policyVariable = "TRIBUTARY_BUFFER_CRASH_CHILD_POLICY"

    static func configuration(_ directory: String, interval: Bool = false) -> DiskBuffer.Configuration {
        DiskBuffer.Configuration(
            directory: directory, segmentMaxBytes: 64 << 10, maxBytes: 1 << 30,
            fsync: interval ? .interval(milliseconds: 1) : .always)
    }

    /// The child's work. Does nothing in a normal test run.
    @Test func crashChild() async throws {
        guard let variable = getenv(Self.directoryVariable) else { return }
        let directory = String(cString: variable)
        let seed = getenv(Self.seedVariable).flatMap { UInt64(String(cString: $0)) } ?? 1
        let interval = getenv(Self.policyVariable).map { String(cString: $0) == "interval" } ?? false
        let (buffer, _) = try DiskBuffer.open(
            Self.configuration(directory, interval: interval), logger: Logger(label: "crash-child"))
        func report(_ line: String) {
            let bytes = Array((line + "\n").utf8)
            _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var random = SeededGenerator(seed: seed &* 1000 &+ UInt64(task))
                    while true {
                        let payload = (0..<Int.random(in: 1...2000, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                        let sequence = try await buffer.append(payload)
                        report("D \(sequence) \(CRC32C.checksum(payload))")
                        if task == 0, sequence > 500, Int.random(in: 0..<50, using: &random) == 0 {
                            // Acknowledge an older prefix now and then, so ledger writes and segment
                            // deletions are also interrupted. Announced before it happens.
                            let through = sequence - 500
                            report("A \(through)")
                            try buffer.acknowledge(through: through)
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    struct Round {
        var reported: [UInt64: UInt32] = [:]
        var highestAcknowledgement: UInt64 = 0
    }

    /// Starts the child, reads its reports until `killAfter` durable sequences were seen, SIGKILLs it,
    /// then drains what it printed before dying.
    func runChild(directory: String, seed: UInt64, killAfter: Int, interval: Bool) throws -> Round {
        var pipeDescriptors: [Int32] = [0, 0]
        try #require(pipe(&pipeDescriptors) == 0)
        // Not inherited by other children; dup2 onto the child's stdout clears the flag there.
        for descriptor in pipeDescriptors { _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeDescriptors[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipeDescriptors[0])
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let executable = CommandLine.arguments[0]
        let arguments = [executable, "--testing-library", "swift-testing", "--filter", "CrashTests/crashChild"]
        var environment: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            environment.append(String(cString: pointer))
            entry += 1
        }
        environment += [
            "\(Self.directoryVariable)=\(directory)", "\(Self.seedVariable)=\(seed)",
            "\(Self.policyVariable)=\(interval ? "interval" : "always")",
        ]
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
        }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        close(pipeDescriptors[1])
        defer { close(pipeDescriptors[0]) }
        try #require(spawned == 0, "posix_spawn of \(executable) failed: \(spawned)")

        var round = Round()
        var pending: [UInt8] = []
        var killed = false
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        if killAfter == 0 {
            kill(pid, SIGKILL)
            killed = true
        }
        while true {
            let count = chunk.withUnsafeMutableBytes { read(pipeDescriptors[0], $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            pending += chunk[0..<count]
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                let fields = line.split(separator: " ")
                if fields.count == 3, fields[0] == "D", let sequence = UInt64(fields[1]), let crc = UInt32(fields[2]) {
                    round.reported[sequence] = crc
                } else if fields.count == 2, fields[0] == "A", let sequence = UInt64(fields[1]) {
                    round.highestAcknowledgement = max(round.highestAcknowledgement, sequence)
                }
            }
            if !killed && round.reported.count >= killAfter {
                kill(pid, SIGKILL)
                killed = true
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return round
    }

    @Test func sigkillNeverLosesAReportedRecord() async throws {
        try await crashRounds(rounds: 12, interval: false)
    }

    /// With policy `interval`, `append` returns once the record is written (the syncer syncs later): a
    /// process crash must still lose nothing that was reported.
    @Test func sigkillUnderIntervalNeverLosesAReportedRecord() async throws {
        try await crashRounds(rounds: 6, interval: true)
    }

    func crashRounds(rounds: Int, interval: Bool) async throws {
        let directory = TemporaryDirectory("crash")
        defer { directory.remove() }
        var random = SeededGenerator(seed: 42)
        var acknowledgedUpperBound: UInt64 = 0
        var totalReported = 0
        var totalTruncatedBytes: Int64 = 0
        var truncations = 0
        for round in 0..<rounds {
            let killAfter = round == 0 ? 200 : [0, 1, 50, 300, 1000, 2500].randomElement(using: &random)!
            let child = try runChild(directory: directory.path, seed: UInt64(round + 1), killAfter: killAfter, interval: interval)
            acknowledgedUpperBound = max(acknowledgedUpperBound, child.highestAcknowledgement)
            totalReported += child.reported.count

            let (buffer, report) = try DiskBuffer.open(Self.configuration(directory.path, interval: interval), logger: testLogger)
            totalTruncatedBytes += report.truncatedBytes
            if report.truncatedBytes > 0 { truncations += 1 }
            #expect(report.acknowledgedThrough <= acknowledgedUpperBound, "round \(round)")
            #expect(report.missingSequences.isEmpty, "round \(round): \(report.missingSequences)")
            let records = try readAll(buffer, from: report.acknowledgedThrough + 1)
            // In order, no gaps, from the acknowledged position up.
            if let first = records.first {
                #expect(first.sequence == report.acknowledgedThrough + 1, "round \(round)")
                #expect(records.map(\.sequence) == Array(first.sequence...(records.last!.sequence)), "round \(round)")
            }
            let stored = Dictionary(uniqueKeysWithValues: records.map { ($0.sequence, CRC32C.checksum($0.body)) })
            var lost: [UInt64] = []
            for (sequence, crc) in child.reported where sequence > report.acknowledgedThrough {
                if stored[sequence] != crc { lost.append(sequence) }
            }
            #expect(lost.isEmpty, "round \(round): reported durable but missing or different: \(lost.sorted().prefix(10))")
            await buffer.close()
        }
        #expect(totalReported > 1000)
        print("crash test (\(interval ? "interval" : "always")): \(rounds) SIGKILLs, \(totalReported) reported sequences checked, \(truncations) torn tails totalling \(totalTruncatedBytes) bytes cut")
    }
}
