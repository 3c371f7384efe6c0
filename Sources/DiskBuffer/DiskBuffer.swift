// The edge agent's crash-safe disk buffer: an append-only segmented log of opaque records.
//
// # On-disk format (version 1; also in docs/disk-format.md)
//
// A buffer is one directory:
//
//     lock                          flock(LOCK_EX) held while open: one buffer per directory
//     ledger                        28 bytes, replaced atomically (ledger.tmp, fsync, rename, fsync dir)
//     00000000000000000001.seg      segments, named by their first sequence number (20 digits, so
//     00000000000000004711.seg      `ls` order is sequence order)
//
// Segment = 32-byte header, then records back to back, no padding:
//
//     header: magic "TRBS" | version u32 = 1 | first sequence u64 | previous last u64 |
//             crc32c u32 of the preceding 24 bytes | zero u32
//     record: length u32 | crc32c u32 | sequence u64 | body (length bytes)
//
// A batch append's records are consecutive and lie in one segment (never split across two).
//
// All integers are little-endian. `length` is the body length. `crc32c` (Castagnoli) covers the body,
// then the 4 length bytes, then the 8 sequence bytes. The body is opaque here (the agent stores the
// encoded PUBLISH and its metadata).
//
// Ledger = magic "TRBL" | version u32 = 1 | acknowledged-through u64 | next sequence u64 | crc32c u32
// of the preceding 24 bytes.
//
// # Invariants
//
// 1. Sequences start at 1, increase by exactly 1 from record to record across all segments, and are
//    never reused: the ledger carries the next sequence, and the newest segment is never deleted (an
//    empty newest segment's name is the next sequence).
// 2. A segment holds exactly the sequences [its name, next segment's name - 1]; only the newest segment
//    is written to. A segment is synced before the next one is created (policies always / interval).
// 3. `append` returns a sequence only after its record was written to the file (and, with policy
//    `always`, fdatasync'ed). Readers see only records that are durable under the policy.
// 4. A segment is deleted only when all its records are acknowledged (after the ledger recording
//    that is durable), or by the drop-oldest overflow policy (counted and logged). The newest segment
//    is never deleted.
// 5. Recovery scans the newest segment, keeps every record up to the first torn record, bad checksum,
//    or unexpected sequence, and truncates the rest, reporting bytes and records cut. Damage in older
//    segments is found when reading: the rest of that segment is skipped, counted and logged.
// 6. A missing or corrupt ledger means "nothing acknowledged": the buffer replays from its oldest
//    segment (duplicates upstream are removed by sequence number; loss is not acceptable).

import Logging

/// A crash-safe, append-only, segmented log of opaque records on local disk. See the format and
/// invariants at the top of this file and in docs/disk-format.md.
///
/// Thread-safe: `append` may be called concurrently from many tasks or event loops; file writes run on
/// one writer thread owned by the buffer, one `pwrite` for all appends waiting at that moment. With
/// policy `always` they share one sync (group commit); with `interval` a second thread syncs beside the
/// writer, so appends never wait for a sync. A third thread writes the ledger and deletes segments.
/// `read` does blocking `pread`s of records that are normally in the page cache.
public final class DiskBuffer: Sendable {
    /// One stored record.
    public struct Record: Sendable, Hashable {
        public var sequence: UInt64
        public var body: [UInt8]

        public init(sequence: UInt64, body: [UInt8]) {
            self.sequence = sequence
            self.body = body
        }
    }

    /// A point-in-time view of the buffer.
    public struct Stats: Sendable, Hashable {
        /// Records stored and not acknowledged.
        public var records: UInt64
        /// Total size of the segment files.
        public var bytes: Int64
        public var segments: Int
        /// Age of the oldest unacknowledged record (1 s resolution), nil if there is none.
        public var oldestUnacknowledgedAgeSeconds: Double?
        /// The last sequence appended (0 if none ever was).
        public var lastSequence: UInt64
        public var acknowledgedThrough: UInt64
        /// Records lost since open: drop-oldest overflow, damage found while reading, missing segments.
        public var droppedRecords: UInt64
        /// Segment syncs (fdatasync) since open.
        public var syncs: UInt64
    }

    let core: Core

    init(core: Core) {
        self.core = core
    }

    deinit {
        // Without `close`, the writer thread still finishes pending work, syncs and exits.
        core.lock.withLock { state in
            if state.lifecycle == .open { state.lifecycle = .closing }
        }
        core.lock.signal()
    }

    /// Opens (creating if needed) the buffer in `configuration.directory`, recovering from any crash.
    /// Fails with ``DiskBufferError/Code/directoryLocked`` if another buffer has the directory open.
    public static func open(
        _ configuration: Configuration,
        logger: Logger = Logger(label: "tributary.buffer")
    ) throws(DiskBufferError) -> (DiskBuffer, RecoveryReport) {
        try Recovery.open(configuration, logger: logger)
    }

    /// Stores `body` and returns its sequence once it is durable under the fsync policy.
    ///
    /// Fails with a ``DiskBufferError/Scope/record``-scoped error (`bufferFull`, `diskFull`,
    /// `recordTooLarge`) when this record cannot be stored now: do not acknowledge it to the device.
    public func append(_ body: [UInt8]) async throws(DiskBufferError) -> UInt64 {
        let maxBody = core.configuration.maxRecordBodyBytes
        guard body.count <= maxBody else {
            let error = DiskBufferError(
                .recordTooLarge, "record body of \(body.count) bytes exceeds the maximum of \(maxBody)")
            core.metrics.rejected(error)
            throw error
        }
        let bodies = PendingAppend.Bodies.one(body, state: RecordFormat.bodyState(body))
        let size = Int64(RecordFormat.recordHeaderSize + body.count)
        // Unsafe continuation: this is the per-record hot path, and the writer resumes each pending append
        // exactly once (written, failed, or closed at exit); a checked one costs an allocation per record.
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<UInt64, DiskBufferError>, Never>) in
            core.enqueue(PendingAppend(bodies: bodies, count: 1, size: size, continuation: .one(continuation)))
        }
        return try result.get()
    }

    /// Stores `bodies` as consecutive records, in order, and returns their sequences once all of them
    /// are durable under the fsync policy: one call, one wake-up of the writer and one resumption for
    /// the whole batch, where `append(_:)` costs one of each per record. The batch is written in one
    /// piece into one segment: all of it is stored or none of it (the error is thrown).
    ///
    /// An empty batch returns the empty range `0..<0`. Fails with `recordTooLarge` if a body exceeds
    /// ``Configuration/maxRecordBodyBytes`` or the whole batch (16-byte record headers included) exceeds
    /// that plus one header, i.e. would not fit in one segment; otherwise like `append(_:)`.
    public func append(contentsOf bodies: [[UInt8]]) async throws(DiskBufferError) -> Range<UInt64> {
        guard !bodies.isEmpty else { return 0..<0 }
        let (pending, size) = try batch(bodies)
        let count = bodies.count
        let result = await withUnsafeContinuation { (continuation: UnsafeContinuation<Result<Range<UInt64>, DiskBufferError>, Never>) in
            core.enqueue(PendingAppend(bodies: pending, count: count, size: size, continuation: .many(continuation)))
        }
        return try result.get()
    }

    /// `append(contentsOf:)` without a task: `completion` runs exactly once, on the buffer's writer thread
    /// once the records are durable under the fsync policy (or the append failed), or at once on the
    /// caller's thread for a batch refused before it was queued (`recordTooLarge`) or an empty one. For
    /// callers on an event loop: one hop to the writer and one back (`EventLoop.execute`), where a task
    /// costs a hop to the task pool and one more back. Keep `completion` short: it delays the next write.
    public func append(
        contentsOf bodies: [[UInt8]], completion: @escaping @Sendable (Result<Range<UInt64>, DiskBufferError>) -> Void
    ) {
        guard !bodies.isEmpty else { return completion(.success(0..<0)) }
        let pending: PendingAppend.Bodies, size: Int64
        do { (pending, size) = try batch(bodies) } catch { return completion(.failure(error)) }
        core.enqueue(PendingAppend(bodies: pending, count: bodies.count, size: size, continuation: .callback(completion)))
    }

    /// Checks a batch against the record and segment limits and computes its CRC states and size on disk.
    private func batch(_ bodies: [[UInt8]]) throws(DiskBufferError) -> (PendingAppend.Bodies, Int64) {
        let maxBody = core.configuration.maxRecordBodyBytes
        var size: Int64 = 0
        var states: [UInt32] = []
        states.reserveCapacity(bodies.count)
        for body in bodies {
            guard body.count <= maxBody else {
                let error = DiskBufferError(
                    .recordTooLarge, "record body of \(body.count) bytes exceeds the maximum of \(maxBody)")
                core.metrics.rejected(error, records: bodies.count)
                throw error
            }
            size += Int64(RecordFormat.recordHeaderSize + body.count)
            states.append(RecordFormat.bodyState(body))
        }
        let maxBatch = Int64(maxBody + RecordFormat.recordHeaderSize)
        guard size <= maxBatch else {
            let error = DiskBufferError(
                .recordTooLarge, "batch of \(bodies.count) records takes \(size) bytes, more than the maximum of \(maxBatch): append fewer at once")
            core.metrics.rejected(error, records: bodies.count)
            throw error
        }
        return (.many(bodies, states: states), size)
    }

    /// Records from `sequence` on (or from the oldest stored record, if that is later), in order, up to
    /// `maxRecords` and about `maxBytes` of bodies (at least one record if any is available). Includes
    /// records appended a moment ago once durable; skips records lost to overflow or damage. Returns an
    /// empty array when nothing newer is available: then `waitForRecords(after:)`.
    public func read(from sequence: UInt64, maxRecords: Int = 1024, maxBytes: Int = 1 << 20) throws(DiskBufferError) -> [Record] {
        var records: [Record] = []
        _ = try core.read(from: sequence, maxRecords: maxRecords, maxBytes: maxBytes) { sequence, body in
            records.append(Record(sequence: sequence, body: Array(body)))
        }
        return records
    }

    /// Like `read(from:maxRecords:maxBytes:)`, but replaces the contents of `batch` with the records
    /// read, their bodies back to back in one buffer: no allocation per record, and none at all once
    /// the batch's storage has grown to the reads' size (reuse one batch for a stream of reads).
    /// Returns the number of records read (0: nothing newer is available).
    @discardableResult
    public func read(
        from sequence: UInt64, into batch: inout RecordBatch, maxRecords: Int = 1024, maxBytes: Int = 1 << 20
    ) throws(DiskBufferError) -> Int {
        batch.removeAll()
        return try core.read(from: sequence, maxRecords: maxRecords, maxBytes: maxBytes) { sequence, body in
            batch.append(sequence: sequence, body: body)
        }
    }

    /// Returns when a record with a sequence greater than `sequence` is readable, when the buffer
    /// closes, or when the task is cancelled.
    public func waitForRecords(after sequence: UInt64) async {
        let lock = core.lock
        let ready = lock.withLock { state -> Bool in
            state.readableThrough > sequence || state.lifecycle != .open
        }
        if ready { return }
        let id = lock.withLock { state -> Int in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = lock.withLock { state -> Bool in
                    if state.readableThrough > sequence || state.lifecycle != .open || Task.isCancelled {
                        return true
                    }
                    state.waiters[id] = Waiter(after: sequence, wake: .continuation(continuation))
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = lock.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// `waitForRecords(after:)` without a task: `wake` runs once, when a record with a sequence greater
    /// than `sequence` is readable or the buffer closes: at once on the caller's thread if that is so
    /// now, else on the thread that made it so (the syncer or the writer). Returns an id for
    /// `cancelWait(_:)`, nil if `wake` already ran. Keep `wake` short (e.g. `EventLoop.execute`).
    @discardableResult
    public func whenRecords(after sequence: UInt64, _ wake: @escaping @Sendable () -> Void) -> Int? {
        let id = core.lock.withLock { state -> Int? in
            if state.readableThrough > sequence || state.lifecycle != .open { return nil }
            defer { state.nextWaiterID += 1 }
            state.waiters[state.nextWaiterID] = Waiter(after: sequence, wake: .callback(wake))
            return state.nextWaiterID
        }
        if id == nil { wake() }
        return id
    }

    /// Forgets a `whenRecords` wake-up that has not run (it will not run); nothing if it has.
    public func cancelWait(_ id: Int) {
        _ = core.lock.withLock { $0.waiters.removeValue(forKey: id) }
    }

    /// Marks every record up to and including `sequence` as delivered upstream. Segments made wholly
    /// acknowledged are deleted by the writer thread after the ledger is updated. The ledger is written
    /// at most every `ledgerIntervalMilliseconds` otherwise, so after a crash recently acknowledged
    /// records may be read again. Acknowledging an already acknowledged sequence does nothing.
    public func acknowledge(through sequence: UInt64) throws(DiskBufferError) {
        let wake = try core.lock.withLock { (state: inout State) throws(DiskBufferError) -> Bool in
            guard state.lifecycle == .open else { throw DiskBufferError(.closed, "the buffer is closed") }
            guard sequence <= state.writtenThrough else {
                throw DiskBufferError(.invalidSequence, "cannot acknowledge sequence \(sequence): the last appended is \(state.writtenThrough)")
            }
            guard sequence > state.acknowledgedThrough else { return false }
            let previous = state.acknowledgedThrough
            state.acknowledgedThrough = sequence
            state.pruneSamples()
            // The housekeeper needs waking only if it may be waiting without a deadline (everything it saw
            // was in the ledger) or a segment just became deletable; otherwise its ledger deadline covers
            // this acknowledgement. It re-reads the state after each pass, so no change is missed.
            return previous <= state.persistedAcknowledgedThrough
                || (state.segments.count > 1 && state.segments[0].last <= sequence)
        }
        if wake { core.lock.signal(.housekeeper) }
    }

    /// The acknowledged position (in memory; the ledger may lag by up to the ledger interval).
    public var acknowledgedThrough: UInt64 {
        core.lock.withLock { $0.acknowledgedThrough }
    }

    public var stats: Stats {
        core.lock.withLock { $0.stats(now: Clock.wallSeconds()) }
    }

    /// Finishes pending appends, syncs, writes the ledger, releases the directory lock. Appends after
    /// (or racing with) `close` fail with ``DiskBufferError/Code/closed``; `waitForRecords` returns.
    public func close() async {
        await core.stop(crash: false)
    }
}
