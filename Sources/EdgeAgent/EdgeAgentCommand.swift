import ArgumentParser
import Common
import Logging

/// `edge-agent`: the gateway service. Devices publish to it; it buffers on disk, then forwards with QoS 2.
@main
struct EdgeAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edge-agent",
        abstract: "Gateway agent: MQTT listener for devices, crash-safe disk buffer, exactly-once QoS 2 uplink.",
        discussion: ConfigKey.helpText(for: EdgeAgentConfiguration.keys),
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
        let values = try common.loadValues(keys: EdgeAgentConfiguration.keys, flags: [
            "agent_id": agentId, "device.listen": deviceListen, "upstream.url": upstream, "buffer.directory": dataDir,
        ])
        let configuration = try EdgeAgentConfiguration(values)
        guard try common.startObservability(values) else { return }
        let notApplied = AgentRuntime.apply(configuration.runtime)
        if !notApplied.isEmpty {
            // runtime.tasks_on_event_loop needs the Swift runtime's global-executor hook, which a static build
            // (--static-swift-stdlib) keeps private: the tasks then run on Swift's own pool.
            Logger(label: "tributary.edge-agent").info("Runtime settings not applied", metadata: ["runtime.keys": "\(notApplied)"])
        }
        try await EdgeAgent.run(configuration: configuration)
    }
}
