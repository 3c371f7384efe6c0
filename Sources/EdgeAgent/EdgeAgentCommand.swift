import ArgumentParser
import Common

/// `edge-agent`: the gateway service. Devices publish to it; it buffers on disk, then forwards with QoS 2.
@main
struct EdgeAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edge-agent",
        abstract: "Gateway agent: MQTT listener for devices, crash-safe disk buffer, exactly-once QoS 2 uplink.",
        discussion: """
            Every flag is also a configuration key: set it in the YAML file given with --config, with the \
            environment variable TRIBUTARY_<KEY> (dots become underscores), or with --set KEY=VALUE. \
            Precedence: flags, then environment, then file, then defaults. Keys:
            \(EdgeAgentConfiguration.keys.map { "  \($0.name)\($0.defaultValue.map { " (default \($0))" } ?? ""): \($0.help)" }.joined(separator: "\n"))
            """,
        version: Tributary.version
    )

    @Option(name: .customLong("agent-id"), help: ArgumentHelp("This gateway's id; sent upstream with every record (agent_id).", valueName: "ID"))
    var agentId: String?

    @Option(name: .customLong("device-listen"), help: ArgumentHelp("MQTT listener for devices (device.listen).", valueName: "HOST:PORT"))
    var deviceListen: String?

    @Option(name: .customLong("upstream"), help: ArgumentHelp("Cloud broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (upstream.url).", valueName: "URL"))
    var upstream: String?

    @Option(name: .customLong("data-dir"), help: ArgumentHelp("Directory of the disk buffer and persisted state (buffer.directory).", valueName: "DIR"))
    var dataDir: String?

    @OptionGroup var common: CommonOptions

    static func main() async { await CommandLineEntry.main(EdgeAgentCommand.self) }

    func run() async throws {
        var overrides = try common.overrides()
        if let agentId { overrides["agent_id"] = agentId }
        if let deviceListen { overrides["device.listen"] = deviceListen }
        if let upstream { overrides["upstream.url"] = upstream }
        if let dataDir { overrides["buffer.directory"] = dataDir }
        let values = try ConfigValues.load(keys: EdgeAgentConfiguration.keys, file: common.configFile, overrides: overrides)
        let configuration = try EdgeAgentConfiguration(values)
        if common.checkConfig {
            print(values.rendered())
            return
        }
        Observability.bootstrap(logLevel: try values.logLevel())
        try await EdgeAgent.run(configuration: configuration)
    }
}
