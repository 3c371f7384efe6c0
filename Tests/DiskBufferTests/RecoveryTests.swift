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

    /// Concurrent appends are written as one batch (one `pwrite`, one sync). A power loss can tear that
    /// write anywhere, and the disk may persist its pages out of order: a page in the middle may be lost
    /// (zeros) while later ones arrived. Recovery keeps every record that ends before the tear, cuts the
    /// rest (even intact records after a hole, which were never acknowledged as durable), and reports it.
    @Test func batchedWriteTornInTheMiddle() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, fsync: .always)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        let size = 1000
        let stored = try await withThrowingTaskGroup(of: (UInt64, [UInt8]).self) { group in
            for task in 0..<64 {
                group.addTask {
                    let payload = body(for: UInt64(task) + 1000, size: size)
                    return (try await buffer.append(payload), payload)
                }
            }
            var stored: [UInt64: [UInt8]] = [:]
            for try await (sequence, payload) in group { stored[sequence] = payload }
            return stored
        }
        #expect(buffer.stats.syncs < 64, "the appends were batched")
        await buffer.close()
        #expect(Set(stored.keys) == Set(1...64))

        let segment = directory.path + "/" + segmentFiles(directory.path)[0]
        let ledger = directory.path + "/" + RecordFormat.ledgerName
        let original = try FileHandle.open(segment, flags: O_RDONLY).read(count: 1 << 20, at: 0)
        let originalLedger = try #require(try AtomicFile.read(ledger))
        let recordSize = Int64(RecordFormat.recordHeaderSize + size)
        #expect(Int64(original.count) == offsetOfRecord(64, size: Int64(size)))

        // Tears: a lost page in the middle (later pages present), a cut inside a record, a cut at a
        // record boundary, and a zero-filled tail from a page boundary on.
        enum Tear { case hole(page: Int64), cut(at: Int64), zeroTail(from: Int64) }
        let tears: [Tear] = [.hole(page: 3), .hole(page: 8), .hole(page: 15), .cut(at: offsetOfRecord(30, size: Int64(size)) + 7),
                             .cut(at: offsetOfRecord(47, size: Int64(size))), .zeroTail(from: 4096 * 9)]
        for tear in tears {
            var damaged = original
            let tearStart: Int64
            switch tear {
            case .hole(let page):
                tearStart = page * 4096
                for index in Int(tearStart)..<min(Int(tearStart) + 4096, damaged.count) { damaged[index] = 0 }
            case .cut(let offset):
                tearStart = offset
                damaged.removeLast(damaged.count - Int(offset))
            case .zeroTail(let offset):
                tearStart = offset
                for index in Int(offset)..<damaged.count { damaged[index] = 0 }
            }
            try truncateFile(segment, to: 0)
            try overwrite(segment, at: 0, with: damaged)
            try AtomicFile.write(originalLedger, to: ledger)

            // Records wholly before the tear survive.
            let kept = max(0, (tearStart - Self.header) / recordSize)
            let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
            #expect(report.truncatedBytes == Int64(damaged.count) - offsetOfRecord(kept, size: Int64(size)), "\(tear)")
            #expect(report.missingSequences == [(UInt64(kept) + 1)...64], "\(tear)")
            let records = try readAll(reopened)
            #expect(records.map(\.sequence) == Array(stride(from: UInt64(1), through: UInt64(kept), by: 1)), "\(tear)")
            #expect(records.allSatisfy { stored[$0.sequence] == $0.body }, "\(tear)")
            #expect(try await reopened.append([1]) == 65, "no sequence is reused")
            await reopened.close()
            // Back to the original bytes for the next tear (the reopen cut the file and wrote a ledger).
            for name in segmentFiles(directory.path) where directory.path + "/" + name != segment {
                try FileSystem.remove(directory.path + "/" + name)
            }
        }
    }
}
