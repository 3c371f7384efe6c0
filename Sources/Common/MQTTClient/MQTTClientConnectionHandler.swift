import NIOCore

/// The NIO side of `MQTTClientConnection.StateMachine`: place it after `MQTTPacketDecoder` /
/// `MQTTPacketEncoder` (sharing one `MQTTVersionBox`). Write `MQTTClientConnection.Command`s to the channel;
/// events arrive through `onEvent` on the channel's event loop.
///
/// Persistence: the handler collects the machine's `InflightChange`s and the packets that follow them,
/// calls `persist` once for all changes collected so far (group commit), and writes those packets only when
/// that future succeeds. A failed persist closes the connection (nothing unpersisted was sent). A `removed`
/// change (PUBACK / PUBCOMP) holds nothing back: no packet depends on it, and an entry whose removal was not
/// yet written only gets its PUBREL (or QoS 1 PUBLISH) resent after a crash. It goes with the next persist,
/// or at the next tick if none comes, so an otherwise quiet link writes once, not once per acknowledgement.
///
/// Time: the handler ticks every `tickInterval` and counts virtual time from those ticks, so keep-alive
/// works on `EmbeddedEventLoop.advanceTime` as on a real loop.
public final class MQTTClientConnectionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = MQTTPacket
    public typealias OutboundIn = MQTTClientConnection.Command
    public typealias OutboundOut = MQTTPacket

    public typealias Persist = ([MQTTClientSession.InflightChange]) -> EventLoopFuture<Void>

    private var machine: MQTTClientConnection.StateMachine
    private let persist: Persist?
    private let onEvent: (MQTTClientConnection.Event) -> Void
    private let tickInterval: TimeAmount
    private var ticks: Int64 = 0
    private var tickTask: RepeatedTask?
    private var context: ChannelHandlerContext?
    private var closeError: MQTTClientError?
    private var closedReported = false
    private var closedNormally = false

    private struct Batch {
        var changes: [MQTTClientSession.InflightChange] = []
        var packets: [MQTTPacket] = []
        var close: MQTTClientError?? = nil
    }
    private var open = Batch()
    private var waiting: [Batch] = []
    /// `removed` changes not written yet: they go first in the next persist (see the type's comment).
    private var deferred: [MQTTClientSession.InflightChange] = []
    private var persisting = false
    private var inRead = false

    public init(
        configuration: MQTTClientConnection.Configuration,
        session: MQTTClientSession = MQTTClientSession(),
        tickInterval: TimeAmount = .milliseconds(500),
        persist: Persist? = nil,
        onEvent: @escaping (MQTTClientConnection.Event) -> Void
    ) {
        self.machine = MQTTClientConnection.StateMachine(configuration: configuration, session: session)
        self.persist = persist
        self.onEvent = onEvent
        self.tickInterval = tickInterval
    }

    /// The current session (on the event loop).
    public var session: MQTTClientSession { machine.session }

    private var now: NIODeadline { .uptimeNanoseconds(UInt64(ticks) * UInt64(tickInterval.nanoseconds)) }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { start(context: context) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        tickTask?.cancel()
        tickTask = nil
        self.context = nil
    }

    public func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard tickTask == nil else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        tickTask = context.eventLoop.scheduleRepeatedTask(initialDelay: tickInterval, delay: tickInterval) { _ in
            let handler = loopBound.value
            handler.ticks += 1
            handler.perform(handler.machine.tick(now: handler.now))
            handler.persistDeferred()
        }
        perform(machine.connectionEstablished(now: now))
    }

    public func channelInactive(context: ChannelHandlerContext) {
        tickTask?.cancel()
        tickTask = nil
        // The session lives on without these entries: write their removal even though no packet waits for it.
        if let persist, !deferred.isEmpty {
            _ = persist(deferred)
            deferred = []
        }
        machine.connectionClosed()
        reportClosed(closedNormally ? nil : closeError ?? MQTTClientError(.connectionClosed, "the connection closed"))
        context.fireChannelInactive()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        inRead = true
        perform(machine.received(unwrapInboundIn(data), now: now), flush: false)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        inRead = false
        flushOpenBatch()
        context.fireChannelReadComplete()
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let codecError = error as? MQTTCodecError {
            closeError = MQTTClientError(.codec, reasonCode: codecError.reasonCode, codecError.message)
        } else if closeError == nil {
            closeError = MQTTClientError(.connectionClosed, "\(error)")
        }
        context.close(promise: nil)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .publish(let publish, let tag):
            perform(machine.publish(publish, tag: tag, now: now), flush: false)
        case .subscribe(let subscriptions, let properties):
            perform(machine.subscribe(subscriptions, properties: properties, now: now), flush: false)
        case .acknowledge(let packetId, let qos):
            perform(machine.acknowledge(packetId: packetId, qos: qos, now: now), flush: false)
        case .disconnect:
            perform(machine.disconnect(), flush: false)
        }
        promise?.succeed(())
    }

    public func flush(context: ChannelHandlerContext) {
        if !inRead { flushOpenBatch() }
    }

    // MARK: performing actions

    private func perform(_ actions: [MQTTClientConnection.StateMachine.Action], flush: Bool = true) {
        for action in actions {
            switch action {
            case .send(let packet):
                open.packets.append(packet)
            case .persist(.removed(let packetId)):
                if persist != nil { deferred.append(.removed(packetId: packetId)) }
            case .persist(let change):
                if persist != nil {
                    // Packets already collected do not depend on this change: seal them first.
                    if !open.packets.isEmpty { sealOpenBatch() }
                    open.changes.append(change)
                }
            case .event(let event):
                onEvent(event)
            case .close(let error):
                open.close = .some(error)
                sealOpenBatch()
            }
        }
        if flush && !inRead { flushOpenBatch() }
    }

    private func sealOpenBatch() {
        if !open.changes.isEmpty || !open.packets.isEmpty || open.close != nil {
            waiting.append(open)
        }
        open = Batch()
    }

    private func flushOpenBatch() {
        sealOpenBatch()
        pump()
    }

    /// Writes the waiting batches that need no persist, up to the next that does, and starts that persist.
    /// `written`: the caller wrote batches and left their flush to this one.
    private func pump(written: Bool = false) {
        guard let context else { return }
        // Batches written here and in a persist's completion share one flush (one write(2) for all their
        // packets: a group commit's PUBLISHes or PUBRELs leave together, not one syscall each).
        var wrote = written
        defer { if wrote { context.flush() } }
        guard !persisting else { return }
        while !waiting.isEmpty {
            if waiting[0].changes.isEmpty {
                let batch = waiting.removeFirst()
                wrote = true
                if write(batch, context: context) { return }
                continue
            }
            // Group commit: every change waiting now, in order, in one persist. Deferred removals first: each
            // happened before any change waiting for the same packet id (an id is reused only once removed).
            var changes = deferred
            deferred = []
            var count = 0
            for batch in waiting {
                changes += batch.changes
                count += 1
                if batch.close != nil { break }
            }
            startPersist(changes, batches: count, context: context)
            return
        }
    }

    /// Writes the deferred removals when nothing else is being written (called on each tick).
    private func persistDeferred() {
        guard let context, !persisting, waiting.isEmpty, !deferred.isEmpty else { return }
        let changes = deferred
        deferred = []
        startPersist(changes, batches: 0, context: context)
    }

    /// Persists `changes`, then writes the first `batches` waiting batches (whose changes are among them).
    private func startPersist(_ changes: [MQTTClientSession.InflightChange], batches count: Int, context: ChannelHandlerContext) {
        persisting = true
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        persist!(changes).hop(to: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            handler.persisting = false
            guard let context = handler.context else { return }
            switch result {
            case .success:
                var written = false
                for _ in 0..<count {
                    guard !handler.waiting.isEmpty else { break }
                    let batch = handler.waiting.removeFirst()
                    if handler.write(batch, context: context) { return }
                    written = true
                }
                handler.pump(written: written)  // flushes what was written here and there
            case .failure(let error):
                handler.waiting.removeAll()
                handler.closeError = MQTTClientError(.connectionClosed, "persisting the in-flight state failed: \(error)")
                context.close(promise: nil)
            }
        }
    }

    /// Writes the batch's packets without flushing (the caller flushes); returns true if it closed the
    /// connection (flushed first).
    private func write(_ batch: Batch, context: ChannelHandlerContext) -> Bool {
        for packet in batch.packets {
            context.write(wrapOutboundOut(packet), promise: nil)
        }
        guard let close = batch.close else { return false }
        context.flush()
        if let close { closeError = close } else { closedNormally = true }
        waiting.removeAll()
        context.close(promise: nil)
        return true
    }

    private func reportClosed(_ error: MQTTClientError?) {
        guard !closedReported else { return }
        closedReported = true
        onEvent(.closed(error, session: machine.session))
    }
}

@available(*, unavailable)
extension MQTTClientConnectionHandler: Sendable {}
