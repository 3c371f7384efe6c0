import ArgumentParser
import Common
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `cloud-broker`: a clustered MQTT 3.1.1 / 5.0 broker whose acknowledgements wait for Kafka.
@main
struct CloudBrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cloud-broker",
        abstract: "MQTT 3.1.1 / 5.0 broker node that stores messages and sessions in Kafka.",
        discussion: ConfigKey.helpText(for: CloudBrokerConfiguration.keys),
        version: Tributary.version,
        subcommands: [Serve.self, Passwd.self],
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
            let values = try common.loadValues(keys: CloudBrokerConfiguration.keys, flags: [
                "node_id": nodeId, "mqtt.listen": mqttListen, "kafka.bootstrap_servers": kafkaBootstrap,
            ])
            let configuration = try CloudBrokerConfiguration(values)
            guard try common.startObservability(values) else { return }
            try await CloudBroker.run(configuration: configuration)
        }
    }
}

extension CloudBrokerCommand {
    /// `cloud-broker passwd FILE USER`: adds or replaces USER in the password file (auth.password_file).
    struct Passwd: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "passwd",
            abstract: "Add or replace a user in a password file (PBKDF2-HMAC-SHA256, random salt).",
            discussion: "The password is read from the first line of standard input unless --password is given.")

        @Argument(help: "The password file (created if missing).")
        var file: String

        @Argument(help: "The user name.")
        var user: String

        @Option(name: .customLong("password"), help: "The password (visible in the process list; prefer standard input).")
        var password: String?

        @Option(name: .customLong("iterations"), help: "PBKDF2 iterations.")
        var iterations: Int = PasswordFile.defaultIterations

        func run() throws {
            guard !user.isEmpty, !user.contains(":"), !user.contains("\n") else {
                throw ValidationError("the user name must be non-empty and contain no ':' or newline")
            }
            guard iterations >= 1_000 else { throw ValidationError("--iterations must be at least 1000") }
            guard let secret = password ?? readLine(strippingNewline: true), !secret.isEmpty else {
                throw ValidationError("no password given (standard input was empty)")
            }
            let existing = (try? String(contentsOfFile: file, encoding: .utf8)) ?? ""
            var lines = existing.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            if lines.last == "" { lines.removeLast() }
            lines.removeAll { $0.hasPrefix(user + ":") }
            lines.append(PasswordFile.line(user: user, password: Array(secret.utf8), iterations: iterations))
            let text = lines.joined(separator: "\n") + "\n"
            let temporary = file + ".tmp"
            guard FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw ValidationError("cannot write \(temporary)")
            }
            guard rename(temporary, file) == 0 else { throw ValidationError("cannot replace \(file): errno \(errno)") }
        }
    }
}
