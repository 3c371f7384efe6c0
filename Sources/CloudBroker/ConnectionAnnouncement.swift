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
struct ConnectionAnnouncement: Sendable, Equatable, Codable {
    static let version = 1

    var v = ConnectionAnnouncement.version
    var node: String
    var connection: UInt64
    var at_ms: Int64

    init(node: String, connection: UInt64, atMilliseconds: Int64) {
        self.node = node
        self.connection = connection
        self.at_ms = atMilliseconds
    }

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
