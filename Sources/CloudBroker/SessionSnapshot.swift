import Common
import Foundation
import TributaryKafka

/// What `mqtt.sessions` holds for one offline session (record key = client id, UTF-8): the parts of a
/// `SessionState` that must outlive a node. A value type with a versioned JSON encoding.
///
/// Encoding, version 1 (a JSON object; unknown fields are ignored, a missing required one rejects it):
///
///     {"v": 1, "client_id": "c1", "owner": "node-a", "epoch": 7, "expiry": 3600,
///      "stored_at_ms": 1795000000000,
///      "subscriptions": [{"filter": "a/#", "qos": 1, "no_local": false, "retain_as_published": false,
///                         "retain_handling": 0, "id": 42}],
///      "awaiting_pubrel": [3, 9],
///      "offsets": [{"topic": "mqtt.messages", "partition": 0, "offset": 1234}], "connected": false}
///
/// `owner` is the node id that wrote it, `epoch` grows by one with every write for the client id (also
/// carried by tombstones in the `tributary.epoch` header), `stored_at_ms` is the wall-clock time the
/// session went offline (its expiry counts from there), `id` is the MQTT 5 subscription identifier
/// (absent if none). `offsets` (optional; written when the session goes offline) is, per messages-topic
/// partition, the next offset the node had not yet routed: a node that restores the session replays
/// matching records from there into its queue ("Kafka is the queue"); the queued messages themselves are
/// not part of a snapshot. `connected` (optional, default false) marks a snapshot written while the client
/// was connected (on attach or subscription changes): its `awaiting_pubrel` may be stale by the time
/// another node restores it, so a restored session ignores it (`SessionState.inboundReleaseUnknown`).
struct SessionSnapshot: Sendable, Equatable {
    static let version = 1

    var clientId: String
    var owner: String
    var epoch: UInt64
    var expiryInterval: UInt32
    var storedAtMilliseconds: Int64
    var subscriptions: [SubscriptionOptions]
    var inboundAwaitingRelease: [UInt16]
    /// Where delivery to this offline session stands, per messages-topic partition (empty: unknown).
    var offsets: [KafkaTopicPartition: Int64] = [:]
    /// Written while the client was connected (see above).
    var connected = false

    init(
        clientId: String, owner: String, epoch: UInt64, expiryInterval: UInt32, storedAtMilliseconds: Int64,
        subscriptions: [SubscriptionOptions], inboundAwaitingRelease: [UInt16]
    ) {
        self.clientId = clientId
        self.owner = owner
        self.epoch = epoch
        self.expiryInterval = expiryInterval
        self.storedAtMilliseconds = storedAtMilliseconds
        self.subscriptions = subscriptions
        self.inboundAwaitingRelease = inboundAwaitingRelease
    }

    /// The snapshot of `session` (subscriptions in filter order, so equal sessions encode equally).
    init(
        session: SessionState, owner: String, epoch: UInt64, storedAtMilliseconds: Int64, offsets: [KafkaTopicPartition: Int64] = [:],
        connected: Bool = false
    ) {
        self.init(
            clientId: session.clientId, owner: owner, epoch: epoch, expiryInterval: session.expiryInterval,
            storedAtMilliseconds: storedAtMilliseconds,
            subscriptions: session.subscriptions.keys.sorted().compactMap { session.subscriptions[$0] },
            inboundAwaitingRelease: session.inboundAwaitingRelease.sorted())
        self.offsets = offsets
        self.connected = connected
    }

    /// The session this snapshot describes (no messages in flight or queued).
    var session: SessionState {
        var session = SessionState(clientId: clientId, expiryInterval: expiryInterval)
        for options in subscriptions { session.subscriptions[options.subscription.topicFilter.string] = options }
        if connected {
            session.inboundReleaseUnknown = true
            session.movedFrom = owner
        } else {
            session.inboundAwaitingRelease = Set(inboundAwaitingRelease)
        }
        return session
    }

    // MARK: Encoding

    private struct Wire: Codable {
        struct Subscription: Codable {
            var filter: String
            var qos: UInt8
            var no_local: Bool
            var retain_as_published: Bool
            var retain_handling: UInt8
            var id: UInt32?
        }

        struct Offset: Codable {
            var topic: String
            var partition: Int32
            var offset: Int64
        }

        var v: Int
        var client_id: String
        var owner: String
        var epoch: UInt64
        var expiry: UInt32
        var stored_at_ms: Int64
        var subscriptions: [Subscription]
        var awaiting_pubrel: [UInt16]
        var offsets: [Offset]?
        var connected: Bool?
    }

    private struct VersionOnly: Decodable {
        var v: Int
    }

    func encoded() -> [UInt8] {
        let wire = Wire(
            v: Self.version, client_id: clientId, owner: owner, epoch: epoch, expiry: expiryInterval, stored_at_ms: storedAtMilliseconds,
            subscriptions: subscriptions.map {
                Wire.Subscription(
                    filter: $0.subscription.topicFilter.string, qos: $0.subscription.qos.rawValue, no_local: $0.subscription.noLocal,
                    retain_as_published: $0.subscription.retainAsPublished, retain_handling: $0.subscription.retainHandling.rawValue,
                    id: $0.identifier)
            },
            awaiting_pubrel: inboundAwaitingRelease,
            offsets: offsets.isEmpty
                ? nil
                : offsets.sorted { ($0.key.topic, $0.key.partition) < ($1.key.topic, $1.key.partition) }.map {
                    Wire.Offset(topic: $0.key.topic, partition: $0.key.partition, offset: $0.value)
                },
            connected: connected ? true : nil)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding plain strings and integers cannot fail.
        return (try? Array(encoder.encode(wire))) ?? []
    }

    /// Decodes a record value; throws `BrokerError(.invalidSessionRecord)` for anything but a valid
    /// version 1 snapshot.
    static func decode(_ bytes: [UInt8]) throws(BrokerError) -> SessionSnapshot {
        let data = Data(bytes)
        let decoder = JSONDecoder()
        guard let version = try? decoder.decode(VersionOnly.self, from: data) else {
            throw BrokerError(.invalidSessionRecord, "session record is not a JSON object with a version")
        }
        guard version.v == Self.version else {
            throw BrokerError(.invalidSessionRecord, "unknown session record version \(version.v)")
        }
        let wire: Wire
        do {
            wire = try decoder.decode(Wire.self, from: data)
        } catch {
            throw BrokerError(.invalidSessionRecord, "malformed session record: \(error)")
        }
        var subscriptions: [SubscriptionOptions] = []
        for entry in wire.subscriptions {
            guard let qos = MQTTQoS(rawValue: entry.qos), let handling = MQTTRetainHandling(rawValue: entry.retain_handling),
                let filter = try? MQTTTopicFilter(entry.filter)
            else {
                throw BrokerError(.invalidSessionRecord, "invalid subscription in session record")
            }
            subscriptions.append(
                SubscriptionOptions(
                    subscription: MQTTSubscription(
                        topicFilter: filter, qos: qos, noLocal: entry.no_local, retainAsPublished: entry.retain_as_published, retainHandling: handling),
                    identifier: entry.id))
        }
        var snapshot = SessionSnapshot(
            clientId: wire.client_id, owner: wire.owner, epoch: wire.epoch, expiryInterval: wire.expiry, storedAtMilliseconds: wire.stored_at_ms,
            subscriptions: subscriptions, inboundAwaitingRelease: wire.awaiting_pubrel)
        snapshot.connected = wire.connected ?? false
        for entry in wire.offsets ?? [] {
            guard entry.offset >= 0, entry.partition >= 0 else { throw BrokerError(.invalidSessionRecord, "invalid offset in session record") }
            snapshot.offsets[KafkaTopicPartition(topic: entry.topic, partition: entry.partition)] = entry.offset
        }
        return snapshot
    }
}
