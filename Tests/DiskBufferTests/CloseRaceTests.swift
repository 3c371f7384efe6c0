#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import DiskBuffer

/// `close()` while many appends (single and batch) are in flight: every append returns, either with its
/// sequence (acknowledged: the record is there after reopening, byte for byte) or with `closed`; none hangs.
@Suite struct CloseRaceTests {
    /// Resumed once: when every writer has finished (true) or when the deadline passes first (false).
    final class Finish: Sendable {
        private let state: Mutex<(remaining: Int, continuation: CheckedContinuation<Bool, Never>?, done: Bool)>

        init(writers: Int) { state = Mutex((writers, nil, false)) }

        func wait(deadline: Duration) async -> Bool {
            await withCheckedContinuation { continuation in
                let finished = state.withLock { state -> Bool in
                    if state.remaining == 0 { state.done = true; return true }
                    state.continuation = continuation
                    return false
                }
                if finished { continuation.resume(returning: true); return }
                Task {
                    try? await Task.sleep(for: deadline)  // the hang detector's deadline, not synchronisation
                    self.resume(false)
                }
            }
        }

        func writerFinished() {
            let last = state.withLock { state -> Bool in
                state.remaining -= 1
                return state.remaining == 0
            }
            if last { resume(true) }
        }

        private func resume(_ value: Bool) {
            let continuation = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                guard !state.done, let continuation = state.continuation else { return nil }
                state.done = true
                state.continuation = nil
                return continuation
            }
            continuation?.resume(returning: value)
        }
    }

    /// What the writers saw: acknowledged records by sequence, and errors other than `closed`.
    final class Outcome: Sendable {
        let acknowledged = Mutex<[UInt64: [UInt8]]>([:])
        let unexpected = Mutex<[String]>([])
    }

    @Test(arguments: [DiskBuffer.FsyncPolicy.always, .interval(milliseconds: 5)])
    func appendsRacingCloseNeitherHangNorLoseAcknowledgedRecords(policy: DiskBuffer.FsyncPolicy) async throws {
        var acknowledgedTotal = 0
        for round in 0..<20 {
            let directory = TemporaryDirectory("close-race")
            defer { directory.remove() }
            let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 64 << 10, fsync: policy)
            let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
            let outcome = Outcome()
            let writers = 8
            let finish = Finish(writers: writers)
            for writer in 0..<writers {
                Task {
                    defer { finish.writerFinished() }
                    var n: UInt64 = 0
                    while true {
                        let first = UInt64(writer) << 40 | n
                        do {
                            if writer % 2 == 0 {
                                let payload = body(for: first)
                                let sequence = try await buffer.append(payload)
                                outcome.acknowledged.withLock { $0[sequence] = payload }
                                n += 1
                            } else {
                                let payloads = (0..<4).map { body(for: first + $0) }
                                let range = try await buffer.append(contentsOf: payloads)
                                outcome.acknowledged.withLock { table in
                                    for (sequence, payload) in zip(range, payloads) { table[sequence] = payload }
                                }
                                n += 4
                            }
                        } catch let error as DiskBufferError where error.code == .closed {
                            return
                        } catch {
                            outcome.unexpected.withLock { $0.append("\(error)") }
                            return
                        }
                    }
                }
            }
            // Close at a random moment while the writers run (the race under test).
            try await Task.sleep(for: .milliseconds(Int.random(in: 1...20)))
            await buffer.close()
            let finished = await finish.wait(deadline: .seconds(10))
            try #require(finished, "round \(round): an append racing close() did not return within 10 s")
            #expect(outcome.unexpected.withLock { $0 }.isEmpty, "round \(round): \(outcome.unexpected.withLock { $0 })")

            let (reopened, _) = try DiskBuffer.open(configuration, logger: testLogger)
            let stored = Dictionary(uniqueKeysWithValues: try readAll(reopened).map { ($0.sequence, $0.body) })
            await reopened.close()
            let expected = outcome.acknowledged.withLock { $0 }
            acknowledgedTotal += expected.count
            let lost = expected.filter { stored[$0.key] != $0.value }.keys.sorted()
            #expect(lost.isEmpty, "round \(round) (\(policy)): \(lost.count) of \(expected.count) acknowledged records lost or changed, first \(lost.prefix(5))")
        }
        #expect(acknowledgedTotal > 0, "the writers got appends in before close")
        print("close race (\(policy)): \(acknowledgedTotal) acknowledged records over 20 rounds, all present after reopening")
    }
}
