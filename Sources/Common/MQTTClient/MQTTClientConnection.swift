import NIOCore

/// An MQTT 3.1.1 / 5.0 client connection, as a pure state machine (`MQTTClientConnection.StateMachine`) and
/// a thin NIO handler (`MQTTClientConnectionHandler`). Shared by the edge agent's uplink and the device
/// simulator.
///
/// The session (`MQTTClientSession`: outgoing QoS 1/2 publishes and incoming QoS 2 ids) is a value that
/// outlives connections: when a connection closes, the handler hands the session back (`Event.closed`) and
/// the next connection starts from it, resending PUBREL or PUBLISH(DUP) first as MQTT requires. An owner
/// that must survive a crash also persists every `InflightChange` (the handler calls its `persist`
/// callback and sends the packets that follow a change only after that future succeeds).
public enum MQTTClientConnection {
    /// What a connection is told at start.
    public struct Configuration: Sendable, Hashable {
        public var protocolVersion: MQTTProtocolVersion
        public var clientIdentifier: String
        /// Clean Start (5.0) / Clean Session (3.1.1). An exactly-once uplink uses false.
        public var cleanStart: Bool
        /// MQTT 5 Session Expiry Interval in seconds (nil: 0, the session ends with the connection).
        public var sessionExpiryInterval: UInt32?
        /// Seconds; 0 turns keep-alive off. The server may override it (Server Keep Alive).
        public var keepAlive: UInt16
        /// How long a PINGREQ (or the CONNECT) may go unanswered before the link counts as dead.
        public var responseTimeout: Duration
        public var username: String?
        public var password: [UInt8]?
        /// Our own cap on outgoing QoS 1/2 publishes in flight; the server's Receive Maximum lowers it.
        public var maximumInflight: Int
        /// MQTT 5 Receive Maximum we announce for publishes the server sends us.
        public var receiveMaximum: UInt16?
        /// MQTT 5 Maximum Packet Size we accept.
        public var maximumPacketSize: UInt32?
        /// Incoming QoS 1/2 publishes are acknowledged (PUBACK / PUBREC) only when the owner writes
        /// `Command.acknowledge` for them, e.g. once it has stored them durably. The owner then also keeps the
        /// QoS 2 ids it acknowledged across connections (`MQTTClientSession(restoring:incomingAwaitingRelease:)`):
        /// a publish whose id awaits PUBREL is answered with PUBREC and not delivered again.
        public var manualAcknowledgement: Bool

        public init(
            protocolVersion: MQTTProtocolVersion = .v5,
            clientIdentifier: String,
            cleanStart: Bool = true,
            sessionExpiryInterval: UInt32? = nil,
            keepAlive: UInt16 = 30,
            responseTimeout: Duration = .seconds(10),
            username: String? = nil,
            password: [UInt8]? = nil,
            maximumInflight: Int = 65_535,
            receiveMaximum: UInt16? = nil,
            maximumPacketSize: UInt32? = nil,
            manualAcknowledgement: Bool = false
        ) {
            self.protocolVersion = protocolVersion
            self.clientIdentifier = clientIdentifier
            self.cleanStart = cleanStart
            self.sessionExpiryInterval = sessionExpiryInterval
            self.keepAlive = keepAlive
            self.responseTimeout = responseTimeout
            self.username = username
            self.password = password
            self.maximumInflight = maximumInflight
            self.receiveMaximum = receiveMaximum
            self.maximumPacketSize = maximumPacketSize
            self.manualAcknowledgement = manualAcknowledgement
        }

        var connectPacket: MQTTConnect {
            var properties = MQTTProperties()
            if protocolVersion == .v5 {
                properties.sessionExpiryInterval = sessionExpiryInterval
                properties.receiveMaximum = receiveMaximum
                properties.maximumPacketSize = maximumPacketSize
            }
            return MQTTConnect(
                protocolVersion: protocolVersion, clientIdentifier: clientIdentifier, cleanStart: cleanStart,
                keepAlive: keepAlive, username: username, password: password.map { ByteBuffer(bytes: $0) },
                properties: properties)
        }
    }

    /// What the owner learns from a connection.
    public enum Event: Sendable, Equatable {
        /// CONNACK with success; `inflightWindow` is how many QoS 1/2 publishes may be outstanding.
        case connected(MQTTConnAck, inflightWindow: Int)
        /// The outgoing publish `tag` is finished: PUBACK, PUBCOMP, a refusing PUBREC, or QoS 0 written.
        case acknowledged(tag: UInt64, reasonCode: MQTTReasonCode)
        /// A publish from the server (subscriptions), delivered once per QoS 2 packet id.
        case message(MQTTPublish)
        case subscribed(packetId: UInt16, reasonCodes: [MQTTReasonCode])
        /// The connection ended (nil error: we disconnected normally). `session` seeds the next connection.
        case closed(MQTTClientError?, session: MQTTClientSession)
    }

    /// Commands written to the handler's channel (`channel.writeAndFlush(command)`).
    public enum Command: Sendable {
        /// Publish; QoS 1/2 wait for window space, in order. `tag` comes back in `Event.acknowledged`.
        case publish(MQTTPublish, tag: UInt64)
        case subscribe([MQTTSubscription], properties: MQTTProperties = MQTTProperties())
        /// With `Configuration.manualAcknowledgement`: acknowledge the incoming publish `packetId` of `qos`
        /// (PUBACK for QoS 1; PUBREC for QoS 2, its id then awaits PUBREL). Ignored if the connection is gone.
        case acknowledge(packetId: UInt16, qos: MQTTQoS)
        /// Send DISCONNECT (normal) and close.
        case disconnect
    }
}
