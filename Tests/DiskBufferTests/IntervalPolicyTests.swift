import Testing
@testable import DiskBuffer

/// Policy `interval`: the syncer thread fdatasyncs beside the writer, so appends never wait for a sync,
/// while readers see only synced records. The syncs are held with a test hook (as if the disk never
/// finished one): if an append waited for a sync, these tests would hang until their time limit.
@Suite(.timeLimit(.minutes(1))) struct IntervalPolicyTests {
    func configuration(_ directory: String, segmentMaxBytes: Int = 64 << 20) -> DiskBuffer.Configuration {
        DiskBuffer.Configuration(directory: directory, segmentMaxBytes: segmentMaxBytes, fsync: .interval(milliseconds: 1))
    }

    @Test func appendsReturnWhileASyncIsStuckAndReadersWaitForIt() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(configuration(directory.path), logger: testLogger)
        buffer.holdSyncs(true)
        // Many batches, over many 1 ms intervals, from concurrent appenders.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for _ in 0..<250 { _ = try await buffer.append(body(for: UInt64(task), size: 200)) }
                }
            }
            try await group.waitForAll()
        }
        #expect(buffer.stats.lastSequence == 2000)
        // Written, not synced: not readable.
        #expect(try buffer.read(from: 1).isEmpty)
        #expect(buffer.stats.syncs == 0)

        buffer.holdSyncs(false)
        var next: UInt64 = 1
        while next <= 2000 {
            await buffer.waitForRecords(after: next - 1)
            let records = try buffer.read(from: next)
            guard records.first?.sequence == next else {
                Issue.record("expected sequence \(next), read \(records.first?.sequence ?? 0)")
                break
            }
            next += UInt64(records.count)
        }
        #expect(buffer.stats.syncs >= 1)
        await buffer.close()
    }

    /// Rolling to a new segment syncs the old one on the writer thread, even while the syncer is stuck:
    /// the old segment's records become readable, the new one's wait for the syncer.
    /// A burst after a quiet spell shares one sync: the first write waits half an interval for the others
    /// (it used to be synced at once, alone, and the rest of the burst an interval later). Opening counts
    /// as the end of a quiet spell. The interval is long so that a loaded machine (tests run in parallel)
    /// cannot stretch the gap between the two appends past half of it.
    @Test func aBurstAfterAQuietSpellSharesOneSync() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(
            .init(directory: directory.path, fsync: .interval(milliseconds: 6000)), logger: testLogger)
        let start = ContinuousClock.now
        #expect(try await buffer.append(body(for: 1)) == 1)
        #expect(try await buffer.append(contentsOf: (2...5).map { body(for: $0) }) == 2..<6)
        let gap = ContinuousClock.now - start
        await buffer.waitForRecords(after: 4)
        let waited = ContinuousClock.now - start
        if gap < .seconds(3) { #expect(buffer.stats.syncs == 1) }
        #expect(try buffer.read(from: 1).map(\.sequence) == [1, 2, 3, 4, 5])
        #expect(waited >= .seconds(3) && waited < .seconds(30))
        await buffer.close()
    }

    @Test func segmentRollSyncsTheOldSegmentWithoutTheSyncer() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(configuration(directory.path, segmentMaxBytes: 4096), logger: testLogger)
        buffer.holdSyncs(true)
        for sequence in UInt64(1)...100 { _ = try await buffer.append(body(for: sequence, size: 100)) }
        let segments = buffer.stats.segments
        #expect(segments > 1)
        let readable = try readAll(buffer)
        // Everything in the sealed segments, nothing of the newest.
        #expect(!readable.isEmpty)
        #expect(readable.map(\.sequence) == Array(1...UInt64(readable.count)))
        #expect(readable.count < 100)
        #expect(readable.allSatisfy { $0.body == body(for: $0.sequence, size: 100) })
        buffer.holdSyncs(false)
        await buffer.waitForRecords(after: 99)
        #expect(try readAll(buffer).count == 100)
        await buffer.close()
    }

    /// Close while the syncer is stuck in a sync: close still finishes (the writer stops the syncer and
    /// waits for it before closing the file), and everything appended is there after reopening.
    @Test func closeWhileASyncIsStuck() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(configuration(directory.path), logger: testLogger)
        buffer.holdSyncs(true)
        for sequence in UInt64(1)...50 { _ = try await buffer.append(body(for: sequence)) }
        await buffer.close()
        let (reopened, report) = try DiskBuffer.open(configuration(directory.path), logger: testLogger)
        #expect(report.isClean)
        let records = try readAll(reopened)
        #expect(records.map(\.sequence) == Array(1...50))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence) })
        await reopened.close()
    }

    /// A simulated crash while the syncer is stuck: what `append` returned was written, so it survives a
    /// process crash (not a power loss, which the interval policy allows to lose the last interval).
    @Test func crashWhileASyncIsStuckKeepsEveryAppendedRecord() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(configuration(directory.path), logger: testLogger)
        buffer.holdSyncs(true)
        for sequence in UInt64(1)...50 { _ = try await buffer.append(body(for: sequence)) }
        await buffer.simulateCrash()
        let (reopened, _) = try DiskBuffer.open(configuration(directory.path), logger: testLogger)
        let records = try readAll(reopened)
        #expect(records.map(\.sequence) == Array(1...50))
        await reopened.close()
    }
}

/// Ledger writes and segment deletions run on the housekeeping thread: appends go on while a deletion
/// is stuck (held with a test hook), and close still finishes.
@Suite(.timeLimit(.minutes(1))) struct HousekeeperTests {
    @Test(arguments: [DiskBuffer.FsyncPolicy.always, .interval(milliseconds: 1)])
    func appendsGoOnWhileDeletionIsStuck(policy: DiskBuffer.FsyncPolicy) async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096, fsync: policy)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        buffer.holdHousekeeping(true)
        for sequence in UInt64(1)...100 { _ = try await buffer.append(body(for: sequence, size: 100)) }
        await buffer.waitForRecords(after: 99)
        try buffer.acknowledge(through: 100)
        for sequence in UInt64(101)...200 { _ = try await buffer.append(body(for: sequence, size: 100)) }
        let held = buffer.stats.segments
        #expect(held > 3, "acknowledged segments are not deleted while housekeeping is held")
        #expect(segmentFiles(directory.path).count == held)

        buffer.holdHousekeeping(false)
        await buffer.settle()
        #expect(buffer.stats.segments < held)
        #expect(segmentFiles(directory.path).count == buffer.stats.segments)
        await buffer.waitForRecords(after: 199)
        #expect(try readAll(buffer, from: 101).map(\.sequence) == Array(101...200))

        // Close while held: the writer stops the housekeeper, then writes the final ledger itself.
        buffer.holdHousekeeping(true)
        try buffer.acknowledge(through: 150)
        await buffer.close()
        let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.acknowledgedThrough == 150)
        #expect(try readAll(reopened, from: 151).map(\.sequence) == Array(151...200))
        await reopened.close()
    }
}
