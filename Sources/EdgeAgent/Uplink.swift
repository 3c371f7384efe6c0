import Common
import DiskBuffer
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The uplink: forwards buffered records to the upstream broker with QoS 2 (or 1), in buffer order,
/// exactly once across agent crashes, and acknowledges them in the buffer on PUBCOMP (PUBACK).
///
/// One connection at a time; on loss it reconnects with exponential backoff and jitter (DNS is resolved
/// again on each attempt). The MQTT client session (in-flight table) lives on across connections and in
/// `UplinkStateStore` across processes: a new connection first resends PUBREL / PUBLISH(DUP) for
/// unfinished publishes, then continues after the highest sequence ever given a packet id.
final class Uplink: Service, Sendable {
    struct Settings: Sendable {
        var host: String
        var port: Int
        var tls: NIOSSLContext?
        var tlsServerName: String?
        var client: MQTTClientConnection.Configuration
        var qos: MQTTQoS
        var agentId: String
        var topicPrefix: String
        var backoffInitial: Duration
        var backoffMaximum: Duration
        var connectTimeout: Duration
        /// TCP_USER_TIMEOUT: unacknowledged data older than this kills the connection (dead-link detection).
        var tcpUserTimeout: Duration?
        var maxBatchBytes: Int
        /// Replay pacing: cap on forwarded record bytes per second (nil: none).
        var maxBytesPerSecond: Int?
        var progressInterval: Duration
        /// Filters the uplink subscribes to; messages arriving on them go to `onCommand`.
        var commandTopics: [MQTTTopicFilter] = []
        /// The lane this uplink forwards (`RecordLanes`): its records' `tributary-seq` carry it in the top 8
        /// bits (0 for the main lane, so its sequences are the buffer's).
        var priority: Int = 0
        /// Routes, for each record's upstream QoS (the first route matching its topic; else `qos`).
        var routes: [Route] = []
    }

    enum Event: Sendable {
        case client(MQTTClientConnection.Event)
        case progressTick
        case shutdown
    }

    let settings: Settings
    let buffer: DiskBuffer
    /// Every lane's buffer: the buffer gauges show their sum.
    let gaugeBuffers: [DiskBuffer]
    /// With several lanes: lower lanes read nothing new while this or another higher lane has a backlog.
    let gate: LaneGate?
    let store: UplinkStateStore
    let group: any EventLoopGroup
    let logger: Logger
    let onCommand: @Sendable (MQTTPublish) -> Void
    private let current = Mutex<(shuttingDown: Bool, continuation: AsyncStream<Event>.Continuation?, connecting: (any Channel)?)>(
        (false, nil, nil))
    /// After DISCONNECT on shutdown, how long the broker gets to close before we close the connection.
    let disconnectGrace: TimeAmount = .seconds(2)
    /// 0 disconnected, 1 connecting, 2 connected: for /metrics and logs.
    let state = Atomic<Int>(0)

    init(
        settings: Settings, buffer: DiskBuffer, store: UplinkStateStore, gaugeBuffers: [DiskBuffer]? = nil, gate: LaneGate? = nil,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger,
        onCommand: @escaping @Sendable (MQTTPublish) -> Void = { _ in }
    ) {
        self.onCommand = onCommand
        self.settings = settings
        self.buffer = buffer
        self.gaugeBuffers = gaugeBuffers ?? [buffer]
        self.gate = gate
        self.store = store
        self.group = group
        self.logger = logger
    }

    /// Refreshes the buffer gauges for /metrics (the sum over every lane's buffer; the oldest age is the
    /// largest), also while the uplink is down (backlog during an outage).
    static func recordBufferGauges(_ buffers: [DiskBuffer]) {
        let stats = buffers.map(\.stats)
        AgentMetrics.bufferRecords.record(Int64(stats.reduce(0) { $0 + $1.records }))
        AgentMetrics.bufferBytes.record(stats.reduce(0) { $0 + $1.bytes })
        AgentMetrics.bufferOldestAge.record(stats.compactMap(\.oldestUnacknowledgedAgeSeconds).max() ?? 0)
    }

    func run() async throws {
        let buffers = self.gaugeBuffers
        // With several lanes the buffers do not publish their gauges themselves: refreshed every second.
        let interval = buffers.count > 1 ? .seconds(1) : settings.progressInterval
        let gauges = Task {
            while !Task.isCancelled {
                Uplink.recordBufferGauges(buffers)
                try? await Task.sleep(for: interval)  // a periodic metrics refresh, not synchronisation
            }
        }
        defer { gauges.cancel() }
        var session = try restoreSession()
        var backoff = ReconnectBackoff(initial: settings.backoffInitial, maximum: settings.backoffMaximum)
        await withGracefulShutdownHandler {
            while !current.withLock({ $0.shuttingDown }) {
                setState(1)
                let (next, connected) = await runConnection(session: session)
                session = next
                setState(0)
                if connected { backoff.connected() }
                if current.withLock({ $0.shuttingDown }) || Task.isCancelled { break }
                AgentMetrics.uplinkReconnects.increment()
                let gate = self.gate, priority = settings.priority
                await backoff.wait(logger: logger, "Uplink reconnecting after a delay", key: "uplink.delay_ms") { delay in
                    if let gate { await gate.sleepBeforeReconnect(priority, for: delay) } else { try await Task.sleep(for: delay) }
                }
            }
        } onGracefulShutdown: {
            let (continuation, connecting) = self.current.withLock { state in
                state.shuttingDown = true
                return (state.continuation, state.connecting)
            }
            continuation?.yield(.shutdown)
            // A TCP/TLS connect still in progress (up to upstream.connect_timeout) is abandoned now.
            if let connecting, !connecting.isActive { connecting.close(promise: nil) }
        }
        logger.info("Uplink stopped", metadata: ["uplink.inflight": "\(session.inflightCount)"])
    }

    private func setState(_ value: Int) {
        state.store(value, ordering: .relaxed)
        AgentMetrics.uplinkState.record(value)
    }


    // MARK: restore

    /// Rebuilds the MQTT session from the persisted in-flight table and the buffer's records.
    func restoreSession() throws -> MQTTClientSession {
        let snapshot = store.snapshot
        var entries: [MQTTClientSession.Outgoing] = []
        var dropped: [MQTTClientSession.InflightChange] = []
        for record in snapshot.entries.values.sorted(by: { $0.tag < $1.tag }) {
            let stored = try buffer.read(from: record.tag, maxRecords: 1).first
            if let stored, stored.sequence == record.tag, case .publish(let publish) = outgoing(for: stored, resending: true) {
                entries.append(.init(packetId: record.packetId, tag: record.tag, phase: record.phase, publish: publish))
            } else if record.phase == .awaitingPubComp {
                // Only PUBREL is ever resent now; the body is not needed.
                entries.append(.init(packetId: record.packetId, tag: record.tag, phase: record.phase,
                                     publish: MQTTPublish(topic: "-", payload: ByteBuffer(), qos: settings.qos)))
            } else {
                logger.error("In-flight record missing from the buffer; it cannot be resent", metadata: ["buffer.sequence": "\(record.tag)"])
                dropped.append(.removed(packetId: record.packetId))
            }
        }
        if !dropped.isEmpty { try store.apply(dropped) }
        let doneThrough = entries.map(\.tag).min().map { $0 - 1 } ?? snapshot.highestStoredSequence
        if doneThrough > buffer.acknowledgedThrough && doneThrough <= buffer.stats.lastSequence {
            try buffer.acknowledge(through: doneThrough)
        }
        if !entries.isEmpty {
            logger.info("Restored the uplink in-flight state", metadata: [
                "uplink.inflight": "\(entries.count)", "buffer.sequence": "\(snapshot.highestStoredSequence)",
            ])
        }
        return MQTTClientSession(restoring: entries)
    }

    /// What a buffer record becomes upstream.
    enum Outgoing {
        case publish(MQTTPublish)
        /// Not a record this version can read (counted, skipped).
        case undecodable
        /// The device's message expiry interval has passed (MQTT 5.0 section 3.3.2.3.3): not forwarded.
        case expired
    }

    /// The upstream PUBLISH for a buffer record: the device's topic (with the prefix), payload, retain and, in
    /// MQTT 5, its forwardable properties (message expiry reduced by the time spent in the buffer) followed by
    /// the user properties `tributary-agent`, `tributary-seq`, `tributary-device`.
    /// A resend (`resending`: already sent before a restart) is never dropped as expired: it goes with 1 s left.
    func outgoing(
        for record: DiskBuffer.Record, resending: Bool = false, nowMilliseconds: UInt64 = DeviceConnectionHandler.wallMilliseconds()
    ) -> Outgoing {
        Self.outgoing(for: record, settings: settings, resending: resending, nowMilliseconds: nowMilliseconds)
    }

    static func outgoing(for record: DiskBuffer.Record, settings: Settings, resending: Bool, nowMilliseconds: UInt64) -> Outgoing {
        guard let decoded = AgentRecord(decoding: record.body) else { return .undecodable }
        var properties = MQTTProperties()
        if let expiry = decoded.properties.messageExpiryInterval {
            let waited = nowMilliseconds > decoded.receivedAtMilliseconds ? (nowMilliseconds - decoded.receivedAtMilliseconds) / 1000 : 0
            if waited < UInt64(expiry) {
                properties.messageExpiryInterval = expiry - UInt32(waited)
            } else if resending {
                properties.messageExpiryInterval = 1
            } else {
                return .expired
            }
        }
        if settings.client.protocolVersion == .v5 {
            let stored = decoded.properties
            properties.payloadFormatIndicator = stored.payloadFormatIndicator.flatMap(MQTTPayloadFormatIndicator.init(rawValue:))
            properties.contentType = stored.contentType
            properties.responseTopic = stored.responseTopic
            properties.correlationData = stored.correlationData.map { ByteBuffer(bytes: $0) }
            properties.userProperties = stored.userProperties + [
                MQTTUserProperty(name: "tributary-agent", value: settings.agentId),
                MQTTUserProperty(name: "tributary-seq", value: String(UInt64(settings.priority) << 56 | record.sequence)),
                MQTTUserProperty(name: "tributary-device", value: decoded.deviceId),
            ]
        } else {
            properties = MQTTProperties()
        }
        return .publish(MQTTPublish(
            topic: settings.topicPrefix + decoded.topic, payload: ByteBuffer(bytes: decoded.payload),
            qos: Route.first(settings.routes, matching: decoded.topic)?.qos ?? settings.qos,
            retain: decoded.retain, properties: properties))
    }

    // MARK: one connection

    /// Connects, forwards until the connection ends, and returns the session to continue from.
    func runConnection(session: MQTTClientSession) async -> (MQTTClientSession, connected: Bool) {
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self)
        let shuttingDown = current.withLock { state -> Bool in
            state.continuation = continuation
            return state.shuttingDown
        }
        defer { current.withLock { $0.continuation = nil } }
        if shuttingDown { return (session, false) }

        // A lane with a backlog counts as busy from the start of its attempt (lower lanes wait), so that a
        // lower lane connecting a moment earlier does not send its backlog first; a failed attempt clears it.
        gate?.setBusy(settings.priority, buffer.stats.records > 0)
        let channel: any Channel
        let eventLoop = group.next()
        let forwarder = Forwarder(uplink: self, eventLoop: eventLoop, session: session)
        do {
            channel = try await connect(session: session, eventLoop: eventLoop, forwarder: forwarder, events: continuation)
        } catch {
            gate?.setBusy(settings.priority, false)
            logger.warning("Uplink connection failed", metadata: [
                "uplink.host": "\(settings.host)", "uplink.port": "\(settings.port)", "error.message": "\(error)",
            ])
            return (session, false)
        }
        let progress = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: settings.progressInterval)  // a periodic timer, not synchronisation
                continuation.yield(.progressTick)
            }
        }
        defer { progress.cancel() }
        var wasConnected = false
        for await event in stream {
            switch event {
            case .client(.closed(let error, let endedSession)):
                // The forwarder was stopped on the loop already (see `connect`).
                if let error {
                    logger.warning("Uplink connection closed", metadata: ["error.message": "\(error)", "uplink.inflight": "\(endedSession.inflightCount)"])
                }
                return (endedSession, wasConnected)
            case .client(.connected(let connack, let window)):
                wasConnected = true
                setState(2)
                gate?.connected(settings.priority)
                logger.info("Uplink connected", metadata: [
                    "uplink.host": "\(settings.host)", "uplink.priority": "\(settings.priority)", "uplink.session_present": "\(connack.sessionPresent)",
                    "uplink.window": "\(window)", "uplink.resending": "\(session.inflightCount)",
                ])
                if !settings.commandTopics.isEmpty {
                    let subscriptions = settings.commandTopics.map { MQTTSubscription(topicFilter: $0, qos: .atLeastOnce) }
                    channel.writeAndFlush(MQTTClientConnection.Command.subscribe(subscriptions), promise: nil)
                }
            case .client(.acknowledged):
                break  // handled by the forwarder on the loop (see `connect`)
            case .client(.message(let publish)):
                onCommand(publish)
            case .client(.subscribed(_, let codes)):
                logger.info("Uplink subscribed to command topics", metadata: ["mqtt.reason_codes": "\(codes)"])
            case .progressTick:
                eventLoop.execute { forwarder.reportProgress() }
            case .shutdown:
                // Stop sending new records; DISCONNECT so the broker keeps the session cleanly. A broker that
                // does not let the connection close (stopped, or a write stuck) is cut off after a grace period;
                // the session state is persisted, so this is no worse than a crash.
                eventLoop.execute { forwarder.stop() }
                channel.writeAndFlush(MQTTClientConnection.Command.disconnect, promise: nil)
                channel.eventLoop.scheduleTask(in: disconnectGrace) { channel.close(promise: nil) }
            }
        }
        return (session, wasConnected)
    }

    private func connect(
        session: MQTTClientSession, eventLoop: any EventLoop, forwarder: Forwarder, events: AsyncStream<Event>.Continuation
    ) async throws -> any Channel {
        let settings = self.settings
        let store = self.store
        let uplink = self
        defer { current.withLock { $0.connecting = nil } }
        let addresses = try await cancelWhenGracefulShutdown {
            try await UplinkResolver.resolve(host: settings.host, port: settings.port)
        }
        logger.debug("Uplink host resolved", metadata: ["uplink.host": "\(settings.host)", "uplink.addresses": "\(addresses.count)"])
        var bootstrap = ClientBootstrap(group: eventLoop)
            .resolver(UplinkResolver.Resolved(addresses: addresses, eventLoop: eventLoop))
            .connectTimeout(TimeAmount.nanoseconds(Int64(settings.connectTimeout.milliseconds) * 1_000_000))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
        if let timeout = settings.tcpUserTimeout {
            bootstrap = bootstrap.channelOption(
                ChannelOptions.Types.SocketOption(level: IPPROTO_TCP, name: 18 /* TCP_USER_TIMEOUT */),
                value: SocketOptionValue(timeout.milliseconds))
        }
        return try await bootstrap.channelInitializer { channel in
            let abandon = uplink.current.withLock { state -> Bool in
                state.connecting = channel
                return state.shuttingDown
            }
            if abandon { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
            return channel.eventLoop.makeCompletedFuture {
                forwarder.channel = channel
                let operations = channel.pipeline.syncOperations
                if let tls = settings.tls {
                    // SNI cannot be an IP address: for mqtts://<IP> the certificate is verified against the
                    // peer's address (an IP subject alternative name) instead.
                    let isAddress = (try? SocketAddress(ipAddress: settings.host, port: 0)) != nil
                    try operations.addHandler(NIOSSLClientHandler(
                        context: tls, serverHostname: settings.tlsServerName ?? (isAddress ? nil : settings.host)))
                }
                let versionBox = MQTTVersionBox(settings.client.protocolVersion)
                try operations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(versionBox: versionBox)))
                try operations.addHandler(MessageToByteHandler(MQTTPacketEncoder(versionBox: versionBox)))
                let eventLoop = channel.eventLoop
                try operations.addHandler(MQTTClientConnectionHandler(
                    configuration: settings.client, session: session,
                    persist: { changes in
                        NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                            let start = ContinuousClock.now
                            try store.apply(changes)
                            AgentMetrics.persistSeconds.recordNanoseconds((ContinuousClock.now - start).nanoseconds)
                        }
                    },
                    onEvent: { event in
                        // The forwarder's events run on the loop, after the handler's current work (in
                        // order, no wake-up); acknowledgements, the per-record event, go nowhere else.
                        switch event {
                        case .connected(_, let window): eventLoop.execute { forwarder.connected(window: window) }
                        case .acknowledged(let tag, let reasonCode):
                            eventLoop.execute { forwarder.acknowledged(tag, reasonCode: reasonCode) }
                            return
                        case .closed: eventLoop.execute { forwarder.stop() }
                        case .message, .subscribed: break
                        }
                        events.yield(.client(event))
                    }))
            }
        }.connect(host: settings.host, port: settings.port).get()
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
