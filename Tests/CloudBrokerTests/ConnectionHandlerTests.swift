import Foundation
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import Testing
import TributaryKafka

@testable import CloudBroker
@testable import Common

/// The channel handler on an EmbeddedChannel with virtual time and a fake Kafka producer.
@Suite("MQTTServerConnection on EmbeddedChannel")
struct ConnectionHandlerTests {
    /// A producer whose sends are held until the test completes them, or refused with `_QUEUE_FULL`.
    final class FakeProducer: KafkaPublishing {
        struct State {
            var full = false
            var pending: [(KafkaOutgoingMessage, @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void)] = []
        }
        let state = Mutex(State())

        func send(_ message: KafkaOutgoingMessage, completion: @escaping @Sendable (Result<KafkaDeliveryReport, KafkaError>) -> Void) throws(KafkaError) {
            let full = state.withLock { state -> Bool in
                if state.full { return true }
                state.pending.append((message, completion))
                return false
            }
            if full { throw KafkaError(code: KafkaError.Code.queueFull, name: "_QUEUE_FULL", message: "full") }
        }

        var sent: [KafkaOutgoingMessage] { state.withLock { $0.pending.map(\.0) } }

        func completeAll(_ result: Result<KafkaDeliveryReport, KafkaError> = .success(KafkaDeliveryReport(topic: "t", partition: 0, offset: 0))) {
            let pending = state.withLock { state in
                defer { state.pending.removeAll() }
                return state.pending
            }
            for (_, completion) in pending { completion(result) }
        }
    }

    /// Counts the reads that get past the connection handler towards the socket.
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    struct Fixture {
        let channel: EmbeddedChannel
        let loop: EmbeddedEventLoop
        let producer: FakeProducer
        let counter: ReadCounter

        init(limits: BrokerLimits = BrokerLimits()) throws {
            loop = EmbeddedEventLoop()
            producer = FakeProducer()
            counter = ReadCounter()
            let logger = Logger(label: "test")
            let retained = RetainedStore(defaultQoS: .atLeastOnce)
            let publisher = Publisher(
                producer: producer, mapping: TopicMapping(rules: [], defaultTopic: "mqtt.messages"), retainedTopic: "mqtt.retained",
                retained: retained, deliveryTimeout: .seconds(30), defaultQoS: .atLeastOnce, logger: logger)
            let registry = SessionRegistry(store: InMemorySessionStore(), limits: limits, logger: logger) { _, _, _, _ in }
            let broker = BrokerContext(registry: registry, publisher: publisher, retained: retained, limits: limits, logger: logger)
            channel = EmbeddedChannel(loop: loop)
            try channel.pipeline.syncOperations.addHandlers([
                counter,
                ByteToMessageHandler(MQTTPacketDecoder(maximumPacketSize: limits.maximumPacketSize)),
                MQTTServerConnection(broker: broker),
            ])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883)).wait()
        }

        func send(_ packet: MQTTPacket, version: MQTTProtocolVersion = .v5) throws {
            try channel.writeInbound(try packet.encoded(version: version))
            loop.run()
        }

        /// Decodes everything written so far.
        func received(version: MQTTProtocolVersion = .v5) throws -> [MQTTPacket] {
            var packets: [MQTTPacket] = []
            while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
                while let packet = try MQTTPacket.decode(from: &buffer, version: version, maximumPacketSize: .max) {
                    packets.append(packet)
                }
            }
            return packets
        }
    }

    static func publish(_ id: UInt16) -> MQTTPacket {
        .publish(MQTTPublish(topic: "a/b", payload: ByteBuffer(string: "p"), qos: .atLeastOnce, packetId: id))
    }

    @Test func pubackWaitsForTheDeliveryReport() throws {
        let fixture = try Fixture()
        try fixture.send(.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c")))
        #expect(try fixture.received().first.map { if case .connack = $0 { true } else { false } } == true)
        try fixture.send(Self.publish(1))
        #expect(fixture.producer.sent.map(\.topic) == ["mqtt.messages"])
        #expect(try fixture.received().isEmpty)
        fixture.producer.completeAll()
        fixture.loop.run()
        #expect(try fixture.received() == [.puback(MQTTPublishAck(packetId: 1))])
    }

    @Test func aFullProducerQueueStopsReadingUntilThereIsRoom() throws {
        let fixture = try Fixture()
        try fixture.send(.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c")))
        _ = try fixture.received()
        fixture.producer.state.withLock { $0.full = true }
        try fixture.send(Self.publish(1))
        let readsBefore = fixture.counter.reads
        fixture.channel.read()
        fixture.loop.advanceTime(by: .milliseconds(20))
        #expect(fixture.counter.reads == readsBefore, "no read while the publish waits for the producer")
        fixture.producer.state.withLock { $0.full = false }
        fixture.loop.advanceTime(by: .milliseconds(10))
        #expect(fixture.counter.reads == readsBefore + 1, "the held read goes through once the producer took it")
        #expect(fixture.producer.sent.count == 1)
        fixture.producer.completeAll()
        fixture.loop.run()
        #expect(try fixture.received() == [.puback(MQTTPublishAck(packetId: 1))])
    }

    @Test func keepAliveTimeoutDisconnectsWithReasonCode0x8D() throws {
        let fixture = try Fixture()
        try fixture.send(.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "c", keepAlive: 2)))
        _ = try fixture.received()
        fixture.loop.advanceTime(by: .seconds(2))
        #expect(fixture.channel.isActive)
        fixture.loop.advanceTime(by: .seconds(2))
        #expect(try fixture.received() == [.disconnect(MQTTDisconnect(reasonCode: .keepAliveTimeout))])
        fixture.loop.run()
        #expect(!fixture.channel.isActive)
    }

    @Test func aMessageTooLargeForTheClientIsNotSent() throws {
        let fixture = try Fixture()
        var properties = MQTTProperties()
        properties.maximumPacketSize = 64
        try fixture.send(.connect(MQTTConnect(protocolVersion: .v5, clientIdentifier: "small", properties: properties)))
        _ = try fixture.received()
        try fixture.send(.subscribe(MQTTSubscribe(packetId: 1, subscriptions: [MQTTSubscription(topicFilter: try MQTTTopicFilter("#"), qos: .atLeastOnce)])))
        _ = try fixture.received()
        // Routed through the registry like a consumed Kafka record.
        let big = BrokerMessage(topic: "x", payload: ByteBuffer(repeating: 1, count: 200), qos: .atLeastOnce, retain: false, properties: MQTTProperties())
        let small = BrokerMessage(topic: "y", payload: ByteBuffer(string: "ok"), qos: .atLeastOnce, retain: false, properties: MQTTProperties())
        let context = try Self.registry(of: fixture)
        context.route(big)
        context.route(small)
        fixture.loop.run()
        let topics = try fixture.received().compactMap { if case .publish(let p) = $0 { p.topic } else { nil } }
        #expect(topics == ["y"])
    }

    static func registry(of fixture: Fixture) throws -> SessionRegistry {
        let handler = try fixture.channel.pipeline.syncOperations.handler(type: MQTTServerConnection.self)
        return handler.brokerContext.registry
    }
}
