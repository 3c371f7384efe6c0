import Common
import Foundation
import Logging
import NIOCore
import NIOPosix
import TributaryKafka

/// What every connection of a node shares: one object per node, referenced by each connection (as a struct
/// it was copied into every connection, 480 bytes each, which took the idle connection past 6 KB).
final class BrokerContext: Sendable {
    let registry: SessionRegistry
    let publisher: Publisher
    let retained: RetainedStore
    let limits: BrokerLimits
    let logger: Logger
    /// Who a connecting client is, when `limits.authentication` is `.checked`.
    let authenticator: Authenticator
    /// A SUBSCRIBE waits for the delivery consumer when it is paused (nil: it never pauses).
    let deliveryDemand: DeliveryDemand?
    /// Where a session whose queue overflowed reads its messages back from (with `limits.readBack`).
    let readBack: SubscriberReadBack.Source?

    init(
        registry: SessionRegistry, publisher: Publisher, retained: RetainedStore, limits: BrokerLimits, logger: Logger,
        authenticator: Authenticator = Authenticator(), deliveryDemand: DeliveryDemand? = nil, readBack: SubscriberReadBack.Source? = nil
    ) {
        self.registry = registry
        self.publisher = publisher
        self.retained = retained
        self.limits = limits
        self.logger = logger
        self.authenticator = authenticator
        self.deliveryDemand = deliveryDemand
        self.readBack = readBack
    }
}

/// The channel handler of one MQTT client connection: performs the actions of its `StateMachine`.
///
/// Pipeline: `ByteToMessageHandler(CountingMQTTPacketDecoder)` → this handler, which
/// writes encoded `ByteBuffer`s itself (so that it can apply the client's Maximum Packet Size per packet).
/// Reading is manual (`autoRead` stays on, but `read` is held back) while the client is connecting, while
/// `receiveMaximum` publishes wait for Kafka, while the producer queue is full and while the socket is not
/// writable (G5).
final class MQTTServerConnection: ChannelDuplexHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var machine: StateMachine
    private let broker: BrokerContext
    private var context: ChannelHandlerContext?
    /// Delivery reports reach this connection in batches; writes made during one are flushed at its end.
    private var deliveryInbox: DeliveryInbox?
    private var flushAfterBatch = false
    /// Reading overflowed messages back from Kafka (`startReadBack`).
    private var readBack: SubscriberReadBack?
    /// The read-back caught up and the session is live again: its reader is kept, paused, for
    /// `readBackParkedFor` in case the client falls behind again (a subscriber that keeps overflowing would
    /// otherwise start a Kafka consumer each time); the number tells the idle close which parking it is.
    private var readBackParked: UInt64?
    private var readBackParkings: UInt64 = 0
    static let readBackParkedFor: TimeAmount = .seconds(10)
    /// Between `channelRead` and `channelReadComplete`: answers to a burst of packets are flushed once, at its end.
    private var inReadBurst = false
    private var handle: Handle?
    private var machinePausedReading = false
    private var blockedPublishes = 0
    private var readPending = false
    /// A SUBSCRIBE waits for the paused delivery consumer (`DeliveryDemand`): the machine's actions from
    /// there on (its SUBACK first) are held in order, and nothing more is read, until it delivers.
    private var awaitingDelivery = false
    private var heldActions: [StateMachine.Action] = []
    /// Registered with the loop's `KeepAliveSweeper` (no timer of its own).
    private var keepAliveRegistered = false
    private var connectTimeoutTask: Scheduled<Void>?
    private var credentialsExpiryTask: Scheduled<Void>?
    private var requestedKeepAlive: UInt16 = 0
    /// The version of the CONNECT received, for a refusing CONNACK sent after the machine closed.
    private var connectVersion: MQTTProtocolVersion?
    private var clientMaximumPacketSize = MQTTPacket.protocolMaximumPacketSize
    private var outboundAliases = OutboundTopicAliases(maximum: 0)
    private var takeOverPromise: EventLoopPromise<SessionState?>?
    private var closing = false
    /// After a DISCONNECT for what the client sent: input is read and discarded until the connection closes.
    private var lingering = false
    /// How long a connection that sent such a DISCONNECT keeps reading before it closes.
    static let lingerBeforeClose = TimeAmount.seconds(1)
    private var lateMessages: [OutboundMessage] = []
    private var inactive = false
    private var handleClientId: String?

    init(broker: BrokerContext) {
        self.broker = broker
        self.machine = StateMachine(limits: broker.limits)
    }

    /// What this connection shares with the node (for tests).
    var brokerContext: BrokerContext { broker }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        deliveryInbox = DeliveryInbox.on(context.eventLoop)
    }

    func channelActive(context: ChannelHandlerContext) {
        BrokerMetrics.connectionOpened()
        BrokerMetrics.connectionsTotal.increment()
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        connectTimeoutTask = context.eventLoop.scheduleTask(in: TimeAmount(broker.limits.connectTimeout)) {
            loopBound.value.perform(loopBound.value.machine.connectTimeout())
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if lingering { return }  // after a DISCONNECT: discarded
        let packet = unwrapInboundIn(data)
        BrokerMetrics.packetsReceived[packet.type]?.increment()
        if case .connect(let connect) = packet {
            requestedKeepAlive = connect.keepAlive
            connectVersion = connect.protocolVersion
            if let size = connect.properties.maximumPacketSize { clientMaximumPacketSize = Int(size) }
            if let aliases = connect.properties.topicAliasMaximum {
                outboundAliases = OutboundTopicAliases(maximum: min(Int(aliases), broker.limits.outboundTopicAliasMaximum))
            }
        }
        inReadBurst = true
        perform(machine.packetReceived(packet, now: context.eventLoop.now, wallClock: Date()))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        inReadBurst = false
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let codecError = error as? MQTTCodecError {
            BrokerMetrics.protocolErrors.increment()
            broker.logger.debug("rejected client input", metadata: [
                "mqtt.client_id": "\(machine.clientId ?? "")", "mqtt.reason_code": "\(codecError.reasonCode)", "mqtt.error": "\(codecError.message)",
            ])
            perform(machine.decodeFailed(codecError))
        } else {
            broker.logger.debug("connection error", metadata: ["mqtt.client_id": "\(machine.clientId ?? "")", "error": "\(error)"])
            context.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        perform(machine.writabilityChanged(context.channel.isWritable, now: Date()))
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        BrokerMetrics.connectionClosed()
        stopReadBack()
        if keepAliveRegistered {
            KeepAliveSweeper.on(context.eventLoop).unregister(self)
            keepAliveRegistered = false
        }
        connectTimeoutTask?.cancel()
        credentialsExpiryTask?.cancel()
        let (session, will, attached) = machine.channelClosed()
        if let takeOverPromise {
            self.takeOverPromise = nil
            if let session {
                broker.registry.scheduleWill(will, clientId: session.clientId, sessionExpiry: session.expiryInterval, takenOver: true, endpoint: handle)
            }
            takeOverPromise.succeed(session)
        } else if attached, let handle {
            broker.registry.detach(endpoint: handle, session: session, will: will, takenOver: false)
        } else if let handle, let clientId = session?.clientId {
            // Closed while its session was being attached: only drop the registration.
            broker.registry.forget(endpoint: handle, clientId: clientId)
        }
        inactive = true
        if let clientId = session?.clientId {
            for message in lateMessages { broker.registry.redeliver(clientId: clientId, message) }
        }
        lateMessages = []
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        if lingering {
            context.read()  // what the client still sends is read and discarded until the connection closes
        } else if machinePausedReading || blockedPublishes > 0 || awaitingDelivery {
            readPending = true
        } else {
            context.read()
        }
    }

    // MARK: Calls from the broker (on this event loop)

    fileprivate func deliverFromBroker(_ message: OutboundMessage) {
        if inactive, let clientId = machine.clientId ?? handleClientId {
            broker.registry.redeliver(clientId: clientId, message)
            return
        }
        if machine.isClosed {
            lateMessages.append(message)
            return
        }
        perform(machine.deliver(message, now: Date()))  // flushed at the end of the inbox's batch
    }

    fileprivate func takeOver(_ promise: EventLoopPromise<SessionState?>) {
        guard !machine.isClosed, context != nil else {
            promise.succeed(nil)
            return
        }
        takeOverPromise = promise
        perform(machine.takenOver())
    }

    fileprivate func shutdown() {
        perform(machine.shutdown())
    }

    // MARK: Actions

    private func perform(_ actions: [StateMachine.Action]) {
        guard let context else { return }
        if awaitingDelivery {
            heldActions.append(contentsOf: actions)
            return
        }
        actions: for (index, action) in actions.enumerated() {
            switch action {
            case .send(let packet):
                send(packet, context: context)
            case .authenticate(let username, let password):
                authenticate(username: username, password: password, context: context)
            case .attachSession(let request):
                attach(request, context: context)
            case .produce(let token, let publish):
                produce(token: token, publish: publish, context: context)
            case .registerSubscriptions(let subscriptions):
                if let clientId = machine.clientId { broker.registry.register(clientId: clientId, subscriptions) }
                if let session = machine.attachedSession { broker.registry.sessionChanged(session) }
                if let delivering = broker.deliveryDemand?.whenDelivering(on: context.eventLoop, reason: "subscribe") {
                    awaitingDelivery = true
                    heldActions = Array(actions[(index + 1)...])
                    let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
                    delivering.whenComplete { _ in loopBound.value.deliveryResumed() }
                    break actions
                }
            case .sendRetained(let options):
                let retained = broker.retained.matching(options.subscription.topicFilter).map { message in
                    OutboundMessage(
                        message: message, qos: min(message.qos, options.subscription.qos), retain: true,
                        subscriptionIdentifiers: options.identifier.map { [$0] } ?? [])
                }
                perform(machine.deliverRetained(retained, now: Date()))
            case .unregisterSubscriptions(let filters):
                if let clientId = machine.clientId { broker.registry.unregister(clientId: clientId, filters) }
                if let session = machine.attachedSession { broker.registry.sessionChanged(session) }
            case .pauseReading:
                machinePausedReading = true
            case .resumeReading:
                machinePausedReading = false
                resumeReadingIfPossible(context: context)
            case .scheduleKeepAlive(let interval):
                connectTimeoutTask?.cancel()
                connectTimeoutTask = nil
                KeepAliveSweeper.on(context.eventLoop).register(self, interval: TimeAmount(interval))
                keepAliveRegistered = true
            case .scheduleCredentialsExpiry(let validUntil):
                credentialsExpiryTask?.cancel()
                let delay = TimeAmount.milliseconds(Int64(max(0, validUntil.timeIntervalSinceNow) * 1000) + 1)
                let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
                credentialsExpiryTask = context.eventLoop.scheduleTask(in: delay) {
                    let connection = loopBound.value
                    connection.perform(connection.machine.credentialsExpired(now: Date()))
                }
            case .dropped(let qos):
                BrokerMetrics.messagesDroppedQueueFull[Int(qos.rawValue)].increment()
            case .readBack(let offsets):
                startReadBack(from: offsets, context: context)
            case .pauseReadBack:
                readBack?.pause()
            case .resumeReadBack:
                readBack?.resume()
            case .stopReadBack:
                parkReadBack(context: context)
            case .close:
                closeAfterWrites(context: context)
            case .lingerAndClose:
                closeAfterWrites(context: context, linger: Self.lingerBeforeClose)
            }
        }
        if machine.version != nil && !closing { flushSoon(context: context) }
    }

    /// Reads the session's overflowed partitions back from Kafka (one consumer per such connection, rare:
    /// a subscriber slower than its publishers); batches come back on this connection's event loop.
    private func startReadBack(from offsets: [KafkaTopicPartition: Int64], context: ChannelHandlerContext) {
        if let readBack {
            // Reassigned to exactly the partitions being read back, at their next offsets; a batch it read
            // before is dropped when it comes (`SubscriberReadBack.isCurrent`) and read again from there.
            readBack.read(from: offsets)
            if readBackParked != nil {
                readBackParked = nil
                readBack.resume()
            }
            return
        }
        guard let source = broker.readBack else { return }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        guard source.slots.acquire() else {
            // As many sessions of this node read back as `mqtt.read_back_limit` allows: this one drops its overflow.
            BrokerMetrics.readBacksRefused.increment()
            perform(machine.readBackRefused())
            return
        }
        let eventLoop = context.eventLoop
        do {
            let reader = try SubscriberReadBack(source: source) { messages, readUpTo, epoch in
                eventLoop.execute {
                    let connection = loopBound.value
                    guard let reader = connection.readBack else { return }  // stopped: closing it unblocks its thread
                    // A batch checked before the latest reassignment is read again from where the session stands.
                    if reader.isCurrent(epoch) {
                        connection.perform(connection.machine.readBack(messages, readUpTo: readUpTo, now: Date()))
                    } else {
                        BrokerMetrics.readBackBatchesStale.increment()
                    }
                    reader.processed()
                }
            }
            reader.read(from: offsets)
            readBack = reader
            BrokerMetrics.readBacksStarted.increment()
            broker.logger.info("subscriber slower than its messages: reading them back from Kafka", metadata: ["mqtt.client_id": "\(machine.clientId ?? "")"])
        } catch {
            source.slots.release()
            // The session skips the partition's live messages until they are read back: try again soon.
            broker.logger.warning("cannot read messages back for a subscriber; retrying in 1 s", metadata: ["kafka.error": "\(error)"])
            context.eventLoop.scheduleTask(in: .seconds(1)) {
                let connection = loopBound.value
                guard !connection.inactive, connection.readBack == nil, let context = connection.context else { return }
                let offsets = connection.machine.readingBack
                if !offsets.isEmpty { connection.startReadBack(from: offsets, context: context) }
            }
        }
    }

    /// The read-back caught up (`.stopReadBack`): paused at once (before the batch being handled is marked
    /// processed, so nothing read after the catch-up is handed over while the session is live), closed if
    /// not taken up again within `readBackParkedFor`.
    private func parkReadBack(context: ChannelHandlerContext) {
        guard let reader = readBack, readBackParked == nil else { return }
        reader.pause()
        reader.read(from: [:])  // reads nothing while parked
        readBackParkings += 1
        let parking = readBackParkings
        readBackParked = parking
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: Self.readBackParkedFor) {
            let connection = loopBound.value
            if connection.readBackParked == parking { connection.stopReadBack() }
        }
    }

    private func stopReadBack() {
        readBackParked = nil
        guard let reader = readBack else { return }
        readBack = nil
        broker.readBack?.slots.release()
        Task.detached { reader.close() }  // joins the consumer's thread: not on the event loop
    }

    /// The delivery consumer reads again: the held actions (the SUBACK first) are performed in order.
    private func deliveryResumed() {
        awaitingDelivery = false
        let held = heldActions
        heldActions = []
        perform(held)
        if let context { resumeReadingIfPossible(context: context) }
    }

    /// Flushes now, or at the end of the running batch of delivery reports (one `write` for all the
    /// acknowledgements the batch produced on this connection).
    private func flushSoon(context: ChannelHandlerContext) {
        if inReadBurst { return }  // channelReadComplete flushes
        guard let deliveryInbox, deliveryInbox.isRunningBatch else {
            context.flush()
            return
        }
        guard !flushAfterBatch else { return }
        flushAfterBatch = true
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        deliveryInbox.flushAfterBatch {
            let connection = loopBound.value
            connection.flushAfterBatch = false
            connection.context?.flush()
        }
    }

    private func send(_ packet: MQTTPacket, context: ChannelHandlerContext) {
        guard !closing else { return }
        guard let version = machine.version ?? connectVersion else {
            // Only a CONNACK refusing an unknown version is sent before the version is known.
            if case .connack = packet, let buffer = try? packet.encoded(version: .v311, allocator: context.channel.allocator) {
                BrokerMetrics.bytesSent.increment(by: buffer.readableBytes)
                context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
            }
            return
        }
        var packet = packet
        var aliasUse: OutboundTopicAliases.Use?
        if case .publish(let publish) = packet, outboundAliases.maximum > 0 {
            let (wire, use) = outboundAliases.plan(publish)
            (packet, aliasUse) = (.publish(wire), use)
        }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        do {
            try packet.encode(into: &buffer, version: version, maximumPacketSize: clientMaximumPacketSize)
            if let aliasUse { outboundAliases.commit(aliasUse) }
        } catch {
            // Too large for the client (MQTT 5.0 section 3.1.2.25): discarded as if it had been delivered.
            if case .publish(let publish) = packet, let packetId = publish.packetId {
                perform(machine.discardOutbound(packetId: packetId))
            }
            BrokerMetrics.messagesDroppedQueueFull[0].increment()
            return
        }
        BrokerMetrics.packetsSent[packet.type]?.increment()
        if case .publish(let publish) = packet { BrokerMetrics.messagesDelivered[Int(publish.qos.rawValue)].increment() }
        BrokerMetrics.bytesSent.increment(by: buffer.readableBytes)
        context.write(wrapOutboundOut(buffer), promise: nil)
    }

    private func attach(_ request: StateMachine.SessionRequest, context: ChannelHandlerContext) {
        handleClientId = request.clientId
        let handle = Handle(connection: self, eventLoop: context.eventLoop)
        self.handle = handle
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        broker.registry.attach(request, endpoint: handle, eventLoop: context.eventLoop).whenComplete { result in
            let connection = loopBound.value
            switch result {
            case .success(let (session, present)):
                connection.connectTimeoutTask?.cancel()
                connection.connectTimeoutTask = nil
                connection.perform(connection.machine.sessionAttached(session, present: present, requestedKeepAlive: connection.requestedKeepAlive, now: Date()))
                if let session = connection.machine.attachedSession { connection.broker.registry.sessionChanged(session) }
            case .failure:
                connection.context?.close(promise: nil)
            }
        }
    }

    private func authenticate(username: String?, password: [UInt8]?, context: ChannelHandlerContext) {
        let authenticator = broker.authenticator
        let certificate = authenticator.certificateIdentity == .none ? nil : CertificateNames.ofPeer(context.pipeline.syncOperations)
        let step = authenticator.plan(Credentials(username: username, password: password, certificate: certificate))
        let outcome: EventLoopFuture<AuthenticationOutcome>
        switch step {
        case .decided(let decided):
            authenticated(decided, username: username)
            return
        case .checkPassword(let user, let password):
            // PBKDF2 takes milliseconds: never on the event loop.
            outcome = NIOThreadPool.singleton.runIfActive(eventLoop: context.eventLoop) { authenticator.checkPassword(user: user, password: password) }
        case .verifyToken:
            outcome = context.eventLoop.makeFutureWithTask { await authenticator.complete(step) }
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        outcome.whenComplete { result in
            loopBound.value.authenticated((try? result.get()) ?? .refused(.badPassword), username: username)
        }
    }

    private func authenticated(_ outcome: AuthenticationOutcome, username: String?) {
        switch outcome {
        case .accepted(let method, _, _):
            BrokerMetrics.authAccepted[method]?.increment()
        case .refused(let failure):
            BrokerMetrics.authFailures[failure]?.increment()
            // Never the token: with `auth.jwt.token_in: username` the user name is left out.
            let tokenInUsername = failure.method == .jwt && broker.authenticator.jwt?.settings.tokenIn == .username
            broker.logger.info("authentication refused", metadata: [
                "mqtt.client_id": "\(machine.clientId ?? "")", "mqtt.username": "\(tokenInUsername ? "(token)" : username ?? "")",
                "auth.method": "\(failure.method.rawValue)", "auth.reason": "\(failure.rawValue)",
            ])
        }
        perform(machine.authenticated(outcome))
    }

    private func produce(token: UInt64, publish: MQTTPublish, context: ChannelHandlerContext) {
        guard let clientId = machine.clientId else { return }
        BrokerMetrics.publishesReceived[Int(publish.qos.rawValue)].increment()
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        broker.publisher.publish(
            publish, clientId: clientId, eventLoop: context.eventLoop, inbox: deliveryInbox,
            blocked: { isBlocked in
                let connection = loopBound.value
                connection.blockedPublishes += isBlocked ? 1 : -1
                if !isBlocked, let context = connection.context { connection.resumeReadingIfPossible(context: context) }
            },
            completion: { outcome in
                let connection = loopBound.value
                connection.perform(connection.machine.deliveryCompleted(token: token, outcome: outcome))
            })
    }

    /// Called by the loop's `KeepAliveSweeper` every half keep-alive.
    func keepAliveDue(now: NIODeadline) {
        perform(machine.keepAliveCheck(now: now))
    }

    private func resumeReadingIfPossible(context: ChannelHandlerContext) {
        guard readPending, !machinePausedReading, blockedPublishes == 0, !awaitingDelivery else { return }
        readPending = false
        context.read()
    }

    private func closeAfterWrites(context: ChannelHandlerContext, linger: TimeAmount? = nil) {
        guard !closing else { return }
        closing = true
        // Writes complete in order: once this empty one is written, so is the last packet (CONNACK or
        // DISCONNECT with the reason code); then close. No promise per packet otherwise.
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: written)
        let channel = context.channel
        guard let linger else {
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
            return
        }
        lingering = true
        if readPending {
            readPending = false
            context.read()
        }
        written.futureResult.whenComplete { _ in
            // FIN now; the full close follows after `linger` (or when the client closes first). A channel
            // that cannot half-close closes at once.
            let outputClosed = channel.eventLoop.makePromise(of: Void.self)
            outputClosed.futureResult.whenFailure { _ in channel.close(promise: nil) }
            channel.close(mode: .output, promise: outputClosed)
            channel.eventLoop.scheduleTask(in: linger) { channel.close(promise: nil) }
        }
    }
}

extension MQTTServerConnection {
    /// The registry's reference to a connection; every call hops to the connection's event loop.
    final class Handle: ConnectionEndpoint {
        private let connection: NIOLoopBound<MQTTServerConnection>
        let eventLoop: any EventLoop
        /// Messages routed from the Kafka consumer arrive in batches, like delivery reports; every call
        /// goes through it, so they reach the connection in the order they were made.
        private let inbox: DeliveryInbox

        init(connection: MQTTServerConnection, eventLoop: any EventLoop) {
            self.connection = NIOLoopBound(connection, eventLoop: eventLoop)
            self.eventLoop = eventLoop
            self.inbox = DeliveryInbox.on(eventLoop)
        }

        func deliver(_ message: OutboundMessage) {
            let connection = self.connection
            inbox.post { connection.value.deliverFromBroker(message) }
        }

        func takeOver() -> EventLoopFuture<SessionState?> {
            let promise = eventLoop.makePromise(of: SessionState?.self)
            let connection = self.connection
            // Through the inbox too, so that the messages routed before it reach the connection before it.
            inbox.post { connection.value.takeOver(promise) }
            return promise.futureResult
        }

        func shutdown() {
            let connection = self.connection
            inbox.post { connection.value.shutdown() }
        }
    }
}

/// Counts bytes in and out of a connection (`tributary_broker_bytes_*_total`).
/// The MQTT decoder of a client connection, counting the bytes of the packets it decodes
/// (`bytes_received`; bytes sent are counted where `MQTTServerConnection` writes), so that a connection
/// needs no byte-counting handler of its own (one pipeline context less per connection).
struct CountingMQTTPacketDecoder: ByteToMessageDecoder {
    typealias InboundOut = MQTTPacket

    let decoder: MQTTPacketDecoder

    init(maximumPacketSize: Int) {
        decoder = MQTTPacketDecoder(maximumPacketSize: maximumPacketSize)
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let start = buffer.readerIndex
        guard let packet = try decoder.decodePacket(from: &buffer) else { return .needMoreData }
        BrokerMetrics.bytesReceived.increment(by: buffer.readerIndex - start)
        context.fireChannelRead(wrapInboundOut(packet))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        // A partial packet at EOF is dropped with the connection; whole ones are still delivered.
        try decode(context: context, buffer: &buffer)
    }
}
