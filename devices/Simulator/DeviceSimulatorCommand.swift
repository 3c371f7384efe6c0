import ArgumentParser
import Common

/// `device-sim`: a fleet of simulated MQTT devices that measures what the broker or agent does with them.
@main
struct DeviceSimulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device-sim",
        abstract: "Simulate a fleet of MQTT devices and measure acks, latency, loss and duplicates.",
        version: Tributary.version,
        subcommands: [Run.self],
        defaultSubcommand: Run.self
    )

    static func main() async { await CommandLineEntry.main(DeviceSimulatorCommand.self) }
}

extension DeviceSimulatorCommand {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Publish from N simulated devices (the default).")

        @Option(help: ArgumentHelp("Broker or agent to connect to, mqtt://HOST:PORT.", valueName: "URL"))
        var broker: String = "mqtt://127.0.0.1:1883"

        @Option(help: "Number of simulated devices.")
        var clients: Int = 10

        @Option(help: ArgumentHelp("Messages per second per device.", valueName: "MSGS_PER_S_PER_CLIENT"))
        var rate: Double = 1

        @Option(help: ArgumentHelp("Payload size in bytes.", valueName: "BYTES"))
        var size: Int = 256

        @Option(help: "QoS of every publish: 0, 1 or 2.")
        var qos: Int = 1

        @Option(name: .customLong("clean-session"), help: ArgumentHelp("Clean session / clean start.", valueName: "true|false"))
        var cleanSession: Bool = true

        @Option(help: "Messages per device, then stop.")
        var count: Int?

        @Option(help: ArgumentHelp("Run for this many seconds, then stop.", valueName: "S"))
        var duration: Double?

        func validate() throws {
            guard clients > 0 else { throw ValidationError("--clients must be at least 1") }
            guard rate > 0 else { throw ValidationError("--rate must be positive") }
            guard size >= 0 else { throw ValidationError("--size must not be negative") }
            guard (0...2).contains(qos) else { throw ValidationError("--qos must be 0, 1 or 2") }
            guard count != nil || duration != nil else { throw ValidationError("give --count N or --duration S") }
            if let count, count <= 0 { throw ValidationError("--count must be at least 1") }
            if let duration, duration <= 0 { throw ValidationError("--duration must be positive") }
        }

        func run() async throws {
            throw ValidationError("the simulator's publishing engine is not built yet (issue 8)")
        }
    }
}
