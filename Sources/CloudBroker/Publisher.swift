import Common
import Foundation
import Logging
import NIOCore
import Synchronization
import TributaryKafka

/// What the publish path needs from a Kafka producer (`KafkaProducer`, or a fake in tests).
protocol KafkaPublishing: Sendable {
    func send(
        _ message: KafkaOutgoingMessage,
        completion: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void
    ) throws(KafkaError)
}

extension KafkaProducer: KafkaPublishing {}

/// The publish path (G3): map the MQTT topic to a Kafka topic and key, produce, and report the outcome
/// once Kafka has acknowledged every record of the publish (the message, and for RETAIN also the
/// retained-topic record).
///
/// - A full producer queue (`_QUEUE_FULL`) or a producer being recreated (`_STATE`) is not a failure:
///   the publish waits (the connection is told it is blocked, so it stops reading its socket) and is
///   retried until `deliveryTimeout` has passed since it arrived.
/// - A record lost in a producer recreation ("may or may not be in Kafka") is produced again within
///   the same deadline: the client is acknowledged once, after a successful delivery, never falsely. If the
///   record can be recognised (a QoS 2 publish by client and packet id, or an edge agent's resent publish by
///   sequence) and the messages consumer, once caught up, has seen it, it is not produced again: Kafka
///   holds it once. Others (QoS 1 without an agent sequence, an agent's first attempt) are produced again
///   and may be in Kafka twice.
/// - Any other failure, or the deadline, fails the publish: the connection sends a failure reason code
///   (MQTT 5) or closes (3.1.1).
final class Publisher: Sendable {
    let producer: any KafkaPublishing
    let mapping: TopicMapping
    let retainedTopic: String
    let retained: RetainedStore
    let deliveryTimeout: Duration
    let defaultQoS: MQTTQoS
    private let logger: Logger
    private let inflight = Atomic<Int>(0)
    /// Recognises publishes already in Kafka (nil: no deduplication, e.g. unit tests).
    let deduplicator: PublishDeduplicator?
    /// Catches the messages consumer up before a resent publish is checked against `deduplicator`.
    let messagesCatchUp: KafkaCatchUp?

    init(
        producer: any KafkaPublishing, mapping: TopicMapping, retainedTopic: String, retained: RetainedStore,
        deliveryTimeout: Duration, defaultQoS: MQTTQoS, logger: Logger,
        deduplicator: PublishDeduplicator? = nil, messagesCatchUp: KafkaCatchUp? = nil
    ) {
        self.deduplicator = deduplicator
        self.messagesCatchUp = messagesCatchUp
        self.producer = producer
        self.mapping = mapping
        self.retainedTopic = retainedTopic
        self.retained = retained
        self.deliveryTimeout = deliveryTimeout
        self.defaultQoS = defaultQoS
        self.logger = logger
    }

    var inflightCount: Int { inflight.load(ordering: .relaxed) }

    /// Publishes `publish` (topic resolved) from `clientId`. `completion` runs once on `eventLoop`;
    /// `blocked` runs on `eventLoop` with true when the publish must wait for producer capacity and
    /// with false when it no longer waits. `inbox`: `eventLoop`'s `DeliveryInbox` if the caller holds it
    /// (a connection does; looking it up takes a lock shared by all loops).
    func publish(
        _ publish: MQTTPublish,
        clientId: String,
        extraHeaders: [KafkaHeader] = [],
        eventLoop: any EventLoop,
        inbox: DeliveryInbox? = nil,
        blocked: @escaping @Sendable (Bool) -> Void,
        completion: @escaping @Sendable (MQTTServerConnection.StateMachine.DeliveryOutcome) -> Void
    ) {
        var message = KafkaRecordMapping.record(for: publish, clientId: clientId, destination: mapping.destination(topic: publish.topic, clientId: clientId))
        message.headers += extraHeaders
        var records = [message]
        if publish.retain {
            records.append(KafkaRecordMapping.retainedRecord(for: publish, clientId: clientId, retainedTopic: retainedTopic))
        }
        let job = PublishJob(
            publisher: self, records: records, retainedMessage: publish.retain ? retainedMessage(publish, clientId: clientId) : nil,
            qos: publish.qos, dup: publish.dup, inbox: inbox ?? DeliveryInbox.on(eventLoop), deadline: .now() + TimeAmount(deliveryTimeout),
            blocked: blocked, completion: completion)
        // A first attempt (DUP clear) is new by definition and never checked (see below): no key is computed
        // for it (the QoS 2 fingerprint hashes the whole payload).
        guard let deduplicator, publish.qos != .atMostOnce, publish.dup, let key = PublishDeduplicator.key(for: publish, clientId: clientId) else {
            eventLoop.execute { job.start() }
            return
        }
        let check = { @Sendable in
            if deduplicator.contains(key) {
                Self.countSuppressed(key)
                completion(.delivered)
            } else {
                job.start()
            }
        }
        // A publish with DUP set may be in Kafka through another node (or this one, before a reconnect):
        // ask only once this node has consumed everything Kafka holds now. A first attempt (DUP clear) is
        // new by definition and never checked: an agent whose buffer was wiped starts its sequences again,
        // and its new records must not be taken for old ones.
        switch key {
        case .will:
            eventLoop.execute { job.start() }
        case .packet, .agentSequence:
            guard let messagesCatchUp else {
                eventLoop.execute { check() }
                return
            }
            let logger = self.logger
            messagesCatchUp.wait(on: eventLoop).whenComplete { result in
                switch result {
                case .success:
                    check()
                case .failure(let error):
                    logger.warning("cannot check a resent publish for a duplicate", metadata: ["mqtt.client_id": "\(clientId)", "kafka.error": "\(error)"])
                    completion(.failed(reason: "cannot check for a duplicate: Kafka unavailable"))
                }
            }
        }
    }

    fileprivate static func countSuppressed(_ key: PublishDeduplicator.Key) {
        switch key {
        case .agentSequence: BrokerMetrics.duplicatesSuppressedBySequence.increment()
        case .packet, .will: BrokerMetrics.duplicatesSuppressedByPacketId.increment()
        }
    }

    private func retainedMessage(_ publish: MQTTPublish, clientId: String) -> BrokerMessage? {
        guard publish.payload.readableBytes > 0 else { return nil }
        let properties = publish.properties.forwardedToSubscribers(keepingExpiry: false)
        return BrokerMessage(
            topic: publish.topic, payload: publish.payload, qos: publish.qos, retain: true, publisherClientId: clientId,
            properties: properties, expiresAt: publish.properties.messageExpiryInterval.map { Date().addingTimeInterval(Double($0)) })
    }

    fileprivate func trackInflight(_ delta: Int) {
        let value = inflight.add(delta, ordering: .relaxed).newValue
        BrokerMetrics.kafkaInflight.record(value)
    }

    fileprivate func log(_ error: KafkaError, topic: String) {
        BrokerMetrics.kafkaError(error.name).increment()
        logger.debug("Kafka delivery failed", metadata: ["kafka.topic": "\(topic)", "kafka.error": "\(error)"])
    }
}

/// One publish on its way to Kafka. Only touched on `eventLoop` (hence `@unchecked Sendable`).
private final class PublishJob: @unchecked Sendable {
    let publisher: Publisher
    let records: [KafkaOutgoingMessage]
    let retainedMessage: BrokerMessage?
    let qos: MQTTQoS
    /// The publish was a resend (DUP): its agent sequence may be matched (a first attempt's never is).
    let dup: Bool
    let eventLoop: any EventLoop
    /// Where the poll thread hands delivery reports to `eventLoop` (batched, see `DeliveryInbox`).
    let inbox: DeliveryInbox
    let deadline: NIODeadline
    let blocked: @Sendable (Bool) -> Void
    let completion: @Sendable (MQTTServerConnection.StateMachine.DeliveryOutcome) -> Void
    /// Records `firstSends...` have not been enqueued in the producer yet (in order); `resends` are records
    /// lost in a producer recreation, to enqueue again after them. (No array per publish in the usual case.)
    var firstSends = 0
    var resends: [Int] = []
    var outstanding: Int
    var finished = false
    var isBlocked = false

    init(
        publisher: Publisher, records: [KafkaOutgoingMessage], retainedMessage: BrokerMessage?, qos: MQTTQoS, dup: Bool,
        inbox: DeliveryInbox, deadline: NIODeadline, blocked: @escaping @Sendable (Bool) -> Void,
        completion: @escaping @Sendable (MQTTServerConnection.StateMachine.DeliveryOutcome) -> Void
    ) {
        self.publisher = publisher
        self.records = records
        self.retainedMessage = retainedMessage
        self.qos = qos
        self.dup = dup
        self.eventLoop = inbox.eventLoop
        self.inbox = inbox
        self.deadline = deadline
        self.blocked = blocked
        self.completion = completion
        self.outstanding = records.count
    }

    func start() {
        sendPending()
    }

    private func sendPending() {
        guard !finished else { return }
        while let index = firstSends < records.count ? firstSends : resends.first {
            let started = ContinuousClock.now
            do throws(KafkaError) {
                try publisher.producer.send(records[index]) { [self] result in
                    let elapsed = ContinuousClock.now - started
                    inbox.post { self.reported(index: index, result: result, elapsed: elapsed) }
                }
                if firstSends < records.count { firstSends += 1 } else { resends.removeFirst() }  // `index` came from there
                publisher.trackInflight(1)
            } catch {
                if error.isRetriable && NIODeadline.now() < deadline {
                    if qos == .atMostOnce && error.code == KafkaError.Code.queueFull {
                        // At most once: a full producer queue drops the message (counted) instead of waiting.
                        BrokerMetrics.messagesDroppedProducerFull.increment()
                        finish(.failed(reason: "Kafka producer queue full"))
                        return
                    }
                    setBlocked(true)
                    eventLoop.scheduleTask(in: .milliseconds(5)) { self.sendPending() }
                    return
                }
                publisher.log(error, topic: records[index].topic)
                finish(.failed(reason: "Kafka: \(error.name)"))
                return
            }
        }
        setBlocked(false)
    }

    private func reported(index: Int, result: Result<KafkaDeliveryReport, KafkaError>, elapsed: Duration) {
        publisher.trackInflight(-1)
        guard !finished else { return }
        switch result {
        case .success(let report):
            BrokerMetrics.kafkaDelivery.recordNanoseconds(Int64(elapsed.components.seconds) * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
            if index == 1, records[index].topic == publisher.retainedTopic, let topic = records[0].headers.first?.value {
                publisher.retained.set(topic: String(decoding: topic, as: UTF8.self), message: retainedMessage, offset: report.offset)
            }
            outstanding -= 1
            if outstanding == 0 { finish(.delivered) }
        case .failure(let error):
            publisher.log(error, topic: records[index].topic)
            if error.isFatal && error.isRetriable && NIODeadline.now() < deadline {
                // Lost in a producer recreation: it may or may not be in Kafka.
                resendUnlessStored(index)
                return
            }
            finish(.failed(reason: "Kafka: \(error.name)"))
        }
    }

    /// Produces record `index` again, unless the messages consumer (caught up with Kafka's end) has seen
    /// it: then it counts as delivered. Only a record whose key cannot be a new message's is looked up (a
    /// QoS 2 client's packet id and content; an agent sequence only on a resend).
    private func resendUnlessStored(_ index: Int) {
        let record = records[index]
        guard index == 0, let deduplicator = publisher.deduplicator,
            let key = PublishDeduplicator.key(
                for: KafkaRecord(topic: record.topic, partition: 0, offset: 0, key: record.key, value: record.value, headers: record.headers, timestampMilliseconds: nil))
        else { return resend(index) }
        switch key {
        case .packet: break
        case .agentSequence where dup: break
        case .agentSequence, .will: return resend(index)
        }
        guard let catchUp = publisher.messagesCatchUp else { return resendUnless(key, in: deduplicator, index: index) }
        catchUp.wait(on: eventLoop).whenComplete { result in
            switch result {
            case .success: self.resendUnless(key, in: deduplicator, index: index)
            case .failure: self.resend(index)  // cannot look: produce again (it may then be in Kafka twice)
            }
        }
    }

    private func resendUnless(_ key: PublishDeduplicator.Key, in deduplicator: PublishDeduplicator, index: Int) {
        guard !finished else { return }
        guard deduplicator.contains(key) else { return resend(index) }
        Publisher.countSuppressed(key)
        outstanding -= 1
        if outstanding == 0 { finish(.delivered) }
    }

    private func resend(_ index: Int) {
        resends.append(index)
        sendPending()
    }

    private func setBlocked(_ value: Bool) {
        guard isBlocked != value else { return }
        isBlocked = value
        blocked(value)
    }

    private func finish(_ outcome: MQTTServerConnection.StateMachine.DeliveryOutcome) {
        guard !finished else { return }
        finished = true
        setBlocked(false)
        completion(outcome)
    }
}
