import ArgumentParser
import Common

/// `cloud-broker`: a clustered MQTT 3.1.1 / 5.0 broker whose acknowledgements wait for Kafka.
@main
struct CloudBrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloud-broker",
        abstract: "MQTT 3.1.1 / 5.0 broker node that stores messages and sessions in Kafka.",
        discussion: """
            Every flag is also a configuration key: set it in the YAML file given with --config, with the \
            environment variable TRIBUTARY_<KEY> (dots become underscores), or with --set KEY=VALUE. \
            Precedence: flags, then environment, then file, then defaults. Keys:
            \(CloudBrokerConfiguration.keys.map { "  \($0.name)\($0.defaultValue.map { " (default \($0))" } ?? ""): \($0.help)" }.joined(separator: "\n"))
            """,
        version: Tributary.version,
        subcommands: [Serve.self],
        defaultSubcommand: Serve.self
    )

    static func main() async { await CommandLineEntry.main(CloudBrokerCommand.self) }
}

extension CloudBrokerCommand {
    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run a broker node (the default).")

        @Option(name: .customLong("node-id"), help: ArgumentHelp("This node's unique id in the cluster (node_id).", valueName: "ID"))
        var nodeId: String?

        @Option(name: .customLong("mqtt-listen"), help: ArgumentHelp("MQTT over TCP listener (mqtt.listen).", valueName: "HOST:PORT"))
        var mqttListen: String?

        @Option(name: .customLong("kafka-bootstrap"), help: ArgumentHelp("Kafka bootstrap servers (kafka.bootstrap_servers).", valueName: "HOST:PORT[,...]"))
        var kafkaBootstrap: String?

        @OptionGroup var common: CommonOptions

        func run() async throws {
            var overrides = try common.overrides()
            if let nodeId { overrides["node_id"] = nodeId }
            if let mqttListen { overrides["mqtt.listen"] = mqttListen }
            if let kafkaBootstrap { overrides["kafka.bootstrap_servers"] = kafkaBootstrap }
            let values = try ConfigValues.load(keys: CloudBrokerConfiguration.keys, file: common.configFile, overrides: overrides)
            let configuration = try CloudBrokerConfiguration(values)
            if common.checkConfig {
                print(values.rendered())
                return
            }
            Observability.bootstrap(logLevel: try values.logLevel())
            try await CloudBroker.run(configuration: configuration)
        }
    }
}
