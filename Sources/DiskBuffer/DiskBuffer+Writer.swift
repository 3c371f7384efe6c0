#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// The writer thread: takes all pending appends at once, writes them with one `pwrite` per segment,
/// syncs per policy (one sync for the whole batch: group commit), then resumes the appenders. It also
/// runs the interval syncs, ledger writes and segment deletions. Everything here runs on that one
/// thread; the fields below are touched by no other.
final class Writer: @unchecked Sendable {
    let core: Core
    var active: FileHandle
    var activeFirst: UInt64
    var activeSize: Int64
    var nextSequence: UInt64
    /// Written but not yet synced data in the active segment.
    var unsynced = false
    var lastSync: UInt64
    var lastLedgerWrite: UInt64
    var buffer: [UInt8] = []
    let intervalNanoseconds: UInt64?
    let ledgerIntervalNanoseconds: UInt64

    init(core: Core, active: FileHandle, activeFirst: UInt64, activeSize: Int64, nextSequence: UInt64) {
        self.core = core
        self.active = active
        self.activeFirst = activeFirst
        self.activeSize = activeSize
        self.nextSequence = nextSequence
        let now = Clock.monotonicNanoseconds()
        lastSync = now
        lastLedgerWrite = now
        if case .interval(let milliseconds) = core.configuration.fsync {
            intervalNanoseconds = UInt64(milliseconds) * 1_000_000
        } else {
            intervalNanoseconds = nil
        }
        ledgerIntervalNanoseconds = UInt64(core.configuration.ledgerIntervalMilliseconds) * 1_000_000
    }

    private var policy: DiskBuffer.FsyncPolicy { core.configuration.fsync }

    private struct Work {
        var batch: [PendingAppend] = []
        var acknowledged: UInt64 = 0
        var deletable: [Segment] = []
        var unlink: [String] = []
        var writeLedger = false
        var syncNow = false
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
            if work.syncNow || (work.stopping && unsynced) { syncActive() }
            if work.writeLedger || !work.deletable.isEmpty || work.stopping {
                persistLedgerAndDelete(acknowledged: work.acknowledged, deletable: work.deletable)
            }
            for path in work.unlink {
                do { try FileSystem.remove(path) } catch {
                    core.logger.debug("cannot remove dropped segment", metadata: ["buffer.segment": "\(path)", "buffer.error": "\(error)"])
                }
            }
            updateGauges()
            for barrier in work.barriers { barrier.resume() }
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
        core.lock.withLock { state -> Work in
            while true {
                var work = Work()
                if state.crash {
                    work.crash = true
                    return work
                }
                let now = Clock.monotonicNanoseconds()
                var deadline: UInt64?
                if unsynced, let interval = intervalNanoseconds {
                    if now >= lastSync + interval { work.syncNow = true } else { deadline = lastSync + interval }
                }
                let ackPending = state.acknowledgedThrough > state.persistedAcknowledgedThrough
                if ackPending {
                    if now >= lastLedgerWrite + ledgerIntervalNanoseconds {
                        work.writeLedger = true
                    } else {
                        deadline = min(deadline ?? .max, lastLedgerWrite + ledgerIntervalNanoseconds)
                    }
                }
                // Wholly acknowledged segments, never the newest.
                var count = 0
                while count + 1 < state.segments.count && state.segments[count].last <= state.acknowledgedThrough {
                    count += 1
                }
                work.deletable = Array(state.segments.prefix(count))
                work.stopping = state.lifecycle != .open
                work.unlink = state.unlinkQueue
                state.unlinkQueue.removeAll()
                work.batch = state.pending
                state.pending.removeAll(keepingCapacity: true)
                work.acknowledged = state.acknowledgedThrough
                work.barriers = state.barriers
                state.barriers.removeAll()
                if !work.batch.isEmpty || work.syncNow || work.writeLedger || !work.deletable.isEmpty
                    || work.stopping || !work.unlink.isEmpty || !work.barriers.isEmpty {
                    return work
                }
                core.lock.wait(untilMonotonicNanoseconds: deadline)
            }
        }
    }

    // MARK: Appending

    private func write(_ batch: [PendingAppend]) {
        let segmentMax = Int64(core.configuration.effectiveSegmentMaxBytes)
        var index = 0
        while index < batch.count {
            buffer.removeAll(keepingCapacity: true)
            let start = index
            let first = nextSequence
            var size = activeSize
            while index < batch.count {
                let recordSize = Int64(RecordFormat.recordHeaderSize + batch[index].body.count)
                if size + recordSize > segmentMax && size > Int64(RecordFormat.segmentHeaderSize) { break }
                RecordFormat.appendRecord(
                    to: &buffer, sequence: first + UInt64(index - start),
                    body: batch[index].body, bodyState: batch[index].bodyState)
                size += recordSize
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
            let written = UInt64(part.count)
            nextSequence += written
            let added = size - activeSize
            activeSize = size
            let waiters = core.lock.withLock { state -> [Waiter] in
                state.writtenThrough = first + written - 1
                if case .interval = policy {} else { state.readableThrough = state.writtenThrough }
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
                return takeReadyWaiters(&state)
            }
            core.metrics.appends.increment(by: Int64(written))
            for (offset, pending) in part.enumerated() {
                pending.continuation.resume(returning: .success(first + UInt64(offset)))
            }
            for waiter in waiters { waiter.continuation.resume() }
        }
    }

    private func fail(_ part: ArraySlice<PendingAppend>, _ error: DiskBufferError) {
        var bytes: Int64 = 0
        for pending in part { bytes += Int64(RecordFormat.recordHeaderSize + pending.body.count) }
        core.lock.withLock { $0.pendingBytes -= bytes }
        core.logger.debug("append failed", metadata: ["buffer.error": "\(error)", "buffer.records": "\(part.count)"])
        for pending in part {
            core.metrics.rejected(error)
            pending.continuation.resume(returning: .failure(error))
        }
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
        lastSync = end
        unsynced = false
        core.metrics.fsyncs.increment()
        core.metrics.fsyncDuration.recordNanoseconds(Int64(end - start))
        let readableAdvances: Bool
        if case .interval = policy { readableAdvances = true } else { readableAdvances = false }
        let waiters = core.lock.withLock { state -> [Waiter] in
            state.syncs += 1
            guard readableAdvances else { return [] }
            state.readableThrough = state.writtenThrough
            return takeReadyWaiters(&state)
        }
        for waiter in waiters { waiter.continuation.resume() }
    }

    /// The interval sync (and the final one on close). A failure is logged and retried at the next tick.
    private func syncActive() {
        do { try sync() } catch {
            lastSync = Clock.monotonicNanoseconds()
            core.logger.warning("buffer sync failed", metadata: ["buffer.error": "\(error)"])
        }
    }

    private func takeReadyWaiters(_ state: inout State) -> [Waiter] {
        guard !state.waiters.isEmpty else { return [] }
        var ready: [Waiter] = []
        for (id, waiter) in state.waiters where waiter.after < state.readableThrough || state.lifecycle != .open {
            ready.append(waiter)
            state.waiters.removeValue(forKey: id)
        }
        return ready
    }

    // MARK: Ledger and deletion

    /// Writes the ledger, then deletes wholly acknowledged segments. If the ledger cannot be written
    /// (disk full), segments are deleted anyway so space comes back: the newest segment is kept, so no
    /// sequence can be reused, and a stale ledger only causes resends.
    private func persistLedgerAndDelete(acknowledged: UInt64, deletable: [Segment]) {
        let directory = core.configuration.directory
        let ledger = RecordFormat.encodeLedger(acknowledgedThrough: acknowledged, nextSequence: nextSequence)
        do {
            try AtomicFile.write(ledger, to: directory + "/" + RecordFormat.ledgerName)
            core.lock.withLock { state in
                state.persistedAcknowledgedThrough = max(state.persistedAcknowledgedThrough, acknowledged)
            }
        } catch {
            core.logger.warning("cannot write buffer ledger", metadata: ["buffer.error": "\(error)"])
        }
        lastLedgerWrite = Clock.monotonicNanoseconds()
        for segment in deletable {
            let path = core.segmentPath(segment.first)
            do {
                try FileSystem.remove(path)
            } catch {
                core.logger.debug("cannot remove acknowledged segment", metadata: ["buffer.segment": "\(path)", "buffer.error": "\(error)"])
                continue
            }
            core.lock.withLock { state in
                if let index = state.segments.firstIndex(where: { $0.first == segment.first }) {
                    state.diskBytes -= state.segments[index].bytes
                    state.segments.remove(at: index)
                }
                if state.readHint?.segmentFirst == segment.first { state.readHint = nil }
            }
            core.logger.debug("acknowledged segment deleted", metadata: ["buffer.segment": "\(RecordFormat.segmentName(firstSequence: segment.first))"])
        }
    }

    private func updateGauges() {
        let stats = core.lock.withLock { $0.stats(now: Clock.wallSeconds()) }
        core.metrics.bytes.record(stats.bytes)
        core.metrics.records.record(Int64(stats.records))
        core.metrics.oldestAge.record(stats.oldestUnacknowledgedAgeSeconds ?? 0)
    }

    // MARK: Exit

    private func exit(crash: Bool) {
        let (pending, waiters, stoppers) = core.lock.withLock { state in
            state.lifecycle = .closed
            state.writerExited = true
            let pending = state.pending
            state.pending.removeAll()
            state.pendingBytes = 0
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            let stoppers = state.stopWaiters + state.barriers
            state.stopWaiters.removeAll()
            state.barriers.removeAll()
            return (pending, waiters, stoppers)
        }
        // Close the active segment before releasing the directory lock.
        active.close()
        _ = Glibc.close(core.lockDescriptor)
        core.logger.debug(crash ? "buffer writer stopped (simulated crash)" : "buffer closed")
        let closed = DiskBufferError(.closed, "the buffer is closed")
        for append in pending { append.continuation.resume(returning: .failure(closed)) }
        for waiter in waiters { waiter.continuation.resume() }
        for stopper in stoppers { stopper.resume() }
    }
}
