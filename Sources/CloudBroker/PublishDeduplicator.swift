import Common
import Synchronization
import TributaryKafka

/// Recognises a PUBLISH that is already in Kafka (G2 across node loss), from the Kafka log itself.
///
/// Every node consumes all partitions of the messages topics (for its subscribers) and feeds each record to
/// `observe`, including a look-back of recent records read at start-up. From them it keeps a small index of
/// the recent tail:
///
/// - **By agent sequence:** records carrying `tributary-agent` and `tributary-seq` (what our edge agent
///   sends). Per agent, the sequences of its last `agentWindow` records (a set, not a maximum: one agent's
///   records spread over several partitions and arrive here out of order). A resent publish (DUP set)
///   carrying a sequence in the set is a duplicate. First attempts are never checked: an agent whose buffer
///   was wiped numbers its records from the start again.
/// - **By QoS 2 packet identifier:** records of QoS 2 publishes carry `mqtt.packet_id`. Per client id, the
///   last record seen for each packet identifier, as a fingerprint of its topic and payload and its ordinal
///   among that client's QoS 2 records. A QoS 2 publish with DUP set is a duplicate when the client's last
///   record with the same packet identifier has the same fingerprint and is among the client's last
///   `clientWindow` QoS 2 records (a client has at most Receive Maximum unacknowledged QoS 2 publishes, so
///   a stored copy of one in flight is always that recent).
///
/// Read-your-writes: the index only knows what this node has consumed; `Publisher` calls it for a
/// possible duplicate only after the messages consumer has caught up with the end of every partition as
/// observed after the publish arrived (`KafkaCatchUp`), so a record acknowledged by Kafka to a node that
/// died is in the index before the question is asked.
///
/// Residual case (documented in docs/ARCHITECTURE.md): a client that reuses a packet identifier for a new
/// message whose topic and payload are byte-identical to the previous message with that identifier, and
/// whose node dies after receiving it and before producing it, would see the new message taken for the
/// old one. Our agent's records are matched by sequence and never hit this.
final class PublishDeduplicator: Sendable {
    enum Header {
        static let packetId = "mqtt.packet_id"
        /// On a will's record: which connection's will it is (`NodeLossWills.willId`).
        static let willOf = "mqtt.will_of"
        static let agent = "tributary-agent"
        static let sequence = "tributary-seq"
    }

    /// What a publish is matched by (nil: it cannot be a recognisable duplicate).
    enum Key: Hashable, Sendable {
        case agentSequence(agent: String, sequence: UInt64)
        case packet(clientId: String, packetId: UInt16, fingerprint: UInt64)
        /// A will, by `NodeLossWills.willId` (only recorded, never derived from a client's publish).
        case will(String)
    }

    private struct AgentTail {
        var sequences: Set<UInt64> = []
        /// Insertion order, to forget the oldest beyond the window (ring buffer).
        var order: [UInt64] = []
        var next = 0

        mutating func insert(_ sequence: UInt64, window: Int) {
            guard sequences.insert(sequence).inserted else { return }
            if order.count < window {
                order.append(sequence)
            } else {
                sequences.remove(order[next])
                order[next] = sequence
                next = (next + 1) % window
            }
        }
    }

    private struct ClientTail {
        var ordinal: UInt64 = 0
        var byPacketId: [UInt16: (fingerprint: UInt64, ordinal: UInt64)] = [:]

        mutating func record(packetId: UInt16, fingerprint: UInt64, window: Int) {
            ordinal += 1
            byPacketId[packetId] = (fingerprint, ordinal)
            if byPacketId.count > 2 * min(window, 4096) {
                let oldest = ordinal > UInt64(window) ? ordinal - UInt64(window) : 0
                byPacketId = byPacketId.filter { $0.value.ordinal > oldest }
            }
        }
    }

    private struct State {
        var agents: [String: AgentTail] = [:]
        var clients: [String: ClientTail] = [:]
        /// Will ids seen, in a ring of `willWindow`.
        var wills: Set<String> = []
        var willOrder: [String] = []
        var nextWill = 0
    }

    let willWindow = 65_536

    let agentWindow: Int
    let clientWindow: Int
    private let state = Mutex(State())

    init(agentWindow: Int = 8192, clientWindow: Int = 65_535) {
        self.agentWindow = max(1, agentWindow)
        self.clientWindow = max(1, clientWindow)
    }

    // MARK: Keys

    /// The key of a publish received from `clientId` (topic already resolved from any alias).
    static func key(for publish: MQTTPublish, clientId: String) -> Key? {
        let properties = publish.properties.userProperties
        if let agent = properties.first(where: { $0.name == Header.agent })?.value,
            let sequence = properties.first(where: { $0.name == Header.sequence }).flatMap({ UInt64($0.value) })
        {
            return .agentSequence(agent: agent, sequence: sequence)
        }
        guard publish.qos == .exactlyOnce, let packetId = publish.packetId else { return nil }
        return .packet(clientId: clientId, packetId: packetId, fingerprint: fingerprint(topic: publish.topic, payload: publish.payload.readableBytesView))
    }

    /// The key of a consumed record (nil for records not produced from an MQTT publish we can match).
    static func key(for record: KafkaRecord) -> Key? {
        var agent: String?
        var sequence: UInt64?
        var clientId: String?
        var packetId: UInt16?
        var topic: String?
        var willOf: String?
        for header in record.headers {
            switch header.name {
            case Header.agent: agent = String(decoding: header.value, as: UTF8.self)
            case Header.sequence: sequence = UInt64(String(decoding: header.value, as: UTF8.self))
            case KafkaRecordMapping.Header.clientId: clientId = String(decoding: header.value, as: UTF8.self)
            case Header.packetId: packetId = UInt16(String(decoding: header.value, as: UTF8.self))
            case KafkaRecordMapping.Header.topic: topic = String(decoding: header.value, as: UTF8.self)
            case Header.willOf: willOf = String(decoding: header.value, as: UTF8.self)
            default: break
            }
        }
        if let willOf { return .will(willOf) }
        if let agent, let sequence { return .agentSequence(agent: agent, sequence: sequence) }
        guard let clientId, let packetId, let topic else { return nil }
        return .packet(clientId: clientId, packetId: packetId, fingerprint: fingerprint(topic: topic, payload: record.value ?? []))
    }

    /// A 64-bit hash of the topic's length, the topic and the payload, eight bytes per step (every node
    /// hashes every QoS 2 record it consumes: FNV-1a a byte at a time cost ~1.4 µs per KiB). Deterministic
    /// (no per-process seed), so equal content gives equal fingerprints in any process.
    static func fingerprint(topic: String, payload: some Sequence<UInt8>) -> UInt64 {
        var hash = FingerprintHasher()
        hash.combine(word: UInt64(topic.utf8.count))
        var topic = topic
        topic.withUTF8 { hash.combine(UnsafeRawBufferPointer($0)) }
        if payload.withContiguousStorageIfAvailable({ hash.combine(UnsafeRawBufferPointer($0)) }) == nil {
            Array(payload).withUnsafeBytes { hash.combine($0) }
        }
        return hash.finalize()
    }

    // MARK: Index

    /// Adds a consumed record to the index.
    func observe(_ record: KafkaRecord) {
        guard let key = Self.key(for: record) else { return }
        observe(key)
    }

    func observe(_ key: Key) {
        state.withLock { state in
            switch key {
            // Updated in place (`[key, default:]`): a copy of the tail taken out of the dictionary and
            // stored back would copy its whole window (thousands of entries) on every record.
            case .agentSequence(let agent, let sequence):
                state.agents[agent, default: AgentTail()].insert(sequence, window: agentWindow)
            case .packet(let clientId, let packetId, let fingerprint):
                state.clients[clientId, default: ClientTail()].record(packetId: packetId, fingerprint: fingerprint, window: clientWindow)
            case .will(let id):
                guard state.wills.insert(id).inserted else { return }
                if state.willOrder.count < willWindow {
                    state.willOrder.append(id)
                } else {
                    state.wills.remove(state.willOrder[state.nextWill])
                    state.willOrder[state.nextWill] = id
                    state.nextWill = (state.nextWill + 1) % willWindow
                }
            }
        }
    }

    /// Whether a record with `key` is in the recent tail.
    func contains(_ key: Key) -> Bool {
        state.withLock { state in
            switch key {
            case .agentSequence(let agent, let sequence):
                return state.agents[agent]?.sequences.contains(sequence) ?? false
            case .packet(let clientId, let packetId, let fingerprint):
                guard let tail = state.clients[clientId], let last = tail.byPacketId[packetId] else { return false }
                return last.fingerprint == fingerprint && tail.ordinal - last.ordinal < UInt64(clientWindow)
            case .will(let id):
                return state.wills.contains(id)
            }
        }
    }

    /// Index sizes (agents, clients), for metrics.
    func statistics() -> (agents: Int, clients: Int) {
        state.withLock { ($0.agents.count, $0.clients.count) }
    }
}

/// The running state of `PublishDeduplicator.fingerprint`: 64-bit words xor-multiplied into the state, a
/// short tail padded with its length, and MurmurHash3's 64-bit finaliser over the state and the total length.
private struct FingerprintHasher {
    private var state: UInt64 = 0xcbf2_9ce4_8422_2325
    private var length: UInt64 = 0

    mutating func combine(word: UInt64) {
        state = (state ^ word) &* 0x9e37_79b9_7f4a_7c15
        state ^= state >> 32
    }

    mutating func combine(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset + 8 <= bytes.count {
            combine(word: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
            offset += 8
        }
        if offset < bytes.count {
            var tail = UInt64(bytes.count - offset) << 56
            for index in offset..<bytes.count {
                tail |= UInt64(bytes[index]) << (8 * UInt64(index - offset))
            }
            combine(word: tail)
        }
        length &+= UInt64(bytes.count)
    }

    func finalize() -> UInt64 {
        var hash = state ^ length
        hash ^= hash >> 33
        hash &*= 0xff51_afd7_ed55_8ccd
        hash ^= hash >> 33
        hash &*= 0xc4ce_b9fe_1a85_ec53
        hash ^= hash >> 33
        return hash
    }
}
