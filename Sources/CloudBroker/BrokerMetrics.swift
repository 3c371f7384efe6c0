import Common
import CoreMetrics
import Metrics
import Synchronization
import TributaryKafka

/// Every metric the broker exports, declared once (names snake_case with units, prefix `tributary_broker_`).
/// Metric handles are created once here; label values are from fixed sets. `registerAll` creates every
/// handle (every label combination) at start-up, so that `/metrics` shows each series at zero before first use.
enum BrokerMetrics {
    enum Name {
        static let connections = "tributary_broker_connections"
        static let connectionsTotal = "tributary_broker_connections_total"
        static let packetsReceived = "tributary_broker_packets_received_total"
        static let packetsSent = "tributary_broker_packets_sent_total"
        static let publishesReceived = "tributary_broker_publishes_received_total"
        static let messagesDelivered = "tributary_broker_messages_delivered_total"
        static let messagesDropped = "tributary_broker_messages_dropped_total"
        static let kafkaDelivery = "tributary_broker_kafka_delivery_seconds"
        static let kafkaErrors = "tributary_broker_kafka_errors_total"
        static let kafkaInflight = "tributary_broker_kafka_inflight_messages"
        static let kafkaRecordsConsumed = "tributary_broker_kafka_records_consumed_total"
        static let producerRecreations = "tributary_broker_kafka_producer_recreations_total"
        static let bytesReceived = "tributary_broker_bytes_received_total"
        static let bytesSent = "tributary_broker_bytes_sent_total"
        static let sessions = "tributary_broker_sessions"
        static let sessionQueuedMessages = "tributary_broker_session_queued_messages"
        static let retainedMessages = "tributary_broker_retained_messages"
        static let willsPublished = "tributary_broker_wills_published_total"
        static let protocolErrors = "tributary_broker_protocol_errors_total"
        static let sessionRecordsWritten = "tributary_broker_session_records_written_total"
        static let sessionRecordsRejected = "tributary_broker_session_records_rejected_total"
        static let duplicatesSuppressed = "tributary_broker_duplicates_suppressed_total"
        static let catchUp = "tributary_broker_kafka_catch_up_seconds"
        static let takeovers = "tributary_broker_takeovers_total"
        static let announcements = "tributary_broker_connection_announcements_total"
        static let movedSessionMessagesReplayed = "tributary_broker_moved_session_messages_replayed_total"
        static let readBacksStarted = "tributary_broker_subscriber_read_backs_total"
        static let readBacksRefused = "tributary_broker_subscriber_read_backs_refused_total"
        static let readBackBatchesStale = "tributary_broker_subscriber_read_back_stale_batches_total"
        static let authAccepted = "tributary_broker_auth_accepted_total"
        static let authFailures = "tributary_broker_auth_failures_total"
        static let kafkaProducerQueueMessages = "tributary_broker_kafka_producer_queue_messages"
        static let kafkaProducerQueueBytes = "tributary_broker_kafka_producer_queue_bytes"
        static let kafkaRoundTrip = "tributary_broker_kafka_round_trip_seconds"
        static let kafkaBrokersUp = "tributary_broker_kafka_brokers_up"
        static let kafkaRequests = "tributary_broker_kafka_requests_total"
        static let kafkaTransmittedBytes = "tributary_broker_kafka_transmitted_bytes_total"
        static let deliveryConsumerPaused = "tributary_broker_delivery_consumer_paused"
        static let deliveryConsumerPauses = "tributary_broker_delivery_consumer_pauses_total"
        static let deliveryConsumerResumes = "tributary_broker_delivery_consumer_resumes_total"

        /// Every name above (a test checks that a fresh node exports each of them).
        static let all = [
            connections, connectionsTotal, packetsReceived, packetsSent, publishesReceived, messagesDelivered, messagesDropped,
            kafkaDelivery, kafkaErrors, kafkaInflight, kafkaRecordsConsumed, producerRecreations, bytesReceived, bytesSent,
            sessions, sessionQueuedMessages, retainedMessages, willsPublished, protocolErrors, sessionRecordsWritten,
            sessionRecordsRejected, duplicatesSuppressed, catchUp, takeovers, announcements, movedSessionMessagesReplayed, readBacksStarted, readBacksRefused,
            readBackBatchesStale, authAccepted, authFailures, kafkaProducerQueueMessages, kafkaProducerQueueBytes, kafkaRoundTrip, kafkaBrokersUp,
            kafkaRequests, kafkaTransmittedBytes, deliveryConsumerPaused, deliveryConsumerPauses, deliveryConsumerResumes,
        ]
    }

    static let connections = Gauge(label: Name.connections)
    private static let openConnections = Atomic<Int>(0)
    static func connectionOpened() { connections.record(openConnections.add(1, ordering: .relaxed).newValue) }
    static func connectionClosed() { connections.record(openConnections.subtract(1, ordering: .relaxed).newValue) }
    static let connectionsTotal = Counter(label: Name.connectionsTotal)
    static let packetsReceived: [MQTTPacketType: Counter] = Dictionary(
        uniqueKeysWithValues: MQTTPacketType.allCases.map { ($0, Counter(label: Name.packetsReceived, dimensions: [("type", "\($0)")])) })
    static let packetsSent: [MQTTPacketType: Counter] = Dictionary(
        uniqueKeysWithValues: MQTTPacketType.allCases.map { ($0, Counter(label: Name.packetsSent, dimensions: [("type", "\($0)")])) })
    static let publishesReceived = MQTTQoS.allCases.map { Counter(label: Name.publishesReceived, dimensions: [("qos", "\($0.rawValue)")]) }
    static let messagesDelivered = MQTTQoS.allCases.map { Counter(label: Name.messagesDelivered, dimensions: [("qos", "\($0.rawValue)")]) }
    static let messagesDroppedQueueFull = MQTTQoS.allCases.map {
        Counter(label: Name.messagesDropped, dimensions: [("qos", "\($0.rawValue)"), ("reason", "queue_full")])
    }
    static let messagesDroppedProducerFull = Counter(label: Name.messagesDropped, dimensions: [("qos", "0"), ("reason", "kafka_queue_full")])
    static let kafkaDelivery = Metrics.Timer(label: Name.kafkaDelivery)
    static let kafkaInflight = Gauge(label: Name.kafkaInflight)
    static let kafkaRecordsConsumed = Counter(label: Name.kafkaRecordsConsumed)
    static let producerRecreations = Counter(label: Name.producerRecreations)
    static let bytesReceived = Counter(label: Name.bytesReceived)
    static let bytesSent = Counter(label: Name.bytesSent)
    static let sessions = Gauge(label: Name.sessions)
    static let sessionQueuedMessages = Gauge(label: Name.sessionQueuedMessages)
    static let retainedMessages = Gauge(label: Name.retainedMessages)
    static let willsPublished = Counter(label: Name.willsPublished)
    static let protocolErrors = Counter(label: Name.protocolErrors)
    /// Snapshots and tombstones written to `mqtt.sessions`, by outcome (`ok`, `failed`).
    static let sessionRecordsWritten = Counter(label: Name.sessionRecordsWritten, dimensions: [("outcome", "ok")])
    static let sessionRecordsWriteFailed = Counter(label: Name.sessionRecordsWritten, dimensions: [("outcome", "failed")])
    /// Records of `mqtt.sessions` that could not be decoded (skipped).
    static let sessionRecordsRejected = Counter(label: Name.sessionRecordsRejected)

    /// Publishes recognised as already in Kafka (resent after a node loss or reconnect), acknowledged
    /// without producing them again, by what matched (`agent_sequence`, `packet_id`).
    static let duplicatesSuppressedBySequence = Counter(label: Name.duplicatesSuppressed, dimensions: [("match", "agent_sequence")])
    static let duplicatesSuppressedByPacketId = Counter(label: Name.duplicatesSuppressed, dimensions: [("match", "packet_id")])
    /// Time to catch a consumer up with the end of its partitions (read-your-writes before a session load
    /// or a duplicate check).
    static let catchUp = Metrics.Timer(label: Name.catchUp)
    /// Clients disconnected here because they connected to another node (`remote`) or to this one again (`local`).
    static let takeoversRemote = Counter(label: Name.takeovers, dimensions: [("where", "remote")])
    static let takeoversLocal = Counter(label: Name.takeovers, dimensions: [("where", "local")])
    /// Messages read again from Kafka for sessions that moved here from another node.
    static let movedSessionMessagesReplayed = Counter(label: Name.movedSessionMessagesReplayed)
    /// Connected sessions whose queue overflowed and that read their messages back from Kafka (`SubscriberReadBack`).
    static let readBacksStarted = Counter(label: Name.readBacksStarted)
    /// Overflowing sessions refused a read-back (`mqtt.read_back_limit` reached): their overflow was dropped.
    static let readBacksRefused = Counter(label: Name.readBacksRefused)
    /// Read-back batches dropped because the reader was reassigned after reading them (read again from where
    /// the session stands: `SubscriberReadBack.isCurrent`).
    static let readBackBatchesStale = Counter(label: Name.readBackBatchesStale)
    /// Connection announcements written to `mqtt.connections`, by outcome.
    static let announcementsWritten = Counter(label: Name.announcements, dimensions: [("outcome", "ok")])
    static let announcementsWriteFailed = Counter(label: Name.announcements, dimensions: [("outcome", "failed")])

    /// 1 while the delivery consumer is paused because no session on this node subscribes (`DeliveryDemand`).
    static let deliveryConsumerPaused = Gauge(label: Name.deliveryConsumerPaused)
    /// How often it paused, and how often it resumed (a subscription, a duplicate check, a moved session).
    static let deliveryConsumerPauses = Counter(label: Name.deliveryConsumerPauses)
    static let deliveryConsumerResumes = Counter(label: Name.deliveryConsumerResumes)

    /// The failover metrics, created (static lets are lazy) so that /metrics shows them at zero before a
    /// node is ever lost.
    static func registerFailoverMetrics() {
        _ = (duplicatesSuppressedBySequence, duplicatesSuppressedByPacketId, catchUp, takeoversRemote, takeoversLocal)
        _ = (announcementsWritten, announcementsWriteFailed, movedSessionMessagesReplayed, willsPublished, readBacksStarted, readBacksRefused)
        _ = readBackBatchesStale
        deliveryConsumerPaused.record(0)
        _ = (deliveryConsumerPauses, deliveryConsumerResumes)
    }

    /// CONNECTs let in, by how (`certificate`, `password`, `jwt`, `anonymous`).
    static let authAccepted: [AuthenticationMethod: Counter] = Dictionary(
        uniqueKeysWithValues: AuthenticationMethod.allCases.map { ($0, Counter(label: Name.authAccepted, dimensions: [("method", $0.rawValue)])) })
    /// CONNECTs refused by authentication, by method and reason (`AuthenticationFailure`).
    static let authFailures: [AuthenticationFailure: Counter] = Dictionary(
        uniqueKeysWithValues: AuthenticationFailure.allCases.map {
            ($0, Counter(label: Name.authFailures, dimensions: [("method", $0.method.rawValue), ("reason", $0.rawValue)]))
        })

    // MARK: librdkafka statistics (the producer's, every `kafka.statistics_interval`)

    /// `msg_cnt` / `msg_size`: messages (bytes) in the producer's queues, waiting, in flight or awaiting a report.
    static let kafkaProducerQueueMessages = Gauge(label: Name.kafkaProducerQueueMessages)
    static let kafkaProducerQueueBytes = Gauge(label: Name.kafkaProducerQueueBytes)
    /// The slowest Kafka broker's average request round trip over the last interval in which a request
    /// completed (`brokers.*.rtt.avg`); an interval without one leaves the last measurement standing.
    static let kafkaRoundTrip = Gauge(label: Name.kafkaRoundTrip)
    /// Kafka brokers the producer is connected to (state `UP`).
    static let kafkaBrokersUp = Gauge(label: Name.kafkaBrokersUp)
    /// Protocol requests the producer sent (`tx`), and the record bytes it transmitted (`txmsg_bytes`).
    static let kafkaRequests = Counter(label: Name.kafkaRequests)
    static let kafkaTransmittedBytes = Counter(label: Name.kafkaTransmittedBytes)
    /// The totals of the last report, to turn librdkafka's running totals into counter increments; a new
    /// client name (the producer was recreated) starts from zero.
    private static let lastStatistics = Mutex<(client: String, requests: Int64, bytes: Int64)>(("", 0, 0))

    /// Exports one statistics report of the producer.
    static func recordProducerStatistics(_ statistics: KafkaStatistics) {
        kafkaProducerQueueMessages.record(statistics.queuedMessages)
        kafkaProducerQueueBytes.record(statistics.queuedBytes)
        if let slowest = statistics.brokers.compactMap(\.averageRoundTripSeconds).max() { kafkaRoundTrip.record(slowest) }
        kafkaBrokersUp.record(statistics.brokers.filter { $0.state == "UP" }.count)
        let (requests, bytes) = lastStatistics.withLock { last -> (Int64, Int64) in
            if last.client != statistics.clientName { last = (statistics.clientName, 0, 0) }
            let delta = (max(0, statistics.requestsSent - last.requests), max(0, statistics.transmittedBytes - last.bytes))
            last.requests = max(last.requests, statistics.requestsSent)
            last.bytes = max(last.bytes, statistics.transmittedBytes)
            return delta
        }
        kafkaRequests.increment(by: requests)
        kafkaTransmittedBytes.increment(by: bytes)
    }

    /// The librdkafka errors a delivery usually fails with, registered at start; others appear when they occur.
    static let expectedKafkaErrors = ["_MSG_TIMED_OUT", "_QUEUE_FULL", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_FATAL", "_PURGE_QUEUE", "_PURGE_INFLIGHT"]

    static func kafkaError(_ name: String) -> Counter {
        Counter(label: Name.kafkaErrors, dimensions: [("error", name)])
    }

    /// Creates every handle now (Swift initialises static properties lazily, on first use). Call once,
    /// after `MetricsSystem.bootstrap`.
    static func registerAll() {
        connections.record(0)
        kafkaInflight.record(0)
        kafkaProducerQueueMessages.record(0)
        kafkaProducerQueueBytes.record(0)
        kafkaRoundTrip.record(0)
        kafkaBrokersUp.record(0)
        sessions.record(0)
        sessionQueuedMessages.record(0)
        retainedMessages.record(0)
        let counters: [Counter] = [
            connectionsTotal, messagesDroppedProducerFull, kafkaRecordsConsumed, producerRecreations, bytesReceived, bytesSent,
            willsPublished, protocolErrors, sessionRecordsWritten, kafkaRequests, kafkaTransmittedBytes, sessionRecordsWriteFailed, sessionRecordsRejected,
        ] + Array(packetsReceived.values) + Array(packetsSent.values) + publishesReceived + messagesDelivered + messagesDroppedQueueFull
            + Array(authAccepted.values) + Array(authFailures.values) + expectedKafkaErrors.map(kafkaError)
        for counter in counters { counter.increment(by: 0) }
        _ = kafkaDelivery
        registerFailoverMetrics()
    }
}
