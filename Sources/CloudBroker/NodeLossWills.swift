import Common
import Foundation
import NIOCore
import Synchronization
import TributaryKafka

/// Wills of clients whose node was lost (DESIGN.md §3): published once by one surviving node, not zero
/// times, not twice.
///
/// Every node reads `mqtt.connections` (`ConnectionAnnouncement`) from its beginning and keeps:
/// - per node, its incarnation and the time of its latest heartbeat or announcement (writers' wall clock,
///   `at_ms`), and the incarnations known to be over (a node restarted under the same id);
/// - per client, its latest `connected` announcement if it carries a will (an `ended` one of the same
///   connection, or a newer connection anywhere, replaces it).
///
/// A connection is *lost* when its node's incarnation is over, or when no heartbeat of that node is newer
/// than the lease (`cluster.node_lease`). Of the live nodes (this one, and those with a heartbeat within the
/// lease) the one with the smallest id is *responsible*: it publishes the will once the Will Delay Interval
/// (already bounded by the session expiry) has passed since the loss was noticed, unless the client
/// connected again meanwhile, and then announces the connection `ended` so that no node keeps it.
/// Exactly once even if the responsible node dies in between: the will's record carries the header
/// `mqtt.will_of` (node, incarnation, connection, client); before publishing, a node catches its messages
/// consumer up (`KafkaCatchUp`) and skips a will the `PublishDeduplicator` has already seen.
final class NodeLossWills: Sendable {
    /// A client connection on some node that has a will.
    struct Connection: Sendable, Equatable {
        var node: String
        var incarnation: String?
        var connection: UInt64
        var will: String
        var willDelay: UInt32

        /// The value of the will record's `mqtt.will_of` header.
        func willId(clientId: String) -> String {
            NodeLossWills.willId(node: node, incarnation: incarnation, connection: connection, clientId: clientId)
        }
    }

    /// A will this node must publish now.
    struct Due: Sendable, Equatable {
        var clientId: String
        var connection: Connection
    }

    private struct Heartbeat {
        var incarnation: String?
        var atMilliseconds: Int64
    }

    /// Per node, the routing positions its latest heartbeat carried.
    private let positions = Mutex<[String: [KafkaTopicPartition: Int64]]>([:])

    private struct State {
        var heartbeats: [String: Heartbeat] = [:]
        var overIncarnations: Set<String> = []
        var connections: [String: Connection] = [:]
        /// Connections with a will and no will delay that a newer connection of the same client replaced
        /// before their end was announced: if their node turns out lost, their will is still due (MQTT 5.0
        /// 3.1.3.2.2: only a delayed will is cancelled by a reconnect).
        var superseded: [String: [Connection]] = [:]
        /// When this node noticed that a client's connection was lost (wall clock, ms).
        var lostAt: [String: Int64] = [:]
        /// Wills handed to the publisher and not yet announced `ended` (or failed).
        var publishing: Set<String> = []
        /// Nodes whose loss was already logged.
        var reportedLost: Set<String> = []
        var loaded = false
    }

    let nodeId: String
    let incarnation: String
    let leaseMilliseconds: Int64
    private let state = Mutex(State())

    init(nodeId: String, incarnation: String, lease: Duration) {
        self.nodeId = nodeId
        self.incarnation = incarnation
        self.leaseMilliseconds = max(1, Int64(lease.components.seconds) * 1000 + lease.components.attoseconds / 1_000_000_000_000_000)
    }

    /// The topic was read up to the end it had at start-up: from now on losses are judged.
    func finishLoading() {
        state.withLock { $0.loaded = true }
    }

    var connectionCount: Int { state.withLock { $0.connections.count } }

    /// Where `node`'s routing stood two heartbeats before its latest one (empty if unknown).
    func routingPositions(node: String) -> [KafkaTopicPartition: Int64] {
        positions.withLock { $0[node] ?? [:] }
    }

    /// The latest heartbeat (or connection) time of `node` (writer's wall clock, ms), if any was read.
    func lastHeartbeat(node: String) -> Int64? {
        state.withLock { $0.heartbeats[node]?.atMilliseconds }
    }

    /// Applies one announcement (in log order per key).
    func apply(clientId: String, _ announcement: ConnectionAnnouncement) {
        state.withLock { state in
            let node = announcement.node
            // Liveness comes from a node's own heartbeats and connections (an `ended` may be written by
            // the node that handled a lost node's will).
            if let incarnation = announcement.incarnation, announcement.effectiveKind != .ended {
                if let previous = state.heartbeats[node]?.incarnation, previous != incarnation {
                    state.overIncarnations.insert(Self.key(node: node, incarnation: previous))
                }
                if !state.overIncarnations.contains(Self.key(node: node, incarnation: incarnation)) {
                    let latest = max(state.heartbeats[node]?.atMilliseconds ?? 0, announcement.at_ms)
                    state.heartbeats[node] = Heartbeat(incarnation: incarnation, atMilliseconds: latest)
                    state.reportedLost.remove(node)
                }
            }
            switch announcement.effectiveKind {
            case .heartbeat:
                if let list = announcement.positions {
                    let map = Dictionary(list.map { (KafkaTopicPartition(topic: $0.topic, partition: $0.partition), $0.offset) }, uniquingKeysWith: min)
                    positions.withLock { $0[node] = map }
                }
            case .connected:
                state.lostAt[clientId] = nil
                if let previous = state.connections[clientId], previous.willDelay == 0,
                    previous.node != node || previous.incarnation != announcement.incarnation || previous.connection != announcement.connection
                {
                    state.superseded[clientId, default: []].append(previous)
                }
                if let will = announcement.will {
                    state.connections[clientId] = Connection(
                        node: node, incarnation: announcement.incarnation, connection: announcement.connection, will: will,
                        willDelay: announcement.will_delay ?? 0)
                } else {
                    state.connections[clientId] = nil
                }
            case .ended:
                if let current = state.connections[clientId], current.node == node, current.connection == announcement.connection,
                    current.incarnation == announcement.incarnation
                {
                    state.connections[clientId] = nil
                    state.lostAt[clientId] = nil
                }
                state.publishing.remove(NodeLossWills.willId(node: node, incarnation: announcement.incarnation, connection: announcement.connection, clientId: clientId))
                if var list = state.superseded[clientId] {
                    list.removeAll { $0.node == node && $0.connection == announcement.connection && $0.incarnation == announcement.incarnation }
                    state.superseded[clientId] = list.isEmpty ? nil : list
                }
            }
        }
    }

    /// Judges losses at `nowMilliseconds` (wall clock). Returns the wills this node must publish now and
    /// the nodes newly seen lost with the node responsible for their wills (for the log).
    func evaluate(nowMilliseconds: Int64) -> (due: [Due], newlyLost: [(node: String, responsible: String)]) {
        state.withLock { state in
            guard state.loaded else { return ([], []) }
            func isLive(node: String, incarnation: String?) -> Bool {
                if node == nodeId { return incarnation == nil || incarnation == self.incarnation }
                if let incarnation, state.overIncarnations.contains(Self.key(node: node, incarnation: incarnation)) { return false }
                guard let heartbeat = state.heartbeats[node] else { return false }
                if let incarnation, let current = heartbeat.incarnation, current != incarnation { return false }
                return nowMilliseconds - heartbeat.atMilliseconds <= leaseMilliseconds
            }
            let liveNodes = [nodeId] + state.heartbeats.filter { $0.key != nodeId && isLive(node: $0.key, incarnation: $0.value.incarnation) }.map(\.key)
            let responsible = liveNodes.min() ?? nodeId
            var due: [Due] = []
            var newlyLost: [(String, String)] = []
            for (clientId, connection) in state.connections where !isLive(node: connection.node, incarnation: connection.incarnation) {
                if !state.reportedLost.contains(connection.node) {
                    state.reportedLost.insert(connection.node)
                    newlyLost.append((connection.node, responsible))
                }
                let lostAt = state.lostAt[clientId] ?? nowMilliseconds
                state.lostAt[clientId] = lostAt
                guard responsible == nodeId, nowMilliseconds - lostAt >= Int64(connection.willDelay) * 1000,
                    state.publishing.insert(connection.willId(clientId: clientId)).inserted
                else { continue }
                // Kept until its `ended` announcement is read (or `publishFailed`): judged again meanwhile.
                due.append(Due(clientId: clientId, connection: connection))
            }
            for (clientId, list) in state.superseded {
                var kept: [Connection] = []
                for connection in list {
                    guard !isLive(node: connection.node, incarnation: connection.incarnation) else {
                        kept.append(connection)
                        continue
                    }
                    if !state.reportedLost.contains(connection.node) {
                        state.reportedLost.insert(connection.node)
                        newlyLost.append((connection.node, responsible))
                    }
                    if responsible == nodeId, state.publishing.insert(connection.willId(clientId: clientId)).inserted {
                        due.append(Due(clientId: clientId, connection: connection))
                    }
                    kept.append(connection)
                }
                state.superseded[clientId] = kept.isEmpty ? nil : kept
            }
            return (due, newlyLost)
        }
    }

    /// Publishing `due` failed: it is due again at the next evaluation.
    func publishFailed(_ due: Due) {
        _ = state.withLock { $0.publishing.remove(due.connection.willId(clientId: due.clientId)) }
    }

    private static func key(node: String, incarnation: String) -> String { node + "\u{0}" + incarnation }

    /// Identifies one connection's will in the header `mqtt.will_of`, whichever node publishes it.
    static func willId(node: String, incarnation: String?, connection: UInt64, clientId: String) -> String {
        "\(node)/\(incarnation ?? "-")/\(connection)/\(clientId)"
    }

    // MARK: The will on the wire

    /// The will as a base64 MQTT 5 PUBLISH (the properties a subscriber gets; packet id 1 for QoS > 0).
    static func encode(_ will: MQTTWill) -> String? {
        let publish = MQTTPublish(
            topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, packetId: will.qos == .atMostOnce ? nil : 1,
            properties: will.properties.forwardedToSubscribers(keepingExpiry: true))
        guard let buffer = try? MQTTPacket.publish(publish).encoded(version: .v5) else { return nil }
        return Data(buffer.readableBytesView).base64EncodedString()
    }

    static func decode(_ text: String) -> MQTTPublish? {
        guard let data = Data(base64Encoded: text) else { return nil }
        var buffer = ByteBuffer(bytes: data)
        guard case .publish(var publish)? = try? MQTTPacket.decode(from: &buffer, version: .v5, maximumPacketSize: MQTTPacket.protocolMaximumPacketSize)
        else { return nil }
        publish.packetId = nil
        publish.dup = false
        return publish
    }
}
