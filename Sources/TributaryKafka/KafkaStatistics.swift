import Foundation

/// The totals of one librdkafka statistics report (`statistics.interval.ms`), for export as
/// metrics. Field names follow librdkafka's STATISTICS.md.
public struct KafkaStatistics: Sendable, Hashable {
    /// `name`: the client instance's name (changes when the producer is recreated).
    public var clientName: String
    /// `msg_cnt`: messages in the producer queues (waiting, in flight, or awaiting a report).
    public var queuedMessages: Int64
    /// `msg_size`: bytes of those messages.
    public var queuedBytes: Int64
    /// `txmsgs`: messages sent to brokers.
    public var transmittedMessages: Int64
    /// `txmsg_bytes`: bytes of those messages.
    public var transmittedBytes: Int64
    /// `rxmsgs`: messages consumed from brokers.
    public var receivedMessages: Int64
    /// `rxmsg_bytes`: bytes of those messages.
    public var receivedBytes: Int64
    /// `tx` / `rx`: protocol requests sent and responses received.
    public var requestsSent: Int64
    public var responsesReceived: Int64
    /// `eos.producer_id` and `eos.producer_epoch` of an idempotent producer (-1 when none).
    public var producerId: Int64
    public var producerEpoch: Int64
    /// Per broker (`brokers.*`, bootstrap pseudo-brokers left out): average round-trip time.
    public var brokers: [Broker]
    /// The unparsed JSON, for fields not listed above.
    public var json: String

    public struct Broker: Sendable, Hashable {
        /// `name`, e.g. `127.0.0.1:9092/1`.
        public var name: String
        /// `nodeid`.
        public var nodeId: Int32
        /// `state`, e.g. `UP`.
        public var state: String
        /// `rtt.avg` in seconds (librdkafka reports microseconds); nil when no request completed during the
        /// interval (`rtt.cnt` 0: librdkafka then reports an average of 0, which is no measurement).
        public var averageRoundTripSeconds: Double?
        /// `outbuf_msg_cnt` + `waitresp_msg_cnt`: messages queued or in flight to this broker.
        public var inFlightMessages: Int64
    }

    /// Parses a librdkafka statistics JSON document; `nil` if it is not one.
    public init?(json: String) {
        guard let raw = try? JSONDecoder().decode(Raw.self, from: Data(json.utf8)) else { return nil }
        self.clientName = raw.name ?? ""
        self.queuedMessages = raw.msg_cnt ?? 0
        self.queuedBytes = raw.msg_size ?? 0
        self.transmittedMessages = raw.txmsgs ?? 0
        self.transmittedBytes = raw.txmsg_bytes ?? 0
        self.receivedMessages = raw.rxmsgs ?? 0
        self.receivedBytes = raw.rxmsg_bytes ?? 0
        self.producerId = raw.eos?.producer_id ?? -1
        self.producerEpoch = raw.eos?.producer_epoch ?? -1
        self.requestsSent = raw.tx ?? 0
        self.responsesReceived = raw.rx ?? 0
        self.brokers = (raw.brokers ?? [:]).values
            .filter { ($0.nodeid ?? -1) >= 0 }
            .map {
                Broker(
                    name: $0.name ?? "",
                    nodeId: $0.nodeid ?? -1,
                    state: $0.state ?? "",
                    averageRoundTripSeconds: $0.rtt.flatMap { window in
                        guard let average = window.avg, (window.cnt ?? 1) > 0 else { return nil }
                        return Double(average) / 1_000_000
                    },
                    inFlightMessages: ($0.outbuf_msg_cnt ?? 0) + ($0.waitresp_msg_cnt ?? 0)
                )
            }
            .sorted { $0.nodeId < $1.nodeId }
        self.json = json
    }

    private struct Raw: Decodable {
        var name: String?
        var msg_cnt: Int64?
        var msg_size: Int64?
        var tx: Int64?
        var rx: Int64?
        var txmsgs: Int64?
        var txmsg_bytes: Int64?
        var rxmsgs: Int64?
        var rxmsg_bytes: Int64?
        var brokers: [String: RawBroker]?
        var eos: RawEOS?
    }

    private struct RawEOS: Decodable {
        var producer_id: Int64?
        var producer_epoch: Int64?
    }

    private struct RawBroker: Decodable {
        var name: String?
        var nodeid: Int32?
        var state: String?
        var outbuf_msg_cnt: Int64?
        var waitresp_msg_cnt: Int64?
        var rtt: Window?
    }

    private struct Window: Decodable {
        var avg: Int64?
        var cnt: Int64?
    }
}
