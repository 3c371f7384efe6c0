import Common
import Foundation
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
        /// Publishes sequenced commands round-robin to the devices `targets` (their command topics): command k
        /// goes to `targets[k % T]` with sequence number k / T in the payload (client id: the target's).
        /// When the run's duration is over it sends each target one end marker carrying how many commands
        /// that target was sent.
        case commander(targets: [Int])
    }

    /// A connection lost and what followed: when, when the next CONNACK came, with or without the session.
    struct Outage: Sendable {
        var disconnectedAtWall: UInt64
        var connackAtWall: UInt64?
        var sessionPresent = false
    }

    /// An end marker's sequence number: this bit plus the number of commands the target was sent (above
    /// `SequenceTracker.maximumSequence`, so it is never counted as a command).
    static let commandEndMarker: UInt64 = 1 << 40

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
    /// Nanoseconds between messages of this connection (the commander has its own rate); 0 unthrottled.
    private let interval: UInt64
    private let broker: SimulatorSettings.Broker
    /// Publishers: commands come to this device (it subscribes to its command topic).
    private let isCommandTarget: Bool
    /// Publishers receiving commands: the commander's end marker arrived, with the number of commands it
    /// sent (and had acknowledged) to this device.
    private var commandEndSeen = false
    private var commandsAnnounced: UInt64 = 0
    /// Commander: the sequence number of the first end marker, once the markers are due.
    private var markersFrom: UInt64?
    private(set) var outages: [Outage] = []

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
        let limit: Int?
        switch role {
        case .publisher: limit = context.settings.count
        case .subscriber: limit = 0
        case .commander: limit = nil
        }
        machine = StateMachine(qos: context.settings.qos, limit: limit, window: context.settings.inflight)
        random = FastRandom(seed: UInt64(index) &+ 1)
        if case .commander = role {
            interval = UInt64(1e9 / context.settings.commandRate)
        } else {
            interval = context.intervalNanoseconds
        }
        broker = context.settings.brokerFor(index: index)
        if case .publisher = role { isCommandTarget = context.settings.isCommandTarget(index) } else { isCommandTarget = false }
    }

    private var isPublisher: Bool { if case .publisher = role { true } else { false } }
    private var isCommander: Bool { if case .commander = role { true } else { false } }

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
        let serverName = settings.tlsServerName ?? broker.host
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
            .connect(host: broker.host, port: broker.port)
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
            if isPublisher { outages.append(Outage(disconnectedAtWall: Clock.wallNanoseconds())) }
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
            if isCommandTarget, !everSubscribed {
                everSubscribed = true
                shard.commandTargetsSubscribed += 1
            }
            if case .subscriber = role, !everSubscribed {
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
        if isPublisher, !outages.isEmpty, outages[outages.count - 1].connackAtWall == nil {
            outages[outages.count - 1].connackAtWall = Clock.wallNanoseconds()
            outages[outages.count - 1].sessionPresent = ack.sessionPresent
        }
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
        case .publisher, .commander:
            if isCommandTarget && !ack.sessionPresent, let filter = try? MQTTTopicFilter(settings.commandTopic(forClient: index)) {
                // A persistent session that came back keeps its subscription: subscribing only without one
                // shows whether it did.
                write(.subscribe(MQTTSubscribe(
                    packetId: StateMachine.subscribePacketId, subscriptions: [MQTTSubscription(topicFilter: filter, qos: settings.qos)])))
            }
            for resend in machine.connected(receiveMaximum: ack.properties.receiveMaximum, configuredWindow: settings.inflight) {
                switch resend {
                case .publish(let outgoing):
                    if isPublisher { shard.summary.resent += 1 }
                    writePublish(outgoing)
                case .pubrel(let id):
                    write(.pubrel(MQTTPublishAck(packetId: id)))
                }
            }
            handler?.flush()
            if sendTimer == nil && !machine.isExhausted && interval > 0 && nextSendUptime == 0 {
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
        case .completed(let sequence, let latency):
            if isCommander {
                if markersFrom.map({ sequence < $0 }) ?? true { shard.summary.commandsAcked += 1 }
            } else {
                shard.summary.acked += 1
                shard.summary.ackLatency.record(nanoseconds: Int64(latency))
            }
        case .refused:
            shard.summary.protocolErrors += 1
        }
        if !isCommander { shard.noteCompletion(uptime: now) }
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
        guard deliver else { return }
        if isPublisher {
            commandReceived(publish)
            return
        }
        guard case .subscriber(_, let subscriber) = role else { return }
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

    /// A command (or the commander's end marker) for this device.
    private func commandReceived(_ publish: MQTTPublish) {
        guard let payload = DevicePayload(decoding: publish.payload), payload.clientId == clientId else {
            shard.summary.protocolErrors += 1
            return
        }
        if payload.sequence & Self.commandEndMarker != 0 {
            commandEndSeen = true
            commandsAnnounced = payload.sequence & ~Self.commandEndMarker
            checkDrained()
            return
        }
        shard.summary.commandsReceived += 1
        if shard.commandAccounting.record(client: payload.clientId, sequence: payload.sequence) == .duplicate,
            shard.commandDuplicatesNamed < 10
        {
            shard.commandDuplicatesNamed += 1
            FileHandle.standardError.write(Data(
                "device-sim command duplicate client=\(clientId) seq=\(payload.sequence) packet_id=\(publish.packetId.map(String.init) ?? "-") dup_flag=\(publish.dup) reconnects=\(outages.count)\n".utf8))
        }
        if commandEndSeen { checkDrained() }
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
        guard interval > 0, !machine.stopped else { return }
        if let count = machine.limit, machine.nextSequence + pendingTicks >= count { return }
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
        let unthrottled = interval == 0 || markersFrom != nil
        var budget = 128
        var wrote = false
        while budget > 0, unthrottled || pendingTicks > 0, handler.isWritable {
            let now = Clock.uptimeNanoseconds()
            let size = context.sizeMinimum == context.sizeMaximum
                ? context.sizeMinimum : Int.random(in: context.sizeMinimum...context.sizeMaximum, using: &random)
            guard let outgoing = machine.nextPublish(wallNanoseconds: Clock.wallNanoseconds(), uptimeNanoseconds: now, size: size)
            else { break }
            if !unthrottled { pendingTicks -= 1 }
            if isCommander {
                if markersFrom == nil { shard.summary.commandsSent += 1 }
                if context.qos == .atMostOnce && markersFrom == nil { shard.summary.commandsAcked += 1 }
            } else {
                shard.notePublish(uptime: now)
                shard.summary.sent += 1
                if context.qos == .atMostOnce { shard.summary.acked += 1 }
            }
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
            .encoded(size: outgoing.size, fill: context.payloadFill, allocator: handler.allocator)
        switch role {
        case .publisher(let topic):
            write(.publish(MQTTPublish(topic: topic, payload: payload, qos: context.qos, dup: outgoing.dup, packetId: outgoing.packetId)))
        case .commander(let targets):
            let (target, sequence) = commandAddress(outgoing.sequence, targets: targets)
            let command = DevicePayload(
                clientId: settings.clientId(target), sequence: sequence, sentAtNanoseconds: outgoing.sentAtWallNanoseconds)
                .encoded(size: outgoing.size, fill: context.payloadFill, allocator: handler.allocator)
            write(.publish(MQTTPublish(
                topic: settings.commandTopic(forClient: target), payload: command, qos: context.qos, dup: outgoing.dup,
                packetId: outgoing.packetId)))
        case .subscriber:
            return
        }
    }

    /// The commander's message `sequence`: which target, and the sequence number in its payload (for an end
    /// marker: the marker bit plus the number of commands that target was sent).
    private func commandAddress(_ sequence: UInt64, targets: [Int]) -> (target: Int, sequence: UInt64) {
        let (position, number) = Self.commandAddress(sequence, targetCount: targets.count, markersFrom: markersFrom)
        return (targets[position], number)
    }

    /// The commander's message `sequence` among `targetCount` targets: the target's position and the payload
    /// sequence number. Markers start at `markersFrom` (one per target, in order).
    static func commandAddress(_ sequence: UInt64, targetCount: Int, markersFrom: UInt64?) -> (position: Int, sequence: UInt64) {
        let count = UInt64(targetCount)
        if let first = markersFrom, sequence >= first {
            let position = sequence - first
            let sent = first / count + (position < first % count ? 1 : 0)
            return (Int(position), commandEndMarker | sent)
        }
        return (Int(sequence % count), sequence / count)
    }

    private func write(_ packet: MQTTPacket) {
        lastWriteUptime = Clock.uptimeNanoseconds()
        handler?.write(packet)
    }

    private func checkDrained() {
        guard isPublisher || isCommander, machine.isDrained, case .connected = phase else { return }
        // Command targets wait for the end marker and every command it announces (a restored session may
        // replay older commands after newer ones), or the drain timeout.
        if isCommandTarget && (!commandEndSeen || commandsReceivedDistinct < commandsAnnounced) { return }
        if case .commander(let targets) = role, markersFrom == nil {
            markersFrom = machine.nextSequence
            machine.allowMore(targets.count)
            pump()
            return
        }
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

    private var commandsReceivedDistinct: UInt64 {
        UInt64(shard.commandAccounting.clients[clientId]?.distinct ?? 0)
    }

    /// Ends the connection now (drain timeout, or a subscriber at the end of the run).
    func finish() {
        if case .finished = phase { return }
        if isCommandTarget && commandsReceivedDistinct < commandsAnnounced || isCommandTarget && !commandEndSeen {
            let missing = (0..<commandsAnnounced).filter { !(shard.commandAccounting.clients[clientId]?.contains($0) ?? false) }
            FileHandle.standardError.write(Data(
                "device-sim command gap client=\(clientId) end_marker=\(commandEndSeen) announced=\(commandsAnnounced) received=\(commandsReceivedDistinct) missing=\(missing.prefix(10).map(String.init).joined(separator: ","))\n".utf8))
        }
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
        if case .commander = role { shard.commanderFinished() }
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
