#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DiskBuffer

@Suite struct DiskBufferTests {
    @Test func appendReadAcknowledge() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, report) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        #expect(report.ledger == .created)
        #expect(report.nextSequence == 1)
        for expected in UInt64(1)...10 {
            let sequence = try await buffer.append(body(for: expected))
            #expect(sequence == expected)
        }
        let records = try buffer.read(from: 1, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.map(\.sequence) == Array(1...10))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence) })
        #expect(try buffer.read(from: 4, maxRecords: 3, maxBytes: 1 << 20).map(\.sequence) == [4, 5, 6])
        #expect(try buffer.read(from: 11, maxRecords: 3, maxBytes: 1 << 20).isEmpty)
        // maxBytes: at least one record, then stop once the bodies reach the limit.
        #expect(try buffer.read(from: 1, maxRecords: 100, maxBytes: 1).count == 1)

        try buffer.acknowledge(through: 4)
        #expect(buffer.acknowledgedThrough == 4)
        let stats = buffer.stats
        #expect(stats.records == 6)
        #expect(stats.lastSequence == 10)
        #expect(stats.oldestUnacknowledgedAgeSeconds != nil)
        #expect(throws: DiskBufferError.self) { try buffer.acknowledge(through: 11) }
        await buffer.close()
        await #expect(throws: DiskBufferError.self) { try await buffer.append([1]) }

        let (reopened, second) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        #expect(second.ledger == .loaded)
        #expect(second.isClean)
        #expect(second.acknowledgedThrough == 4)
        #expect(second.nextSequence == 11)
        #expect(second.records == 6)
        #expect(try readAll(reopened, from: 5).map(\.sequence) == Array(5...10))
        #expect(try await reopened.append([7]) == 11)
        await reopened.close()
    }

    @Test func concurrentAppendsShareSyncsAndKeepOrder() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .always), logger: testLogger)
        let results = try await withThrowingTaskGroup(of: [(UInt64, [UInt8])].self) { group in
            for task in 0..<32 {
                group.addTask {
                    var mine: [(UInt64, [UInt8])] = []
                    for index in 0..<20 {
                        let payload = Array("task \(task) record \(index)".utf8)
                        mine.append((try await buffer.append(payload), payload))
                    }
                    return mine
                }
            }
            var all: [(UInt64, [UInt8])] = []
            for try await part in group { all += part }
            return all
        }
        #expect(Set(results.map(\.0)) == Set(1...640))
        let stored = try readAll(buffer)
        #expect(stored.map(\.sequence) == Array(1...640))
        let bySequence = Dictionary(uniqueKeysWithValues: results)
        #expect(stored.allSatisfy { bySequence[$0.sequence] == $0.body })
        await buffer.close()
    }

    /// Many large appends at once are written in pieces of at most `Writer.maxWriteBytes` (the write
    /// buffer stays bounded), and a single record larger than that still goes in whole.
    @Test func largeBatchesAreWrittenInBoundedPieces() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .interval(milliseconds: 1)), logger: testLogger)
        let large = Writer.maxWriteBytes + 12345
        let results = try await withThrowingTaskGroup(of: (UInt64, [UInt8]).self) { group in
            for task in 0..<64 {
                group.addTask {
                    let payload = body(for: UInt64(task), size: task == 7 ? large : 100 << 10)
                    return (try await buffer.append(payload), payload)
                }
            }
            var all: [UInt64: [UInt8]] = [:]
            for try await (sequence, payload) in group { all[sequence] = payload }
            return all
        }
        #expect(Set(results.keys) == Set(1...64))
        await buffer.waitForRecords(after: 63)
        let stored = try readAll(buffer)
        #expect(stored.map(\.sequence) == Array(1...64))
        #expect(stored.allSatisfy { results[$0.sequence] == $0.body })
        await buffer.close()
    }

    @Test func segmentsRollAndAcknowledgedOnesAreDeleted() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096, maxBytes: 1 << 20, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        for sequence in UInt64(1)...100 { _ = try await buffer.append(body(for: sequence, size: 200)) }
        let before = segmentFiles(directory.path)
        #expect(before.count >= 5)
        #expect(before.first == "00000000000000000001.seg")
        #expect(try readAll(buffer).map(\.sequence) == Array(1...100))
        try buffer.acknowledge(through: 100)
        await buffer.close()
        // Every segment but the newest is gone; the newest remembers the next sequence.
        #expect(segmentFiles(directory.path).count == 1)
        let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.nextSequence == 101)
        #expect(report.records == 0)
        #expect(try await reopened.append([1]) == 101)
        await reopened.close()
    }

    @Test func sequencesAreNeverReusedAfterEverythingIsDeleted() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096, fsync: .never)
        do {
            let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
            for sequence in UInt64(1)...30 { _ = try await buffer.append(body(for: sequence, size: 300)) }
            try buffer.acknowledge(through: 30)
            await buffer.close()
        }
        // Even with all segments removed by hand, the ledger carries the next sequence.
        for name in segmentFiles(directory.path) { unlink(directory.path + "/" + name) }
        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.nextSequence == 31)
        #expect(try await buffer.append([1]) == 31)
        await buffer.close()
    }

    @Test func readersWaitForNewRecords() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .interval(milliseconds: 5)), logger: testLogger)
        async let reader: [UInt64] = {
            var seen: [UInt64] = []
            var next: UInt64 = 1
            while seen.count < 50 {
                let batch = try buffer.read(from: next, maxRecords: 7, maxBytes: 1 << 20)
                if batch.isEmpty {
                    await buffer.waitForRecords(after: next - 1)
                    continue
                }
                seen += batch.map(\.sequence)
                next = batch.last!.sequence + 1
            }
            return seen
        }()
        for sequence in UInt64(1)...50 { _ = try await buffer.append(body(for: sequence)) }
        #expect(try await reader == Array(1...50))
        await buffer.close()
    }

    @Test func waitForRecordsReturnsOnClose() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        async let waited: Void = buffer.waitForRecords(after: 0)
        await buffer.close()
        await waited
    }

    @Test func waitForRecordsHonoursCancellation() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        let task = Task { await buffer.waitForRecords(after: 0) }
        task.cancel()
        await task.value
        await buffer.close()
    }

    @Test func directoryLockExcludesASecondBuffer() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect { _ = try DiskBuffer.open(configuration, logger: testLogger) } throws: { error in
            (error as? DiskBufferError)?.code == .directoryLocked
        }
        await buffer.close()
        let (again, _) = try DiskBuffer.open(configuration, logger: testLogger)
        await again.close()
    }

    @Test func tooLargeRecordIsRefused() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        await #expect { _ = try await buffer.append([UInt8](repeating: 1, count: 5000)) } throws: { error in
            (error as? DiskBufferError)?.code == .recordTooLarge && (error as? DiskBufferError)?.scope == .record
        }
        #expect(try await buffer.append([UInt8](repeating: 1, count: configuration.maxRecordBodyBytes)) == 1)
        await buffer.close()
    }

    @Test func atomicFileReplacesContent() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/state"
        #expect(try AtomicFile.read(path) == nil)
        try AtomicFile.write([1, 2, 3], to: path)
        #expect(try AtomicFile.read(path) == [1, 2, 3])
        try AtomicFile.write([4], to: path)
        #expect(try AtomicFile.read(path) == [4])
        #expect(!((try? FileSystem.listDirectory(directory.path)) ?? []).contains("state.tmp"))
    }
}
