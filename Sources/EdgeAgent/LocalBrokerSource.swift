import Common
import DiskBuffer
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The optional second source of records: an MQTT client of an existing local broker (mosquitto on the
/// gateway) that subscribes with a persistent session (clean start 0 / clean session 0, QoS 2 subscriptions
/// to `local_broker.topics`) and appends every message it receives to the disk buffer.
///
/// A message is acknowledged to the local broker (PUBACK, or PUBREC for QoS 2) only after its append is
/// durable; for QoS 2 its packet id is recorded as awaiting PUBREL in the device session store under
/// `sessionKey`, with the same crash repair as a device's (`DeviceSessionStore`: the record carries the id and
/// the local-broker flag). So a SIGKILL loses nothing: the broker resends what was not acknowledged, and a
/// QoS 2 message whose id is recorded gets PUBREC without being stored again. QoS 1 messages stored but not
/// yet acknowledged when the agent dies are stored again when the broker resends them (at least once, as
/// QoS 1 promises). On PUBREL the id is removed durably before PUBCOMP.
///
/// Messages are taken in batches: whatever arrived while the previous batch was being stored is stored
/// next with the buffer's batch append (one durable write for up to 1 MiB of records), in arrival order,
/// then acknowledged in that order.
final class LocalBrokerSource: Service, Sendable {
    /// Where `tributary-device` comes from: the publisher is not known to the subscriber in MQTT.
    enum DeviceIdentity: Sendable, Equatable {
        /// Topic level `n` (1-based), e.g. 2 for `devices/<id>/telemetry`.
        case topicLevel(Int)
        /// The value of a user property the publisher sets (MQTT 5).
        case userProperty(String)
        case none
    }

    struct Settings: Sendable {
        var host: String
        var port: Int
        var client: MQTTClientConnection.Configuration
        var topics: [MQTTTopicFilter]
        var deviceIdentity: DeviceIdentity
        /// `tributary-device` when the identity is not found in a message.
        var deviceName: String
        var backoffInitial: Duration
        var backoffMaximum: Duration
        var connectTimeout: Duration
    }

    /// The session store's key for the source's QoS 2 ids. U+0000 cannot occur in an MQTT client id
    /// (section 1.5.4), so no device can share it.
    static let sessionKey = "\u{0}local-broker"

    enum Event: Sendable {
        case client(MQTTClientConnection.Event)
        case messages
        case shutdown
    }

    let settings: Settings
    let lanes: RecordLanes
    let group: any EventLoopGroup
    let logger: Logger
    private let current = Mutex<(shuttingDown: Bool, continuation: AsyncStream<Event>.Continuation?, channel: (any Channel)?)>((false, nil, nil))
    /// Messages received and not yet taken for storing (filled on the event loop, emptied by `run`).
    private let arrived = Mutex<[MQTTPublish]>([])

    init(
        settings: Settings, lanes: RecordLanes,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
    ) {
        self.settings = settings
        self.lanes = lanes
        self.group = group
        self.logger = logger
    }

    func run() async throws {
        var backoff = ReconnectBackoff(initial: settings.backoffInitial, maximum: settings.backoffMaximum)
        await withGracefulShutdownHandler {
            while !current.withLock({ $0.shuttingDown }) {
                AgentMetrics.localBrokerState.record(1)
                if await runConnection() { backoff.connected() }
                AgentMetrics.localBrokerState.record(0)
                if current.withLock({ $0.shuttingDown }) || Task.isCancelled { break }
                await backoff.wait(logger: logger, "Local broker reconnecting after a delay", key: "local_broker.delay_ms")
            }
        } onGracefulShutdown: {
            let (continuation, channel) = self.current.withLock { state in
                state.shuttingDown = true
                return (state.continuation, state.channel)
            }
            continuation?.yield(.shutdown)
            if let channel, !channel.isActive { channel.close(promise: nil) }
        }
        logger.info("Local broker source stopped")
    }

    /// One connection: connect, subscribe, store and acknowledge until it ends. Returns whether CONNACK came.
    func runConnection() async -> Bool {
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self)
        let shuttingDown = current.withLock { state -> Bool in
            state.continuation = continuation
            return state.shuttingDown
        }
        defer { current.withLock { $0.continuation = nil; $0.channel = nil } }
        if shuttingDown { return false }
        arrived.withLock { $0.removeAll() }
        // The ids this source acknowledged and whose PUBREL has not come, as durably recorded.
        let session = MQTTClientSession(restoring: [], incomingAwaitingRelease: lanes.session(Self.sessionKey) ?? [])
        let channel: any Channel
        do {
            channel = try await connect(session: session, events: continuation)
        } catch {
            logger.warning("Local broker connection failed", metadata: [
                "local_broker.host": "\(settings.host)", "local_broker.port": "\(settings.port)", "error.message": "\(error)",
            ])
            return false
        }
        var connected = false
        for await event in stream {
            switch event {
            case .client(.connected(let connack, _)):
                connected = true
                AgentMetrics.localBrokerState.record(2)
                logger.info("Local broker connected", metadata: [
                    "local_broker.host": "\(settings.host)", "local_broker.session_present": "\(connack.sessionPresent)",
                ])
                let subscriptions = settings.topics.map { MQTTSubscription(topicFilter: $0, qos: .exactlyOnce) }
                channel.writeAndFlush(MQTTClientConnection.Command.subscribe(subscriptions), promise: nil)
            case .client(.subscribed(_, let codes)):
                if codes.contains(where: \.isFailure) {
                    logger.error("The local broker refused a subscription", metadata: ["mqtt.reason_codes": "\(codes)"])
                } else {
                    logger.info("Local broker subscribed", metadata: ["mqtt.reason_codes": "\(codes)"])
                }
            case .client(.message), .client(.acknowledged):
                break  // messages come through `arrived`; the source publishes nothing
            case .messages:
                let batch = arrived.withLock { messages -> [MQTTPublish] in
                    defer { messages.removeAll(keepingCapacity: true) }
                    return messages
                }
                if !batch.isEmpty { await store(batch, channel: channel) }
            case .client(.closed(let error, _)):
                if let error { logger.warning("Local broker connection closed", metadata: ["error.message": "\(error)"]) }
                return connected
            case .shutdown:
                channel.writeAndFlush(MQTTClientConnection.Command.disconnect, promise: nil)
                channel.eventLoop.scheduleTask(in: .seconds(2)) { channel.close(promise: nil) }
            }
        }
        return connected
    }

    /// Largest group of records given to the buffer in one `append(contentsOf:)`.
    static let maximumAppendBytes = 1 << 20

    /// Appends `batch` in order (QoS 2 ids recorded with it), each message to the lane its route names,
    /// then acknowledges it in order. A record the buffer refuses (full) closes the connection: the broker
    /// resends it after the reconnect backoff.
    func store(_ batch: [MQTTPublish], channel: any Channel) async {
        let received = DeviceConnectionHandler.wallMilliseconds()
        let bodies = batch.map { publish in
            AgentMetrics.received(qos: publish.qos == .atMostOnce ? .zero : publish.qos == .atLeastOnce ? .one : .two).increment()
            AgentMetrics.receivedBytes.increment(by: publish.payload.readableBytes)
            AgentMetrics.localBrokerMessages.increment()
            return AgentRecord.encode(
                publish, deviceId: deviceId(for: publish), persistentSession: true, fromLocalBroker: true,
                receivedAtMilliseconds: received)
        }
        let batchLanes = batch.map { lanes.lane(for: $0.topic) }
        var acknowledged = [Bool](repeating: false, count: batch.count)
        var failure: DiskBufferError? = nil
        var recorded = true
        // Runs of consecutive messages for the same lane, in order.
        var start = 0
        while start < batch.count && failure == nil && recorded {
            var end = start + 1
            while end < batch.count && batchLanes[end].priority == batchLanes[start].priority { end += 1 }
            (failure, recorded) = await storeRun(start..<end, of: batch, bodies: bodies, lane: batchLanes[start], acknowledged: &acknowledged)
            start = end
        }
        if recorded {
            for (publish, done) in zip(batch, acknowledged) where done {
                guard let id = publish.packetId, publish.qos != .atMostOnce else { continue }
                channel.write(MQTTClientConnection.Command.acknowledge(packetId: id, qos: publish.qos), promise: nil)
            }
            channel.flush()
        }
        if let failure {
            AgentMetrics.rejected.increment()
            logger.warning("Local broker message not stored; reconnecting so the broker resends it", metadata: ["error.message": "\(failure)"])
            channel.close(promise: nil)
        } else if !recorded {
            channel.close(promise: nil)
        }
    }

    /// Appends one lane's run of the batch (groups of up to `maximumAppendBytes`) and records its QoS 2 ids
    /// in that lane's session file. Marks what may be acknowledged.
    private func storeRun(
        _ run: Range<Int>, of batch: [MQTTPublish], bodies: [[UInt8]], lane: RecordLanes.Lane, acknowledged: inout [Bool]
    ) async -> (failure: DiskBufferError?, recorded: Bool) {
        let exactlyOnce = batch[run].contains { $0.qos == .exactlyOnce }
        let token = exactlyOnce ? lane.sessions.beginStore(lastSequence: lane.sink.lastSequence) : nil
        var ids: [(UInt16, UInt64)] = []
        var last: UInt64? = nil
        var failure: DiskBufferError? = nil
        var index = run.lowerBound
        var groupBytes = Self.maximumAppendBytes
        while index < run.upperBound && failure == nil {
            var end = index + 1
            var bytes = bodies[index].count
            while end < run.upperBound && bytes + bodies[end].count <= groupBytes {
                bytes += bodies[end].count
                end += 1
            }
            do {
                let range = try await lane.sink.append(contentsOf: Array(bodies[index..<end]))
                for (offset, sequence) in range.enumerated() {
                    let publish = batch[index + offset]
                    if publish.qos == .exactlyOnce, let id = publish.packetId { ids.append((id, sequence)) }
                    acknowledged[index + offset] = true
                    last = sequence
                }
                index = end
            } catch let error where error.code == .recordTooLarge {
                if end - index > 1 {
                    groupBytes = 0  // the group did not fit: one record at a time from here
                    continue
                }
                // It can never be stored: acknowledged so it does not hold up the session, and counted.
                AgentMetrics.rejected.increment()
                logger.error("A local broker message is too large for the buffer; dropped", metadata: ["mqtt.topic": "\(batch[index].topic)"])
                acknowledged[index] = true
                index = end
            } catch {
                failure = error
            }
        }
        var recorded = true
        if !ids.isEmpty {
            do {
                try await lane.sessions.insert(ids, for: Self.sessionKey)
            } catch {
                recorded = false
                logger.error("Recording the local broker's QoS 2 ids failed", metadata: ["error.message": "\(error)"])
            }
        }
        if let token { lane.sessions.endStore(token, sequence: last) }
        return (failure, recorded)
    }

    func deviceId(for publish: MQTTPublish) -> String {
        switch settings.deviceIdentity {
        case .topicLevel(let level):
            let levels = publish.topic.split(separator: "/", omittingEmptySubsequences: false)
            if level <= levels.count, !levels[level - 1].isEmpty { return String(levels[level - 1]) }
        case .userProperty(let name):
            if let value = publish.properties.firstUserProperty(named: name), !value.isEmpty { return value }
        case .none:
            break
        }
        return settings.deviceName
    }

    private func connect(session: MQTTClientSession, events: AsyncStream<Event>.Continuation) async throws -> any Channel {
        let settings = self.settings
        let lanes = self.lanes
        let source = self
        return try await ClientBootstrap(group: group)
            .connectTimeout(.nanoseconds(settings.connectTimeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                let abandon = source.current.withLock { state -> Bool in
                    state.channel = channel
                    return state.shuttingDown
                }
                if abandon { return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
                return channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    let versionBox = MQTTVersionBox(settings.client.protocolVersion)
                    try operations.addHandler(ByteToMessageHandler(MQTTPacketDecoder(versionBox: versionBox)))
                    try operations.addHandler(MessageToByteHandler(MQTTPacketEncoder(versionBox: versionBox)))
                    let eventLoop = channel.eventLoop
                    try operations.addHandler(MQTTClientConnectionHandler(
                        configuration: settings.client, session: session,
                        persist: { changes in
                            // PUBREL: the id is forgotten durably before PUBCOMP. (Received ids were recorded
                            // with their append.)
                            let released = changes.compactMap { change -> UInt16? in
                                if case .incomingReleased(let id) = change { return id } else { return nil }
                            }
                            guard !released.isEmpty else { return eventLoop.makeSucceededVoidFuture() }
                            return eventLoop.makeFutureWithTask { try await lanes.remove(released, for: LocalBrokerSource.sessionKey) }
                        },
                        onEvent: { event in
                            if case .message(let publish) = event {
                                let wake = source.arrived.withLock { messages -> Bool in
                                    messages.append(publish)
                                    return messages.count == 1
                                }
                                if wake { events.yield(.messages) }
                            } else {
                                events.yield(.client(event))
                            }
                        }))
                }
            }
            .connect(host: settings.host, port: settings.port).get()
    }
}
