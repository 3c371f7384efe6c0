import NIOCore

extension MQTTClientConnection {
    /// One client connection's protocol logic: no IO, no clocks (times are passed in). Each input returns
    /// the actions to perform, in order. Persist actions come before the sends that depend on them: the
    /// performer must make the changes durable before writing any packet that follows them in the list.
    public struct StateMachine: Sendable {
        public enum Action: Sendable, Equatable {
            case send(MQTTPacket)
            case persist(MQTTClientSession.InflightChange)
            case event(Event)
            /// Close the connection (nil: normal close after our DISCONNECT).
            case close(MQTTClientError?)
        }

        enum State: Sendable {
            case idle
            case awaitingConnAck(since: NIODeadline)
            case connected(Connected)
            case closed
        }

        struct Connected: Sendable {
            var version: MQTTProtocolVersion
            var window: Int
            var keepAlive: TimeAmount?
            var lastSent: NIODeadline
            var pingSentAt: NIODeadline?
            /// Outgoing entries (a prefix of `session.outgoing`) already sent on this connection.
            var sentCount: Int
        }

        public let configuration: Configuration
        public private(set) var session: MQTTClientSession
        var state: State = .idle
        /// QoS 1/2 publishes not yet given a packet id (beyond the window, or before CONNACK). Not persisted.
        var queued: [(publish: MQTTPublish, tag: UInt64)] = []
        var queuedHead = 0
        var pendingSubscribes: Set<UInt16> = []
        /// Manual acknowledgement: incoming QoS 2 ids delivered to the owner and not yet acknowledged by it.
        var pendingIncoming: Set<UInt16> = []

        public init(configuration: Configuration, session: MQTTClientSession = MQTTClientSession()) {
            self.configuration = configuration
            self.session = session
        }

        public var isConnected: Bool {
            if case .connected = state { return true }
            return false
        }

        /// The outgoing window negotiated with the server (0 before CONNACK).
        public var inflightWindow: Int {
            if case .connected(let connected) = state { return connected.window }
            return 0
        }

        /// Publishes accepted but not yet given a packet id.
        public var queuedCount: Int { queued.count - queuedHead }

        // MARK: inputs

        /// The TCP (or TLS) connection is up: send CONNECT.
        public mutating func connectionEstablished(now: NIODeadline) -> [Action] {
            guard case .idle = state else { return [] }
            state = .awaitingConnAck(since: now)
            return [.send(.connect(configuration.connectPacket))]
        }

        public mutating func publish(_ publish: MQTTPublish, tag: UInt64, now: NIODeadline) -> [Action] {
            if case .closed = state { return [] }
            if publish.qos == .atMostOnce {
                guard case .connected(var connected) = state else { return [] }
                connected.lastSent = now
                state = .connected(connected)
                var message = publish
                message.packetId = nil
                message.dup = false
                return [.send(.publish(message)), .event(.acknowledged(tag: tag, reasonCode: .success))]
            }
            queued.append((publish, tag))
            return drainQueue(now: now)
        }

        public mutating func subscribe(_ subscriptions: [MQTTSubscription], properties: MQTTProperties, now: NIODeadline) -> [Action] {
            guard case .connected(var connected) = state else {
                return [.event(.subscribed(packetId: 0, reasonCodes: subscriptions.map { _ in .unspecifiedError }))]
            }
            guard let packetId = session.allocatePacketId(reserved: pendingSubscribes) else {
                return [.event(.subscribed(packetId: 0, reasonCodes: subscriptions.map { _ in .quotaExceeded }))]
            }
            pendingSubscribes.insert(packetId)
            connected.lastSent = now
            state = .connected(connected)
            return [.send(.subscribe(MQTTSubscribe(packetId: packetId, subscriptions: subscriptions, properties: properties)))]
        }

        /// Manual acknowledgement: the owner has what it was delivered (`Command.acknowledge`).
        public mutating func acknowledge(packetId: UInt16, qos: MQTTQoS, now: NIODeadline) -> [Action] {
            guard case .connected = state else { return [] }
            switch qos {
            case .atMostOnce:
                return []
            case .atLeastOnce:
                return [send(.puback(MQTTPublishAck(packetId: packetId)), now: now)]
            case .exactlyOnce:
                guard pendingIncoming.remove(packetId) != nil else { return [] }
                _ = session.insertIncoming(packetId)
                return [.persist(.incomingReceived(packetId: packetId)), send(.pubrec(MQTTPublishAck(packetId: packetId)), now: now)]
            }
        }

        public mutating func disconnect() -> [Action] {
            switch state {
            case .connected:
                state = .closed
                return [.send(.disconnect(MQTTDisconnect())), .close(nil)]
            case .idle, .awaitingConnAck:
                state = .closed
                return [.close(nil)]
            case .closed:
                return []
            }
        }

        /// Called periodically (the handler's tick): keep-alive PINGREQ and dead-link detection.
        public mutating func tick(now: NIODeadline) -> [Action] {
            switch state {
            case .awaitingConnAck(let since):
                if now - since >= timeAmount(configuration.responseTimeout) {
                    return fail(.init(.keepAliveTimeout, "no CONNACK within the response timeout"))
                }
                return []
            case .connected(var connected):
                if let pingSentAt = connected.pingSentAt {
                    if now - pingSentAt >= timeAmount(configuration.responseTimeout) {
                        return fail(.init(.keepAliveTimeout, "no PINGRESP within the response timeout"))
                    }
                    return []
                }
                guard let keepAlive = connected.keepAlive, now - connected.lastSent >= keepAlive else { return [] }
                connected.pingSentAt = now
                connected.lastSent = now
                state = .connected(connected)
                return [.send(.pingreq)]
            case .idle, .closed:
                return []
            }
        }

        /// The connection is gone (channel inactive). The session stays for the next connection; queued
        /// publishes stay queued.
        public mutating func connectionClosed() {
            state = .closed
            pendingSubscribes.removeAll()
            pendingIncoming.removeAll()
        }

        /// A packet from the server.
        public mutating func received(_ packet: MQTTPacket, now: NIODeadline) -> [Action] {
            switch state {
            case .idle, .closed:
                return []
            case .awaitingConnAck:
                guard case .connack(let connack) = packet else {
                    return fail(.init(.protocolViolation, "expected CONNACK, got \(packet.type)"))
                }
                return receivedConnAck(connack, now: now)
            case .connected(var connected):
                // Any packet from the server proves the link is alive.
                switch packet {
                case .pingresp:
                    connected.pingSentAt = nil
                    state = .connected(connected)
                    return []
                case .puback(let ack):
                    return receivedPubAck(ack, now: now)
                case .pubrec(let ack):
                    return receivedPubRec(ack, version: connected.version, now: now)
                case .pubcomp(let ack):
                    return receivedPubComp(ack, now: now)
                case .publish(let publish):
                    return receivedPublish(publish, now: now)
                case .pubrel(let ack):
                    let known = session.removeIncoming(ack.packetId)
                    var actions: [Action] = known ? [.persist(.incomingReleased(packetId: ack.packetId))] : []
                    let code: MQTTReasonCode = known || connected.version == .v311 ? .success : .packetIdentifierNotFound
                    actions.append(send(.pubcomp(MQTTPublishAck(packetId: ack.packetId, reasonCode: code)), now: now))
                    return actions
                case .suback(let suback):
                    guard pendingSubscribes.remove(suback.packetId) != nil else {
                        return fail(.init(.protocolViolation, "SUBACK for unknown packet id \(suback.packetId)"))
                    }
                    return [.event(.subscribed(packetId: suback.packetId, reasonCodes: suback.reasonCodes))]
                case .unsuback:
                    return []
                case .disconnect(let disconnect):
                    state = .closed
                    return [.close(.init(.disconnectedByServer, reasonCode: disconnect.reasonCode, "the server sent DISCONNECT"))]
                case .connect, .connack, .subscribe, .unsubscribe, .pingreq, .auth:
                    return fail(.init(.protocolViolation, "unexpected \(packet.type) from the server"))
                }
            }
        }

        // MARK: packet handling

        mutating func receivedConnAck(_ connack: MQTTConnAck, now: NIODeadline) -> [Action] {
            guard !connack.reasonCode.isFailure else {
                return fail(.init(.connectionRefused, reasonCode: connack.reasonCode, "the server refused the connection"))
            }
            let version = configuration.protocolVersion
            let serverMaximum = version == .v5 ? Int(connack.properties.receiveMaximum ?? UInt16.max) : Int(UInt16.max)
            let window = max(1, min(configuration.maximumInflight, serverMaximum))
            let keepAliveSeconds = connack.properties.serverKeepAlive ?? configuration.keepAlive
            var connected = Connected(
                version: version, window: window,
                keepAlive: keepAliveSeconds == 0 ? nil : .seconds(Int64(keepAliveSeconds)),
                lastSent: now, pingSentAt: nil, sentCount: 0)
            var actions: [Action] = [.event(.connected(connack, inflightWindow: window))]
            if !connack.sessionPresent {
                // The server has no state for us: a QoS 2 message past PUBREC was delivered already; the
                // others were never accepted and are sent again as new messages.
                var index = 0
                while index < session.outgoing.count {
                    let entry = session.outgoing[index]
                    if entry.phase == .awaitingPubComp {
                        session.remove(at: index)
                        actions.append(.persist(.removed(packetId: entry.packetId)))
                        actions.append(.event(.acknowledged(tag: entry.tag, reasonCode: .success)))
                    } else {
                        index += 1
                    }
                }
                for packetId in session.incomingAwaitingRelease {
                    _ = session.removeIncoming(packetId)
                    actions.append(.persist(.incomingReleased(packetId: packetId)))
                }
            }
            // Unfinished publishes first, in their original order (MQTT 5.0 section 4.4).
            for entry in session.outgoing {
                switch entry.phase {
                case .awaitingPubComp:
                    actions.append(.send(.pubrel(MQTTPublishAck(packetId: entry.packetId))))
                case .awaitingPubAck, .awaitingPubRec:
                    var publish = entry.publish
                    publish.packetId = entry.packetId
                    publish.dup = connack.sessionPresent
                    actions.append(.send(.publish(publish)))
                }
            }
            connected.sentCount = session.outgoing.count
            state = .connected(connected)
            actions += drainQueue(now: now)
            return actions
        }

        mutating func receivedPubAck(_ ack: MQTTPublishAck, now: NIODeadline) -> [Action] {
            guard let index = session.index(of: ack.packetId), session.outgoing[index].phase == .awaitingPubAck else {
                return fail(.init(.protocolViolation, "PUBACK for packet id \(ack.packetId), which awaits none"))
            }
            return complete(at: index, reasonCode: ack.reasonCode, now: now)
        }

        mutating func receivedPubRec(_ ack: MQTTPublishAck, version: MQTTProtocolVersion, now: NIODeadline) -> [Action] {
            guard let index = session.index(of: ack.packetId) else {
                let code: MQTTReasonCode = version == .v5 ? .packetIdentifierNotFound : .success
                return [send(.pubrel(MQTTPublishAck(packetId: ack.packetId, reasonCode: code)), now: now)]
            }
            switch session.outgoing[index].phase {
            case .awaitingPubAck:
                return fail(.init(.protocolViolation, "PUBREC for the QoS 1 packet id \(ack.packetId)"))
            case .awaitingPubComp:
                // A repeated PUBREC: PUBREL again.
                return [send(.pubrel(MQTTPublishAck(packetId: ack.packetId)), now: now)]
            case .awaitingPubRec:
                if ack.reasonCode.isFailure {
                    return complete(at: index, reasonCode: ack.reasonCode, now: now)
                }
                session.setPhase(.awaitingPubComp, at: index)
                return [.persist(.released(packetId: ack.packetId)), send(.pubrel(MQTTPublishAck(packetId: ack.packetId)), now: now)]
            }
        }

        mutating func receivedPubComp(_ ack: MQTTPublishAck, now: NIODeadline) -> [Action] {
            guard let index = session.index(of: ack.packetId), session.outgoing[index].phase == .awaitingPubComp else {
                // A late PUBCOMP for a PUBREL resent twice; nothing to do.
                return []
            }
            return complete(at: index, reasonCode: ack.reasonCode, now: now)
        }

        mutating func receivedPublish(_ publish: MQTTPublish, now: NIODeadline) -> [Action] {
            switch publish.qos {
            case .atMostOnce:
                return [.event(.message(publish))]
            case .atLeastOnce:
                guard let packetId = publish.packetId else { return [] }
                if configuration.manualAcknowledgement { return [.event(.message(publish))] }
                return [.event(.message(publish)), send(.puback(MQTTPublishAck(packetId: packetId)), now: now)]
            case .exactlyOnce:
                guard let packetId = publish.packetId else { return [] }
                if configuration.manualAcknowledgement {
                    // Already acknowledged (maybe before a restart): PUBREC again, deliver nothing. Still with
                    // the owner: its acknowledgement will answer.
                    if session.incomingAwaitingRelease.contains(packetId) {
                        return [send(.pubrec(MQTTPublishAck(packetId: packetId)), now: now)]
                    }
                    guard pendingIncoming.insert(packetId).inserted else { return [] }
                    return [.event(.message(publish))]
                }
                var actions: [Action] = []
                if session.insertIncoming(packetId) {
                    actions.append(.persist(.incomingReceived(packetId: packetId)))
                    actions.append(.event(.message(publish)))
                }
                actions.append(send(.pubrec(MQTTPublishAck(packetId: packetId)), now: now))
                return actions
            }
        }

        // MARK: helpers

        mutating func complete(at index: Int, reasonCode: MQTTReasonCode, now: NIODeadline) -> [Action] {
            let entry = session.remove(at: index)
            if case .connected(var connected) = state {
                if index < connected.sentCount { connected.sentCount -= 1 }
                state = .connected(connected)
            }
            var actions: [Action] = [.persist(.removed(packetId: entry.packetId)), .event(.acknowledged(tag: entry.tag, reasonCode: reasonCode))]
            actions += drainQueue(now: now)
            return actions
        }

        /// Gives queued publishes packet ids and sends them while the window has room.
        mutating func drainQueue(now: NIODeadline) -> [Action] {
            guard case .connected(var connected) = state else { return [] }
            var actions: [Action] = []
            while queuedHead < queued.count, session.inflightCount < connected.window,
                let packetId = session.allocatePacketId(reserved: pendingSubscribes)
            {
                var (publish, tag) = queued[queuedHead]
                queuedHead += 1
                publish.dup = false
                publish.packetId = packetId
                session.append(.init(
                    packetId: packetId, tag: tag, phase: publish.qos == .exactlyOnce ? .awaitingPubRec : .awaitingPubAck,
                    publish: publish))
                actions.append(.persist(.stored(packetId: packetId, tag: tag, qos: publish.qos)))
                actions.append(.send(.publish(publish)))
                connected.sentCount += 1
                connected.lastSent = now
            }
            if queuedHead > 64 && queuedHead * 2 > queued.count {
                queued.removeFirst(queuedHead)
                queuedHead = 0
            }
            state = .connected(connected)
            return actions
        }

        mutating func send(_ packet: MQTTPacket, now: NIODeadline) -> Action {
            if case .connected(var connected) = state {
                connected.lastSent = now
                state = .connected(connected)
            }
            return .send(packet)
        }

        mutating func fail(_ error: MQTTClientError) -> [Action] {
            state = .closed
            return [.close(error)]
        }

        func timeAmount(_ duration: Duration) -> TimeAmount {
            let (seconds, attoseconds) = duration.components
            return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        }
    }
}
