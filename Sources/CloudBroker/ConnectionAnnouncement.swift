import Foundation
import TributaryKafka

/// A record of the topic `mqtt.connections` (cleanup `delete`, short retention): "client X is now connected
/// to node N, as that node's connection C". Key = client id (UTF-8), so every announcement for one client is
/// in one partition, in the order the nodes wrote them.
///
/// Encoding, version 1 (JSON): `{"v": 1, "node": "node-a", "connection": 17, "at_ms": 1795000000000}`.
///
/// Takeover across nodes (`SessionRegistry.announced`): a node announces each client connection once its
/// session is attached, and tails the topic from its end at start-up. When it reads its own announcement
/// for a connection still open, it knows its place in the log; a later announcement of another node for the
/// same client means the client connected there after it connected here: this node disconnects its
/// connection (MQTT 5 reason 0x8E, session taken over) and writes nothing more for that client (the new
/// owner's session epoch, one generation higher, fences any write already under way). An announcement of
/// another node read before this node's own one is older than this connection and is ignored.
///
/// Optional fields (absent = default) carry what a surviving node needs to publish the will of a client whose
/// node died (`NodeLossWills`): `"kind"` (`connected`, the default; `ended` when the connection ended on
/// its node, which then handled the will itself; `heartbeat`, written by every node every
/// `cluster.heartbeat_interval` under the key `heartbeat/NODE`), `"incarnation"` (a random id per node
/// process: a node restarted under the same id is a new incarnation, and the connections of the old one are
/// lost), `"will"` (the will as an MQTT 5 PUBLISH packet, base64), `"will_delay"` (seconds, already bounded
/// by the session expiry), and on heartbeats `"positions"` (`[{"topic", "partition", "offset"}]`: where the
/// node's routing of the messages topics stood two heartbeats earlier; a node taking over one of its
/// sessions replays from there, `MovedSessionReplay`).
struct ConnectionAnnouncement: Sendable, Equatable, Codable {
    static let version = 1

    enum Kind: String, Codable, Sendable {
        case connected
        case ended
        case heartbeat
    }

    var v = ConnectionAnnouncement.version
    var node: String
    var connection: UInt64
    var at_ms: Int64
    var kind: Kind?
    var incarnation: String?
    var will: String?
    var will_delay: UInt32?
    var positions: [Position]?

    struct Position: Sendable, Equatable, Codable {
        var topic: String
        var partition: Int32
        var offset: Int64
    }

    init(
        node: String, connection: UInt64, atMilliseconds: Int64, kind: Kind = .connected, incarnation: String? = nil,
        will: String? = nil, willDelay: UInt32? = nil
    ) {
        self.node = node
        self.connection = connection
        self.at_ms = atMilliseconds
        self.kind = kind == .connected ? nil : kind
        self.incarnation = incarnation
        self.will = will
        self.will_delay = willDelay
    }

    var effectiveKind: Kind { kind ?? .connected }

    static func heartbeatKey(node: String) -> String { "heartbeat/" + node }

    func record(topic: String, clientId: String) -> KafkaOutgoingMessage {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Plain strings and integers: encoding cannot fail.
        let value = (try? Array(encoder.encode(self))) ?? []
        return KafkaOutgoingMessage(topic: topic, key: Array(clientId.utf8), value: value)
    }

    /// The client id and announcement of a consumed record (nil: not a version 1 announcement).
    static func decode(_ record: KafkaRecord) -> (clientId: String, announcement: ConnectionAnnouncement)? {
        guard let key = record.key, let clientId = String(validating: key, as: UTF8.self), let value = record.value,
            let announcement = try? JSONDecoder().decode(ConnectionAnnouncement.self, from: Data(value)),
            announcement.v == version
        else { return nil }
        return (clientId, announcement)
    }
}
