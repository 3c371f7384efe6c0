import Common
import NIOCore
import NIOPosix
import NIOSSL

/// One simulated device (publisher) or one subscriber: connects, reconnects with backoff, publishes on its
/// schedule, and records what happens in its event loop's `FleetShard`. Lives on one event loop; the
/// MQTT bookkeeping is the value `StateMachine`, the channel handler only forwards events here.
final class DeviceConnection {
    enum Role {
        case publisher(topic: String)
        case subscriber(filter: String, index: Int)
    }

    private enum Phase {
        case idle
        case connecting(sinceUptime: UInt64)
        case connected
        case finished
    }

    let index: Int
    let clientId: String
    let role: Role
    private let context: FleetContext
    private let shard: FleetShard
    private var settings: SimulatorSettings { context.settings }

    private var machine: StateMachine
    private var inbound = InboundState()
    private var phase = Phase.idle
    private var handler: DeviceChannelHandler?
    private var everConnected = false
    private var everSubscribed = false
    private var disconnectedAtUptime: UInt64?
    private var attempts = 0
    private var random: FastRandom

    private var sendTimer: Scheduled<Void>?
    private var keepAliveTimer: Scheduled<Void>?
    private var nextSendUptime: UInt64 = 0
    private var burstStartUptime: UInt64 = 0
    /// Messages due by the schedule but not sent yet (window full or disconnected).
    private var pendingTicks: UInt64 = 0
    private var lastWriteUptime: UInt64 = 0
    private var pingsSent = 0
    private var pingsAnswered = 0
    /// QoS 0: the PINGREQ after the last publish; its PINGRESP proves the broker read everything before it.
    private var fencePing: Int?
    private var pumpScheduled = false

    /// Subscribers: the number of distinct messages that ends the wait, and who waits.
    private var receiveTarget: Int?
    private var targetPromise: EventLoopPromise<Void>?

    init(index: Int, clientId: String, role: Role, context: FleetContext, shard: FleetShard) {
        self.index = index
        self.clientId = clientId
        self.role = role
        self.context = context
        self.shard = shard
        let limit: Int? = if case .publisher = role { context.settings.count } else { 0 }
        machine = StateMachine(qos: context.settings.qos, limit: limit, window: context.settings.inflight)
        random = FastRandom(seed: UInt64(index) &+ 1)
    }

    private var isPublisher: Bool { if case .publisher = role { true } else { false } }

    // MARK: - Connecting

    func start() {
        shard.eventLoop.assertInEventLoop()
        connect()
    }

    private func connect() {
        guard case .idle = phase else { return }
        phase = .connecting(sinceUptime: Clock.uptimeNanoseconds())
        let bound = NIOLoopBound(self, eventLoop: shard.eventLoop)
        let ssl = context.sslContext
        let serverName = settings.tlsServerName ?? settings.broker.host
        ClientBootstrap(group: shard.eventLoop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let connection = bound.value
                    if let ssl {
                        let hostname = serverName.first?.isNumber == true || serverName.contains(":") ? nil : serverName
                        try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: ssl, serverHostname: hostname))
                    }
                    let versionBox = MQTTVersionBox(connection.settings.protocolVersion)
                    try channel.pipeline.syncOperations.addHandlers([
                        MessageToByteHandler(MQTTPacketEncoder(versionBox: versionBox)),
                        ByteToMessageHandler(MQTTPacketDecoder(versionBox: versionBox)),
                        DeviceChannelHandler(connection: connection),
                    ])
                }
            }
            .connect(host: settings.broker.host, port: settings.broker.port)
            .whenFailure { _ in
                let connection = bound.value
                connection.shard.summary.connectFailures += 1
                connection.phase = .idle
                connection.scheduleReconnect()
            }
    }

    func channelActive(_ handler: DeviceChannelHandler) {
        self.handler = handler
        var connect = MQTTConnect(
            protocolVersion: settings.protocolVersion, clientIdentifier: clientId, cleanStart: settings.cleanSession,
            keepAlive: settings.keepAlive, username: settings.username,
            password: settings.password.map { ByteBuffer(string: $0) })
        if settings.protocolVersion == .v5 && !settings.cleanSession {
            connect.properties.sessionExpiryInterval = settings.sessionExpiry
        }
        write(.connect(connect))
        handler.flush()
    }

    func channelInactive() {
        handler = nil
        // The send schedule keeps running while disconnected: due messages accumulate in `pendingTicks` and go
        // out after the reconnect, as a device with a local queue would send them.
        keepAliveTimer?.cancel()
        keepAliveTimer = nil
        pingsSent = 0
        pingsAnswered = 0
        fencePing = nil
        switch phase {
        case .finished:
            return
        case .connected:
            shard.summary.disconnects += 1
            disconnectedAtUptime = Clock.uptimeNanoseconds()
        case .connecting, .idle:
            shard.summary.connectFailures += 1
        }
        phase = .idle
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        if case .finished = phase { return }
        let minimum = Double(settings.reconnectMinimum.totalNanoseconds)
        let maximum = Double(settings.reconnectMaximum.totalNanoseconds)
        let backoff = min(maximum, minimum * Double(1 << min(attempts, 20)))
        attempts += 1
        let delay = Int64(backoff * Double.random(in: 0.5...1.0, using: &random))
        let bound = NIOLoopBound(self, eventLoop: shard.eventLoop)
        shard.eventLoop.scheduleTask(in: .nanoseconds(delay)) { bound.value.connect() }
    }

    // MARK: - Packets

    func received(_ packet: MQTTPacket) {
        switch packet {
        case .connack(let ack):
            connAckReceived(ack)
        case .puback(let ack):
            acknowledged(machine.completed(packetId: ack.packetId, failed: ack.reasonCode.isFailure, uptimeNanoseconds: Clock.uptimeNanoseconds()))
        case .pubrec(let ack):
            acknowledged(machine.received(packetId: ack.packetId, failed: ack.reasonCode.isFailure))
        case .pubcomp(let ack):
            acknowledged(machine.completed(packetId: ack.packetId, failed: ack.reasonCode.isFailure, uptimeNanoseconds: Clock.uptimeNanoseconds()))
        case .publish(let publish):
            publishReceived(publish)
        case .pubrel(let ack):
            inbound.released(packetId: ack.packetId)
            write(.pubcomp(MQTTPublishAck(packetId: ack.packetId)))
            handler?.flushSoon()
        case .suback(let ack):
            if ack.reasonCodes.contains(where: \.isFailure) { shard.summary.protocolErrors += 1 }
            if !everSubscribed {
                everSubscribed = true
                shard.subscriberReady()
            }
        case .pingresp:
            pingsAnswered += 1
            if let fence = fencePing, pingsAnswered >= fence {
                fencePing = nil
                shard.noteCompletion(uptime: Clock.uptimeNanoseconds())
                finish()
            }
        case .disconnect:
            handler?.close()
        case .connect, .subscribe, .unsubscribe, .unsuback, .pingreq, .auth:
            shard.summary.protocolErrors += 1
            handler?.close()
        }
    }

    private func connAckReceived(_ ack: MQTTConnAck) {
        guard case .connecting(let since) = phase else { return }
        guard !ack.reasonCode.isFailure else {
            // Counted as a connect failure when the channel closes (still connecting).
            handler?.close()
            return
        }
        let now = Clock.uptimeNanoseconds()
        phase = .connected
        attempts = 0
        shard.summary.connects += 1
        if ack.sessionPresent { shard.summary.sessionPresent += 1 }
        if everConnected {
            shard.summary.reconnects += 1
            shard.summary.reconnectTime.record(nanoseconds: Int64(now &- (disconnectedAtUptime ?? since)))
        } else {
            shard.summary.connectTime.record(nanoseconds: Int64(now &- since))
        }
        everConnected = true
        startKeepAlive()
        switch role {
        case .subscriber(let filter, _):
            guard let topicFilter = try? MQTTTopicFilter(filter) else { return }
            write(.subscribe(MQTTSubscribe(packetId: 1, subscriptions: [MQTTSubscription(topicFilter: topicFilter, qos: settings.qos)])))
            handler?.flush()
        case .publisher:
            for resend in machine.connected(receiveMaximum: ack.properties.receiveMaximum, configuredWindow: settings.inflight) {
                switch resend {
                case .publish(let outgoing):
                    shard.summary.resent += 1
                    writePublish(outgoing)
                case .pubrel(let id):
                    write(.pubrel(MQTTPublishAck(packetId: id)))
                }
            }
            handler?.flush()
            if sendTimer == nil && !machine.isExhausted && context.intervalNanoseconds > 0 && nextSendUptime == 0 {
                nextSendUptime = now
                burstStartUptime = now
                tick()
            } else {
                pump()
            }
        }
    }

    private func acknowledged(_ result: StateMachine.AckResult) {
        let now = Clock.uptimeNanoseconds()
        switch result {
        case .unknown:
            return
        case .sendPubrel(let id):
            write(.pubrel(MQTTPublishAck(packetId: id)))
            handler?.flushSoon()
            return
        case .completed(_, let latency):
            shard.summary.acked += 1
            shard.summary.ackLatency.record(nanoseconds: Int64(latency))
        case .refused:
            shard.summary.protocolErrors += 1
        }
        shard.noteCompletion(uptime: now)
        pump(flushNow: false)
    }

    private func publishReceived(_ publish: MQTTPublish) {
        let (reply, deliver) = inbound.received(qos: publish.qos, packetId: publish.packetId)
        switch reply {
        case .none: break
        case .puback(let id): write(.puback(MQTTPublishAck(packetId: id)))
        case .pubrec(let id): write(.pubrec(MQTTPublishAck(packetId: id)))
        }
        if reply != .none { handler?.flushSoon() }
        guard deliver, case .subscriber(_, let subscriber) = role else { return }
        shard.summary.received += 1
        guard let payload = DevicePayload(decoding: publish.payload) else {
            shard.summary.protocolErrors += 1
            return
        }
        let now = Clock.wallNanoseconds()
        shard.summary.endToEndLatency.record(nanoseconds: Int64(bitPattern: now &- payload.sentAtNanoseconds))
        shard.accounting[subscriber, default: SequenceAccounting()].record(client: payload.clientId, sequence: payload.sequence)
        checkTarget()
    }

    // MARK: - Publishing

    /// The schedule's clock: one more message is due; plan the next one.
    private func tick() {
        sendTimer = nil
        pendingTicks += 1
        scheduleNextTick()
        pump()
    }

    private func scheduleNextTick() {
        let interval = context.intervalNanoseconds
        guard interval > 0, !machine.stopped else { return }
        if let count = settings.count, machine.nextSequence + pendingTicks >= UInt64(count) { return }
        let jitter = settings.jitter
        let factor = jitter > 0 ? Double.random(in: (1 - jitter)...(1 + jitter), using: &random) : 1
        var next = nextSendUptime + UInt64(Double(interval) * factor)
        if let burst = settings.burst {
            let on = UInt64(burst.on.totalNanoseconds)
            let period = UInt64(burst.period.totalNanoseconds)
            let offset = (next - burstStartUptime) % period
            if offset >= on { next += period - offset }
        }
        nextSendUptime = next
        let bound = NIOLoopBound(self, eventLoop: shard.eventLoop)
        sendTimer = shard.eventLoop.scheduleTask(deadline: .uptimeNanoseconds(next)) { bound.value.tick() }
    }

    /// Sends what is due and allowed now; unthrottled clients send until the window or socket is full.
    /// `flushNow`: false inside a read burst (acks), where the handler flushes once at the end of the burst.
    private func pump(flushNow: Bool = true) {
        guard case .connected = phase, let handler else { return }
        let unthrottled = context.intervalNanoseconds == 0
        var budget = 128
        var wrote = false
        while budget > 0, unthrottled || pendingTicks > 0, handler.isWritable {
            let now = Clock.uptimeNanoseconds()
            let size = context.sizeMinimum == context.sizeMaximum
                ? context.sizeMinimum : Int.random(in: context.sizeMinimum...context.sizeMaximum, using: &random)
            guard let outgoing = machine.nextPublish(wallNanoseconds: Clock.wallNanoseconds(), uptimeNanoseconds: now, size: size)
            else { break }
            if !unthrottled { pendingTicks -= 1 }
            shard.notePublish(uptime: now)
            shard.summary.sent += 1
            if context.qos == .atMostOnce { shard.summary.acked += 1 }
            writePublish(outgoing)
            budget -= 1
            wrote = true
        }
        if wrote {
            if flushNow { handler.flush() } else { handler.flushSoon() }
        }
        if budget == 0 && !pumpScheduled {
            pumpScheduled = true
            let bound = NIOLoopBound(self, eventLoop: shard.eventLoop)
            shard.eventLoop.execute {
                bound.value.pumpScheduled = false
                bound.value.pump()
            }
        }
        checkDrained()
    }

    func writabilityChanged() { pump() }

    private func writePublish(_ outgoing: StateMachine.Outgoing) {
        guard let handler else { return }
        let payload = DevicePayload(clientId: clientId, sequence: outgoing.sequence, sentAtNanoseconds: outgoing.sentAtWallNanoseconds)
            .encoded(size: outgoing.size, allocator: handler.allocator)
        guard case .publisher(let topic) = role else { return }
        write(.publish(MQTTPublish(topic: topic, payload: payload, qos: context.qos, dup: outgoing.dup, packetId: outgoing.packetId)))
    }

    private func write(_ packet: MQTTPacket) {
        lastWriteUptime = Clock.uptimeNanoseconds()
        handler?.write(packet)
    }

    private func checkDrained() {
        guard isPublisher, machine.isDrained, case .connected = phase else { return }
        if context.qos == .atMostOnce {
            guard fencePing == nil else { return }
            write(.pingreq)
            handler?.flush()
            pingsSent += 1
            fencePing = pingsSent
            return
        }
        finish()
    }

    // MARK: - Stopping

    /// The run's duration is over: no new messages; finish once the in-flight ones are acknowledged.
    func stopPublishing() {
        machine.stop()
        pendingTicks = 0
        sendTimer?.cancel()
        sendTimer = nil
        checkDrained()
    }

    /// Ends the connection now (drain timeout, or a subscriber at the end of the run).
    func finish() {
        if case .finished = phase { return }
        let wasPublisher = isPublisher
        phase = .finished
        sendTimer?.cancel()
        keepAliveTimer?.cancel()
        if let handler {
            handler.write(.disconnect(MQTTDisconnect()))
            handler.flush()
            handler.close()
        }
        if wasPublisher { shard.publisherFinished() }
        targetPromise?.succeed()
        targetPromise = nil
    }

    private func startKeepAlive() {
        let keepAlive = UInt64(settings.keepAlive) * 1_000_000_000
        guard keepAlive > 0 else { return }
        let bound = NIOLoopBound(self, eventLoop: shard.eventLoop)
        keepAliveTimer = shard.eventLoop.scheduleTask(in: .nanoseconds(Int64(keepAlive / 2))) {
            let connection = bound.value
            guard case .connected = connection.phase else { return }
            if Clock.uptimeNanoseconds() &- connection.lastWriteUptime >= keepAlive / 2 {
                connection.write(.pingreq)
                connection.handler?.flush()
                connection.pingsSent += 1
            }
            connection.startKeepAlive()
        }
    }

    // MARK: - Subscriber targets

    /// Completes when this subscriber has `target` distinct messages (or it finishes).
    func waitForDistinct(_ target: Int) -> EventLoopFuture<Void> {
        let promise = shard.eventLoop.makePromise(of: Void.self)
        targetPromise = promise
        receiveTarget = target
        checkTarget()
        return promise.futureResult
    }

    private func checkTarget() {
        guard let target = receiveTarget, case .subscriber(_, let subscriber) = role else { return }
        let distinct = shard.accounting[subscriber]?.distinct ?? 0
        if distinct >= target {
            receiveTarget = nil
            targetPromise?.succeed()
            targetPromise = nil
        }
    }
}

@available(*, unavailable)
extension DeviceConnection: Sendable {}
