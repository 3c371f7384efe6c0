import Common
import Foundation
import TributaryKafka

/// A subscription as the session keeps it.
struct SubscriptionOptions: Sendable, Equatable {
    var subscription: MQTTSubscription
    /// The MQTT 5 Subscription Identifier given in SUBSCRIBE.
    var identifier: UInt32?
}

/// Everything an MQTT session is (MQTT 5.0 section 4.1): what outlives a connection when the session
/// expiry interval is non-zero. A value: it moves between a connection's state machine (while
/// connected) and the `SessionStore` (while offline).
struct SessionState: Sendable {
    var clientId: String
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    var expiryInterval: UInt32
    /// Subscriptions by their topic filter string (including a `$share/` prefix).
    var subscriptions: [String: SubscriptionOptions] = [:]
    /// QoS 2 publishes from the client that were acknowledged with PUBREC, awaiting PUBREL.
    var inboundAwaitingRelease: Set<UInt16> = []
    /// The session was restored from a snapshot written while the client was connected (its node died or
    /// lost it): which QoS 2 publishes were released since is unknown, so `inboundAwaitingRelease` is empty
    /// and a PUBREL for an unknown identifier is completed with success (the message was stored before its
    /// PUBREC). Resent PUBLISHes are recognised by `PublishDeduplicator`.
    var inboundReleaseUnknown = false
    /// Restored from a snapshot that node `movedFrom` wrote while the client was connected there: what
    /// that node had not delivered is read again from Kafka when the client attaches (`MovedSessionReplay`).
    var movedFrom: String?
    /// Restored from an offline snapshot another node wrote while this node was running: messages from
    /// these offsets on were queued there, not here, and are read again from Kafka when the client attaches.
    var undeliveredFrom: [KafkaTopicPartition: Int64]?
    /// Messages towards the client.
    var outbound = OutboundState()

    init(clientId: String, expiryInterval: UInt32) {
        self.clientId = clientId
        self.expiryInterval = expiryInterval
    }

    /// Whether an overflowing queue of a session with `subscriptions` can be read back from Kafka: its
    /// messages must come from its own subscriptions. A shared subscription's member gets only some of its
    /// filter's messages, which a read-back cannot tell apart, so its overflow is dropped and counted.
    static func canReadBack(_ subscriptions: [String: SubscriptionOptions]) -> Bool {
        !subscriptions.keys.contains { $0.hasPrefix("$share/") }
    }
}

/// The server-to-client half of a session: QoS 1/2 messages in flight (by packet id, in send order) and
/// messages queued behind them. Pure bookkeeping; callers send the packets it returns.
struct OutboundState: Sendable {
    enum Phase: Sendable, Equatable {
        /// QoS 1 PUBLISH sent.
        case awaitingPubAck
        /// QoS 2 PUBLISH sent.
        case awaitingPubRec
        /// PUBREL sent.
        case awaitingPubComp
    }

    struct Inflight: Sendable {
        var packetId: UInt16
        var message: OutboundMessage
        var phase: Phase
    }

    /// Where delivery from one messages-topic partition stands once the queue has overflowed there
    /// ("Kafka is the queue" for a connected subscriber, G4/G5): instead of dropping a QoS 1/2 message the
    /// queue has no room for, the session stops taking that partition's messages live and reads them back
    /// from Kafka from that message on, as fast as the queue drains, then takes them live again.
    enum PartitionDelivery: Sendable, Equatable {
        /// Read back from Kafka: `next` is the first offset not yet queued; `liveSeen` the highest offset
        /// routing has offered live (and this session skipped) meanwhile; `skipped` how many it skipped.
        case readBack(next: Int64, liveSeen: Int64, skipped: Int = 1)
        /// Live again: messages below `from` were queued by the read-back (a late live copy is skipped).
        case live(from: Int64)
    }

    private(set) var inflight: [Inflight] = []
    private(set) var queue: [OutboundMessage] = []
    private var queueHead = 0
    private var nextPacketId: UInt16 = 1
    /// Only partitions that overflowed at least once (empty for almost every session: nothing per message).
    private(set) var partitions: [KafkaTopicPartition: PartitionDelivery] = [:]
    /// The partitions in `.readBack`, at the next offset each needs (derived: only overflowed partitions
    /// are in `partitions`, a handful at most).
    var readingBack: [KafkaTopicPartition: Int64] {
        guard !partitions.isEmpty else { return [:] }
        var result: [KafkaTopicPartition: Int64] = [:]
        for (partition, delivery) in partitions {
            if case .readBack(let next, _, _) = delivery { result[partition] = next }
        }
        return result
    }

    var queuedCount: Int { queue.count - queueHead }
    var inflightCount: Int { inflight.count }

    /// Per messages-topic partition, the offset of the oldest QoS 1/2 message the client has not got yet:
    /// queued, or sent and not acknowledged (a QoS 2 message past PUBREC has reached the client and does not
    /// count). A snapshot of a session going offline stores offsets no later than these, so that a node
    /// restoring it replays them ("Kafka is the queue") instead of losing them with this node.
    func replayFrom() -> [KafkaTopicPartition: Int64] {
        var oldest: [KafkaTopicPartition: Int64] = [:]
        func note(_ message: OutboundMessage) {
            guard message.qos != .atMostOnce, let partition = message.message.source, let offset = message.message.sourceOffset else { return }
            oldest[partition] = min(oldest[partition] ?? offset, offset)
        }
        for entry in inflight where entry.phase != .awaitingPubComp { note(entry.message) }
        for message in queue[queueHead...] { note(message) }
        for (partition, next) in readingBack { oldest[partition] = min(oldest[partition] ?? next, next) }
        return oldest
    }

    /// Queues `message` for an offline session; returns false (and does not queue) if the queue already
    /// holds `limit` and the message cannot be read back. A message of a partition being read back is not
    /// queued (it will be read back) and counts as queued. With `readBackAllowed`, a QoS 1/2 message from
    /// Kafka that finds the queue full starts the read-back of its partition from its offset, as for a
    /// connected session: the read-back runs once the client reconnects (or, on another node, the session's
    /// replay offsets cover it), so an offline session's backlog is bounded by Kafka's retention, not by
    /// the queue.
    mutating func enqueue(_ message: OutboundMessage, limit: Int, readBackAllowed: Bool = false) -> Bool {
        if !partitions.isEmpty && skipsForReadBack(message) { return true }
        if queuedCount < limit {
            queue.append(message)
            return true
        }
        return readBackAllowed && startReadBack(at: message) != nil
    }

    /// The queue is full for `message`: if it is a QoS 1/2 message from Kafka, its partition is read back
    /// from its offset on (returned); else nil (the caller drops it).
    private mutating func startReadBack(at message: OutboundMessage) -> (KafkaTopicPartition, Int64)? {
        guard message.qos != .atMostOnce, let partition = message.message.source, let offset = message.message.sourceOffset else { return nil }
        partitions[partition] = .readBack(next: offset, liveSeen: offset)
        return (partition, offset)
    }

    /// Whether routing's `message` is left to the read-back (its partition is read back, or it was already
    /// queued by it); notes how far routing got.
    private mutating func skipsForReadBack(_ message: OutboundMessage) -> Bool {
        guard let partition = message.message.source, let offset = message.message.sourceOffset, let delivery = partitions[partition] else {
            return false
        }
        switch delivery {
        case .readBack(let next, let seen, let skipped):
            partitions[partition] = .readBack(next: next, liveSeen: max(seen, offset), skipped: skipped + 1)
            return true
        case .live(let from):
            return offset < from
        }
    }

    /// Takes queued messages while the in-flight window has room, assigning packet ids to QoS 1/2.
    /// Expired messages are skipped (and returned in `expired`).
    mutating func drain(window: Int, version: MQTTProtocolVersion, now: Date) -> (packets: [MQTTPacket], expired: Int) {
        var packets: [MQTTPacket] = []
        var expired = 0
        while queueHead < queue.count {
            let message = queue[queueHead]
            if message.qos != .atMostOnce && inflight.count >= window { break }
            queueHead += 1
            guard let packet = start(message, version: version, now: now) else {
                expired += 1
                continue
            }
            packets.append(packet)
        }
        if queueHead > 64 && queueHead * 2 > queue.count {
            queue.removeFirst(queueHead)
            queueHead = 0
        }
        return (packets, expired)
    }

    /// Sends `message` (routed live) now if the window allows; else queues it. Returns the packet to send,
    /// if any; whether the message was dropped (a QoS 0 one for a full queue, or expired); and, when a QoS
    /// 1/2 message from Kafka found the queue full, its partition and offset: that partition is now read back
    /// from there (`readBackOffer`), and its live messages are skipped until the read-back catches up.
    mutating func offer(
        _ message: OutboundMessage, window: Int, limit: Int, canSendNow: Bool, version: MQTTProtocolVersion, now: Date,
        readBackAllowed: @autoclosure () -> Bool = false
    ) -> (packet: MQTTPacket?, dropped: Bool, readBackFrom: (KafkaTopicPartition, Int64)?) {
        if !partitions.isEmpty && skipsForReadBack(message) { return (nil, false, nil) }
        let fits = message.qos == .atMostOnce || inflight.count < window
        if canSendNow && fits && queuedCount == 0 {
            guard let packet = start(message, version: version, now: now) else { return (nil, true, nil) }
            return (packet, false, nil)
        }
        if queuedCount < limit {
            queue.append(message)
            return (nil, false, nil)
        }
        guard readBackAllowed(), let from = startReadBack(at: message) else { return (nil, true, nil) }
        return (nil, false, from)
    }

    /// A retained message sent on SUBSCRIBE (MQTT 5.0 section 3.3.1.3): queued whatever the limit, behind
    /// what is queued already, so that live messages routed after the SUBSCRIBE follow it (for its topic,
    /// a newer value never arrives before the retained one). What this can add to the queue is bounded by
    /// the node's retained store (the matching messages share its payloads). Returns the packet to send
    /// now, if any, or nil with `expired` when the message expired meanwhile.
    mutating func offerRetained(
        _ message: OutboundMessage, window: Int, canSendNow: Bool, version: MQTTProtocolVersion, now: Date
    ) -> (packet: MQTTPacket?, expired: Bool) {
        sendNowOrQueue(message, window: window, canSendNow: canSendNow, version: version, now: now)
    }

    /// Sends `message` now if nothing is queued before it and the window has room, else queues it whatever
    /// the limit; `expired` when it expired before it could be sent.
    private mutating func sendNowOrQueue(
        _ message: OutboundMessage, window: Int, canSendNow: Bool, version: MQTTProtocolVersion, now: Date
    ) -> (packet: MQTTPacket?, expired: Bool) {
        let fits = message.qos == .atMostOnce || inflight.count < window
        if canSendNow && fits && queuedCount == 0 {
            guard let packet = start(message, version: version, now: now) else { return (nil, true) }
            return (packet, false)
        }
        queue.append(message)
        return (nil, false)
    }

    /// A message read back from Kafka for a partition in `.readBack` (in offset order, only those matching
    /// the session's subscriptions): queued whatever the limit (the reader pauses at it), unless it is
    /// older than what was already queued. Returns the packet to send now, if any.
    mutating func readBackOffer(
        _ message: OutboundMessage, window: Int, canSendNow: Bool, version: MQTTProtocolVersion, now: Date, liveAtMost: Int = .max
    ) -> MQTTPacket? {
        guard let partition = message.message.source, let offset = message.message.sourceOffset,
            case .readBack(let next, _, _) = partitions[partition], offset >= next
        else { return nil }
        let packet = sendNowOrQueue(message, window: window, canSendNow: canSendNow, version: version, now: now).packet
        advance(partition, to: offset + 1, liveAtMost: liveAtMost)
        return packet
    }

    /// The read-back has read `partition` up to `offset` (exclusive; matching messages below it were
    /// offered): once that passes everything routing offered live meanwhile, the partition is live again
    /// (routing's later messages follow in order; earlier ones still on their way are skipped) — if no more
    /// than `liveAtMost` messages are queued. Otherwise the read-back keeps tailing the partition: a
    /// subscriber still slower than its publishers would overflow again at once, and each overflow would
    /// start a new Kafka consumer (100 such subscribers started 2,627 in one benchmark run).
    mutating func advance(_ partition: KafkaTopicPartition, to offset: Int64, liveAtMost: Int = .max) {
        guard case .readBack(let next, let seen, let skipped) = partitions[partition], offset > next else { return }
        if offset > seen && queuedCount <= liveAtMost {
            partitions[partition] = .live(from: offset)
        } else {
            partitions[partition] = .readBack(next: offset, liveSeen: seen, skipped: skipped)
        }
    }

    /// Gives up reading back (no reader can be had): every partition is live again after what routing has
    /// offered; returns how many messages were skipped for the read-back and are now lost (an upper bound
    /// when part of them was already read back).
    mutating func abandonReadBack() -> Int {
        var lost = 0
        for (partition, delivery) in partitions {
            guard case .readBack(_, let seen, let skipped) = delivery else { continue }
            partitions[partition] = .live(from: seen + 1)
            lost += skipped
        }
        return lost
    }

    private mutating func start(_ message: OutboundMessage, version: MQTTProtocolVersion, now: Date) -> MQTTPacket? {
        guard message.qos != .atMostOnce else {
            return message.publish(packetId: nil, dup: false, version: version, now: now).map { .publish($0) }
        }
        let packetId = allocatePacketId()
        guard let publish = message.publish(packetId: packetId, dup: false, version: version, now: now) else { return nil }
        inflight.append(Inflight(packetId: packetId, message: message, phase: message.qos == .atLeastOnce ? .awaitingPubAck : .awaitingPubRec))
        return .publish(publish)
    }

    private mutating func allocatePacketId() -> UInt16 {
        // At most 65,535 in flight; windows are far smaller, so a free id is always found.
        while true {
            let candidate = nextPacketId
            nextPacketId = nextPacketId == UInt16.max ? 1 : nextPacketId + 1
            if !inflight.contains(where: { $0.packetId == candidate }) { return candidate }
        }
    }

    /// PUBACK received: true if it matched a QoS 1 message in flight.
    mutating func puback(_ packetId: UInt16) -> Bool {
        guard let index = inflight.firstIndex(where: { $0.packetId == packetId && $0.phase == .awaitingPubAck }) else { return false }
        inflight.remove(at: index)
        return true
    }

    enum PubRecOutcome: Equatable { case sendPubRel, unknown, discarded }

    /// PUBREC received: send PUBREL (also for a repeated PUBREC), or the message was refused.
    mutating func pubrec(_ packetId: UInt16, failed: Bool) -> PubRecOutcome {
        guard let index = inflight.firstIndex(where: { $0.packetId == packetId && $0.phase != .awaitingPubAck }) else { return .unknown }
        if failed {
            inflight.remove(at: index)
            return .discarded
        }
        inflight[index].phase = .awaitingPubComp
        return .sendPubRel
    }

    /// PUBCOMP received: true if it matched.
    mutating func pubcomp(_ packetId: UInt16) -> Bool {
        guard let index = inflight.firstIndex(where: { $0.packetId == packetId && $0.phase == .awaitingPubComp }) else { return false }
        inflight.remove(at: index)
        return true
    }

    /// Forgets an in-flight message that could not be sent (too large for the client).
    mutating func discard(_ packetId: UInt16) {
        inflight.removeAll { $0.packetId == packetId }
    }

    /// The packets to resend when a session resumes on a new connection (MQTT 5.0 section 4.4): PUBLISH
    /// with DUP for unacknowledged messages, PUBREL for those already received, in the original order.
    /// Messages that expired meanwhile are dropped.
    mutating func resend(version: MQTTProtocolVersion, now: Date) -> [MQTTPacket] {
        var packets: [MQTTPacket] = []
        var kept: [Inflight] = []
        for entry in inflight {
            switch entry.phase {
            case .awaitingPubComp:
                packets.append(.pubrel(MQTTPublishAck(packetId: entry.packetId)))
                kept.append(entry)
            case .awaitingPubAck, .awaitingPubRec:
                guard let publish = entry.message.publish(packetId: entry.packetId, dup: true, version: version, now: now) else { continue }
                packets.append(.publish(publish))
                kept.append(entry)
            }
        }
        inflight = kept
        return packets
    }

    /// Drops QoS 0 messages from the queue (they are not kept for an offline session); returns how many.
    mutating func dropQoS0() -> Int {
        let before = queuedCount
        queue = Array(queue[queueHead...].filter { $0.qos != .atMostOnce })
        queueHead = 0
        return before - queue.count
    }
}
