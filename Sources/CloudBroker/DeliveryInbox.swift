import NIOCore
import Synchronization

/// Kafka delivery reports of one event loop's publishes, and messages the Kafka consumer routed to its
/// connections, handed over from the poll threads in batches.
///
/// librdkafka reports a whole produce batch in one poll; posting each report as its own task woke the
/// event loop once per message and made every connection flush (one `write` syscall) per acknowledgement.
/// The poll thread instead appends to this inbox, and only the first report of a batch schedules a task;
/// that task runs every report queued so far, and the connections that wrote acknowledgements meanwhile
/// flush once each at its end (`flushAfterBatch`). Nothing waits for more reports: a batch is whatever
/// arrived before the loop ran the task, so latency is never added.
final class DeliveryInbox: Sendable {
    private static let inboxes = Mutex<[ObjectIdentifier: DeliveryInbox]>([:])

    let eventLoop: any EventLoop
    private let pending = Mutex<[@Sendable () -> Void]>([])
    /// Loop-confined: whether a batch is running, and who flushes at its end.
    private let batch: NIOLoopBoundBox<Batch>

    private struct Batch {
        var running = false
        var flushes: [@Sendable () -> Void] = []
    }

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.batch = NIOLoopBoundBox(Batch(), eventLoop: eventLoop)
    }

    /// The inbox of `eventLoop` (created on first use; callable from any thread).
    static func on(_ eventLoop: any EventLoop) -> DeliveryInbox {
        inboxes.withLock { inboxes in
            let key = ObjectIdentifier(eventLoop)
            if let existing = inboxes[key] { return existing }
            let created = DeliveryInbox(eventLoop: eventLoop)
            inboxes[key] = created
            return created
        }
    }

    /// Runs `report` on the event loop, in order with every other report posted here. Any thread.
    func post(_ report: @escaping @Sendable () -> Void) {
        let first = pending.withLock { pending in
            pending.append(report)
            return pending.count == 1
        }
        if first { eventLoop.execute { self.runBatch() } }
    }

    /// Whether a batch is running now (on the event loop only): a connection writing then defers its flush.
    var isRunningBatch: Bool { batch.value.running }

    /// Calls `flush` once the running batch has ended (on the event loop, during a batch only).
    func flushAfterBatch(_ flush: @escaping @Sendable () -> Void) {
        batch.value.flushes.append(flush)
    }

    private func runBatch() {
        let reports = pending.withLock { pending in
            let taken = pending
            pending.removeAll(keepingCapacity: true)
            return taken
        }
        batch.value.running = true
        for report in reports { report() }
        batch.value.running = false
        let flushes = batch.value.flushes
        batch.value.flushes.removeAll(keepingCapacity: true)
        for flush in flushes { flush() }
    }
}
