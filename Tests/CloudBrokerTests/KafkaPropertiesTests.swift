import Common
import Foundation
import Testing
import TestSupport

@testable import CloudBroker
@testable import TributaryKafka

/// `kafka.librdkafka`: extra librdkafka properties (security, sockets, ...) for every Kafka client of a node.
@Suite("cloud-broker: librdkafka properties")
struct KafkaPropertiesTests {
    @Test func entriesAreParsedAndTheGuaranteesPropertiesRefused() throws {
        let parsed = try CloudBrokerConfiguration.librdkafkaProperties(
            ["security.protocol=SASL_SSL", " sasl.password = a=b ", "socket.nagle.disable=true"], origin: "test")
        #expect(parsed == ["security.protocol": "SASL_SSL", "sasl.password": "a=b", "socket.nagle.disable": "true"])
        for bad in ["no-equals-sign", "=value", "acks=1", "enable.idempotence=false", "enable.auto.commit=true", "group.id=g"] {
            #expect(throws: ConfigError.self, "\(bad)") { try CloudBrokerConfiguration.librdkafkaProperties([bad], origin: "test") }
        }
    }

    /// `linger.ms` is a floating-point property: a sub-millisecond `kafka.linger` reaches librdkafka as such.
    @Test func lingerKeepsFractionsOfAMillisecond() throws {
        for (linger, expected) in [(Duration.microseconds(500), "0.5"), (.milliseconds(1), "1"), (.microseconds(1_250), "1.25"), (.microseconds(5), "0.005"), (.zero, "0")] {
            var configuration = KafkaConfiguration(bootstrapServers: "127.0.0.1:9092", clientId: "t")
            configuration.linger = linger
            let properties = Dictionary(configuration.librdkafkaProperties(for: .producer), uniquingKeysWith: { _, last in last })
            #expect(properties["linger.ms"] == expected, "\(linger)")
        }
    }

    /// A configuration with the required keys and `key` set to `value` (left at its default when nil).
    static func configuration(_ key: String, _ value: String?) throws(ConfigError) -> CloudBrokerConfiguration {
        var values = ConfigValues(keys: CloudBrokerConfiguration.keys)
        try values.set("node_id", "n", origin: "test")
        try values.set("kafka.bootstrap_servers", "127.0.0.1:9092", origin: "test")
        if let value { try values.set(key, value, origin: "test") }
        return try CloudBrokerConfiguration(values)
    }

    /// `kafka.max_in_flight` becomes the producer's `max.in.flight` (default 1) and nobody else's; the idempotent
    /// producer's limit (1 to 5) is checked when the configuration is read, not by librdkafka at start.
    @Test func maxInFlightReachesTheProducerOnly() throws {
        func parse(_ value: String?) throws(ConfigError) -> CloudBrokerConfiguration { try Self.configuration("kafka.max_in_flight", value) }
        #expect(try parse(nil).maxInFlight == 1)
        #expect(try parse("5").maxInFlight == 5)
        for bad in ["0", "6", "two"] {
            #expect(throws: ConfigError.self, "\(bad)") { try parse(bad) }
        }
        var configuration = KafkaConfiguration(bootstrapServers: "127.0.0.1:9092", clientId: "t")
        func property(_ role: KafkaConfiguration.Role) -> String? {
            Dictionary(configuration.librdkafkaProperties(for: role), uniquingKeysWith: { _, last in last })["max.in.flight"]
        }
        #expect(property(.producer) == nil, "unset: librdkafka's own")
        configuration.maxInFlight = try parse(nil).maxInFlight
        #expect(property(.producer) == "1")
        #expect(property(.consumer) == nil)
        #expect(property(.admin) == nil)
    }

    /// `kafka.compression` (default lz4) becomes the producer's `compression.type`; an unknown codec is refused
    /// when the configuration is read.
    @Test func compressionReachesTheProducerOnly() throws {
        func parse(_ value: String?) throws(ConfigError) -> CloudBrokerConfiguration { try Self.configuration("kafka.compression", value) }
        #expect(try parse(nil).compression == .lz4)
        #expect(try parse("none").compression == KafkaCompression.none)
        #expect(throws: ConfigError.self) { try parse("brotli") }
        var configuration = KafkaConfiguration(bootstrapServers: "127.0.0.1:9092", clientId: "t")
        #expect(Dictionary(configuration.librdkafkaProperties(for: .producer), uniquingKeysWith: { _, last in last })["compression.type"] == nil)
        configuration.compression = try parse(nil).compression.rawValue
        for (role, expected) in [(KafkaConfiguration.Role.producer, "lz4"), (.consumer, nil), (.admin, nil)] {
            #expect(Dictionary(configuration.librdkafkaProperties(for: role), uniquingKeysWith: { _, last in last })["compression.type"] == expected, "\(role)")
        }
    }

    /// Consumers back off 20 ms, not librdkafka's second, once their prefetch queue is over its limits (a
    /// read-back of a 100,000-message backlog drained at 17,000 messages/s with the second, 37,000 with 20 ms:
    /// BENCHMARKS.md); a librdkafka too old to know the property (Debian 12's 2.0.2) creates the client
    /// without it, while any other unknown property still refuses.
    @Test func fetchQueueBackoffReachesConsumersAndIsSkippedWhereUnknown() throws {
        let configuration = KafkaConfiguration(bootstrapServers: "127.0.0.1:9")
        for (role, expected) in [(KafkaConfiguration.Role.consumer, "20"), (.producer, nil), (.admin, nil)] {
            #expect(Dictionary(configuration.librdkafkaProperties(for: role), uniquingKeysWith: { _, last in last })["fetch.queue.backoff.ms"] == expected, "\(role)")
        }
        // The linked librdkafka (2.16 in the tests) knows it: the consumer is created with it.
        try KafkaConsumer(configuration: configuration) { _ in }.close()

        var unknown = configuration
        unknown.properties["tributary.not.a.librdkafka.property"] = "1"
        #expect(throws: KafkaError.self) { try KafkaConsumer(configuration: unknown) { _ in }.close() }
        unknown.propertiesNewerThanSomeLibrdkafka.insert("tributary.not.a.librdkafka.property")
        try KafkaConsumer(configuration: unknown) { _ in }.close()
    }

    /// Properties reach librdkafka: accepted ones leave the node serving; a name librdkafka does not know stops
    /// the node at start with librdkafka's message naming it (nothing is half started).
    @Test func propertiesReachLibrdkafka() async throws {
        let pub = try Tools.require("mosquitto_pub")
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["kafka.librdkafka": "socket.nagle.disable=true,client.rack=rack-1"])
            let (status, output) = try await scope.run("pub", pub, ["-h", "127.0.0.1", "-p", "\(broker.mqttPort)", "-t", "props/x", "-m", "m", "-q", "1"])
            #expect(status == .exited(0), "\(output)")

            let (badStatus, badOutput) = try await scope.run("bad-property", TestEnvironment.binary("cloud-broker"), [
                "--node-id", "bad", "--mqtt-listen", "127.0.0.1:\(try FreePort.next())", "--kafka-bootstrap", tansu.bootstrapServers,
                "--set", "http.listen=127.0.0.1:\(try FreePort.next())", "--set", "kafka.librdkafka=no.such.property=1",
            ], environment: TestEnvironment.kafkaClientEnvironment, timeout: .seconds(30))
            #expect(badStatus != .exited(0))
            #expect(badOutput.contains("no.such.property"), "\(badOutput)")
        }
    }
}
