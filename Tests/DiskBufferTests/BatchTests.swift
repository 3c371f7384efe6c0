#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
@testable import DiskBuffer

/// `append(contentsOf:)` (one call per batch of records) and `read(from:into:)` (bodies as slices of
/// one reused buffer).
@Suite struct BatchTests {
    @Test func batchesGetConsecutiveSequencesAndSliceReadsMatchRecordReads() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .always), logger: testLogger)
        #expect(try await buffer.append(body(for: 1)) == 1)
        #expect(try await buffer.append(contentsOf: (2...5).map { body(for: $0) }) == 2..<6)
        #expect(try await buffer.append(body(for: 6)) == 6)
        #expect(try await buffer.append(contentsOf: [body(for: 7)]) == 7..<8)
        #expect(try await buffer.append(contentsOf: []) == 0..<0)
        #expect(try await buffer.append(contentsOf: (8...20).map { body(for: $0) }) == 8..<21)
        #expect(buffer.stats.lastSequence == 20)

        var batch = DiskBuffer.RecordBatch()
        #expect(try buffer.read(from: 1, into: &batch, maxRecords: 100) == 20)
        #expect(batch.map(\.sequence) == Array(1...20))
        #expect(batch.allSatisfy { Array($0.body) == body(for: $0.sequence) })
        #expect(batch.bytes.count == (1...20).reduce(0) { $0 + body(for: $1).count })
        // Reading into the same batch replaces its contents; the limits behave like read(from:).
        #expect(try buffer.read(from: 4, into: &batch, maxRecords: 3) == 3)
        #expect(batch.map(\.sequence) == [4, 5, 6])
        #expect(batch.allSatisfy { Array($0.body) == body(for: $0.sequence) })
        #expect(batch.lastSequence == 6)
        #expect(try buffer.read(from: 1, into: &batch, maxBytes: 1) == 1)
        #expect(try buffer.read(from: 21, into: &batch) == 0)
        #expect(batch.isEmpty && batch.lastSequence == nil)
        await buffer.close()

        let (reopened, report) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        #expect(report.isClean && report.nextSequence == 21)
        let records = try readAll(reopened)
        #expect(records.map(\.sequence) == Array(1...20))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence) })
        await reopened.close()
    }

    /// A batch is one piece: it never straddles two segments (a batch that does not fit in the active
    /// segment starts the next one), so a crash or a failed write keeps all of it or none of it.
    @Test func aBatchIsNeverSplitAcrossSegments() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        for index in 0..<20 {
            let first = UInt64(index * 3 + 1)
            let range = try await buffer.append(contentsOf: (first..<first + 3).map { body(for: $0, size: 900) })
            #expect(range == first..<first + 3)
        }
        await buffer.close()
        let firsts = segmentFiles(directory.path).compactMap { RecordFormat.firstSequence(ofSegmentNamed: $0) }
        #expect(firsts.count > 5)
        #expect(firsts.allSatisfy { $0 % 3 == 1 })
        let (reopened, _) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(try readAll(reopened).map(\.sequence) == Array(1...60))
        await reopened.close()
    }

    @Test func oversizedBodiesAndBatchesAreRefusedWhole() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(directory: directory.path, segmentMaxBytes: 4096, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        let maxBody = configuration.maxRecordBodyBytes
        await #expect(throws: DiskBufferError.self) {
            try await buffer.append(contentsOf: [[1], [UInt8](repeating: 2, count: maxBody + 1)])
        }
        // Each body fits, the batch does not fit in one segment.
        do {
            _ = try await buffer.append(contentsOf: [[UInt8](repeating: 1, count: maxBody / 2), [UInt8](repeating: 2, count: maxBody / 2 + 1)])
            Issue.record("an oversized batch was stored")
        } catch {
            #expect(error.code == .recordTooLarge)
            #expect(error.scope == .record)
        }
        // One full-size body alone still fits.
        #expect(try await buffer.append(contentsOf: [[UInt8](repeating: 3, count: maxBody)]) == 1..<2)
        #expect(buffer.stats.lastSequence == 1)
        await buffer.close()
    }

    @Test func rejectNewRefusesABatchThatDoesNotFitWhole() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let configuration = DiskBuffer.Configuration(
            directory: directory.path, maxBytes: 32 << 10, overflowPolicy: .rejectNew, fsync: .never)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        var stored: UInt64 = 0
        var refusal: DiskBufferError?
        while refusal == nil {
            do {
                stored = try await buffer.append(contentsOf: (stored + 1...stored + 5).map { body(for: $0, size: 1000) }).upperBound - 1
            } catch {
                refusal = error
            }
        }
        #expect(refusal?.code == .bufferFull)
        #expect(stored > 0 && stored % 5 == 0)
        #expect(try readAll(buffer).map(\.sequence) == Array(1...stored))
        // A single smaller record may still fit; it gets the next sequence (nothing of the batch was used).
        if let next = try? await buffer.append([1]) { #expect(next == stored + 1) }
        await buffer.close()
    }

    @Test func concurrentBatchesAreContiguousAndDisjoint() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .interval(milliseconds: 2)), logger: testLogger)
        let results = try await withThrowingTaskGroup(of: [(Range<UInt64>, [[UInt8]])].self) { group in
            for task in 0..<16 {
                group.addTask {
                    var mine: [(Range<UInt64>, [[UInt8]])] = []
                    for index in 0..<10 {
                        let bodies = (0...(task + index) % 7).map { Array("task \(task) batch \(index) record \($0)".utf8) }
                        mine.append((try await buffer.append(contentsOf: bodies), bodies))
                    }
                    return mine
                }
            }
            var all: [(Range<UInt64>, [[UInt8]])] = []
            for try await part in group { all += part }
            return all
        }
        let total = results.reduce(0) { $0 + $1.1.count }
        var expected: [UInt64: [UInt8]] = [:]
        for (range, bodies) in results {
            #expect(range.count == bodies.count)
            for (sequence, body) in zip(range, bodies) {
                #expect(expected.updateValue(body, forKey: sequence) == nil)
            }
        }
        #expect(Set(expected.keys) == Set(1...UInt64(total)))
        // Streaming reads into one reused batch see every record once, in order.
        var batch = DiskBuffer.RecordBatch()
        var next: UInt64 = 1
        while next <= UInt64(total) {
            if try buffer.read(from: next, into: &batch, maxRecords: 7, maxBytes: 200) == 0 {
                await buffer.waitForRecords(after: next - 1)
                continue
            }
            #expect(batch.map(\.sequence) == Array(next..<next + UInt64(batch.count)))
            #expect(batch.allSatisfy { expected[$0.sequence] == Array($0.body) })
            next = batch.lastSequence! + 1
        }
        await buffer.close()
    }
}

/// The callback forms for callers on an event loop: `append(contentsOf:completion:)` and `whenRecords`.
@Suite struct CallbackTests {
    @Test func callbackAppendsGetTheSameSequencesAndRefusalsComeAtOnce() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, segmentMaxBytes: 64 << 10, fsync: .interval(milliseconds: 5)), logger: testLogger)
        #expect(try await buffer.append(body(for: 1)) == 1)
        let range = await withCheckedContinuation { continuation in
            buffer.append(contentsOf: (2...4).map { body(for: $0) }) { continuation.resume(returning: $0) }
        }
        #expect(try range.get() == 2..<5)
        let empty = await withCheckedContinuation { continuation in buffer.append(contentsOf: []) { continuation.resume(returning: $0) } }
        #expect(try empty.get() == 0..<0)
        // Too large for a segment: refused before it is queued, on the caller's thread.
        let refused = Box<Result<Range<UInt64>, DiskBufferError>?>(nil)
        buffer.append(contentsOf: [[UInt8](repeating: 1, count: 64 << 10)]) { refused.value = $0 }
        guard case .failure(let error) = refused.value else {
            Issue.record("a record larger than a segment was not refused at once")
            return
        }
        #expect(error.code == .recordTooLarge)
        await buffer.close()
        let (reopened, _) = try DiskBuffer.open(.init(directory: directory.path), logger: testLogger)
        #expect(try readAll(reopened).map(\.sequence) == [1, 2, 3, 4])
        await reopened.close()
    }

    @Test func whenRecordsWakesOnceReadableAtOnceIfAlreadyAndNotAfterCancel() async throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let (buffer, _) = try DiskBuffer.open(.init(directory: directory.path, fsync: .interval(milliseconds: 5)), logger: testLogger)
        // Nothing readable yet: the wake-up waits for the sync of the first record.
        let woken = await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let id = buffer.whenRecords(after: 0) { continuation.resume(returning: true) }
            #expect(id != nil)
            Task { _ = try await buffer.append(body(for: 1)) }
        }
        #expect(woken)
        #expect(try buffer.read(from: 1).map(\.sequence) == [1])
        // Already readable: at once, on this thread, no id.
        let ranAtOnce = Box(false)
        let none = buffer.whenRecords(after: 0) { ranAtOnce.value = true }
        #expect(none == nil)
        #expect(ranAtOnce.value)
        // Cancelled: never runs, also when records come (a later wait is woken by the same records).
        let cancelled = Counter()
        let id = try #require(buffer.whenRecords(after: 1) { cancelled.add() })
        buffer.cancelWait(id)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            _ = buffer.whenRecords(after: 1) { continuation.resume() }
            Task { _ = try await buffer.append(body(for: 2)) }
        }
        #expect(cancelled.value == 0)
        // Closing wakes a waiter too.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            _ = buffer.whenRecords(after: 2) { continuation.resume() }
            Task { await buffer.close() }
        }
    }
}

private final class Counter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// A value set by a callback that runs on the test's own thread (checked right after the call).
private final class Box<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
