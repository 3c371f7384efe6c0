import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// A record lost in a producer recreation ("may or may not be in Kafka") is produced again, unless it can be
/// recognised and the messages consumer has seen it: then Kafka holds it once. (The recreation itself, with
/// Tansu restarted under load, is tested end to end in `KafkaProducerRecoveryTests` and `BrokerKafkaOutageTests`.)
@Suite("Publisher: records lost in a producer recreation")
struct PublisherRecreationTests {
    static let lost = KafkaError(code: KafkaError.Code.fatal, name: "_FATAL", message: "producer recreated", isFatal: true, isRetriable: true)

    struct Fixture {
        let loop = EmbeddedEventLoop()
        let producer = ConnectionHandlerTests.FakeProducer()
        let deduplicator = PublishDeduplicator(clientWindow: 100)
        let publisher: Publisher

        init() {
            publisher = Publisher(
                producer: producer, mapping: TopicMapping(rules: [], defaultTopic: "mqtt.messages"), retainedTopic: "mqtt.retained",
                retained: RetainedStore(defaultQoS: .atLeastOnce), deliveryTimeout: .seconds(30), defaultQoS: .atLeastOnce,
                logger: Logger(label: "test"), deduplicator: deduplicator)
        }

        /// Publishes, lets the first attempt be lost in a recreation (after the consumer saw the record, if
        /// `stored`), and returns how many sends followed and the outcome once those were acknowledged.
        func loseFirstAttempt(_ publish: MQTTPublish, stored: Bool) -> (resends: Int, outcome: MQTTServerConnection.StateMachine.DeliveryOutcome?) {
            let outcome = Mutex<MQTTServerConnection.StateMachine.DeliveryOutcome?>(nil)
            publisher.publish(publish, clientId: "c1", eventLoop: loop, blocked: { _ in }) { result in outcome.withLock { $0 = result } }
            loop.run()
            let first = producer.sent
            #expect(first.count == 1)
            if stored, let record = first.first {
                deduplicator.observe(
                    KafkaRecord(topic: record.topic, partition: 0, offset: 7, key: record.key, value: record.value, headers: record.headers, timestampMilliseconds: nil))
            }
            producer.completeAll(.failure(PublisherRecreationTests.lost))
            loop.run()
            let resends = producer.sent.count
            producer.completeAll()
            loop.run()
            return (resends, outcome.withLock { $0 })
        }
    }

    static func publish(qos: MQTTQoS, dup: Bool = false, agentSequence: UInt64? = nil) -> MQTTPublish {
        var properties = MQTTProperties()
        if let agentSequence {
            properties.userProperties = [
                MQTTUserProperty(name: "tributary-agent", value: "gw-1"), MQTTUserProperty(name: "tributary-seq", value: "\(agentSequence)"),
            ]
        }
        return MQTTPublish(topic: "t/1", payload: ByteBuffer(string: "reading"), qos: qos, retain: false, dup: dup, packetId: 5, properties: properties)
    }

    @Test("QoS 2: stored before the recreation → acknowledged without producing it again; not stored → produced again")
    func qos2() {
        let stored = Fixture().loseFirstAttempt(Self.publish(qos: .exactlyOnce), stored: true)
        #expect(stored.resends == 0)
        #expect(stored.outcome == .delivered)
        let notStored = Fixture().loseFirstAttempt(Self.publish(qos: .exactlyOnce), stored: false)
        #expect(notStored.resends == 1)
        #expect(notStored.outcome == .delivered)
    }

    @Test("an agent's resend (DUP) is matched by sequence; its first attempt never is (a wiped agent reuses sequences)")
    func agentSequences() {
        let resend = Fixture().loseFirstAttempt(Self.publish(qos: .atLeastOnce, dup: true, agentSequence: 42), stored: true)
        #expect(resend.resends == 0)
        #expect(resend.outcome == .delivered)
        let firstAttempt = Fixture().loseFirstAttempt(Self.publish(qos: .atLeastOnce, agentSequence: 42), stored: true)
        #expect(firstAttempt.resends == 1)
        #expect(firstAttempt.outcome == .delivered)
    }

    @Test("QoS 1 without an agent sequence cannot be recognised: produced again")
    func qos1() {
        let result = Fixture().loseFirstAttempt(Self.publish(qos: .atLeastOnce), stored: true)
        #expect(result.resends == 1)
        #expect(result.outcome == .delivered)
    }
}
