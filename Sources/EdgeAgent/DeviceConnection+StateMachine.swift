import Common

/// The device side of the agent: one MQTT server connection per device.
enum DeviceConnection {
    /// Protocol logic of one device connection: CONNECT/CONNACK, QoS 0/1/2 receive bookkeeping, PINGRESP,
    /// DISCONNECT, keep-alive. No IO: storing, persisting and sending are actions the handler performs.
    ///
    /// QoS 2 (MQTT 5.0 section 4.3.3, method B): the first PUBLISH of a packet id is stored; every PUBLISH
    /// with an id that awaits PUBREL (stored, or still being stored) is not stored again; PUBREC goes out
    /// only after the store (and, for persistent sessions, the id) is durable.
    struct StateMachine {
        enum Action: Equatable {
            case send(MQTTPacket)
            /// Look up / open / discard the persistent session, then call `sessionLoaded`.
            case loadSession(clientId: String, cleanStart: Bool)
            /// Append to the buffer, then call `stored(_:)` (or `storeFailed`) with `completion`.
            case store(MQTTPublish, completion: Completion)
            /// For a persistent session, forget `packetId` durably; then call `released(_:)`.
            case release(packetId: UInt16, persist: Bool)
            /// Commands from the cloud matching these filters go to this device (granted QoS at most 1).
            case subscribe([MQTTSubscription])
            case unsubscribe([MQTTTopicFilter])
            /// Close; with a reason code, send it first (CONNACK before a session, DISCONNECT in MQTT 5).
            case close(MQTTReasonCode?, String)
        }

        enum Completion: Equatable {
            case none
            case puback(UInt16)
            /// PUBREC after recording the id (durably when `persist`).
            case pubrec(UInt16, persist: Bool)
        }

        enum State: Equatable {
            case awaitingConnect
            case loadingSession(MQTTConnect, clientId: String)
            case connected
            case closed
        }

        var state: State = .awaitingConnect
        var version: MQTTProtocolVersion = .v5
        var clientId = ""
        var persistent = false
        var keepAlive: UInt16 = 0
        /// QoS 2 ids stored (or being stored) and awaiting PUBREL.
        var awaitingRelease: Set<UInt16> = []
        var storing: Set<UInt16> = []
        /// Publishes accepted for storing and not yet acknowledged (QoS 1 and 2), against our receive maximum.
        var unacknowledged = 0
        let receiveMaximum: UInt16
        let maximumKeepAlive: UInt16
        private var assignedCounter: Int

        init(receiveMaximum: UInt16 = 100, maximumKeepAlive: UInt16 = 600, connectionNumber: Int = 0) {
            self.receiveMaximum = receiveMaximum
            self.maximumKeepAlive = maximumKeepAlive
            self.assignedCounter = connectionNumber
        }

        mutating func received(_ packet: MQTTPacket) -> [Action] {
            switch state {
            case .closed:
                return []
            case .awaitingConnect:
                guard case .connect(let connect) = packet else {
                    return close(nil, "the first packet must be CONNECT")
                }
                version = connect.protocolVersion
                var id = connect.clientIdentifier
                if id.isEmpty {
                    guard connect.cleanStart else {
                        state = .loadingSession(connect, clientId: "")
                        return close(.clientIdentifierNotValid, "empty client id without clean start")
                    }
                    id = "tributary-auto-\(assignedCounter)"
                }
                clientId = id
                keepAlive = connect.keepAlive
                persistent = !connect.cleanStart
                state = .loadingSession(connect, clientId: id)
                return [.loadSession(clientId: id, cleanStart: connect.cleanStart)]
            case .loadingSession:
                return close(.protocolError, "packet before CONNACK")
            case .connected:
                return receivedConnected(packet)
            }
        }

        /// The session is loaded: `existing` is the persisted QoS 2 ids (nil if no session existed).
        mutating func sessionLoaded(existing: Set<UInt16>?) -> [Action] {
            guard case .loadingSession(let connect, let id) = state else { return [] }
            state = .connected
            awaitingRelease = persistent ? (existing ?? []) : []
            var properties = MQTTProperties()
            if version == .v5 {
                properties.receiveMaximum = receiveMaximum
                if connect.clientIdentifier.isEmpty { properties.assignedClientIdentifier = id }
                if connect.keepAlive > maximumKeepAlive || connect.keepAlive == 0 {
                    properties.serverKeepAlive = maximumKeepAlive
                    keepAlive = maximumKeepAlive
                }
                properties.topicAliasMaximum = 0
                properties.retainAvailable = true
                properties.wildcardSubscriptionAvailable = false
                properties.sharedSubscriptionAvailable = false
            }
            let present = persistent && existing != nil
            return [.send(.connack(MQTTConnAck(sessionPresent: present, properties: properties)))]
        }

        mutating func receivedConnected(_ packet: MQTTPacket) -> [Action] {
            switch packet {
            case .publish(let publish):
                if publish.topic.isEmpty {
                    return close(.topicAliasInvalid, "topic aliases are not supported")
                }
                switch publish.qos {
                case .atMostOnce:
                    return [.store(publish, completion: .none)]
                case .atLeastOnce:
                    guard let id = publish.packetId else { return close(.protocolError, "QoS 1 without packet id") }
                    guard unacknowledged < Int(receiveMaximum) || version == .v311 else {
                        return close(.receiveMaximumExceeded, "more unacknowledged publishes than the receive maximum")
                    }
                    unacknowledged += 1
                    return [.store(publish, completion: .puback(id))]
                case .exactlyOnce:
                    guard let id = publish.packetId else { return close(.protocolError, "QoS 2 without packet id") }
                    if awaitingRelease.contains(id) {
                        // Stored before (maybe before a restart): acknowledge again, store nothing.
                        return [.send(.pubrec(MQTTPublishAck(packetId: id)))]
                    }
                    if storing.contains(id) { return [] }
                    guard unacknowledged < Int(receiveMaximum) || version == .v311 else {
                        return close(.receiveMaximumExceeded, "more unacknowledged publishes than the receive maximum")
                    }
                    unacknowledged += 1
                    storing.insert(id)
                    return [.store(publish, completion: .pubrec(id, persist: persistent))]
                }
            case .pubrel(let ack):
                return [.release(packetId: ack.packetId, persist: persistent && awaitingRelease.contains(ack.packetId))]
            case .pingreq:
                return [.send(.pingresp)]
            case .disconnect:
                state = .closed
                return [.close(nil, "the device disconnected")]
            case .subscribe(let subscribe):
                // Commands the uplink receives are delivered at QoS 0 or 1 (best effort from the agent on).
                var granted: [MQTTSubscription] = []
                var codes: [MQTTReasonCode] = []
                for var subscription in subscribe.subscriptions {
                    if subscription.topicFilter.isShared {
                        codes.append(version == .v5 ? .sharedSubscriptionsNotSupported : .unspecifiedError)
                        continue
                    }
                    subscription.qos = min(subscription.qos, .atLeastOnce)
                    granted.append(subscription)
                    codes.append(subscription.qos == .atMostOnce ? .grantedQoS0 : .grantedQoS1)
                }
                var actions: [Action] = granted.isEmpty ? [] : [.subscribe(granted)]
                actions.append(.send(.suback(MQTTSubAck(packetId: subscribe.packetId, reasonCodes: codes))))
                return actions
            case .unsubscribe(let unsubscribe):
                let codes: [MQTTReasonCode] = unsubscribe.topicFilters.map { _ in .success }
                return [
                    .unsubscribe(unsubscribe.topicFilters),
                    .send(.unsuback(MQTTUnsubAck(packetId: unsubscribe.packetId, reasonCodes: version == .v5 ? codes : []))),
                ]
            case .puback, .pubrec, .pubcomp:
                // We never send publishes to devices yet; ignore stray acks.
                return []
            case .connect:
                return close(.protocolError, "second CONNECT")
            case .connack, .suback, .unsuback, .pingresp, .auth:
                return close(.protocolError, "\(packet.type) is not a client packet")
            }
        }

        /// Whether `publish` repeats a QoS 2 message stored (or being stored) and awaiting PUBREL: it gets
        /// PUBREC (or nothing while storing) and is not stored again. For the duplicates metric.
        func isDuplicate(_ publish: MQTTPublish) -> Bool {
            guard state == .connected, publish.qos == .exactlyOnce, let id = publish.packetId else { return false }
            return awaitingRelease.contains(id) || storing.contains(id)
        }

        /// The buffer holds the publish (and a QoS 2 id is recorded): acknowledge.
        mutating func stored(_ completion: Completion) -> [Action] {
            switch completion {
            case .none:
                return []
            case .puback(let id):
                unacknowledged -= 1
                return state == .connected ? [.send(.puback(MQTTPublishAck(packetId: id)))] : []
            case .pubrec(let id, _):
                unacknowledged -= 1
                storing.remove(id)
                awaitingRelease.insert(id)
                return state == .connected ? [.send(.pubrec(MQTTPublishAck(packetId: id)))] : []
            }
        }

        /// The buffer refused the publish (full, too large): no ack; MQTT 5 gets a reason code.
        mutating func storeFailed(_ completion: Completion, reasonCode: MQTTReasonCode) -> [Action] {
            switch completion {
            case .none:
                return []
            case .puback(let id):
                unacknowledged -= 1
                return version == .v5 && state == .connected ? [.send(.puback(MQTTPublishAck(packetId: id, reasonCode: reasonCode)))] : []
            case .pubrec(let id, _):
                unacknowledged -= 1
                storing.remove(id)
                return version == .v5 && state == .connected ? [.send(.pubrec(MQTTPublishAck(packetId: id, reasonCode: reasonCode)))] : []
            }
        }

        /// PUBREL handled (the id forgotten durably if it was persistent): PUBCOMP.
        mutating func released(_ packetId: UInt16) -> [Action] {
            let known = awaitingRelease.remove(packetId) != nil
            guard state == .connected else { return [] }
            let code: MQTTReasonCode = known || version == .v311 ? .success : .packetIdentifierNotFound
            return [.send(.pubcomp(MQTTPublishAck(packetId: packetId, reasonCode: code)))]
        }

        /// Nothing received for 1.5 × keep-alive (MQTT 5.0 section 3.1.2.10).
        mutating func keepAliveExpired() -> [Action] {
            guard state == .connected else { return [] }
            return close(.keepAliveTimeout, "no packet within 1.5 × keep-alive")
        }

        mutating func close(_ reasonCode: MQTTReasonCode?, _ message: String) -> [Action] {
            let wasConnected = state == .connected
            let hadConnect = state != .awaitingConnect
            state = .closed
            guard let reasonCode else { return [.close(nil, message)] }
            if !hadConnect { return [.close(nil, message)] }
            // Before CONNACK: a refusing CONNACK; after: DISCONNECT with the reason (MQTT 5 only).
            if !wasConnected { return [.close(reasonCode, message)] }
            return [.close(version == .v5 ? reasonCode : nil, message)]
        }
    }
}
