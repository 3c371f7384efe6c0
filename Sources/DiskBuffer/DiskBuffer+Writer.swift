#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// The writer thread: takes all pending appends at once, writes them with one `pwrite` per segment,
/// syncs per policy `always` (one sync for the whole batch: group commit), then resumes the appenders.
/// With policy `interval` it hands each write to the ``Syncer`` thread instead, so appends never wait
/// for a sync. Ledger writes and segment deletions run on the ``Housekeeper`` thread (unlinking a
/// 64 MiB segment takes ~25 ms here), except the final ledger write at close. Everything here runs on
/// that one thread; the fields below are touched by no other.
final class Writer: @unchecked Sendable {
    let core: Core
    var active: FileHandle
    var activeFirst: UInt64
    var activeSize: Int64
    var nextSequence: UInt64
    /// Written data in the active segment that this thread has not synced (with policy `interval`
    /// the syncer may have synced it meanwhile: then a sync here costs little).
    var unsynced = false
    var buffer: [UInt8] = []
    /// Policy `interval`: a ``Syncer`` thread runs and must be stopped before the active file closes.
    let hasSyncer: Bool

    init(core: Core, active: FileHandle, activeFirst: UInt64, activeSize: Int64, nextSequence: UInt64) {
        self.core = core
        self.active = active
        self.activeFirst = activeFirst
        self.activeSize = activeSize
        self.nextSequence = nextSequence
        if case .interval = core.configuration.fsync { hasSyncer = true } else { hasSyncer = false }
    }

    private var policy: DiskBuffer.FsyncPolicy { core.configuration.fsync }

    /// Pending appends are written with one `pwrite` per segment and per this many bytes at most (an
    /// append larger than that, e.g. a big batch, is written alone, whole).
    static let maxWriteBytes = 4 << 20

    private struct Work {
        var batch: [PendingAppend] = []
        var stopping = false
        var crash = false
        var barriers: [CheckedContinuation<Void, Never>] = []
    }

    func run() {
        while true {
            let work = nextWork()
            if work.crash {
                exit(crash: true)
                return
            }
            if !work.batch.isEmpty { write(work.batch) }
            if work.stopping && unsynced { syncActive() }
            updateGauges()
            if !work.barriers.isEmpty {
                // The housekeeper resumes them after its next pass (deletions, a due ledger write).
                core.lock.withLock { $0.housekeepingBarriers += work.barriers }
                core.lock.signal(.housekeeper)
            }
            if work.stopping {
                let drained = core.lock.withLock { $0.pending.isEmpty }
                if drained {
                    exit(crash: false)
                    return
                }
            }
        }
    }

    /// Waits until there is something to do and takes it.
    private func nextWork() -> Work {
        core.lock.waitLoop(.writer) { state -> ConditionLock<State>.Step<Work> in
            var work = Work()
            if state.crash {
                work.crash = true
                return .done(work)
            }
            work.stopping = state.lifecycle != .open
            work.batch = state.pending
            state.pending.removeAll(keepingCapacity: true)
            work.barriers = state.barriers
            state.barriers.removeAll()
            if !work.batch.isEmpty || work.stopping || !work.barriers.isEmpty {
                return .done(work)
            }
            return .wait(until: nil)
        }
    }

    // MARK: Appending

    private func write(_ batch: [PendingAppend]) {
        let segmentMax = Int64(core.configuration.effectiveSegmentMaxBytes)
        // The write buffer keeps its capacity between batches, but never more than a write's worth (a
        // larger single record's is released after it): memory stays bounded however many appends
        // arrive at once.
        defer { if buffer.capacity > 2 * Self.maxWriteBytes { buffer = [] } }
        var index = 0
        while index < batch.count {
            buffer.removeAll(keepingCapacity: true)
            let start = index
            let first = nextSequence
            var records: UInt64 = 0
            var size = activeSize
            // Whole appends only: a batch append is one piece, never split across writes or segments.
            while index < batch.count {
                let appendSize = batch[index].size
                if size + appendSize > segmentMax && size > Int64(RecordFormat.segmentHeaderSize) { break }
                if !buffer.isEmpty && buffer.count + Int(appendSize) > Self.maxWriteBytes { break }
                batch[index].encode(into: &buffer, first: first + records)
                records += UInt64(batch[index].count)
                size += appendSize
                index += 1
            }
            if index == start {
                // The active segment is full: start the next one.
                do {
                    try roll()
                } catch {
                    fail(batch[start...], error)
                    return
                }
                continue
            }
            let part = batch[start..<index]
            do {
                try active.write(buffer, at: activeSize)
                unsynced = true
                if policy == .always { try sync() }
            } catch {
                // Cut whatever part of this batch reached the file; its sequences are not used.
                do { try active.truncate(to: activeSize) } catch {
                    core.logger.debug("cannot truncate failed write", metadata: ["buffer.error": "\(error)"])
                }
                fail(batch[start...], error)
                return
            }
            let written = records
            nextSequence += written
            let added = size - activeSize
            activeSize = size
            let active = active
            let hasSyncer = hasSyncer
            let (waiters, wakeSyncer) = core.lock.withLock { state -> ([Waiter], Bool) in
                state.writtenThrough = first + written - 1
                var wakeSyncer = false
                if hasSyncer {
                    // Readers wait for the syncer; a syncer already holding a target picks up the
                    // newer one when its interval ends.
                    wakeSyncer = state.syncTarget == nil
                    let since = state.syncTarget?.since ?? Clock.monotonicNanoseconds()
                    state.syncTarget = SyncTarget(handle: active, through: state.writtenThrough, since: since)
                } else {
                    state.readableThrough = state.writtenThrough
                }
                if var last = state.segments.last, last.first == activeFirst {
                    last.last = state.writtenThrough
                    last.bytes = activeSize
                    state.segments[state.segments.count - 1] = last
                }
                state.diskBytes += added
                state.pendingBytes -= added
                let now = Clock.wallSeconds()
                if state.samples.last.map({ now - $0.time >= 1 }) ?? true {
                    state.samples.append((first, now))
                }
                return (state.takeReadyWaiters(), wakeSyncer)
            }
            if wakeSyncer { core.lock.signal(.syncer) }
            core.metrics.appends.increment(by: Int64(written))
            var sequence = first
            for pending in part {
                pending.succeed(first: sequence)
                sequence += UInt64(pending.count)
            }
            for waiter in waiters { waiter.resume() }
        }
    }

    private func fail(_ part: ArraySlice<PendingAppend>, _ error: DiskBufferError) {
        var bytes: Int64 = 0
        var records = 0
        for pending in part {
            bytes += pending.size
            records += pending.count
        }
        core.lock.withLock { $0.pendingBytes -= bytes }
        core.logger.debug("append failed", metadata: ["buffer.error": "\(error)", "buffer.records": "\(records)"])
        core.metrics.rejected(error, records: records)
        for pending in part { pending.fail(error) }
    }

    /// Closes the active segment (synced, except with policy never) and starts one named `nextSequence`.
    private func roll() throws(DiskBufferError) {
        if unsynced && policy != .never { try sync() }
        let path = core.segmentPath(nextSequence)
        let handle = try FileHandle.open(path, flags: O_RDWR | O_CREAT | O_TRUNC)
        try handle.write(RecordFormat.segmentHeader(firstSequence: nextSequence, previousLast: nextSequence - 1), at: 0)
        if policy != .never {
            try handle.syncData()
            try FileSystem.syncDirectory(core.configuration.directory)
        }
        active = handle
        activeFirst = nextSequence
        activeSize = Int64(RecordFormat.segmentHeaderSize)
        unsynced = false
        core.lock.withLock { state in
            state.segments.append(Segment(first: activeFirst, last: activeFirst - 1, bytes: activeSize))
            state.diskBytes += activeSize
        }
        core.logger.debug("segment started", metadata: ["buffer.segment": "\(RecordFormat.segmentName(firstSequence: activeFirst))"])
    }

    /// fdatasync of the active segment, timed and counted. Readers may then see everything written.
    private func sync() throws(DiskBufferError) {
        let start = Clock.monotonicNanoseconds()
        try active.syncData()
        let end = Clock.monotonicNanoseconds()
        unsynced = false
        core.metrics.fsyncs.increment()
        core.metrics.fsyncDuration.recordNanoseconds(Int64(end - start))
        let active = active
        let readableAdvances = hasSyncer
        let waiters = core.lock.withLock { state -> [Waiter] in
            state.syncs += 1
            guard readableAdvances else { return [] }
            // Everything written is synced: the syncer's pending target for this file is covered.
            if state.syncTarget?.handle === active { state.syncTarget = nil }
            state.readableThrough = state.writtenThrough
            return state.takeReadyWaiters()
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The final sync on close. A failure is logged.
    private func syncActive() {
        do { try sync() } catch {
            core.logger.warning("buffer sync failed", metadata: ["buffer.error": "\(error)"])
        }
    }

    private func updateGauges() {
        guard core.configuration.publishesGauges else { return }
        let stats = core.lock.withLock { $0.stats(now: Clock.wallSeconds()) }
        core.metrics.bytes.record(stats.bytes)
        core.metrics.records.record(Int64(stats.records))
        core.metrics.oldestAge.record(stats.oldestUnacknowledgedAgeSeconds ?? 0)
    }

    // MARK: Exit

    private func exit(crash: Bool) {
        let hasSyncer = hasSyncer
        // The syncer may be syncing the active file: wait for it before closing that file. The
        // housekeeper may be writing the ledger: wait for it before writing the final one.
        core.lock.withLock { state in
            state.syncerStop = true
            state.housekeeperStop = true
        }
        core.lock.signal(.syncer)
        core.lock.signal(.housekeeper)
        core.lock.waitLoop(.writer) { state -> ConditionLock<State>.Step<Void> in
            (hasSyncer && !state.syncerExited) || !state.housekeeperExited ? .wait(until: nil) : .done(())
        }
        if !crash {
            let (acknowledged, next, deletable, unlink) = core.lock.withLock { state in
                defer { state.unlinkQueue.removeAll() }
                return (state.acknowledgedThrough, state.writtenThrough + 1, state.deletableSegments(), state.unlinkQueue)
            }
            core.persistLedgerAndDelete(acknowledged: acknowledged, nextSequence: next, deletable: deletable)
            core.removeDroppedSegments(unlink)
        }
        let (pending, waiters, stoppers) = core.lock.withLock { state in
            state.lifecycle = .closed
            state.writerExited = true
            let pending = state.pending
            state.pending.removeAll()
            state.pendingBytes = 0
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            let stoppers = state.stopWaiters + state.barriers + state.housekeepingBarriers
            state.stopWaiters.removeAll()
            state.barriers.removeAll()
            state.housekeepingBarriers.removeAll()
            return (pending, waiters, stoppers)
        }
        // Close the active segment before releasing the directory lock.
        active.close()
        _ = Glibc.close(core.lockDescriptor)
        core.logger.debug(crash ? "buffer writer stopped (simulated crash)" : "buffer closed")
        let closed = DiskBufferError(.closed, "the buffer is closed")
        for append in pending { append.fail(closed) }
        for waiter in waiters { waiter.resume() }
        for stopper in stoppers { stopper.resume() }
    }
}
