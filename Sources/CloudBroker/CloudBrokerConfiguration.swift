import Common

/// Everything a broker node is told at start-up. Each key is documented in `keys`; see docs/ for examples.
struct CloudBrokerConfiguration: Sendable {
    static let keys: [ConfigKey] = ConfigKey.common + [
        ConfigKey("node_id", help: "Unique id of this node in the cluster; appears in session ownership records."),
        ConfigKey("mqtt.listen", default: "0.0.0.0:1883", help: "MQTT over TCP listener."),
        ConfigKey("kafka.bootstrap_servers", help: "Comma-separated Kafka bootstrap servers, HOST:PORT."),
        ConfigKey("kafka.messages_topic", default: "mqtt.messages", help: "Kafka topic receiving published messages."),
        ConfigKey("kafka.messages_partitions", default: "6", help: "Partitions of the messages topic when the broker creates it."),
    ]

    var nodeId: String
    var mqttListen: HostPort
    var httpListen: HostPort
    var kafkaBootstrapServers: String
    var messagesTopic: String
    var messagesPartitions: Int

    init(_ values: ConfigValues) throws(ConfigError) {
        nodeId = try values.string("node_id")
        mqttListen = try values.hostPort("mqtt.listen")
        httpListen = try values.hostPort("http.listen")
        kafkaBootstrapServers = try values.string("kafka.bootstrap_servers")
        for server in kafkaBootstrapServers.split(separator: ",") {
            do {
                _ = try HostPort(parsing: String(server))
            } catch {
                throw ConfigError(key: "kafka.bootstrap_servers", origin: values.raw("kafka.bootstrap_servers")?.origin, error.message)
            }
        }
        messagesTopic = try values.string("kafka.messages_topic")
        messagesPartitions = try values.int("kafka.messages_partitions", range: 1...10_000)
    }
}
