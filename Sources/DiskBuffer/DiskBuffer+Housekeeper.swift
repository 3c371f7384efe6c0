#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// The housekeeping thread: writes the ledger (at most every `ledgerIntervalMilliseconds`, and before
/// any deletion) and deletes wholly acknowledged segments and segments dropped by drop-oldest. It runs
/// beside the writer because unlinking a full 64 MiB segment takes ~25 ms and each ledger write two
/// fsyncs: on the writer thread they stalled every append behind them. The writer stops this thread
/// and waits for it before it writes the final ledger at close; the two never run `persistLedgerAndDelete`
/// at the same time.
final class Housekeeper: @unchecked Sendable {
    let core: Core
    let ledgerIntervalNanoseconds: UInt64
    /// Only this thread touches it.
    private var lastLedgerWrite: UInt64

    init(core: Core) {
        self.core = core
        ledgerIntervalNanoseconds = UInt64(core.configuration.ledgerIntervalMilliseconds) * 1_000_000
        lastLedgerWrite = Clock.monotonicNanoseconds()
    }

    private struct Work {
        var acknowledged: UInt64 = 0
        var nextSequence: UInt64 = 0
        var deletable: [Segment] = []
        var unlink: [String] = []
        var writeLedger = false
        var barriers: [CheckedContinuation<Void, Never>] = []
    }

    func run() {
        while let work = nextWork() {
            core.lock.waitLoop(.housekeeper) { state -> ConditionLock<State>.Step<Void> in
                state.housekeeperHeld && !state.housekeeperStop ? .wait(until: nil) : .done(())
            }
            if work.writeLedger || !work.deletable.isEmpty {
                core.persistLedgerAndDelete(
                    acknowledged: work.acknowledged, nextSequence: work.nextSequence, deletable: work.deletable)
                lastLedgerWrite = Clock.monotonicNanoseconds()
            }
            core.removeDroppedSegments(work.unlink)
            for barrier in work.barriers { barrier.resume() }
        }
    }

    /// Waits until there is something to do and takes it; nil when asked to stop.
    private func nextWork() -> Work? {
        core.lock.waitLoop(.housekeeper) { state -> ConditionLock<State>.Step<Work?> in
            if state.housekeeperStop {
                state.housekeeperExited = true
                core.lock.signal(.writer)
                return .done(nil)
            }
            var work = Work()
            var deadline: UInt64?
            if state.acknowledgedThrough > state.persistedAcknowledgedThrough {
                let due = lastLedgerWrite + ledgerIntervalNanoseconds
                if Clock.monotonicNanoseconds() >= due { work.writeLedger = true } else { deadline = due }
            }
            work.deletable = state.deletableSegments()
            work.unlink = state.unlinkQueue
            state.unlinkQueue.removeAll()
            work.acknowledged = state.acknowledgedThrough
            work.nextSequence = state.writtenThrough + 1
            work.barriers = state.housekeepingBarriers
            state.housekeepingBarriers.removeAll()
            if work.writeLedger || !work.deletable.isEmpty || !work.unlink.isEmpty || !work.barriers.isEmpty {
                return .done(work)
            }
            return .wait(until: deadline)
        }
    }
}

extension Core {
    /// Writes the ledger, then deletes wholly acknowledged segments. If the ledger cannot be written
    /// (disk full), segments are deleted anyway so space comes back: the newest segment is kept, so no
    /// sequence can be reused, and a stale ledger only causes resends. Called by one thread at a time:
    /// the housekeeper, or the writer at close after the housekeeper stopped.
    func persistLedgerAndDelete(acknowledged: UInt64, nextSequence: UInt64, deletable: [Segment]) {
        let directory = configuration.directory
        let ledger = RecordFormat.encodeLedger(acknowledgedThrough: acknowledged, nextSequence: nextSequence)
        do {
            try AtomicFile.write(ledger, to: directory + "/" + RecordFormat.ledgerName)
            lock.withLock { state in
                state.persistedAcknowledgedThrough = max(state.persistedAcknowledgedThrough, acknowledged)
            }
        } catch {
            logger.warning("cannot write buffer ledger", metadata: ["buffer.error": "\(error)"])
        }
        for segment in deletable {
            let path = segmentPath(segment.first)
            do {
                try FileSystem.remove(path)
            } catch {
                logger.debug("cannot remove acknowledged segment", metadata: ["buffer.segment": "\(path)", "buffer.error": "\(error)"])
                continue
            }
            lock.withLock { state in
                if let index = state.segments.firstIndex(where: { $0.first == segment.first }) {
                    state.diskBytes -= state.segments[index].bytes
                    state.segments.remove(at: index)
                }
                if state.readHint?.segmentFirst == segment.first { state.readHint = nil }
            }
            logger.debug("acknowledged segment deleted", metadata: ["buffer.segment": "\(RecordFormat.segmentName(firstSequence: segment.first))"])
        }
    }

    /// Unlinks segment files that drop-oldest already took out of `segments`.
    func removeDroppedSegments(_ paths: [String]) {
        for path in paths {
            do { try FileSystem.remove(path) } catch {
                logger.debug("cannot remove dropped segment", metadata: ["buffer.segment": "\(path)", "buffer.error": "\(error)"])
            }
        }
    }
}
