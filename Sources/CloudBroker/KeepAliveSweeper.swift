import NIOCore
import Synchronization

/// One keep-alive timer per event loop instead of one per connection (a repeated task costs a few hundred
/// bytes per idle connection; DESIGN.md's footprint goal is per connection).
///
/// Each connection registers itself with its check interval (half its keep-alive); a repeated task on the
/// loop ticks every `tick` and calls `check` of the connections whose interval has elapsed since their last
/// check. A connection is checked at most `tick` later than with its own timer (the keep-alive limit is
/// 1.5 × keep-alive, so a 250 ms tick changes nothing that matters). Only touched on its event loop.
final class KeepAliveSweeper {
    private struct Entry {
        var connection: MQTTServerConnection
        var interval: TimeAmount
        var due: NIODeadline
    }

    static let tick = TimeAmount.milliseconds(250)
    private static let sweepers = Mutex<[ObjectIdentifier: NIOLoopBound<KeepAliveSweeper>]>([:])

    private let eventLoop: any EventLoop
    private var entries: [ObjectIdentifier: Entry] = [:]
    private var task: RepeatedTask?

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// The sweeper of `eventLoop` (created on first use; call on that loop).
    static func on(_ eventLoop: any EventLoop) -> KeepAliveSweeper {
        eventLoop.preconditionInEventLoop()
        let bound = sweepers.withLock { sweepers in
            let key = ObjectIdentifier(eventLoop)
            if let existing = sweepers[key] { return existing }
            let created = NIOLoopBound(KeepAliveSweeper(eventLoop: eventLoop), eventLoop: eventLoop)
            sweepers[key] = created
            return created
        }
        return bound.value
    }

    /// Checks `connection` every `interval` from now on (replacing an earlier registration).
    func register(_ connection: MQTTServerConnection, interval: TimeAmount) {
        entries[ObjectIdentifier(connection)] = Entry(connection: connection, interval: interval, due: eventLoop.now + interval)
        if task == nil {
            // The repeated task's closure is @Sendable; it runs on this loop, so it holds the sweeper loop-bound
            // (a strong reference: a sweeper lives as long as the process, in `sweepers`, and its task too).
            let bound = NIOLoopBound(self, eventLoop: eventLoop)
            task = eventLoop.scheduleRepeatedTask(initialDelay: Self.tick, delay: Self.tick) { _ in bound.value.sweep() }
        }
    }

    /// Stops checking `connection` (its channel closed).
    func unregister(_ connection: MQTTServerConnection) {
        entries.removeValue(forKey: ObjectIdentifier(connection))
    }

    private func sweep() {
        let now = eventLoop.now
        var due: [MQTTServerConnection] = []
        for (key, entry) in entries where entry.due <= now {
            due.append(entry.connection)
            entries[key]?.due = now + entry.interval
        }
        for connection in due { connection.keepAliveDue(now: now) }
    }
}
