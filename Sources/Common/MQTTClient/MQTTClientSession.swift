import NIOCore

/// The part of an MQTT client's session that must outlive a connection (and, if the owner persists it,
/// the process): outgoing QoS 1/2 publishes not yet completed, in the order they were first sent, and the
/// ids of incoming QoS 2 publishes awaiting PUBREL.
///
/// A value. `MQTTClientConnection.StateMachine` owns one and reports every change that matters for
/// exactly-once as an `InflightChange` (`Action.persist`), so an owner that must survive a crash mirrors
/// the table (`apply(_:)` on its own copy, or `InflightRecord` lists), writes it before the packets that
/// follow the change go out, and on restart hands the entries back with `restore(_:)`.
public struct MQTTClientSession: Sendable, Equatable {
    /// Where one outgoing publish stands (MQTT 5.0 section 4.3).
    public enum Phase: UInt8, Sendable, Hashable {
        /// QoS 1 PUBLISH sent, waiting for PUBACK. Resent as PUBLISH(DUP) on reconnect.
        case awaitingPubAck = 1
        /// QoS 2 PUBLISH sent, waiting for PUBREC. Resent as PUBLISH(DUP) on reconnect.
        case awaitingPubRec = 2
        /// QoS 2 PUBREC received, PUBREL sent, waiting for PUBCOMP. Only PUBREL may be resent now.
        case awaitingPubComp = 3
    }

    /// One outgoing publish in flight. `tag` is the owner's name for it (the agent's buffer sequence).
    public struct Outgoing: Sendable, Equatable {
        public var packetId: UInt16
        public var tag: UInt64
        public var phase: Phase
        /// The publish as first sent (without DUP); kept to resend it. Not needed in `.awaitingPubComp`.
        public var publish: MQTTPublish

        public init(packetId: UInt16, tag: UInt64, phase: Phase, publish: MQTTPublish) {
            self.packetId = packetId
            self.tag = tag
            self.phase = phase
            self.publish = publish
        }
    }

    /// What must be persisted for the outgoing table to survive a crash. Mirror these in order.
    public enum InflightChange: Sendable, Hashable {
        /// A publish got `packetId` and is about to be sent for the first time.
        case stored(packetId: UInt16, tag: UInt64, qos: MQTTQoS)
        /// PUBREC arrived; PUBREL is about to be sent. From now on the PUBLISH must never be resent.
        case released(packetId: UInt16)
        /// Completed (PUBACK / PUBCOMP) or dropped because the server lost the session.
        case removed(packetId: UInt16)
        /// An incoming QoS 2 publish was delivered; its id waits for PUBREL.
        case incomingReceived(packetId: UInt16)
        /// PUBREL for an incoming QoS 2 publish arrived.
        case incomingReleased(packetId: UInt16)
    }

    /// The persisted form of one outgoing entry (the publish itself is the owner's to rebuild).
    public struct InflightRecord: Sendable, Hashable {
        public var packetId: UInt16
        public var tag: UInt64
        public var phase: Phase

        public init(packetId: UInt16, tag: UInt64, phase: Phase) {
            self.packetId = packetId
            self.tag = tag
            self.phase = phase
        }
    }

    /// Outgoing publishes in first-send order.
    public private(set) var outgoing: [Outgoing] = []
    /// Incoming QoS 2 packet ids delivered and awaiting PUBREL.
    public private(set) var incomingAwaitingRelease: Set<UInt16> = []
    private var nextPacketId: UInt16 = 1
    /// The packet ids of `outgoing`, for O(1) allocation.
    private var idsInUse: Set<UInt16> = []

    public init() {}

    /// Rebuilds a session from persisted entries (any order; resent in `tag` order) and incoming ids.
    public init(restoring entries: [Outgoing], incomingAwaitingRelease: Set<UInt16> = []) {
        self.outgoing = entries.sorted { $0.tag < $1.tag }
        self.idsInUse = Set(entries.map(\.packetId))
        self.incomingAwaitingRelease = incomingAwaitingRelease
        if let last = entries.max(by: { $0.tag < $1.tag }) {
            nextPacketId = last.packetId == UInt16.max ? 1 : last.packetId + 1
        }
    }

    public var inflightCount: Int { outgoing.count }

    public var records: [InflightRecord] {
        outgoing.map { InflightRecord(packetId: $0.packetId, tag: $0.tag, phase: $0.phase) }
    }

    func index(of packetId: UInt16) -> Int? {
        outgoing.firstIndex { $0.packetId == packetId }
    }

    /// A packet id not used by any outgoing entry (ids in use are at most the receive maximum, < 65535).
    mutating func allocatePacketId(reserved: Set<UInt16> = []) -> UInt16? {
        guard outgoing.count + reserved.count < Int(UInt16.max) else { return nil }
        var candidate = nextPacketId
        while idsInUse.contains(candidate) || reserved.contains(candidate) {
            candidate = candidate == UInt16.max ? 1 : candidate + 1
        }
        nextPacketId = candidate == UInt16.max ? 1 : candidate + 1
        return candidate
    }

    mutating func append(_ entry: Outgoing) {
        outgoing.append(entry)
        idsInUse.insert(entry.packetId)
    }

    mutating func setPhase(_ phase: Phase, at index: Int) { outgoing[index].phase = phase }

    @discardableResult
    mutating func remove(at index: Int) -> Outgoing {
        let entry = outgoing.remove(at: index)
        idsInUse.remove(entry.packetId)
        return entry
    }

    mutating func insertIncoming(_ packetId: UInt16) -> Bool { incomingAwaitingRelease.insert(packetId).inserted }

    mutating func removeIncoming(_ packetId: UInt16) -> Bool { incomingAwaitingRelease.remove(packetId) != nil }
}

extension MQTTClientSession.InflightRecord {
    /// Applies one change to a persisted table keyed by packet id (for owners that mirror the table).
    public static func apply(_ change: MQTTClientSession.InflightChange, to table: inout [UInt16: MQTTClientSession.InflightRecord]) {
        switch change {
        case .stored(let packetId, let tag, let qos):
            table[packetId] = .init(packetId: packetId, tag: tag, phase: qos == .exactlyOnce ? .awaitingPubRec : .awaitingPubAck)
        case .released(let packetId):
            table[packetId]?.phase = .awaitingPubComp
        case .removed(let packetId):
            table[packetId] = nil
        case .incomingReceived, .incomingReleased:
            break
        }
    }
}
