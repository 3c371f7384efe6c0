import ArgumentParser
import Common
import Foundation

extension DeviceSimulatorCommand {
    struct VerifyKafka: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify-kafka",
            abstract: "Read a Kafka topic back and account for every (client, seq): lost, duplicated, out of order.",
            discussion: "Exit status: 0 when nothing is lost or duplicated, 1 when something is, 2 on bad input.")

        @Option(help: ArgumentHelp("Kafka bootstrap servers.", valueName: "HOST:PORT[,...]"))
        var bootstrap: String

        @Option(help: "Topic to read (all partitions, from the beginning).")
        var topic: String

        @Option(help: ArgumentHelp("Distinct messages there should be; without it only gaps count as lost.", valueName: "N"))
        var expect: Int?

        @Option(name: .customLong("client-header"), help: ArgumentHelp("Identify records by this header (e.g. the agent id) instead of the payload.", valueName: "NAME"))
        var clientHeader: String?

        @Option(name: .customLong("seq-header"), help: ArgumentHelp("Header with the sequence number (decimal or 8 bytes big-endian), with --client-header.", valueName: "NAME"))
        var sequenceHeader: String?

        @Option(help: ArgumentHelp("Give up reading after this many seconds (default 60).", valueName: "S"))
        var timeout: Double = 60

        @Option(name: .customLong("idle-timeout"), help: ArgumentHelp("At the end of the topic but short of --expect: stop after this many seconds without a new record (default 10).", valueName: "S"))
        var idleTimeout: Double = 10

        @Option(name: .customLong("mqtt-topic-prefix"), help: ArgumentHelp(
            "Account only for records whose MQTT topic (header mqtt.topic, else the key) starts with this; skip the rest.",
            valueName: "PREFIX"))
        var mqttTopicPrefix: String?

        @Flag(name: .customLong("allow-duplicates"), help: "Only loss fails the check (at-least-once).")
        var allowDuplicates = false

        @Flag(help: "Also print the summary as JSON.")
        var json = false

        func validate() throws {
            if let expect, expect < 0 { throw ValidationError("--expect must not be negative") }
            guard (clientHeader == nil) == (sequenceHeader == nil) else {
                throw ValidationError("--client-header and --seq-header go together")
            }
            guard timeout > 0 else { throw ValidationError("--timeout must be positive") }
            guard idleTimeout > 0 else { throw ValidationError("--idle-timeout must be positive") }
        }

        func run() async throws {
            let identity: KafkaVerifier.Identity =
                if let clientHeader, let sequenceHeader { .headers(client: clientHeader, sequence: sequenceHeader) } else { .payload }
            let verifier = KafkaVerifier(
                bootstrapServers: bootstrap, topic: topic, identity: identity, expected: expect, mqttTopicPrefix: mqttTopicPrefix,
                timeout: Run.seconds(timeout), idleTimeout: Run.seconds(idleTimeout), progressInterval: .seconds(5))
            let summary = try await verifier.run { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
            print(summary.line())
            if json { print(summary.json()) }
            let failed = summary.sequence.lost > 0 || (!allowDuplicates && summary.sequence.duplicates > 0)
            if failed {
                FileHandle.standardError.write(Data("device-sim: verify-kafka: \(summary.sequence.lost) lost, \(summary.sequence.duplicates) duplicated\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
