import Common
import DiskBuffer
import Logging
import NIOCore
import Synchronization

/// Where device publishes go: the disk buffer in production, a fake in handler tests.
protocol RecordSink: Sendable {
    /// Returns once the record is durable under the buffer's fsync policy.
    func append(_ body: [UInt8]) async throws(DiskBufferError) -> UInt64
    /// Stores the bodies as consecutive records, all or none; returns once they are durable.
    func append(contentsOf bodies: [[UInt8]]) async throws(DiskBufferError) -> Range<UInt64>
    /// The same without a task: `completion` runs once, on any thread, when they are durable or failed.
    func append(contentsOf bodies: [[UInt8]], completion: @escaping @Sendable (Result<Range<UInt64>, DiskBufferError>) -> Void)
    /// The last sequence appended so far.
    var lastSequence: UInt64 { get }
}

extension RecordSink {
    /// One append after the other (sinks without a batch append: test fakes).
    func append(contentsOf bodies: [[UInt8]]) async throws(DiskBufferError) -> Range<UInt64> {
        var sequences: [UInt64] = []
        for body in bodies { sequences.append(try await append(body)) }
        guard let first = sequences.first, let last = sequences.last else { return 0..<0 }
        return first..<last + 1
    }

    /// Through a task (sinks without a callback append: test fakes).
    func append(contentsOf bodies: [[UInt8]], completion: @escaping @Sendable (Result<Range<UInt64>, DiskBufferError>) -> Void) {
        Task {
            do throws(DiskBufferError) {
                completion(.success(try await append(contentsOf: bodies)))
            } catch {
                completion(.failure(error))
            }
        }
    }
}

extension DiskBuffer: RecordSink {
    var lastSequence: UInt64 { stats.lastSequence }
}

/// Which connection holds each client id (a new CONNECT with the same id closes the old connection), and
/// each connection's command subscriptions.
final class DeviceRegistry: Sendable {
    struct Entry {
        var owner: ObjectIdentifier
        var channel: any Channel
        var subscriptions: [MQTTTopicFilter: MQTTQoS] = [:]
        var nextPacketId: UInt16 = 1
    }

    private let connections = Mutex<[String: Entry]>([:])
    private let counter = Mutex(0)
    /// Store chains of closed connections still running, by client id: a reconnecting device's CONNACK
    /// waits for them, so its session (QoS 2 ids) is complete before it can resend.
    private let lingering = Mutex<[String: EventLoopFuture<Void>]>([:])

    func linger(_ clientId: String, until drained: EventLoopFuture<Void>) {
        lingering.withLock { $0[clientId] = drained }
        drained.whenComplete { _ in
            self.lingering.withLock { table in
                if table[clientId] === drained { table[clientId] = nil }
            }
        }
    }

    func lingeringStores(_ clientId: String) -> EventLoopFuture<Void>? {
        lingering.withLock { $0[clientId] }
    }

    func subscribe(_ clientId: String, owner: ObjectIdentifier, _ subscriptions: [MQTTSubscription]) {
        connections.withLock { table in
            guard table[clientId]?.owner == owner else { return }
            for subscription in subscriptions { table[clientId]?.subscriptions[subscription.topicFilter] = subscription.qos }
        }
    }

    func unsubscribe(_ clientId: String, owner: ObjectIdentifier, _ filters: [MQTTTopicFilter]) {
        connections.withLock { table in
            guard table[clientId]?.owner == owner else { return }
            for filter in filters { table[clientId]?.subscriptions[filter] = nil }
        }
    }

    /// Sends a command from the cloud to every connected device with a matching subscription, at
    /// min(its QoS, the granted QoS). Best effort: not queued for offline devices, not retried. Returns
    /// how many devices it went to.
    @discardableResult
    func deliver(_ publish: MQTTPublish) -> Int {
        let targets = connections.withLock { table -> [(any Channel, MQTTPublish)] in
            var targets: [(any Channel, MQTTPublish)] = []
            for (clientId, entry) in table {
                guard let granted = entry.subscriptions.filter({ $0.key.matches(publish.topic) }).values.max() else { continue }
                var message = MQTTPublish(topic: publish.topic, payload: publish.payload, qos: min(granted, publish.qos))
                if message.qos != .atMostOnce {
                    message.packetId = entry.nextPacketId
                    table[clientId]?.nextPacketId = entry.nextPacketId == UInt16.max ? 1 : entry.nextPacketId + 1
                }
                targets.append((entry.channel, message))
            }
            return targets
        }
        for (channel, message) in targets { channel.writeAndFlush(MQTTPacket.publish(message), promise: nil) }
        return targets.count
    }

    func nextConnectionNumber() -> Int { counter.withLock { $0 += 1; return $0 } }

    /// Registers the connection; closes a previous one with the same client id and returns its close future.
    func register(_ clientId: String, owner: ObjectIdentifier, channel: any Channel) -> EventLoopFuture<Void>? {
        let previous = connections.withLock { table in
            defer { table[clientId] = Entry(owner: owner, channel: channel) }
            return table[clientId]
        }
        guard let previous, previous.owner != owner else { return nil }
        previous.channel.close(promise: nil)
        return previous.channel.closeFuture
    }

    func unregister(_ clientId: String, owner: ObjectIdentifier) {
        connections.withLock { table in
            if table[clientId]?.owner == owner { table[clientId] = nil }
        }
    }

    var count: Int { connections.withLock { $0.count } }
}

/// Device stores without a device session to record (QoS 0, QoS 1, QoS 2 of a clean session), queued as
/// one `append(contentsOf:)`. Filled on the event loop until it starts (`close`), then read by its task, and
/// its results by the event loop after the task.
final class StoreBatch: @unchecked Sendable {
    /// The lane's priority and buffer: a batch takes stores of one lane only.
    let lane: Int
    let sink: any RecordSink
    private(set) var bodies: [[UInt8]]
    private(set) var completions: [DeviceConnection.StateMachine.Completion]
    private var bytes: Int
    private(set) var isOpen = true
    /// One per store, set by `store(in:)`.
    private(set) var results: [Result<Void, any Error>] = []
    /// A batch takes no more once its bodies reach this size.
    static let maxBytes = 1 << 20

    init(_ body: [UInt8], _ completion: DeviceConnection.StateMachine.Completion, lane: RecordLanes.Lane) {
        self.lane = lane.priority
        sink = lane.sink
        bodies = [body]
        completions = [completion]
        bytes = body.count
    }

    /// Adds a store unless the batch has started, is full, or is another lane's.
    func add(_ body: [UInt8], _ completion: DeviceConnection.StateMachine.Completion, lane: Int) -> Bool {
        guard isOpen, lane == self.lane, bytes + body.count <= Self.maxBytes else { return false }
        bodies.append(body)
        completions.append(completion)
        bytes += body.count
        return true
    }

    func close() { isOpen = false }

    /// Appends the batch; the future succeeds on `eventLoop` once `results` are set. No task: the buffer's
    /// writer thread completes the promise, so a store costs one hop to the writer and one back.
    func store(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        sink.append(contentsOf: bodies) { result in
            switch result {
            case .success:
                self.results = Array(repeating: .success(()), count: self.bodies.count)
                promise.succeed(())
            case .failure(let error) where error.code == .recordTooLarge && self.bodies.count > 1:
                // One body too large (or a batch over a small buffer's segment) must not refuse the others.
                promise.completeWithTask { await self.storeOneByOne() }
            case .failure(let error):
                self.results = Array(repeating: .failure(error), count: self.bodies.count)
                promise.succeed(())
            }
        }
        return promise.futureResult
    }

    private func storeOneByOne() async {
        for body in bodies {
            do {
                _ = try await sink.append(body)
                results.append(.success(()))
            } catch {
                results.append(.failure(error))
            }
        }
    }
}

/// The NIO side of `DeviceConnection.StateMachine`, after `MQTTPacketDecoder` / `MQTTPacketEncoder`.
///
/// Stores run one after another per connection (a future chain), so a device's records enter the buffer in
/// the order it sent them and its acks go out in that order. Publishes read while a store is running and
/// needing no device-session write join one `StoreBatch` (one batch append); reading pauses while more than
/// `maximumPendingStores` are waiting (backpressure instead of memory growth).
final class DeviceConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    private var machine: DeviceConnection.StateMachine
    private let lanes: RecordLanes
    private let registry: DeviceRegistry
    private var logger: Logger
    private let tickInterval: TimeAmount
    private let maximumPendingStores: Int

    private var context: ChannelHandlerContext?
    private var chain: EventLoopFuture<Void>?
    /// The last queued batch of stores, while it has not started and nothing was queued after it.
    private var openBatch: StoreBatch?
    /// While a batch's acks are sent: packets are written, and flushed once after the batch.
    private var holdingFlush = false
    private var flushHeld = false
    private var pendingStores = 0
    private var readHeld = false
    private var connackSent = false
    private var ticks: Int64 = 0
    private var lastReceivedTick: Int64 = 0
    private var tickTask: RepeatedTask?
    private var registeredClientId: String?
    /// Shutting down: read nothing more, close once the queued stores are acknowledged.
    private var draining = false

    init(
        lanes: RecordLanes,
        registry: DeviceRegistry,
        receiveMaximum: UInt16,
        logger: Logger,
        tickInterval: TimeAmount = .seconds(1),
        maximumPendingStores: Int = 1024
    ) {
        self.machine = DeviceConnection.StateMachine(receiveMaximum: receiveMaximum, connectionNumber: registry.nextConnectionNumber())
        self.lanes = lanes
        self.registry = registry
        self.logger = logger
        self.tickInterval = tickInterval
        self.maximumPendingStores = maximumPendingStores
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        chain = context.eventLoop.makeSucceededVoidFuture()
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        tickTask = context.eventLoop.scheduleRepeatedTask(initialDelay: tickInterval, delay: tickInterval) { _ in
            loopBound.value.tick()
        }
        AgentMetrics.deviceConnections.increment()
        AgentMetrics.deviceConnectionsTotal.increment()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let registeredClientId, let chain { registry.linger(registeredClientId, until: chain) }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        tickTask?.cancel()
        self.context = nil
        AgentMetrics.deviceConnections.decrement()
        if let registeredClientId { registry.unregister(registeredClientId, owner: ObjectIdentifier(self)) }
    }

    private func tick() {
        ticks += 1
        let keepAlive = Int64(machine.keepAlive)
        guard keepAlive > 0 else { return }
        let idle = (ticks - lastReceivedTick) * tickInterval.nanoseconds
        if idle >= keepAlive * 1_500_000_000 { perform(machine.keepAliveExpired()) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is DeviceListener.Drain else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !draining else { return }
        draining = true
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        (chain ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in
            let handler = loopBound.value
            guard let context = handler.context else { return }
            handler.close(reasonCode: handler.connackSent ? .serverShuttingDown : nil, message: "the agent is shutting down", context: context)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Packets already decoded when draining began are dropped unacknowledged: the device resends them.
        guard !draining else { return }
        lastReceivedTick = ticks
        let packet = unwrapInboundIn(data)
        if case .publish(let publish) = packet, machine.isDuplicate(publish) { AgentMetrics.duplicatesIgnored.increment() }
        perform(machine.received(packet))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let codecError = error as? MQTTCodecError {
            AgentMetrics.malformed.increment()
            logger.info("Closing a device connection after a bad packet", metadata: [
                "mqtt.client_id": "\(machine.clientId)", "mqtt.reason_code": "\(codecError.reasonCode)",
                "error.message": "\(codecError.message)",
            ])
            perform(machine.close(codecError.reasonCode, codecError.message))
        } else {
            logger.debug("Device connection error", metadata: ["mqtt.client_id": "\(machine.clientId)", "error.message": "\(error)"])
            context.close(promise: nil)
        }
    }

    func read(context: ChannelHandlerContext) {
        if draining { return }
        if pendingStores > maximumPendingStores {
            readHeld = true
        } else {
            context.read()
        }
    }

    private func perform(_ actions: [DeviceConnection.StateMachine.Action]) {
        guard let context else { return }
        for action in actions {
            switch action {
            case .send(let packet):
                if case .connack = packet { connackSent = true }
                if holdingFlush {
                    context.write(wrapOutboundOut(packet), promise: nil)
                    flushHeld = true
                } else {
                    context.writeAndFlush(wrapOutboundOut(packet), promise: nil)
                }
            case .loadSession(let clientId, let cleanStart):
                logger[metadataKey: "mqtt.client_id"] = "\(clientId)"
                let previousClosed = registry.register(clientId, owner: ObjectIdentifier(self), channel: context.channel)
                registeredClientId = clientId
                // A previous connection of this device may still be storing: wait for its stores first.
                let eventLoop = context.eventLoop
                let registry = self.registry
                let closed = previousClosed?.hop(to: eventLoop) ?? eventLoop.makeSucceededVoidFuture()
                let drained = closed.flatMap { registry.lingeringStores(clientId)?.hop(to: eventLoop) ?? eventLoop.makeSucceededVoidFuture() }
                let loopBound = NIOLoopBound(self, eventLoop: eventLoop)
                let lanes = self.lanes
                drained.whenComplete { _ in
                    let handler = loopBound.value
                    var existing: Set<UInt16>? = nil
                    if cleanStart {
                        lanes.discard(clientId)
                    } else {
                        let present = lanes.open(clientId)
                        existing = present ? lanes.session(clientId) ?? [] : nil
                    }
                    handler.perform(handler.machine.sessionLoaded(existing: existing))
                }
            case .store(let publish, let completion):
                enqueueStore(publish, completion: completion, context: context)
            case .subscribe(let subscriptions):
                registry.subscribe(machine.clientId, owner: ObjectIdentifier(self), subscriptions)
            case .unsubscribe(let filters):
                registry.unsubscribe(machine.clientId, owner: ObjectIdentifier(self), filters)
            case .release(let packetId, let persist):
                enqueue(context: context) { [lanes, clientId = machine.clientId] in
                    if persist { try await lanes.remove([packetId], for: clientId) }
                } then: { handler, result in
                    switch result {
                    case .success: handler.perform(handler.machine.released(packetId))
                    case .failure(let error): handler.fail("persisting the device session failed: \(error)")
                    }
                }
            case .close(let reasonCode, let message):
                close(reasonCode: reasonCode, message: message, context: context)
                return
            }
        }
    }

    private func enqueueStore(_ publish: MQTTPublish, completion: DeviceConnection.StateMachine.Completion, context: ChannelHandlerContext) {
        let body = AgentRecord.encode(
            publish, deviceId: machine.clientId, persistentSession: machine.persistent, receivedAtMilliseconds: Self.wallMilliseconds())
        AgentMetrics.received(qos: publish.qos == .atMostOnce ? .zero : publish.qos == .atLeastOnce ? .one : .two).increment()
        AgentMetrics.receivedBytes.increment(by: publish.payload.readableBytes)
        pendingStores += 1
        let lane = lanes.lane(for: publish.topic)
        guard case .pubrec(let id, persist: true) = completion else {
            // No device session to record: joins the stores of its lane waiting to start, appended as one batch.
            if let openBatch, openBatch.add(body, completion, lane: lane.priority) { return }
            enqueueBatch(StoreBatch(body, completion, lane: lane), context: context)
            return
        }
        enqueue(context: context) { [sink = lane.sink, sessions = lane.sessions, clientId = machine.clientId] in
            let token = sessions.beginStore(lastSequence: sink.lastSequence)
            do {
                let sequence = try await sink.append(body)
                try await sessions.insert(id, sequence: sequence, for: clientId)
                sessions.endStore(token, sequence: sequence)
            } catch {
                sessions.endStore(token, sequence: nil)
                throw error
            }
        } then: { handler, result in
            handler.stored(completion, result)
        }
    }

    /// Acknowledges (or refuses) one store once its append returned, and resumes reading if it was held.
    private func stored(_ completion: DeviceConnection.StateMachine.Completion, _ result: Result<Void, any Error>) {
        pendingStores -= 1
        switch result {
        case .success:
            perform(machine.stored(completion))
        case .failure(let error as DiskBufferError) where error.scope == .record:
            AgentMetrics.rejected.increment()
            let code: MQTTReasonCode = error.code == .recordTooLarge ? .packetTooLarge : .quotaExceeded
            logger.warning("Device publish not stored", metadata: ["error.message": "\(error)"])
            perform(machine.storeFailed(completion, reasonCode: code))
        case .failure(let error):
            fail("storing a device publish failed: \(error)")
        }
        if readHeld && !draining && pendingStores <= maximumPendingStores / 2, let context {
            readHeld = false
            context.read()
        }
    }

    /// Queues a batch of stores: it takes publishes (`openBatch`) until it starts, after everything queued
    /// before it, then appends them with one `append(contentsOf:)` (one durable write and one resumption
    /// for the batch) and acknowledges them in order.
    private func enqueueBatch(_ batch: StoreBatch, context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let eventLoop = context.eventLoop
        enqueue(context: context, future: { batch.store(on: eventLoop) }, starting: {
            let handler = loopBound.value
            if handler.openBatch === batch { handler.openBatch = nil }
            batch.close()
        }) { handler, _ in
            // The batch's acks go out with one flush (one write(2)), not one each.
            handler.holdingFlush = true
            for (completion, result) in zip(batch.completions, batch.results) { handler.stored(completion, result) }
            handler.holdingFlush = false
            if handler.flushHeld {
                handler.flushHeld = false
                handler.context?.flush()
            }
        }
        // Open for the publishes read until it starts (it may have started already: then it refuses them).
        openBatch = batch
    }

    /// Runs `work` after everything queued before it on this connection, then `then` on the event loop.
    /// `starting` runs on the event loop just before `work` starts.
    private func enqueue(
        context: ChannelHandlerContext,
        _ work: @escaping @Sendable () async throws -> Void,
        starting: @escaping () -> Void = {},
        then: @escaping (DeviceConnectionHandler, Result<Void, any Error>) -> Void
    ) {
        let eventLoop = context.eventLoop
        enqueue(context: context, future: {
            let promise = eventLoop.makePromise(of: Void.self)
            promise.completeWithTask { try await work() }
            return promise.futureResult
        }, starting: starting, then: then)
    }

    /// `enqueue` for work that is a future (started on the event loop) rather than a task.
    private func enqueue(
        context: ChannelHandlerContext,
        future work: @escaping () -> EventLoopFuture<Void>,
        starting: @escaping () -> Void = {},
        then: @escaping (DeviceConnectionHandler, Result<Void, any Error>) -> Void
    ) {
        // Stores that come after this must not join a batch queued before it.
        openBatch = nil
        let eventLoop = context.eventLoop
        let previous = chain ?? eventLoop.makeSucceededVoidFuture()
        // The chain and `work`'s futures are all on this connection's loop, so the callbacks (which hold the
        // handler and the non-Sendable `starting` and `then`) run isolated to it.
        chain = previous.assumeIsolated().flatMap {
            starting()
            return work().assumeIsolated().always { result in then(self, result) }
                .flatMapError { _ in eventLoop.makeSucceededVoidFuture() }
                .nonisolated()
        }.nonisolated()
    }

    private func fail(_ message: String) {
        logger.error("Closing a device connection", metadata: ["error.message": "\(message)"])
        guard let context else { return }
        close(reasonCode: .unspecifiedError, message: message, context: context)
    }

    private func close(reasonCode: MQTTReasonCode?, message: String, context: ChannelHandlerContext) {
        logger.debug("Closing device connection", metadata: ["close.reason": "\(message)"])
        if let reasonCode {
            if !connackSent {
                if machine.version == .v5 || reasonCode.v311ConnectReturnCode != nil {
                    connackSent = true
                    context.write(wrapOutboundOut(.connack(MQTTConnAck(reasonCode: reasonCode))), promise: nil)
                }
            } else if machine.version == .v5 {
                context.write(wrapOutboundOut(.disconnect(MQTTDisconnect(reasonCode: reasonCode))), promise: nil)
            }
        }
        context.flush()
        context.close(promise: nil)
    }

    static func wallMilliseconds() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1000 + UInt64(spec.tv_nsec) / 1_000_000
    }
}

#if canImport(Glibc)
import Glibc
#endif
