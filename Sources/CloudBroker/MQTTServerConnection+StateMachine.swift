import Common
import Foundation
import NIOCore
import TributaryKafka

extension MQTTServerConnection {
    /// The protocol logic of one client connection (MQTT 3.1.1 and 5.0, server side), without IO.
    ///
    /// Events go in (`connectReceived`, `packetReceived`, `deliveryCompleted`, `deliver`, timers); actions
    /// come out. The channel handler performs them in order. Invariants:
    /// - A QoS 1/2 publish is acknowledged only after `deliveryCompleted(.success)` for it (G3), and
    ///   acknowledgements go out in the order the publishes arrived (MQTT 3.1.1 section 4.6).
    /// - At most `receiveMaximum` publishes wait for Kafka: reaching it emits `.pauseReading`.
    /// - An MQTT 5 client's QoS 2 publish counts against Receive Maximum until its PUBCOMP, a QoS 1 one until
    ///   its PUBACK (MQTT 5.0 section 4.9); one more than that is answered with DISCONNECT 0x93.
    /// - After `.close` no other packet is sent.
    struct StateMachine {
        enum Action {
            case send(MQTTPacket)
            /// Authenticate these credentials (`Authenticator`, off the event loop), then call `authenticated`.
            case authenticate(username: String?, password: [UInt8]?)
            /// Look up or create the session, take over any connection of the same client, then call
            /// `sessionAttached`.
            case attachSession(SessionRequest)
            /// Produce the publish (topic resolved) to Kafka and call `deliveryCompleted(token:...)`.
            case produce(token: UInt64, publish: MQTTPublish)
            /// Add these to the broker's subscription index.
            case registerSubscriptions([SubscriptionOptions])
            /// Deliver the retained messages matching this new subscription.
            case sendRetained(SubscriptionOptions)
            case unregisterSubscriptions([MQTTTopicFilter])
            case pauseReading
            case resumeReading
            /// Check keep-alive every this often from now on.
            case scheduleKeepAlive(Duration)
            /// Call `credentialsExpired` at this time (the client's token expires then).
            case scheduleCredentialsExpiry(Date)
            /// A message for the client was dropped (queue full or expired).
            case dropped(qos: MQTTQoS)
            /// Read these partitions back from Kafka from these offsets (replacing what is being read) and
            /// hand what comes to `readBack(_:readUpTo:now:)`: the queue overflowed there.
            case readBack(from: [KafkaTopicPartition: Int64])
            /// The queue is full again / has room again: stop / go on reading back.
            case pauseReadBack
            case resumeReadBack
            /// Every partition is live again: stop the read-back.
            case stopReadBack
            /// Close the connection once what was sent is flushed.
            case close
            /// Once what was sent (a DISCONNECT for what the client sent) is flushed, end the output (FIN) but
            /// read and discard what the client still sends for a moment, then close. Closing at once would
            /// answer those bytes with a TCP reset, and a client that is still writing then gets a write error
            /// before it reads the DISCONNECT and its reason code.
            case lingerAndClose
        }

        struct SessionRequest: Sendable, Equatable {
            var clientId: String
            var cleanStart: Bool
            var expiryInterval: UInt32
            /// The connection's will (announced to the other nodes, which publish it if this node dies).
            var will: MQTTWill? = nil
        }

        /// Why the connection ended, deciding the will.
        enum Ending: Equatable {
            case open
            case normal
            case normalWithWill
            case abnormal
        }

        struct PendingPublish {
            var token: UInt64
            var packetId: UInt16
            var qos: MQTTQoS
            var outcome: DeliveryOutcome?
        }

        enum DeliveryOutcome: Equatable {
            case delivered
            case failed(reason: String)
            /// Not produced: the ACL denies it (MQTT 5: acknowledged with 0x87; 3.1.1: acknowledged and dropped).
            case denied
        }

        /// A class, not a struct: the state enum holds one reference, so reading or updating it per packet
        /// retains one object instead of copying (retaining and releasing) each of its dozen fields. Owned by
        /// one state machine only (never shared), so it behaves as a value would.
        final class Connected {
            let version: MQTTProtocolVersion
            let clientId: String
            var keepAlive: UInt16
            /// Boxed: most clients have no will, and inline it took 184 bytes of every connection.
            private let willBox: WillBox?
            var will: MQTTWill? { willBox?.will }
            var session: SessionState
            var clientReceiveMaximum: Int
            var username: String?
            /// When the credentials the client authenticated with expire (nil: never).
            var credentialsValidUntil: Date?
            var requestedExpiry: UInt32 = 0
            var topicAliases: [UInt16: String] = [:]
            var pending: [PendingPublish] = []
            /// QoS 2 publishes received on this connection, acknowledged with PUBREC and not yet released by
            /// PUBREL: with `pending` they are the client's publishes in flight (MQTT 5.0 section 4.9).
            var unreleased = 0
            /// Packet ids awaiting PUBREL that the session brought from an earlier connection: the client's send
            /// quota starts afresh on each connection, so their PUBRELs do not lower `unreleased`.
            var inheritedUnreleased: Set<UInt16> = []
            var attached = false
            var writable = true
            var readingPaused = false
            var readBackPaused = false
            var lastPacket: NIODeadline

            init(
                version: MQTTProtocolVersion, clientId: String, keepAlive: UInt16, will: MQTTWill?, session: SessionState,
                clientReceiveMaximum: Int, lastPacket: NIODeadline
            ) {
                self.version = version
                self.clientId = clientId
                self.keepAlive = keepAlive
                self.willBox = will.map(WillBox.init)
                self.session = session
                self.clientReceiveMaximum = clientReceiveMaximum
                self.lastPacket = lastPacket
            }
        }

        final class WillBox {
            let will: MQTTWill
            init(_ will: MQTTWill) { self.will = will }
        }

        enum State {
            case awaitingConnect
            /// Indirect (boxed while it lasts): inline, the session request made every connection's state 224 bytes.
            indirect case authenticating(Connected, assignedClientId: Bool, request: SessionRequest)
            case connecting(Connected, assignedClientId: Bool)
            case connected(Connected)
            case closed(Connected?)
        }

        let limits: BrokerLimits
        private(set) var state: State = .awaitingConnect
        private(set) var ending: Ending = .open
        private var nextToken: UInt64 = 0

        init(limits: BrokerLimits) {
            self.limits = limits
        }

        var version: MQTTProtocolVersion? {
            switch state {
            case .awaitingConnect: nil
            case .authenticating(let c, _, _), .connecting(let c, _), .connected(let c): c.version
            case .closed(let c): c?.version
            }
        }

        var clientId: String? {
            switch state {
            case .awaitingConnect: nil
            case .authenticating(let c, _, _), .connecting(let c, _), .connected(let c): c.clientId
            case .closed(let c): c?.clientId
            }
        }

        /// The session of an attached connection (its snapshot is written when it changes).
        var attachedSession: SessionState? {
            if case .connected(let c) = state, c.attached { return c.session }
            return nil
        }

        var isClosed: Bool {
            if case .closed = state { return true }
            return false
        }

        // MARK: CONNECT

        mutating func connectReceived(_ connect: MQTTConnect, now: NIODeadline) -> [Action] {
            guard case .awaitingConnect = state else { return protocolError("second CONNECT") }
            let version = connect.protocolVersion
            func refuse(_ code: MQTTReasonCode) -> [Action] {
                state = .closed(nil)
                ending = .normal
                guard version == .v5 || code.v311ConnectReturnCode != nil else { return [.close] }
                return [.send(.connack(MQTTConnAck(reasonCode: code))), .close]
            }
            if version == .v5, connect.properties.authenticationMethod != nil {
                return refuse(.badAuthenticationMethod)
            }
            if let will = connect.will, will.retain, !limits.retainAvailable {
                return refuse(.retainNotSupported)
            }
            var clientId = connect.clientIdentifier
            var assigned = false
            if clientId.isEmpty {
                // 3.1.1 with clean session 0 was refused by the codec already (0x02).
                clientId = "auto-" + UUID().uuidString.lowercased()
                assigned = true
            }
            let expiry: UInt32
            switch version {
            case .v311: expiry = connect.cleanStart ? 0 : limits.maxSessionExpiry
            case .v5: expiry = min(connect.properties.sessionExpiryInterval ?? 0, limits.maxSessionExpiry)
            }
            var keepAlive = connect.keepAlive
            if version == .v5, limits.maxKeepAlive > 0, keepAlive == 0 || Int(keepAlive) > limits.maxKeepAlive {
                keepAlive = UInt16(limits.maxKeepAlive)
            }
            let connected = Connected(
                version: version, clientId: clientId, keepAlive: keepAlive, will: connect.will,
                session: SessionState(clientId: clientId, expiryInterval: expiry),
                clientReceiveMaximum: Int(connect.properties.receiveMaximum ?? 65_535), lastPacket: now)
            connected.requestedExpiry = connect.properties.sessionExpiryInterval ?? 0
            connected.username = connect.username
            // A freshly assigned identifier has no session anywhere: clean start 0 is then the same as 1 and
            // needs no look-up in Kafka (MQTT 5.0 3.1.3-7: processed as if the client had sent that identifier).
            let request = SessionRequest(
                clientId: clientId, cleanStart: connect.cleanStart || assigned, expiryInterval: expiry, will: connect.will)
            if limits.authentication == .checked {
                state = .authenticating(connected, assignedClientId: assigned, request: request)
                return [.pauseReading, .authenticate(username: connect.username, password: connect.password.map { Array($0.readableBytesView) })]
            }
            state = .connecting(connected, assignedClientId: assigned)
            return [.pauseReading, .attachSession(request)]
        }

        /// Authentication finished: refused, or accepted under an identity (the user name the ACL sees).
        mutating func authenticated(_ outcome: AuthenticationOutcome) -> [Action] {
            guard case .authenticating(let connected, let assigned, let request) = state else { return [] }
            switch outcome {
            case .refused(let failure):
                state = .closed(nil)
                ending = .normal
                return [.send(.connack(MQTTConnAck(reasonCode: failure.reasonCode))), .close]
            case .accepted(_, let identity, let validUntil):
                connected.username = identity
                connected.credentialsValidUntil = validUntil
            }
            state = .connecting(connected, assignedClientId: assigned)
            return [.attachSession(request)]
        }

        /// The broker found (`present`) or created the session.
        mutating func sessionAttached(_ session: SessionState, present: Bool, requestedKeepAlive: UInt16, now: Date) -> [Action] {
            guard case .connecting(let connected, let assigned) = state else { return [] }
            var session = session
            session.expiryInterval = connected.session.expiryInterval
            connected.session = session
            connected.inheritedUnreleased = session.inboundAwaitingRelease
            connected.attached = true
            var properties = MQTTProperties()
            if connected.version == .v5 {
                if assigned { properties.assignedClientIdentifier = connected.clientId }
                properties.receiveMaximum = UInt16(limits.receiveMaximum)
                properties.maximumPacketSize = UInt32(limits.maximumPacketSize)
                if limits.topicAliasMaximum > 0 { properties.topicAliasMaximum = UInt16(limits.topicAliasMaximum) }
                if !limits.retainAvailable { properties.retainAvailable = false }
                if connected.keepAlive != requestedKeepAlive { properties.serverKeepAlive = connected.keepAlive }
                if connected.session.expiryInterval != connected.requestedExpiry {
                    properties.sessionExpiryInterval = connected.session.expiryInterval
                }
            }
            var actions: [Action] = [.send(.connack(MQTTConnAck(sessionPresent: present, properties: properties)))]
            if connected.keepAlive > 0 {
                actions.append(.scheduleKeepAlive(.milliseconds(Int64(connected.keepAlive) * 500)))
            }
            if let validUntil = connected.credentialsValidUntil {
                actions.append(.scheduleCredentialsExpiry(validUntil))
            }
            for packet in connected.session.outbound.resend(version: connected.version, now: now) {
                actions.append(.send(packet))
            }
            state = .connected(connected)
            actions += drainOutbound(now: now)
            if !connected.session.outbound.readingBack.isEmpty {
                // The session was reading messages back from Kafka when its last connection closed.
                actions.append(.readBack(from: connected.session.outbound.readingBack))
                if connected.session.outbound.queuedCount >= limits.sessionQueueLimit {
                    connected.readBackPaused = true
                    actions.append(.pauseReadBack)
                }
            }
            actions.append(.resumeReading)
            return actions
        }

        // MARK: Packets

        mutating func packetReceived(_ packet: MQTTPacket, now: NIODeadline, wallClock: Date) -> [Action] {
            switch state {
            case .awaitingConnect:
                if case .connect(let connect) = packet { return connectReceived(connect, now: now) }
                return close(ending: .abnormal)
            case .connecting, .authenticating:
                if case .connect = packet { return protocolError("second CONNECT") }
                // A v5 client may send before CONNACK; we paused reading, so this is rare: treat as error.
                return protocolError("packet before CONNACK")
            case .closed:
                return []
            case .connected(let connected):
                connected.lastPacket = now
            }
            switch packet {
            case .connect:
                return protocolError("second CONNECT")
            case .publish(let publish):
                return publishReceived(publish)
            case .puback(let ack):
                return modify { c in _ = c.session.outbound.puback(ack.packetId) } + drainOutbound(now: wallClock)
            case .pubrec(let ack):
                var outcome = OutboundState.PubRecOutcome.unknown
                modifyConnected { outcome = $0.session.outbound.pubrec(ack.packetId, failed: ack.reasonCode.isFailure) }
                switch outcome {
                case .sendPubRel: return [.send(.pubrel(MQTTPublishAck(packetId: ack.packetId)))]
                case .discarded: return drainOutbound(now: wallClock)
                case .unknown:
                    let code: MQTTReasonCode = version == .v5 ? .packetIdentifierNotFound : .success
                    return [.send(.pubrel(MQTTPublishAck(packetId: ack.packetId, reasonCode: code)))]
                }
            case .pubcomp(let ack):
                return modify { c in _ = c.session.outbound.pubcomp(ack.packetId) } + drainOutbound(now: wallClock)
            case .pubrel(let ack):
                var known = false
                modifyConnected { c in
                    guard c.session.inboundAwaitingRelease.remove(ack.packetId) != nil else {
                        known = c.session.inboundReleaseUnknown
                        return
                    }
                    known = true
                    if c.inheritedUnreleased.isEmpty || c.inheritedUnreleased.remove(ack.packetId) == nil {
                        c.unreleased = max(0, c.unreleased - 1)
                    }
                }
                let code: MQTTReasonCode = known || version != .v5 ? .success : .packetIdentifierNotFound
                return [.send(.pubcomp(MQTTPublishAck(packetId: ack.packetId, reasonCode: code)))]
            case .subscribe(let subscribe):
                return subscribeReceived(subscribe)
            case .unsubscribe(let unsubscribe):
                var codes: [MQTTReasonCode] = []
                modifyConnected { c in
                    for filter in unsubscribe.topicFilters {
                        codes.append(c.session.subscriptions.removeValue(forKey: filter.string) != nil ? .success : .noSubscriptionExisted)
                    }
                }
                let ack = MQTTUnsubAck(packetId: unsubscribe.packetId, reasonCodes: version == .v5 ? codes : [])
                return [.unregisterSubscriptions(unsubscribe.topicFilters), .send(.unsuback(ack))]
            case .pingreq:
                return [.send(.pingresp)]
            case .disconnect(let disconnect):
                return disconnectReceived(disconnect)
            case .auth:
                return protocolError("AUTH without an authentication method")
            case .connack, .suback, .unsuback, .pingresp:
                return protocolError("a server-to-client packet from the client")
            }
        }

        private mutating func publishReceived(_ incoming: MQTTPublish) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            var publish = incoming
            if let alias = publish.properties.topicAlias {
                guard alias != 0, Int(alias) <= limits.topicAliasMaximum else {
                    return disconnect(.topicAliasInvalid)
                }
                if publish.topic.isEmpty {
                    guard let topic = c.topicAliases[alias] else { return protocolError("unknown topic alias") }
                    publish.topic = topic
                } else {
                    c.topicAliases[alias] = publish.topic
                }
                publish.properties.topicAlias = nil
            }
            if publish.retain && !limits.retainAvailable {
                state = .connected(c)
                return disconnect(.retainNotSupported)
            }
            let allowed = limits.access.mayPublish(topic: publish.topic, user: c.username, clientId: c.clientId)
            guard publish.qos != .atMostOnce, let packetId = publish.packetId else {
                state = .connected(c)
                nextToken += 1
                return allowed ? [.produce(token: nextToken, publish: publish)] : []
            }
            if publish.qos == .exactlyOnce && c.session.inboundAwaitingRelease.contains(packetId) {
                // Already stored and PUBREC sent: acknowledge again, do not produce twice.
                state = .connected(c)
                return [.send(.pubrec(MQTTPublishAck(packetId: packetId)))]
            }
            if c.pending.contains(where: { $0.packetId == packetId && $0.outcome == nil }) {
                // A retransmission of a publish still waiting for Kafka: its ack will follow.
                state = .connected(c)
                return []
            }
            if c.version == .v5 && c.pending.count + c.unreleased >= limits.receiveMaximum {
                state = .connected(c)
                return disconnect(.receiveMaximumExceeded)
            }
            nextToken += 1
            guard allowed else {
                // Acknowledged in turn, after the publishes before it.
                c.pending.append(PendingPublish(token: nextToken, packetId: packetId, qos: publish.qos, outcome: .denied))
                state = .connected(c)
                return deliveryCompleted(token: nextToken, outcome: .denied)
            }
            c.pending.append(PendingPublish(token: nextToken, packetId: packetId, qos: publish.qos))
            var actions: [Action] = [.produce(token: nextToken, publish: publish)]
            if c.pending.count >= limits.receiveMaximum && !c.readingPaused {
                c.readingPaused = true
                actions.append(.pauseReading)
            }
            state = .connected(c)
            return actions
        }

        /// Kafka's answer for the publish `token` (QoS 0 tokens are ignored).
        mutating func deliveryCompleted(token: UInt64, outcome: DeliveryOutcome) -> [Action] {
            guard case .connected(let c) = state,
                let index = c.pending.firstIndex(where: { $0.token == token })
            else { return [] }
            c.pending[index].outcome = outcome
            var actions: [Action] = []
            while let first = c.pending.first, let done = first.outcome {
                c.pending.removeFirst()
                switch done {
                case .delivered:
                    if first.qos == .atLeastOnce {
                        actions.append(.send(.puback(MQTTPublishAck(packetId: first.packetId))))
                    } else {
                        if c.session.inboundAwaitingRelease.insert(first.packetId).inserted { c.unreleased += 1 }
                        actions.append(.send(.pubrec(MQTTPublishAck(packetId: first.packetId))))
                    }
                case .denied:
                    let code: MQTTReasonCode = c.version == .v5 ? .notAuthorized : .success
                    if first.qos == .exactlyOnce && code == .success, c.session.inboundAwaitingRelease.insert(first.packetId).inserted {
                        c.unreleased += 1
                    }
                    let ack = MQTTPublishAck(packetId: first.packetId, reasonCode: code)
                    actions.append(.send(first.qos == .atLeastOnce ? .puback(ack) : .pubrec(ack)))
                case .failed(let reason):
                    guard c.version == .v5 else {
                        // MQTT 3.1.1 has no negative acknowledgement: close without acking; the client
                        // resends when it reconnects.
                        state = .connected(c)
                        return actions + close(ending: .abnormal)
                    }
                    var properties = MQTTProperties()
                    properties.reasonString = reason
                    let ack = MQTTPublishAck(packetId: first.packetId, reasonCode: .unspecifiedError, properties: properties)
                    actions.append(.send(first.qos == .atLeastOnce ? .puback(ack) : .pubrec(ack)))
                }
            }
            if c.readingPaused && c.pending.count < limits.receiveMaximum {
                c.readingPaused = false
                actions.append(.resumeReading)
            }
            state = .connected(c)
            return actions
        }

        private mutating func subscribeReceived(_ subscribe: MQTTSubscribe) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            var codes: [MQTTReasonCode] = []
            var added: [SubscriptionOptions] = []
            var retained: [Action] = []
            let identifier = subscribe.properties.subscriptionIdentifiers.first
            for subscription in subscribe.subscriptions {
                guard limits.access.maySubscribe(filter: subscription.topicFilter, user: c.username, clientId: c.clientId) else {
                    codes.append(.notAuthorized)
                    continue
                }
                let options = SubscriptionOptions(subscription: subscription, identifier: identifier)
                let existed = c.session.subscriptions.updateValue(options, forKey: subscription.topicFilter.string) != nil
                added.append(options)
                codes.append(.granted(subscription.qos))
                let wantsRetained: Bool
                switch subscription.retainHandling {
                case .sendOnSubscribe: wantsRetained = true
                case .sendOnNewSubscribe: wantsRetained = !existed
                case .doNotSend: wantsRetained = false
                }
                // Retained messages are not sent for shared subscriptions (MQTT 5.0 section 4.8.2).
                if wantsRetained && !subscription.topicFilter.isShared && limits.retainAvailable {
                    retained.append(.sendRetained(options))
                }
            }
            state = .connected(c)
            return [.registerSubscriptions(added), .send(.suback(MQTTSubAck(packetId: subscribe.packetId, reasonCodes: codes)))] + retained
        }

        private mutating func disconnectReceived(_ disconnect: MQTTDisconnect) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            if c.version == .v5, let expiry = disconnect.properties.sessionExpiryInterval {
                if c.session.expiryInterval == 0 && expiry != 0 {
                    return protocolError("session expiry changed from 0 in DISCONNECT")
                }
                c.session.expiryInterval = min(expiry, limits.maxSessionExpiry)
                state = .connected(c)
            }
            let withWill = c.version == .v5 && disconnect.reasonCode == .disconnectWithWillMessage
            state = .closed(c)
            ending = withWill ? .normalWithWill : .normal
            return [.close]
        }

        // MARK: Messages to the client

        /// A message for this client (from Kafka, a retained lookup or a session queue).
        mutating func deliver(_ message: OutboundMessage, now: Date) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            let window = min(c.clientReceiveMaximum, limits.maxInflightOutbound)
            let subscriptions = c.session.subscriptions  // read before `offer` modifies the session (exclusive access)
            let result = c.session.outbound.offer(
                message, window: window, limit: limits.sessionQueueLimit, canSendNow: c.writable, version: c.version, now: now,
                readBackAllowed: readBackAllowed(subscriptions))
            var actions: [Action] = []
            if let packet = result.packet { actions.append(.send(packet)) }
            if result.dropped { actions.append(.dropped(qos: message.qos)) }
            if result.readBackFrom != nil {
                // The queue is full: the read-back starts paused and goes on as it drains.
                c.readBackPaused = true
                actions.append(.readBack(from: c.session.outbound.readingBack))
                actions.append(.pauseReadBack)
            }
            return actions
        }

        /// The retained messages matching a new subscription (`sendRetained`): every one is queued, whatever
        /// `mqtt.session_queue_limit` (`OutboundState.offerRetained`), in front of later live messages.
        mutating func deliverRetained(_ messages: [OutboundMessage], now: Date) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            let window = min(c.clientReceiveMaximum, limits.maxInflightOutbound)
            var actions: [Action] = []
            for message in messages {
                let result = c.session.outbound.offerRetained(message, window: window, canSendNow: c.writable, version: c.version, now: now)
                if let packet = result.packet { actions.append(.send(packet)) }
                if result.expired { actions.append(.dropped(qos: message.qos)) }
            }
            return actions
        }

        /// Reading back from Kafka needs the records' offsets (`limits.readBack`) and a session without
        /// shared subscriptions (`SessionState.canReadBack`).
        private func readBackAllowed(_ subscriptions: [String: SubscriptionOptions]) -> Bool {
            limits.readBack && SessionState.canReadBack(subscriptions)
        }

        /// No reader for this session (the node's `mqtt.read_back_limit` is reached): what it skipped for
        /// the read-back is dropped and counted, and its partitions are live again.
        mutating func readBackRefused() -> [Action] {
            guard case .connected(let c) = state else { return [] }
            let lost = c.session.outbound.abandonReadBack()
            c.readBackPaused = false
            return Array(repeating: .dropped(qos: .atLeastOnce), count: lost)
        }

        /// The partitions being read back from Kafka, at the next offset each needs (empty: none).
        var readingBack: [KafkaTopicPartition: Int64] {
            guard case .connected(let c) = state else { return [:] }
            return c.session.outbound.readingBack
        }

        /// Messages read back from Kafka for this session (`OutboundState.PartitionDelivery`), in offset order
        /// per partition, with how far each partition was read.
        mutating func readBack(_ messages: [BrokerMessage], readUpTo: [KafkaTopicPartition: Int64], now: Date) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            let readingBefore = c.session.outbound.readingBack
            guard !readingBefore.isEmpty else { return [.stopReadBack] }
            let window = min(c.clientReceiveMaximum, limits.maxInflightOutbound)
            let subscriptions = Array(c.session.subscriptions.values)
            // Live again only once the client keeps up: the queue is down to a quarter (else it tails on).
            let liveAtMost = limits.sessionQueueLimit / 4
            var actions: [Action] = []
            for message in messages {
                guard let outbound = SessionRegistry.outbound(for: message, clientId: c.clientId, subscriptions: subscriptions) else { continue }
                if let packet = c.session.outbound.readBackOffer(
                    outbound, window: window, canSendNow: c.writable, version: c.version, now: now, liveAtMost: liveAtMost)
                {
                    actions.append(.send(packet))
                }
            }
            for (partition, offset) in readUpTo { c.session.outbound.advance(partition, to: offset, liveAtMost: liveAtMost) }
            let readingAfter = c.session.outbound.readingBack
            if readingAfter.isEmpty {
                c.readBackPaused = false
                actions.append(.stopReadBack)
                return actions
            }
            if readingAfter.count != readingBefore.count {
                // Some partitions are live again: the reader stops reading them now. Reading on, it would run
                // ahead of their live delivery, and after a later overflow there a batch it had already read
                // would pass for the continuation of the new read-back, skipping what lies between (messages
                // were lost so with many slow subscribers, session 6).
                actions.append(.readBack(from: readingAfter))
            }
            if !c.readBackPaused && c.session.outbound.queuedCount >= limits.sessionQueueLimit {
                c.readBackPaused = true
                actions.append(.pauseReadBack)
            }
            return actions
        }

        /// An outgoing PUBLISH could not be encoded for the client (larger than its Maximum Packet Size): it
        /// is discarded as if delivered (MQTT 5.0 section 3.1.2.25).
        mutating func discardOutbound(packetId: UInt16) -> [Action] {
            modifyConnected { $0.session.outbound.discard(packetId) }
            return drainOutbound(now: Date()) + [.dropped(qos: .atLeastOnce)]
        }

        mutating func writabilityChanged(_ writable: Bool, now: Date) -> [Action] {
            guard case .connected(let c) = state else { return [] }
            c.writable = writable
            state = .connected(c)
            // A client that does not read what we send is not read either (G5).
            return writable ? drainOutbound(now: now) + (c.readingPaused ? [] : [.resumeReading]) : [.pauseReading]
        }

        private mutating func drainOutbound(now: Date) -> [Action] {
            guard case .connected(let c) = state, c.writable else { return [] }
            let window = min(c.clientReceiveMaximum, limits.maxInflightOutbound)
            let (packets, expired) = c.session.outbound.drain(window: window, version: c.version, now: now)
            var actions = packets.map { Action.send($0) } + Array(repeating: .dropped(qos: .atMostOnce), count: expired)
            if c.readBackPaused && c.session.outbound.queuedCount <= limits.sessionQueueLimit / 2 {
                c.readBackPaused = false
                actions.append(.resumeReadBack)
            }
            return actions
        }

        // MARK: Timers and endings

        mutating func keepAliveCheck(now: NIODeadline) -> [Action] {
            guard case .connected(let c) = state, c.keepAlive > 0 else { return [] }
            let limit = TimeAmount.milliseconds(Int64(c.keepAlive) * 1500)
            guard now - c.lastPacket > limit else { return [] }
            return disconnect(.keepAliveTimeout)
        }

        mutating func connectTimeout() -> [Action] {
            guard case .awaitingConnect = state else { return [] }
            return close(ending: .abnormal)
        }

        /// The credentials' validity ended (a JWT's `exp`): DISCONNECT 0xA0 "maximum connect time" (MQTT 5.0
        /// table 3-10: the connection time authorized for this connection has been exceeded), then close.
        /// Abnormal: the will is published. A timer that fired before the wall clock reached the expiry is set again.
        mutating func credentialsExpired(now: Date) -> [Action] {
            guard case .connected(let c) = state, let validUntil = c.credentialsValidUntil else { return [] }
            guard now >= validUntil else { return [.scheduleCredentialsExpiry(validUntil)] }
            return disconnect(.maximumConnectTime)
        }

        /// Another connection took the session over (MQTT 5.0 section 3.1.4).
        mutating func takenOver() -> [Action] {
            disconnect(.sessionTakenOver)
        }

        /// The node is shutting down.
        mutating func shutdown() -> [Action] {
            disconnect(.serverShuttingDown)
        }

        /// The decoder rejected the input.
        mutating func decodeFailed(_ error: MQTTCodecError) -> [Action] {
            switch state {
            case .awaitingConnect:
                state = .closed(nil)
                ending = .abnormal
                // The version is unknown; an MQTT 3.1.1 CONNACK is understood by both versions for these.
                if error.reasonCode == .unsupportedProtocolVersion || error.reasonCode == .clientIdentifierNotValid,
                    error.reasonCode.v311ConnectReturnCode != nil
                {
                    return [.send(.connack(MQTTConnAck(reasonCode: error.reasonCode))), .close]
                }
                return [.close]
            default:
                return disconnect(error.reasonCode)
            }
        }

        /// The channel closed. Returns the session to keep (or discard) and the will to publish, if any.
        mutating func channelClosed() -> (session: SessionState?, will: MQTTWill?, attached: Bool) {
            let connected: Connected?
            switch state {
            case .awaitingConnect: connected = nil
            case .authenticating(let c, _, _): connected = c
            case .connecting(let c, _), .connected(let c): connected = c
            case .closed(let c): connected = c
            }
            if ending == .open { ending = .abnormal }
            state = .closed(nil)
            guard let connected else { return (nil, nil, false) }
            let will = ending == .normal ? nil : connected.will
            return (connected.session, will, connected.attached)
        }

        private mutating func protocolError(_ detail: String) -> [Action] {
            disconnect(.protocolError)
        }

        /// Sends DISCONNECT with `code` to an MQTT 5 client, then closes (abnormal: the will is published).
        private mutating func disconnect(_ code: MQTTReasonCode) -> [Action] {
            let v5 = version == .v5
            let attached: Bool
            switch state {
            case .connected: attached = true
            default: attached = false
            }
            guard v5 && attached && MQTTReasonCode.disconnectCodesSentByServer.contains(code) else {
                return close(ending: .abnormal)
            }
            let ending = close(ending: .abnormal).map { action -> Action in
                if case .close = action, MQTTReasonCode.disconnectCodesForClientInput.contains(code) { return .lingerAndClose }
                return action
            }
            return [.send(.disconnect(MQTTDisconnect(reasonCode: code)))] + ending
        }

        private mutating func close(ending: Ending) -> [Action] {
            switch state {
            case .connecting(let c, _), .connected(let c): state = .closed(c)
            case .authenticating(let c, _, _): state = .closed(c)
            case .awaitingConnect: state = .closed(nil)
            case .closed: return []
            }
            if self.ending == .open { self.ending = ending }
            return [.close]
        }

        private mutating func modifyConnected(_ body: (inout Connected) -> Void) {
            guard case .connected(var c) = state else { return }
            body(&c)
            state = .connected(c)
        }

        private mutating func modify(_ body: (inout Connected) -> Void) -> [Action] {
            modifyConnected(body)
            return []
        }
    }
}

extension MQTTReasonCode {
    /// DISCONNECT reasons that answer something the client sent (it may still be writing): the connection
    /// lingers before it closes (`lingerAndClose`). Not a keep-alive timeout, a takeover, a shutdown or an
    /// expired token: those close at once.
    static let disconnectCodesForClientInput: Set<MQTTReasonCode> = [
        .unspecifiedError, .malformedPacket, .protocolError, .implementationSpecificError, .notAuthorized,
        .topicFilterInvalid, .topicNameInvalid, .receiveMaximumExceeded, .topicAliasInvalid, .packetTooLarge,
        .messageRateTooHigh, .quotaExceeded, .payloadFormatInvalid, .retainNotSupported, .qosNotSupported,
        .sharedSubscriptionsNotSupported, .subscriptionIdentifiersNotSupported, .wildcardSubscriptionsNotSupported,
    ]

    /// Reason codes a server may put in DISCONNECT (MQTT 5.0 table 3-10, minus client-only ones).
    static let disconnectCodesSentByServer: Set<MQTTReasonCode> = [
        .normalDisconnection, .unspecifiedError, .malformedPacket, .protocolError, .implementationSpecificError,
        .notAuthorized, .serverBusy, .serverShuttingDown, .keepAliveTimeout, .sessionTakenOver, .topicFilterInvalid,
        .topicNameInvalid, .receiveMaximumExceeded, .topicAliasInvalid, .packetTooLarge, .messageRateTooHigh,
        .quotaExceeded, .administrativeAction, .payloadFormatInvalid, .retainNotSupported, .qosNotSupported,
        .useAnotherServer, .serverMoved, .sharedSubscriptionsNotSupported, .connectionRateExceeded,
        .maximumConnectTime, .subscriptionIdentifiersNotSupported, .wildcardSubscriptionsNotSupported,
    ]
}
