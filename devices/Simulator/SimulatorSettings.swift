import Common
import Foundation
import NIOCore

/// Everything a run needs, resolved from flags, a `--profile` file and defaults (in that order of precedence).
struct SimulatorSettings: Sendable {
    struct Broker: Sendable, Hashable {
        var host: String
        var port: Int
        var tls: Bool

        /// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (default ports 1883 / 8883); a bare `HOST:PORT` is mqtt.
        init(parsing text: String) throws(ConfigError) {
            var rest = Substring(text)
            var tls = false
            if rest.hasPrefix("mqtts://") {
                tls = true
                rest = rest.dropFirst("mqtts://".count)
            } else if rest.hasPrefix("mqtt://") {
                rest = rest.dropFirst("mqtt://".count)
            } else if rest.contains("://") {
                throw ConfigError(key: "broker", "expected mqtt://HOST:PORT or mqtts://HOST:PORT, got '\(text)'")
            }
            if rest.hasSuffix("/") { rest = rest.dropLast() }
            let hasPort = rest.hasPrefix("[") ? rest.contains("]:") : rest.contains(":")
            let hostPort: HostPort
            do {
                hostPort = try HostPort(parsing: hasPort ? String(rest) : "\(rest):\(tls ? 8883 : 1883)")
            } catch {
                throw ConfigError(key: "broker", error.message)
            }
            self.init(host: hostPort.host, port: hostPort.port, tls: tls)
        }

        init(host: String, port: Int, tls: Bool) {
            self.host = host
            self.port = port
            self.tls = tls
        }
    }

    /// Inclusive payload size range in bytes (`--size 1024` or `--size 512-2048`).
    struct SizeRange: Sendable, Hashable {
        var minimum: Int
        var maximum: Int

        init(parsing text: String) throws(ConfigError) {
            let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard (1...2).contains(parts.count), let low = Self.bytes(parts[0]), let high = Self.bytes(parts.last!), low <= high else {
                throw ConfigError(key: "size", "expected BYTES or MIN-MAX (e.g. 1KiB or 512-2048), got '\(text)'")
            }
            minimum = low
            maximum = high
        }

        init(minimum: Int, maximum: Int) {
            self.minimum = minimum
            self.maximum = maximum
        }

        private static func bytes(_ text: String) -> Int? {
            var values = ConfigValues(keys: [ConfigKey("size", help: "")])
            guard (try? values.set("size", text, origin: "")) != nil else { return nil }
            return try? values.bytes("size")
        }
    }

    /// Send at `rate` during the first `on` of every `period`, stay silent for the rest.
    struct Burst: Sendable, Hashable {
        var on: Duration
        var period: Duration
    }

    /// Brokers (or HAProxy frontends) to connect to; device N uses `brokers[N % brokers.count]`.
    var brokers = [Broker(host: "127.0.0.1", port: 1883, tls: false)]
    var broker: Broker { brokers[0] }
    var protocolVersion: MQTTProtocolVersion = .v311
    var clients = 10
    /// Messages per second per client; 0 means as fast as the in-flight window allows.
    var rate = 1.0
    /// Each interval is scaled by a uniform factor in 1 ± jitter.
    var jitter = 0.0
    var burst: Burst?
    var size = SizeRange(minimum: 256, maximum: 256)
    /// What fills each payload after its header (`--payload-fill`).
    var payloadFill = PayloadFill.dots
    var qos: MQTTQoS = .atLeastOnce
    var cleanSession = true
    /// MQTT 5 session expiry interval sent when `cleanSession` is false (3.1.1 keeps sessions anyway).
    var sessionExpiry: UInt32 = 3600
    var keepAlive: UInt16 = 60
    var topicTemplate = "sensors/{client}/temp"
    var clientIdPrefix = "sim"
    var count: Int?
    var duration: Duration?
    var rampUp: Duration = .zero
    /// Most unacknowledged QoS 1/2 messages per client (lowered to the broker's Receive Maximum in MQTT 5).
    var inflight = 20
    var username: String?
    var password: String?
    var tlsCAFile: String?
    var tlsCertificateFile: String?
    var tlsKeyFile: String?
    var tlsServerName: String?
    var tlsInsecure = false
    /// One subscriber connection per filter; its accounting expects every published message.
    var subscribeFilters: [String] = []
    var reconnectMinimum: Duration = .milliseconds(100)
    var reconnectMaximum: Duration = .seconds(10)
    /// After publishing stops, how long to wait for outstanding acks and for subscribers to catch up.
    var drainTimeout: Duration = .seconds(15)
    var progressInterval: Duration = .seconds(5)
    /// Hard limit of the publishing phase (a broker that refuses or never answers must not hang a script).
    var timeout: Duration?
    var threads = System.coreCount
    var processes = 1
    var json = false
    /// Commands: every `commandEvery`-th device (index divisible by it) subscribes to this topic template
    /// (`{client}`, `{index}`) and a commander publishes `commandRate` sequenced commands per second to them.
    var commandTopicTemplate: String?
    var commandEvery = 2
    var commandRate = 10.0
    /// With worker processes, the commander starts this long after the ramp-up (the targets should have
    /// subscribed by then; in one process it waits for their SUBACKs instead).
    var commandDelay: Duration = .seconds(1)
    /// File holding the failover instant (Unix seconds, e.g. `date +%s.%N` just before a node is killed),
    /// read when the summary is made: which devices lost their connection after it, and how long until each
    /// was back (CONNACK), with or without its session.
    var failoverMarkFile: String?
    /// Index range of the clients this process runs (all of them unless it is a worker).
    var firstClient = 0
    var clientLimit: Int?

    var publisherRange: Range<Int> { firstClient..<(firstClient + (clientLimit ?? clients)) }

    func clientId(_ index: Int) -> String { "\(clientIdPrefix)-\(index)" }

    func subscriberId(_ index: Int) -> String { "\(clientIdPrefix)-sub-\(index)" }

    /// The topic template with `{client}` (the client id) and `{index}` (the client number) filled in.
    func topic(forClient index: Int) -> String {
        topicTemplate.replacingOccurrences(of: "{client}", with: clientId(index))
            .replacingOccurrences(of: "{index}", with: String(index))
    }

    func brokerFor(index: Int) -> Broker { brokers[index % brokers.count] }

    var commandsEnabled: Bool { commandTopicTemplate != nil }

    func isCommandTarget(_ index: Int) -> Bool { commandTopicTemplate != nil && index % commandEvery == 0 }

    /// The devices that receive commands (over the whole run, not only this process's slice).
    var commandTargets: [Int] { commandsEnabled ? Array(stride(from: 0, to: clients, by: commandEvery)) : [] }

    func commandTopic(forClient index: Int) -> String {
        (commandTopicTemplate ?? "").replacingOccurrences(of: "{client}", with: clientId(index))
            .replacingOccurrences(of: "{index}", with: String(index))
    }

    func commanderId() -> String { "\(clientIdPrefix)-commander" }

    func validate() throws(ConfigError) {
        guard !brokers.isEmpty else { throw ConfigError(key: "broker", "give at least one") }
        guard Set(brokers.map(\.tls)).count == 1 else { throw ConfigError(key: "broker", "mix of mqtt:// and mqtts:// URLs") }
        if commandTopicTemplate != nil {
            guard duration != nil else { throw ConfigError(key: "command-topic", "commands need --duration (the commander stops with it)") }
            guard commandEvery >= 1 else { throw ConfigError(key: "command-every", "must be at least 1") }
            guard commandRate > 0, commandRate.isFinite else { throw ConfigError(key: "command-rate", "must be positive") }
            let sample = commandTopic(forClient: 0)
            guard (try? MQTTTopicName(sample)) != nil, !sample.isEmpty,
                let template = commandTopicTemplate, template.contains("{client}") || template.contains("{index}")
            else {
                throw ConfigError(key: "command-topic", "'\(commandTopicTemplate ?? "")' must give a valid topic name per device ({client} or {index})")
            }
        }
        guard clients > 0 else { throw ConfigError(key: "clients", "must be at least 1") }
        guard rate >= 0, rate.isFinite else { throw ConfigError(key: "rate", "must be 0 (unthrottled) or positive") }
        guard (0...1).contains(jitter) else { throw ConfigError(key: "jitter", "must be between 0 and 1") }
        guard count != nil || duration != nil else { throw ConfigError("give --count N or --duration S") }
        if let count, count <= 0 { throw ConfigError(key: "count", "must be at least 1") }
        if let duration, duration <= .zero { throw ConfigError(key: "duration", "must be positive") }
        guard inflight >= 1, inflight <= 65_535 else { throw ConfigError(key: "inflight", "must be 1...65535") }
        guard processes >= 1 else { throw ConfigError(key: "processes", "must be at least 1") }
        guard threads >= 1 else { throw ConfigError(key: "threads", "must be at least 1") }
        if let burst, burst.on <= .zero || burst.period < burst.on {
            throw ConfigError(key: "burst", "needs 0 < on <= period")
        }
        let sample = topic(forClient: 0)
        guard (try? MQTTTopicName(sample)) != nil, !sample.isEmpty else {
            throw ConfigError(key: "topic", "'\(topicTemplate)' does not give a valid topic name (no + or #)")
        }
        for filter in subscribeFilters {
            do { _ = try MQTTTopicFilter(filter) } catch {
                throw ConfigError(key: "subscribe", "'\(filter)' is not a valid topic filter")
            }
        }
        if rate == 0 && duration == nil && count == nil {
            throw ConfigError(key: "rate", "an unthrottled run needs --count or --duration")
        }
    }
}
