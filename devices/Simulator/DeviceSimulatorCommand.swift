import ArgumentParser
import Common
import Foundation

/// `device-sim`: a fleet of simulated MQTT devices that measures what the broker or agent does with them.
@main
struct DeviceSimulatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "device-sim",
        abstract: "Simulate a fleet of MQTT devices and measure acks, latency, loss and duplicates.",
        version: Tributary.version,
        subcommands: [Run.self, VerifyKafka.self],
        defaultSubcommand: Run.self
    )

    static func main() async { await CommandLineEntry.main(DeviceSimulatorCommand.self) }
}

extension DeviceSimulatorCommand {
    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "run", abstract: "Publish from N simulated devices (the default).")

        @Option(help: ArgumentHelp(
            "Broker or agent to connect to, mqtt://HOST:PORT or mqtts://HOST:PORT (default mqtt://127.0.0.1:1883); repeatable: device N uses the (N mod count)-th.",
            valueName: "URL"))
        var broker: [String] = []

        @Option(help: "Number of simulated devices.")
        var clients: Int = 10

        @Option(help: ArgumentHelp("Messages per second per device; 0 = as fast as the in-flight window allows (default 1).", valueName: "MSGS_PER_S_PER_CLIENT"))
        var rate: Double?

        @Option(help: ArgumentHelp("Payload size in bytes, or a range MIN-MAX (default 256).", valueName: "BYTES"))
        var size: String?

        @Option(name: .customLong("payload-fill"), help: ArgumentHelp("What fills a payload after its header: dots (compresses to almost nothing), json (JSON-like readings, compressible like real telemetry) or random (incompressible); default dots.", valueName: "dots|json|random"))
        var payloadFill: String?

        @Option(help: "QoS of every publish: 0, 1 or 2 (default 1).")
        var qos: Int?

        @Option(name: .customLong("clean-session"), help: ArgumentHelp("Clean session / clean start (default true).", valueName: "true|false"))
        var cleanSession: Bool?

        @Option(help: "Messages per device, then stop.")
        var count: Int?

        @Option(help: ArgumentHelp("Publish for this many seconds (after the ramp-up), then stop.", valueName: "S"))
        var duration: Double?

        @Option(name: .customLong("protocol"), help: ArgumentHelp("MQTT version (default 3.1.1).", valueName: "3.1.1|5"))
        var protocolVersion: String?

        @Option(help: ArgumentHelp("Topic template; {client} is the client id, {index} its number (default sensors/{client}/temp).", valueName: "TEMPLATE"))
        var topic: String?

        @Option(name: .customLong("ramp-up"), help: ArgumentHelp("Connect the devices evenly over this many seconds.", valueName: "S"))
        var rampUp: Double?

        @Option(help: ArgumentHelp("Scale each interval by a random factor in 1 ± J (default 0).", valueName: "J"))
        var jitter: Double?

        @Option(help: ArgumentHelp("Device profile (YAML, see devices/profiles); flags override it.", valueName: "FILE"))
        var profile: String?

        @Option(help: ArgumentHelp("Most unacknowledged QoS 1/2 messages per device (default 20).", valueName: "N"))
        var inflight: Int?

        @Option(name: .customLong("keep-alive"), help: ArgumentHelp("Keep-alive in seconds (default 60).", valueName: "S"))
        var keepAlive: Int?

        @Option(name: .customLong("client-id-prefix"), help: ArgumentHelp("Client ids are PREFIX-N (default sim).", valueName: "PREFIX"))
        var clientIdPrefix: String = "sim"

        @Option(help: ArgumentHelp("Also run a subscriber on this filter and account for every message (repeatable).", valueName: "FILTER"))
        var subscribe: [String] = []

        @Option(help: ArgumentHelp("Run as K processes (default: as many as the open-file limit needs).", valueName: "K"))
        var processes: Int?

        @Option(help: ArgumentHelp("Event loop threads (default: one per core).", valueName: "N"))
        var threads: Int?

        @Option(help: "User name for CONNECT.")
        var username: String?

        @Option(help: "Password for CONNECT.")
        var password: String?

        @Option(name: .customLong("tls-ca"), help: ArgumentHelp("CA certificates (PEM) to verify the broker with (mqtts://).", valueName: "FILE"))
        var tlsCA: String?

        @Option(name: .customLong("tls-cert"), help: ArgumentHelp("Client certificate (PEM) for mutual TLS.", valueName: "FILE"))
        var tlsCertificate: String?

        @Option(name: .customLong("tls-key"), help: ArgumentHelp("Client private key (PEM) for mutual TLS.", valueName: "FILE"))
        var tlsKey: String?

        @Option(name: .customLong("tls-server-name"), help: ArgumentHelp("Name to verify in the broker's certificate.", valueName: "NAME"))
        var tlsServerName: String?

        @Flag(name: .customLong("tls-insecure"), help: "Do not verify the broker's certificate.")
        var tlsInsecure = false

        @Option(name: .customLong("reconnect-min"), help: ArgumentHelp("First reconnect backoff in seconds (default 0.1).", valueName: "S"))
        var reconnectMinimum: Double?

        @Option(name: .customLong("reconnect-max"), help: ArgumentHelp("Longest reconnect backoff in seconds (default 10).", valueName: "S"))
        var reconnectMaximum: Double?

        @Option(name: .customLong("drain-timeout"), help: ArgumentHelp("After publishing, wait at most this long for acks and subscribers (default 15).", valueName: "S"))
        var drainTimeout: Double?

        @Option(name: .customLong("progress-interval"), help: ArgumentHelp("Seconds between progress lines (default 5).", valueName: "S"))
        var progressInterval: Double?

        @Option(help: ArgumentHelp("Stop publishing after this many seconds whatever the state (default: none).", valueName: "S"))
        var timeout: Double?

        @Flag(help: "Also print the summary as JSON (last line of standard output).")
        var json = false

        @Flag(help: "Exit 1 if a message was lost (or duplicated at QoS 2) or a device did not finish its count.")
        var check = false

        @Option(name: .customLong("command-topic"), help: ArgumentHelp(
            "Commands: every --command-every-th device subscribes to this topic ({client}, {index}) and a commander publishes sequenced commands to them.",
            valueName: "TEMPLATE"))
        var commandTopic: String?

        @Option(name: .customLong("command-every"), help: ArgumentHelp("Devices whose number is divisible by K receive commands (default 2: half).", valueName: "K"))
        var commandEvery: Int?

        @Option(name: .customLong("command-rate"), help: ArgumentHelp("Commands per second in all, round-robin over the targets (default 10).", valueName: "R"))
        var commandRate: Double?

        @Option(name: .customLong("failover-mark"), help: ArgumentHelp(
            "File with the failover instant (Unix seconds, date +%s.%N), read at the end: devices disconnected after it, time until each was back, with or without its session.",
            valueName: "FILE"))
        var failoverMark: String?

        @Option(name: .customLong("worker-index"), help: .hidden)
        var workerIndex: Int?

        @Option(name: .customLong("worker-count"), help: .hidden)
        var workerCount: Int?

        func validate() throws {
            guard clients > 0 else { throw ValidationError("--clients must be at least 1") }
            if let rate { guard rate >= 0 else { throw ValidationError("--rate must be 0 (unthrottled) or positive") } }
            if let qos { guard (0...2).contains(qos) else { throw ValidationError("--qos must be 0, 1 or 2") } }
            guard count != nil || duration != nil else { throw ValidationError("give --count N or --duration S") }
            if let count, count <= 0 { throw ValidationError("--count must be at least 1") }
            if let duration, duration <= 0 { throw ValidationError("--duration must be positive") }
            if let processes, processes < 1 { throw ValidationError("--processes must be at least 1") }
        }

        func settings() throws(ConfigError) -> SimulatorSettings {
            var settings = SimulatorSettings()
            if let profile { try DeviceProfile.apply(file: profile, to: &settings) }
            var brokers: [SimulatorSettings.Broker] = []
            for url in broker.isEmpty ? ["mqtt://127.0.0.1:1883"] : broker { brokers.append(try SimulatorSettings.Broker(parsing: url)) }
            settings.brokers = brokers
            settings.commandTopicTemplate = commandTopic
            if let commandEvery { settings.commandEvery = commandEvery }
            if let commandRate { settings.commandRate = commandRate }
            settings.failoverMarkFile = failoverMark
            settings.clients = clients
            if let rate { settings.rate = rate }
            if let size { settings.size = try SimulatorSettings.SizeRange(parsing: size) }
            if let payloadFill {
                guard let fill = PayloadFill(rawValue: payloadFill) else {
                    throw ConfigError(key: "payload-fill", "expected dots, json or random, got '\(payloadFill)'")
                }
                settings.payloadFill = fill
            }
            if let qos { settings.qos = try DeviceProfile.qos(qos) }
            if let cleanSession { settings.cleanSession = cleanSession }
            settings.count = count
            settings.duration = duration.map(Self.seconds)
            if let protocolVersion { settings.protocolVersion = try DeviceProfile.protocolVersion(protocolVersion) }
            if let topic { settings.topicTemplate = topic }
            if let rampUp { settings.rampUp = Self.seconds(rampUp) }
            if let jitter { settings.jitter = jitter }
            if let inflight { settings.inflight = inflight }
            if let keepAlive {
                guard (0...65_535).contains(keepAlive) else { throw ConfigError(key: "keep-alive", "must be 0...65535") }
                settings.keepAlive = UInt16(keepAlive)
            }
            settings.clientIdPrefix = clientIdPrefix
            settings.subscribeFilters = subscribe
            if let threads { settings.threads = threads }
            settings.username = username
            settings.password = password
            settings.tlsCAFile = tlsCA
            settings.tlsCertificateFile = tlsCertificate
            settings.tlsKeyFile = tlsKey
            settings.tlsServerName = tlsServerName
            settings.tlsInsecure = tlsInsecure
            if let reconnectMinimum { settings.reconnectMinimum = Self.seconds(reconnectMinimum) }
            if let reconnectMaximum { settings.reconnectMaximum = Self.seconds(reconnectMaximum) }
            if let drainTimeout { settings.drainTimeout = Self.seconds(drainTimeout) }
            if let progressInterval { settings.progressInterval = Self.seconds(max(0.1, progressInterval)) }
            settings.json = json
            if let timeout {
                guard timeout > 0 else { throw ConfigError(key: "timeout", "must be positive") }
                settings.timeout = Self.seconds(timeout)
            }
            if let workerIndex, let workerCount, workerCount > 0, (0..<workerCount).contains(workerIndex) {
                let first = clients * workerIndex / workerCount
                let next = clients * (workerIndex + 1) / workerCount
                settings.firstClient = first
                settings.clientLimit = next - first
                settings.subscribeFilters = []
            }
            try settings.validate()
            return settings
        }

        static func seconds(_ value: Double) -> Duration { .nanoseconds(Int64(value * 1e9)) }

        func run() async throws {
            var settings = try settings()
            let fileLimit = WorkerProcesses.raiseOpenFileLimit()
            let isWorker = workerIndex != nil
            if isWorker { WorkerProcesses.exitWithParent() }
            let processCount = isWorker
                ? 1
                : processes ?? WorkerProcesses.processesNeeded(
                    clients: settings.clients, extraConnections: settings.subscribeFilters.count, fileLimit: fileLimit)
            settings.processes = processCount
            let summary = try await SimulatorRun(settings: settings, isWorker: isWorker, workerIndex: workerIndex ?? 0)
                .run(workerArguments: processCount > 1 ? Array(CommandLine.arguments.dropFirst()) : nil)
            if isWorker {
                print(WorkerProcesses.summaryPrefix + summary.workerJSON())
                return
            }
            print(summary.line())
            if json { print(summary.json()) }
            if check, let failure = SimulatorRun.checkFailure(summary, settings: settings) {
                FileHandle.standardError.write(Data("device-sim: check failed: \(failure)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
