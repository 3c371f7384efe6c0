#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

/// What the writer hands the interval sync thread: the active segment and the last sequence written
/// to it. Set by the writer after each write (policy `interval` only), taken by the syncer when due.
struct SyncTarget {
    var handle: FileHandle
    var through: UInt64
    /// When the first write this target covers was handed over (monotonic): the oldest unsynced write.
    var since: UInt64
}

/// The interval sync thread (policy `interval` only): every `interval` it fdatasyncs the active
/// segment if the writer wrote to it since the last sync, then lets readers see what that sync covered.
/// A write after a quiet spell waits half an interval for the writes that follow it (a burst of device
/// publishes shares one sync, and the uplink one read and one group commit for them); no write waits
/// longer than `interval` plus a sync.
/// It runs beside the writer so that appends never wait for a sync: the writer keeps writing new
/// records while the disk flushes older ones. It holds its own reference to the segment's file, so a
/// segment the writer has moved on from stays open until its sync returns. The writer stops this thread
/// and waits for it before it closes the active segment.
final class Syncer: @unchecked Sendable {
    let core: Core
    let intervalNanoseconds: UInt64
    /// End of the last sync (monotonic); only this thread touches it.
    private var lastSync: UInt64

    init(core: Core, intervalNanoseconds: UInt64) {
        self.core = core
        self.intervalNanoseconds = intervalNanoseconds
        lastSync = 0  // the first write after opening comes after a quiet spell
    }

    func run() {
        while let target = nextTarget() {
            sync(target)
        }
    }

    /// Waits until a sync is due and takes its target; nil when asked to stop.
    private func nextTarget() -> SyncTarget? {
        core.lock.waitLoop(.syncer) { state -> ConditionLock<State>.Step<SyncTarget?> in
            if state.syncerStop {
                state.syncerExited = true
                core.lock.signal(.writer)
                return .done(nil)
            }
            guard let target = state.syncTarget else { return .wait(until: nil) }
            let due = max(lastSync + intervalNanoseconds, target.since + intervalNanoseconds / 2)
            guard Clock.monotonicNanoseconds() >= due else { return .wait(until: due) }
            state.syncTarget = nil
            return .done(target)
        }
    }

    private func sync(_ target: SyncTarget) {
        core.lock.waitLoop(.syncer) { state -> ConditionLock<State>.Step<Void> in
            state.syncerHeld && !state.syncerStop ? .wait(until: nil) : .done(())
        }
        let start = Clock.monotonicNanoseconds()
        do {
            try target.handle.syncData()
        } catch {
            lastSync = Clock.monotonicNanoseconds()
            core.logger.warning("buffer sync failed", metadata: ["buffer.error": "\(error)"])
            // Retried at the next tick, unless the writer has handed over something newer meanwhile.
            core.lock.withLock { state in
                if state.syncTarget == nil { state.syncTarget = target }
            }
            return
        }
        let end = Clock.monotonicNanoseconds()
        lastSync = end
        core.metrics.fsyncs.increment()
        core.metrics.fsyncDuration.recordNanoseconds(Int64(end - start))
        let waiters = core.lock.withLock { state -> [Waiter] in
            state.syncs += 1
            state.readableThrough = max(state.readableThrough, target.through)
            return state.takeReadyWaiters()
        }
        for waiter in waiters { waiter.resume() }
    }
}
