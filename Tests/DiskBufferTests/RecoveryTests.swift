#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DiskBuffer

/// One test per kind of damage, in the spirit of vector's disk_v2 `known_errors.rs`: each writes a
/// buffer, damages the files the way a crash or a bad disk would, reopens, and checks that every record
/// before the damage survives, that the loss is reported, and that no sequence number is reused.
@Suite struct RecoveryTests {
    static let header = Int64(RecordFormat.segmentHeaderSize)
    static let recordHeader = Int64(RecordFormat.recordHeaderSize)

    /// Writes `count` records of `size` bytes (sequences 1...count) and closes the buffer.
    func populate(_ configuration: DiskBuffer.Configuration, count: UInt64, size: Int = 100) async throws {
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        for sequence in 1...count { _ = try await buffer.append(body(for: sequence, size: size)) }
        await buffer.close()
    }

    func offsetOfRecord(_ index: Int64, size: Int64 = 100) -> Int64 {
        Self.header + index * (Self.recordHeader + size)
    }

    @Test func truncatedRecord() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        try await populate(configuration, count: 10)
        let segment = directory.path + "/" + segmentFiles(directory.path)[0]
        // Power loss in the middle of writing record 10: only half of it reached the disk.
        let cut = offsetOfRecord(9) + 50
        try truncateFile(segment, to: cut)

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.truncatedBytes == 50)
        #expect(report.truncatedRecords == 1)
        #expect(report.truncatedSegment == "00000000000000000001.seg")
        #expect(!report.isClean)
        #expect(fileSize(segment) == offsetOfRecord(9))
        let records = try readAll(buffer)
        #expect(records.map(\.sequence) == Array(1...9))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence, size: 100) })
        // Sequence 10 was handed out before the crash (the ledger says so): it is reported missing and
        // not reused.
        #expect(report.missingSequences == [10...10])
        #expect(try await buffer.append([1]) == 11)
        await buffer.close()
    }

    @Test func badChecksumInTheMiddle() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        try await populate(configuration, count: 10)
        let segment = directory.path + "/" + segmentFiles(directory.path)[0]
        // Flip one body byte of record 5.
        try overwrite(segment, at: offsetOfRecord(4) + Self.recordHeader + 7, with: [0xFF ^ body(for: 5, size: 100)[7]])

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.truncatedRecords == 6)  // the damaged record and the five after it
        #expect(report.truncatedBytes == fileSizeBefore(records: 10) - offsetOfRecord(4))
        #expect(try readAll(buffer).map(\.sequence) == Array(1...4))
        #expect(report.missingSequences == [5...10])
        #expect(try await buffer.append([1]) == 11)
        await buffer.close()
        // The next open is clean: the damage was cut once.
        let (again, second) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(second.isClean)
        #expect(try readAll(again).map(\.sequence) == [1, 2, 3, 4, 11])
        await again.close()
    }

    func fileSizeBefore(records: Int64) -> Int64 { offsetOfRecord(records) }

    @Test func zeroFilledTail() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        try await populate(configuration, count: 5)
        let segment = directory.path + "/" + segmentFiles(directory.path)[0]
        // After power loss, blocks allocated to the file may read back as zeros past the real data.
        try overwrite(segment, at: offsetOfRecord(5), with: [UInt8](repeating: 0, count: 4096))

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.truncatedBytes == 4096)
        #expect(report.truncatedRecords == 0)
        #expect(report.missingSequences.isEmpty)
        #expect(try readAll(buffer).map(\.sequence) == Array(1...5))
        #expect(try await buffer.append([1]) == 6)
        await buffer.close()
    }

    @Test func tornSegmentHeader() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        try await populate(configuration, count: 30, size: 300)
        let names = segmentFiles(directory.path)
        #expect(names.count >= 3)
        // Crash right after creating the newest segment: the file exists but is empty.
        let newest = directory.path + "/" + names.last!
        try truncateFile(newest, to: 0)
        let first = RecordFormat.firstSequence(ofSegmentNamed: names.last!)!

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.truncatedRecords == 0)
        #expect(fileSize(newest) == Self.header)
        #expect(try readAll(buffer).map(\.sequence) == Array(1..<first))
        #expect(report.missingSequences == [first...30])
        #expect(try await buffer.append([1]) == 31)
        await buffer.close()
    }

    @Test func missingSegment() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        try await populate(configuration, count: 60, size: 300)
        let names = segmentFiles(directory.path)
        #expect(names.count >= 4)
        // Lose a segment in the middle.
        unlink(directory.path + "/" + names[1])
        let gap = RecordFormat.firstSequence(ofSegmentNamed: names[1])!..<RecordFormat.firstSequence(ofSegmentNamed: names[2])!

        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        let records = try readAll(buffer)
        #expect(records.map(\.sequence) == Array(1...60).filter { !gap.contains($0) })
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence, size: 300) })
        #expect(buffer.stats.droppedRecords == UInt64(gap.count))
        // Reading again counts nothing twice.
        _ = try readAll(buffer)
        #expect(buffer.stats.droppedRecords == UInt64(gap.count))
        await buffer.close()
    }

    @Test func missingOldestSegment() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        try await populate(configuration, count: 60, size: 300)
        let names = segmentFiles(directory.path)
        unlink(directory.path + "/" + names[0])
        let second = RecordFormat.firstSequence(ofSegmentNamed: names[1])!

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.missingSequences == [1...(second - 1)])
        #expect(try readAll(buffer).map(\.sequence) == Array(second...60))
        await buffer.close()
    }

    @Test func corruptLedger() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        do {
            let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
            for sequence in UInt64(1)...40 { _ = try await buffer.append(body(for: sequence, size: 300)) }
            try buffer.acknowledge(through: 25)
            await buffer.close()
        }
        let ledger = directory.path + "/ledger"
        let oldest = RecordFormat.firstSequence(ofSegmentNamed: segmentFiles(directory.path)[0])!
        #expect(oldest > 1 && oldest <= 26)
        try overwrite(ledger, at: 9, with: [0x42])

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.ledger == .corrupt)
        // Falls back to the oldest segment: acknowledged records come again (duplicates), none is lost.
        #expect(report.acknowledgedThrough == oldest - 1)
        #expect(report.missingSequences.isEmpty)
        #expect(try readAll(buffer).map(\.sequence) == Array(oldest...40))
        #expect(try await buffer.append([1]) == 41)
        await buffer.close()
        let (again, second) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(second.ledger == .loaded)
        await again.close()
    }

    @Test func missingLedger() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        try await populate(configuration, count: 5)
        unlink(directory.path + "/ledger")
        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.ledger == .missing)
        #expect(try readAll(buffer).map(\.sequence) == Array(1...5))
        #expect(try await buffer.append([1]) == 6)
        await buffer.close()
    }

    @Test func ledgerAheadOfData() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path)
        try await populate(configuration, count: 10)
        // The ledger says 50 were acknowledged and 51 comes next, but the data ends at 10.
        try AtomicFile.write(RecordFormat.encodeLedger(acknowledgedThrough: 50, nextSequence: 51), to: directory.path + "/ledger")

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.ledger == .aheadOfData)
        #expect(report.acknowledgedThrough == 50)
        #expect(report.nextSequence == 51)
        #expect(report.records == 0)
        #expect(try readAll(buffer).isEmpty)
        #expect(try await buffer.append([9]) == 51)
        #expect(try readAll(buffer).map(\.sequence) == [51])
        await buffer.close()
        #expect(segmentFiles(directory.path) == ["00000000000000000051.seg"])
    }

    @Test func damageInAnOlderSegmentIsSkippedWhenRead() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096)
        try await populate(configuration, count: 40, size: 300)
        let names = segmentFiles(directory.path)
        let secondFirst = RecordFormat.firstSequence(ofSegmentNamed: names[1])!
        // Bit rot in record 3 of the first (sealed) segment.
        try overwrite(directory.path + "/" + names[0], at: offsetOfRecord(2, size: 300) + 20, with: [0xAA, 0x55])

        let (buffer, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.isClean)  // only the newest segment is scanned at open
        let records = try readAll(buffer)
        #expect(records.map(\.sequence) == [1, 2] + Array(secondFirst...40))
        #expect(buffer.stats.droppedRecords == secondFirst - 3)
        await buffer.close()
    }
}
