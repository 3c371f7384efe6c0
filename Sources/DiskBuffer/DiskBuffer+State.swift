#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// A segment as the buffer knows it. `last` is `first - 1` while the segment is empty.
struct Segment: Sendable, Hashable {
    var first: UInt64
    var last: UInt64
    /// File size in bytes, header included (for the newest segment: what the writer has written).
    var bytes: Int64
    /// Damage was found and counted while reading; `last` has been lowered to the last good record.
    var damaged = false
}

/// One `append` call waiting for the writer: a single record, or a batch written as consecutive records
/// in one piece (all of it or none of it).
struct PendingAppend {
    enum Bodies {
        case one([UInt8], state: UInt32)
        /// Bodies and their CRC states (computed by the caller's thread).
        case many([[UInt8]], states: [UInt32])
    }

    enum Continuation {
        case one(UnsafeContinuation<Result<UInt64, DiskBufferError>, Never>)
        case many(UnsafeContinuation<Result<Range<UInt64>, DiskBufferError>, Never>)
        /// `append(contentsOf:completion:)`: called on the writer thread, no task to resume.
        case callback(@Sendable (Result<Range<UInt64>, DiskBufferError>) -> Void)
    }

    var bodies: Bodies
    /// Records in this append.
    var count: Int
    /// Bytes on disk: record headers and bodies.
    var size: Int64
    var continuation: Continuation

    /// Encodes the records, numbered from `first`, at the end of `buffer`.
    func encode(into buffer: inout [UInt8], first: UInt64) {
        switch bodies {
        case .one(let body, let state):
            RecordFormat.appendRecord(to: &buffer, sequence: first, body: body, bodyState: state)
        case .many(let bodies, let states):
            for index in bodies.indices {
                RecordFormat.appendRecord(to: &buffer, sequence: first + UInt64(index), body: bodies[index], bodyState: states[index])
            }
        }
    }

    func succeed(first: UInt64) {
        switch continuation {
        case .one(let continuation): continuation.resume(returning: .success(first))
        case .many(let continuation): continuation.resume(returning: .success(first..<(first + UInt64(count))))
        case .callback(let completion): completion(.success(first..<(first + UInt64(count))))
        }
    }

    func fail(_ error: DiskBufferError) {
        switch continuation {
        case .one(let continuation): continuation.resume(returning: .failure(error))
        case .many(let continuation): continuation.resume(returning: .failure(error))
        case .callback(let completion): completion(.failure(error))
        }
    }
}

struct Waiter {
    enum Wake {
        case continuation(CheckedContinuation<Void, Never>)
        /// `whenRecords(after:_:)`: called on the thread that made the records readable.
        case callback(@Sendable () -> Void)
    }

    var after: UInt64
    var wake: Wake

    func resume() {
        switch wake {
        case .continuation(let continuation): continuation.resume()
        case .callback(let callback): callback()
        }
    }
}

enum Lifecycle: Sendable {
    case open
    case closing
    case closed
}

/// Everything shared between callers and the writer thread, guarded by `Core.lock`.
struct State {
    var segments: [Segment]
    /// Sum of `segments[].bytes`.
    var diskBytes: Int64
    /// The last sequence handed to the kernel.
    var writtenThrough: UInt64
    /// The last sequence readers may see: synced (always, interval) or written (never).
    var readableThrough: UInt64
    var acknowledgedThrough: UInt64
    var persistedAcknowledgedThrough: UInt64
    var pending: [PendingAppend] = []
    var pendingBytes: Int64 = 0
    var lifecycle: Lifecycle = .open
    var crash = false
    var writerExited = false
    var stopWaiters: [CheckedContinuation<Void, Never>] = []
    /// Resumed by the writer after one full pass over everything requested before (test hook).
    var barriers: [CheckedContinuation<Void, Never>] = []
    var waiters: [Int: Waiter] = [:]
    var nextWaiterID = 0
    /// (first sequence of a batch, wall time) at most one per second, for the oldest-age statistic.
    var samples: [(sequence: UInt64, time: Double)] = []
    /// Segment files removed from `segments` by drop-oldest, for the writer to unlink.
    var unlinkQueue: [String] = []
    var droppedRecords: UInt64 = 0
    var syncs: UInt64 = 0
    /// Policy `interval`: the active segment and how far it was written, waiting for the syncer.
    var syncTarget: SyncTarget?
    /// Set by the writer when it exits; the syncer then sets `syncerExited` and returns.
    var syncerStop = false
    var syncerExited = false
    /// Test hook: while true, the syncer stops just before its fdatasync, as if the disk took forever.
    var syncerHeld = false
    /// Set by the writer when it exits; the housekeeper then sets `housekeeperExited` and returns.
    var housekeeperStop = false
    var housekeeperExited = false
    /// Test hook: while true, the housekeeper stops before each ledger write and deletion.
    var housekeeperHeld = false
    /// `settle` barriers the writer has passed, for the housekeeper to resume after its next pass.
    var housekeepingBarriers: [CheckedContinuation<Void, Never>] = []
    /// A read window (up to 1 MiB, or one record's size) kept between reads so that streaming reads
    /// reuse it instead of allocating; taken by a read, given back when it ends.
    var spareReadWindow: [UInt8] = []
    /// Where the last read stopped, so the next sequential read starts without a scan.
    var readHint: (sequence: UInt64, segmentFirst: UInt64, offset: Int64)?

    func unacknowledged(in segment: Segment) -> UInt64 {
        let start = max(segment.first, acknowledgedThrough + 1)
        return segment.last >= start ? segment.last - start + 1 : 0
    }

    /// Wholly acknowledged segments, never the newest.
    func deletableSegments() -> [Segment] {
        var count = 0
        while count + 1 < segments.count && segments[count].last <= acknowledgedThrough { count += 1 }
        return Array(segments.prefix(count))
    }

    /// Removes and returns the readers' waiters that can now read (or must return: closing).
    mutating func takeReadyWaiters() -> [Waiter] {
        guard !waiters.isEmpty else { return [] }
        var ready: [Waiter] = []
        for (id, waiter) in waiters where waiter.after < readableThrough || lifecycle != .open {
            ready.append(waiter)
            waiters.removeValue(forKey: id)
        }
        return ready
    }

    mutating func pruneSamples() {
        let oldest = acknowledgedThrough + 1
        var drop = 0
        while drop + 1 < samples.count && samples[drop + 1].sequence <= oldest { drop += 1 }
        if drop > 0 { samples.removeFirst(drop) }
    }

    func stats(now: Double) -> DiskBuffer.Stats {
        var records: UInt64 = 0
        for segment in segments { records += unacknowledged(in: segment) }
        var age: Double?
        if records > 0 {
            let oldest = max(acknowledgedThrough + 1, segments.first?.first ?? 0)
            if let sample = samples.last(where: { $0.sequence <= oldest }) ?? samples.first {
                age = max(0, now - sample.time)
            }
        }
        return DiskBuffer.Stats(
            records: records,
            bytes: diskBytes,
            segments: segments.count,
            oldestUnacknowledgedAgeSeconds: age,
            lastSequence: writtenThrough,
            acknowledgedThrough: acknowledgedThrough,
            droppedRecords: droppedRecords,
            syncs: syncs
        )
    }
}

/// The buffer's shared parts: configuration, logger, metrics and the locked state.
final class Core: Sendable {
    let configuration: DiskBuffer.Configuration
    let logger: Logger
    let metrics = DiskBufferMetrics()
    let lock: ConditionLock<State>
    /// The flock'ed lock file; closed by the writer thread when it exits.
    let lockDescriptor: Int32

    init(configuration: DiskBuffer.Configuration, logger: Logger, state: State, lockDescriptor: Int32) {
        self.configuration = configuration
        self.logger = logger
        self.lock = ConditionLock(state)
        self.lockDescriptor = lockDescriptor
    }

    func segmentPath(_ first: UInt64) -> String {
        configuration.directory + "/" + RecordFormat.segmentName(firstSequence: first)
    }

    /// Applies the size cap to a new record of `size` bytes; returns the refusal, if any. Called locked.
    func admit(_ size: Int64, _ state: inout State) -> DiskBufferError? {
        let limit = configuration.maxBytes
        guard state.diskBytes + state.pendingBytes + size > limit else { return nil }
        if configuration.overflowPolicy == .dropOldest {
            while state.diskBytes + state.pendingBytes + size > limit, state.segments.count > 1 {
                let segment = state.segments.removeFirst()
                state.diskBytes -= segment.bytes
                state.unlinkQueue.append(segmentPath(segment.first))
                let lost = state.unacknowledged(in: segment)
                if lost > 0 {
                    state.droppedRecords += lost
                    metrics.droppedOverflow.increment(by: Int64(lost))
                    logger.warning("buffer full: dropped oldest segment", metadata: [
                        "buffer.segment": "\(RecordFormat.segmentName(firstSequence: segment.first))",
                        "buffer.dropped_records": "\(lost)",
                        "buffer.first_sequence": "\(max(segment.first, state.acknowledgedThrough + 1))",
                        "buffer.last_sequence": "\(segment.last)",
                    ])
                }
                if state.readHint?.segmentFirst == segment.first { state.readHint = nil }
            }
            if state.diskBytes + state.pendingBytes + size <= limit { return nil }
        }
        return DiskBufferError(.bufferFull, "buffer.max_bytes (\(limit)) reached")
    }

    /// Queues an append for the writer thread, or resumes it at once with the refusal (closed, cap).
    func enqueue(_ pending: PendingAppend) {
        var wake = false
        var dropped = false
        let refused: DiskBufferError? = lock.withLock { state in
            guard state.lifecycle == .open else {
                return DiskBufferError(.closed, "the buffer is closed")
            }
            let refusal = admit(pending.size, &state)
            dropped = !state.unlinkQueue.isEmpty
            if let refusal { return refusal }
            wake = state.pending.isEmpty
            state.pending.append(pending)
            state.pendingBytes += pending.size
            return nil
        }
        if dropped { lock.signal(.housekeeper) }
        if let refused {
            metrics.rejected(refused, records: pending.count)
            pending.fail(refused)
        } else if wake {
            lock.signal()
        }
    }

    /// Stops the writer thread: gracefully (drain, sync, ledger) or as if the process crashed.
    func stop(crash: Bool) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = lock.withLock { state -> Bool in
                if state.writerExited { return true }
                if state.lifecycle == .open { state.lifecycle = .closing }
                if crash { state.crash = true }
                state.stopWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() } else { lock.signal() }
        }
    }
}

extension DiskBuffer {
    /// Test hook: returns after the writer thread has handled everything requested so far (pending
    /// appends), and then the housekeeper (segment deletions after acknowledgements, dropped segments,
    /// a due ledger write).
    func settle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exited = core.lock.withLock { state -> Bool in
                if state.writerExited { return true }
                state.barriers.append(continuation)
                return false
            }
            if exited { continuation.resume() } else { core.lock.signal() }
        }
    }

    /// Test hook (policy `interval`): while held, the syncer stops just before each fdatasync, as if
    /// the disk took forever to sync; releasing lets it go on.
    func holdSyncs(_ held: Bool) {
        core.lock.withLock { $0.syncerHeld = held }
        core.lock.signal(.syncer)
    }

    /// Test hook: while held, the housekeeper stops before each ledger write and segment deletion, as if
    /// unlinking took forever; releasing lets it go on.
    func holdHousekeeping(_ held: Bool) {
        core.lock.withLock { $0.housekeeperHeld = held }
        core.lock.signal(.housekeeper)
    }

    /// Test hook: stops the writer as a SIGKILL would (no final sync, no ledger write) and releases the
    /// directory lock, so the directory can be reopened in the same process.
    func simulateCrash() async {
        await core.stop(crash: true)
    }
}
