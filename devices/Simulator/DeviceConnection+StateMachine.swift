import Common

extension DeviceConnection {
    /// The MQTT bookkeeping of one simulated device, without IO: which sequence number and packet id come
    /// next, what is in flight, which acks complete what. Survives reconnects (the in-flight messages are
    /// sent again with DUP set, PUBRELs again for those past PUBREC, as MQTT requires on session resume).
    struct StateMachine: Sendable {
        struct InFlight: Sendable, Hashable {
            var sequence: UInt64
            /// Wall clock at the first send; goes into the payload, identical when resent.
            var sentAtWallNanoseconds: UInt64
            /// Monotonic time of the first send, for the ack latency.
            var sentAtUptimeNanoseconds: UInt64
            var size: Int
            /// QoS 2 only: PUBREC arrived, PUBCOMP awaited.
            var released = false
        }

        /// A PUBLISH to build: sequence number, packet id (nil at QoS 0), timestamps and size.
        struct Outgoing: Sendable, Hashable {
            var sequence: UInt64
            var packetId: UInt16?
            var sentAtWallNanoseconds: UInt64
            var size: Int
            var dup: Bool
        }

        enum AckResult: Sendable, Hashable {
            /// Not a packet id we have in flight (late duplicate ack): ignore.
            case unknown
            /// QoS 2 PUBREC: send PUBREL for this id.
            case sendPubrel(UInt16)
            /// The message is done; latency from first send to this ack.
            case completed(sequence: UInt64, latencyNanoseconds: UInt64)
            /// The broker refused the message (MQTT 5 reason code >= 0x80): done, counted as refused.
            case refused(sequence: UInt64)
        }

        /// What to do again after (re)connecting.
        enum Resend: Sendable, Hashable {
            case publish(Outgoing)
            case pubrel(UInt16)
        }

        let qos: MQTTQoS
        /// Messages to send in all, nil for unlimited (duration runs).
        private(set) var limit: UInt64?
        private(set) var window: Int
        private(set) var nextSequence: UInt64 = 0
        private(set) var inFlight: [UInt16: InFlight] = [:]
        private var nextPacketId: UInt16 = 1
        /// No new messages (count reached or the run's duration is over).
        private(set) var stopped = false

        init(qos: MQTTQoS, limit: Int?, window: Int) {
            self.qos = qos
            self.limit = limit.map { UInt64($0) }
            self.window = max(1, window)
        }

        var isExhausted: Bool { stopped || (limit.map { nextSequence >= $0 } ?? false) }
        /// Everything that will ever be sent has been sent and acknowledged.
        var isDrained: Bool { isExhausted && inFlight.isEmpty }
        var canSend: Bool { !isExhausted && (qos == .atMostOnce || inFlight.count < window) }

        mutating func stop() { stopped = true }

        /// After `stop`: exactly `count` more messages may be sent (the commander's end markers).
        mutating func allowMore(_ count: Int) {
            stopped = false
            limit = nextSequence + UInt64(count)
        }

        /// After CONNACK: the window shrinks to the broker's Receive Maximum (MQTT 5), and the in-flight
        /// messages are due again.
        mutating func connected(receiveMaximum: UInt16?, configuredWindow: Int) -> [Resend] {
            window = max(1, min(configuredWindow, receiveMaximum.map(Int.init) ?? configuredWindow))
            return inFlight.sorted { $0.value.sequence < $1.value.sequence }.map { id, message in
                if message.released { return .pubrel(id) }
                return .publish(Outgoing(
                    sequence: message.sequence, packetId: id, sentAtWallNanoseconds: message.sentAtWallNanoseconds,
                    size: message.size, dup: true))
            }
        }

        /// The next new message, if the window and the limit allow one.
        mutating func nextPublish(wallNanoseconds: UInt64, uptimeNanoseconds: UInt64, size: Int) -> Outgoing? {
            guard canSend else { return nil }
            let sequence = nextSequence
            nextSequence += 1
            guard qos != .atMostOnce else {
                return Outgoing(sequence: sequence, packetId: nil, sentAtWallNanoseconds: wallNanoseconds, size: size, dup: false)
            }
            let id = allocatePacketId()
            inFlight[id] = InFlight(
                sequence: sequence, sentAtWallNanoseconds: wallNanoseconds, sentAtUptimeNanoseconds: uptimeNanoseconds, size: size)
            return Outgoing(sequence: sequence, packetId: id, sentAtWallNanoseconds: wallNanoseconds, size: size, dup: false)
        }

        /// PUBACK (QoS 1) or PUBCOMP (QoS 2).
        mutating func completed(packetId: UInt16, failed: Bool, uptimeNanoseconds: UInt64) -> AckResult {
            guard let message = inFlight.removeValue(forKey: packetId) else { return .unknown }
            if failed { return .refused(sequence: message.sequence) }
            let latency = uptimeNanoseconds &- message.sentAtUptimeNanoseconds
            return .completed(sequence: message.sequence, latencyNanoseconds: latency)
        }

        /// PUBREC (QoS 2): from now on PUBREL is what gets resent.
        mutating func received(packetId: UInt16, failed: Bool) -> AckResult {
            guard let message = inFlight[packetId], qos == .exactlyOnce else { return .unknown }
            if failed {
                inFlight[packetId] = nil
                return .refused(sequence: message.sequence)
            }
            inFlight[packetId]?.released = true
            return .sendPubrel(packetId)
        }

        private mutating func allocatePacketId() -> UInt16 {
            while inFlight[nextPacketId] != nil { advancePacketId() }
            let id = nextPacketId
            advancePacketId()
            return id
        }

        /// Packet id of the command subscription's SUBSCRIBE, never used by a PUBLISH.
        static let subscribePacketId = UInt16.max

        private mutating func advancePacketId() {
            nextPacketId = nextPacketId >= Self.subscribePacketId - 1 ? 1 : nextPacketId + 1
        }
    }

    /// The receiving side of a subscriber: which QoS 2 packet ids await PUBREL, what to answer.
    struct InboundState: Sendable {
        private var awaitingRelease: Set<UInt16> = []

        enum Reply: Sendable, Hashable {
            case none
            case puback(UInt16)
            case pubrec(UInt16)
        }

        /// A PUBLISH arrived: what to answer, and whether it is a new delivery (a QoS 2 PUBLISH resent
        /// before its PUBREL is not delivered again, per MQTT's exactly-once receiver rules).
        mutating func received(qos: MQTTQoS, packetId: UInt16?) -> (reply: Reply, deliver: Bool) {
            switch (qos, packetId) {
            case (.atLeastOnce, .some(let id)): return (.puback(id), true)
            case (.exactlyOnce, .some(let id)): return (.pubrec(id), awaitingRelease.insert(id).inserted)
            default: return (.none, true)
            }
        }

        /// PUBREL: answer PUBCOMP with the same id.
        mutating func released(packetId: UInt16) {
            awaitingRelease.remove(packetId)
        }
    }
}
