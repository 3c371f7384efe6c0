import Testing
import TributaryKafka

/// The plain-Swift parts of the Kafka client, without a broker.
@Suite("Kafka values")
struct KafkaValueTests {
    /// An abridged librdkafka statistics document (fields as in librdkafka's STATISTICS.md).
    static let statisticsJSON = """
        {"name": "rdkafka#producer-1", "client_id": "tributary", "type": "producer", "ts": 1, "time": 2,
         "msg_cnt": 12, "msg_size": 3400, "tx": 40, "rx": 39, "txmsgs": 1000, "txmsg_bytes": 1024000,
         "rxmsgs": 0, "rxmsg_bytes": 0,
         "brokers": {
           "127.0.0.1:9092/bootstrap": {"name": "127.0.0.1:9092/bootstrap", "nodeid": -1, "state": "INIT",
             "outbuf_msg_cnt": 0, "waitresp_msg_cnt": 0, "rtt": {"avg": 0}},
           "127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP",
             "outbuf_msg_cnt": 2, "waitresp_msg_cnt": 3, "rtt": {"min": 100, "max": 900, "avg": 450, "cnt": 4}},
           "127.0.0.1:9093/2": {"name": "127.0.0.1:9093/2", "nodeid": 2, "state": "UP",
             "outbuf_msg_cnt": 0, "waitresp_msg_cnt": 0, "rtt": {"min": 0, "max": 0, "avg": 0, "cnt": 0}}
         },
         "topics": {}}
        """

    @Test func statisticsTotalsAreParsed() throws {
        let stats = try #require(KafkaStatistics(json: Self.statisticsJSON))
        #expect(stats.clientName == "rdkafka#producer-1")
        #expect(stats.queuedMessages == 12)
        #expect(stats.queuedBytes == 3400)
        #expect(stats.transmittedMessages == 1000)
        #expect(stats.transmittedBytes == 1_024_000)
        #expect(stats.receivedMessages == 0)
        #expect(stats.requestsSent == 40)
        #expect(stats.responsesReceived == 39)
        // The bootstrap pseudo-broker (nodeid -1) is left out; RTT microseconds become seconds.
        #expect(stats.brokers.count == 2)
        #expect(stats.brokers.first?.nodeId == 1)
        #expect(stats.brokers.first?.state == "UP")
        #expect(stats.brokers.first?.averageRoundTripSeconds == 0.00045)
        #expect(stats.brokers.first?.inFlightMessages == 5)
        #expect(stats.brokers.last?.averageRoundTripSeconds == nil, "no request completed in the interval: no round trip measured")
    }

    @Test func statisticsRejectNonJSON() {
        #expect(KafkaStatistics(json: "not json") == nil)
    }

    @Test(arguments: [
        (KafkaTopicSpecification(name: "mqtt.messages", partitions: 6), nil as String?),
        (KafkaTopicSpecification(name: "a_b-c.D9", partitions: 1, replicationFactor: -1), nil),
        (KafkaTopicSpecification(name: "", partitions: 1), "name"),
        (KafkaTopicSpecification(name: ".", partitions: 1), "name"),
        (KafkaTopicSpecification(name: "..", partitions: 1), "name"),
        (KafkaTopicSpecification(name: String(repeating: "x", count: 250), partitions: 1), "name"),
        (KafkaTopicSpecification(name: "bad name", partitions: 1), "name"),
        (KafkaTopicSpecification(name: "ok", partitions: 0), "partitions"),
        (KafkaTopicSpecification(name: "ok", partitions: 1, replicationFactor: 0), "replication"),
    ])
    func topicSpecificationValidation(spec: KafkaTopicSpecification, problem: String?) {
        if let problem {
            #expect(spec.validationProblem?.contains(problem) == true, "\(spec)")
        } else {
            #expect(spec.validationProblem == nil, "\(spec)")
        }
    }

    @Test func compactedTopicsAreCompacted() {
        let spec = KafkaTopicSpecification.compacted(name: "mqtt.sessions", partitions: 3, configs: ["segment.ms": "60000"])
        #expect(spec.configs == ["cleanup.policy": "compact", "segment.ms": "60000"])
    }

    @Test func errorClassification() {
        let full = KafkaError(code: KafkaError.Code.queueFull, name: "_QUEUE_FULL", message: "full")
        #expect(full.isRetriable && !full.isFatal)
        let exists = KafkaError(code: KafkaError.Code.topicAlreadyExists, name: "TOPIC_ALREADY_EXISTS", message: "exists")
        #expect(!exists.isRetriable)
    }
}
