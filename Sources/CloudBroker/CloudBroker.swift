import Common
import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import TributaryKafka

/// Composes a broker node's services. Shared by `main` and the tests.
enum CloudBroker {
    /// The services of one node and the parts tests look at.
    struct Node: Sendable {
        var listener: MQTTListener
        var tlsListener: MQTTListener?
        var kafka: KafkaLink
        var http: ObservabilityServer
        var producer: KafkaProducer
        var registry: SessionRegistry
        var retained: RetainedStore

        var services: [any Service] { [kafka, listener] + (tlsListener.map { [$0] } ?? []) + [http] }
    }

    static func build(configuration: CloudBrokerConfiguration, logger: Logger) throws -> Node {
        var kafka = KafkaConfiguration(bootstrapServers: configuration.kafkaBootstrapServers, clientId: "tributary-broker-\(configuration.nodeId)")
        kafka.linger = configuration.linger
        kafka.maxInFlight = configuration.maxInFlight
        kafka.compression = configuration.compression.rawValue
        kafka.deliveryTimeout = configuration.deliveryTimeout
        kafka.maxQueuedMessages = configuration.maxQueuedMessages
        kafka.fetchWaitMax = configuration.fetchWaitMax
        kafka.stallTimeout = min(.seconds(15), configuration.deliveryTimeout / 2)
        kafka.properties = configuration.librdkafkaProperties
        var producerConfiguration = kafka
        producerConfiguration.statisticsInterval = configuration.statisticsInterval  // nil: the callback is never called
        let producer = try KafkaProducer(
            configuration: producerConfiguration, logger: logger,
            statistics: { BrokerMetrics.recordProducerStatistics($0) },
            onRecreated: { cause in
                BrokerMetrics.producerRecreations.increment()
                logger.warning("Kafka producer recreated", metadata: ["kafka.error": "\(cause)"])
            })
        let retained = RetainedStore(defaultQoS: configuration.defaultQoS)
        BrokerMetrics.registerFailoverMetrics()
        let deduplicator = PublishDeduplicator(clientWindow: configuration.limits.receiveMaximum)
        let deliveryDemand = DeliveryDemand(idleBeforePause: configuration.deliveryIdlePause, logger: logger)
        let messagesCatchUp = KafkaCatchUp(name: "messages", positions: ConsumerPositions(), demand: deliveryDemand, logger: logger)
        let publisher = Publisher(
            producer: producer,
            mapping: TopicMapping(rules: configuration.topicRules, defaultTopic: configuration.messagesTopic),
            retainedTopic: configuration.retainedTopic, retained: retained, deliveryTimeout: configuration.deliveryTimeout,
            defaultQoS: configuration.defaultQoS, logger: logger, deduplicator: deduplicator, messagesCatchUp: messagesCatchUp)
        let willLoop = NIOSingletons.posixEventLoopGroup.next()
        let sessions: KafkaSessionStore? = switch configuration.sessionsStore {
        case .kafka:
            KafkaSessionStore(
                topic: configuration.sessionsTopic, nodeId: configuration.nodeId, logger: logger,
                write: KafkaSessionStore.producerWriter(producer, logger: logger))
        case .memory: nil
        }
        let connectionsTopic = configuration.connectionsTopic
        let announce = KafkaSessionStore.producerWriter(
            producer, logger: logger, what: "connection announcement",
            written: BrokerMetrics.announcementsWritten, failed: BrokerMetrics.announcementsWriteFailed)
        let incarnation = UUID().uuidString
        let wills = NodeLossWills(nodeId: configuration.nodeId, incarnation: incarnation, lease: configuration.nodeLease)
        // This node reads overflowed queues back from Kafka (connected sessions and offline ones alike).
        var limits = configuration.limits
        limits.readBack = true
        let registry = SessionRegistry(
            store: sessions ?? InMemorySessionStore(), limits: limits, logger: logger, nodeId: configuration.nodeId,
            incarnation: incarnation,
            announcer: { clientId, announcement in announce(announcement.record(topic: connectionsTopic, clientId: clientId)) },
            deliveryDemand: deliveryDemand
        ) { will, clientId, willId, done in
            let publish = MQTTPublish(topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain, properties: will.properties.forwardedToSubscribers(keepingExpiry: true))
            let headers = willId.map { [KafkaHeader(PublishDeduplicator.Header.willOf, Array($0.utf8))] } ?? []
            publisher.publish(publish, clientId: clientId, extraHeaders: headers, eventLoop: willLoop, blocked: { _ in }) { outcome in
                if outcome == .delivered { done() }
            }
        }
        let broker = BrokerContext(
            registry: registry, publisher: publisher, retained: retained, limits: limits, logger: logger,
            authenticator: configuration.authenticator, deliveryDemand: deliveryDemand,
            readBack: SubscriberReadBack.Source(
                configuration: kafka, defaultQoS: configuration.defaultQoS, logger: logger,
                slots: SubscriberReadBack.Slots(limit: configuration.limits.readBackLimit)))
        let replication = Int16(configuration.replicationFactor)
        var topics = configuration.messagesTopics.map {
            KafkaTopicSpecification(name: $0, partitions: Int32(configuration.messagesPartitions), replicationFactor: replication)
        }
        topics.append(.compacted(name: configuration.retainedTopic, partitions: Int32(configuration.retainedPartitions), replicationFactor: replication))
        if sessions != nil {
            topics.append(.compacted(name: configuration.sessionsTopic, partitions: Int32(configuration.sessionsPartitions), replicationFactor: replication))
        }
        topics.append(
            KafkaTopicSpecification(
                name: connectionsTopic, partitions: Int32(configuration.connectionsPartitions), replicationFactor: replication,
                configs: ["cleanup.policy": "delete", "retention.ms": "3600000"]))
        let link = KafkaLink(
            settings: .init(
                kafka: kafka, messagesTopics: configuration.messagesTopics, retainedTopic: configuration.retainedTopic,
                sessionsTopic: sessions?.topic, connectionsTopic: connectionsTopic, topics: topics, defaultQoS: configuration.defaultQoS,
                dedupeLookback: Int64(configuration.dedupeLookback), heartbeatInterval: configuration.heartbeatInterval),
            registry: registry, retained: retained, sessions: sessions, deduplicator: deduplicator,
            messagesCatchUp: messagesCatchUp, deliveryDemand: deliveryDemand, wills: wills, publisher: publisher, announce: announce, logger: logger)
        let listener = MQTTListener(address: configuration.mqttListen, broker: broker)
        var tlsListener: MQTTListener?
        if let tls = configuration.tls {
            do {
                tlsListener = MQTTListener(address: tls.listen, broker: broker, tls: try tls.makeContext())
            } catch {
                throw BrokerError(.configuration, "TLS listener: \(error)")
            }
        }
        // `/ready` and `/metrics` on a thread of their own: a node whose MQTT event loops are saturated (a
        // reconnect storm after another node's loss) still answers the load balancer's health checks in
        // time, instead of being marked down and cutting its clients too.
        let http = ObservabilityServer(
            address: configuration.httpListen, registry: Observability.registry, group: Self.httpEventLoopGroup, logger: logger
        ) {
            link.readiness()
        }
        return Node(listener: listener, tlsListener: tlsListener, kafka: link, http: http, producer: producer, registry: registry, retained: retained)
    }

    /// One thread for the HTTP endpoints (created once per process).
    static let httpEventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    static func run(configuration: CloudBrokerConfiguration) async throws {
        let logger = Logger(label: "tributary.cloud-broker")
        BrokerMetrics.registerAll()
        let node = try build(configuration: configuration, logger: logger)
        defer { node.producer.shutdown() }
        let notifier = SystemdNotifier()
        var services = node.services
        if notifier.isEnabled {
            services.append(SystemdReadiness(notifier: notifier, listener: node.listener))
            if let interval = SystemdNotifier.watchdogInterval() {
                services.append(SystemdWatchdogService(notifier: notifier, interval: interval, logger: logger) { true })
            }
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        logger.info("cloud-broker starting", metadata: ["node_id": "\(configuration.nodeId)", "kafka.bootstrap_servers": "\(configuration.kafkaBootstrapServers)"])
        try await group.run()
    }
}

/// Tells systemd (Type=notify) the node is up once the MQTT listener is bound (Kafka may still be
/// unreachable: that is `/ready`'s business), and that it is stopping on graceful shutdown.
struct SystemdReadiness: Service {
    let notifier: SystemdNotifier
    let listener: MQTTListener

    func run() async throws {
        let port = try await listener.port()
        notifier.ready(status: "serving MQTT on port \(port)")
        try? await gracefulShutdown()
        notifier.stopping()
    }
}
