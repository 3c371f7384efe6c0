#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DiskBuffer

@Suite struct CapacityTests {
    @Test func rejectNewRefusesWhenFullAndRecoversAfterAcknowledgement() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(
            directory: directory.path, maxBytes: 32 << 10, overflowPolicy: .rejectNew, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        var stored: UInt64 = 0
        var refusal: DiskBufferError?
        for sequence in UInt64(1)...100 {
            do {
                stored = try await buffer.append(body(for: sequence, size: 1000))
            } catch {
                refusal = error
                break
            }
        }
        #expect(refusal?.code == .bufferFull)
        #expect(refusal?.scope == .record)
        #expect(stored >= 20 && stored <= 32)
        #expect(buffer.stats.bytes <= 32 << 10)
        #expect(try readAll(buffer).map(\.sequence) == Array(1...stored))
        // Acknowledging frees whole segments; appends then succeed with the next sequence.
        try buffer.acknowledge(through: stored)
        await buffer.settle()
        #expect(try await buffer.append([1]) == stored + 1)
        #expect(buffer.stats.droppedRecords == 0)
        await buffer.close()
    }

    @Test func dropOldestKeepsTheNewestAndCountsTheLoss() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(
            directory: directory.path, maxBytes: 32 << 10, overflowPolicy: .dropOldest, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        for sequence in UInt64(1)...200 {
            #expect(try await buffer.append(body(for: sequence, size: 1000)) == sequence)
        }
        await buffer.settle()
        let records = try readAll(buffer)
        let first = try #require(records.first).sequence
        #expect(first > 1)
        #expect(records.map(\.sequence) == Array(first...200))
        let stats = buffer.stats
        #expect(stats.droppedRecords == first - 1)
        #expect(stats.records == UInt64(records.count))
        #expect(stats.bytes <= 32 << 10)
        #expect(segmentFiles(directory.path).first == RecordFormat.segmentName(firstSequence: first))
        await buffer.close()
        // Reopening after drops is not damage: the ledger acknowledged nothing and the gap is reported.
        let (again, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.missingSequences == [1...(first - 1)])
        #expect(try readAll(again).map(\.sequence) == Array(first...200))
        await again.close()
    }

    @Test func dropOldestCountsOnlyUnacknowledgedRecords() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(
            directory: directory.path, maxBytes: 32 << 10, overflowPolicy: .dropOldest, fsync: .never,
            ledgerIntervalMilliseconds: 60_000)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        for sequence in UInt64(1)...20 { _ = try await buffer.append(body(for: sequence, size: 1000)) }
        try buffer.acknowledge(through: 20)
        for sequence in UInt64(21)...45 { _ = try await buffer.append(body(for: sequence, size: 1000)) }
        await buffer.settle()
        let records = try readAll(buffer)
        #expect(records.last?.sequence == 45)
        // Only unacknowledged records (21 and later) count as dropped.
        let firstUnacknowledged = try #require(records.first { $0.sequence > 20 }).sequence
        #expect(records.filter { $0.sequence > 20 }.map(\.sequence) == Array(firstUnacknowledged...45))
        #expect(buffer.stats.droppedRecords == firstUnacknowledged - 21)
        await buffer.close()
    }
}
