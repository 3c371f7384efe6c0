import Common
import DiskBuffer

/// Everything the agent is told at start-up. Each key is documented in `keys` (and in
/// config/edge-agent.yaml); every key can also be set as TRIBUTARY_<KEY> or with --set KEY=VALUE.
struct EdgeAgentConfiguration: Sendable {
    static let keys: [ConfigKey] = ConfigKey.common.filter { $0.name != "http.listen" } + [
        ConfigKey(
            "http.listen", default: "127.0.0.1:9101",
            help: "Address of the /metrics, /health and /ready endpoints. Port 9101, not 9100: node_exporter, often on the same gateway, has 9100. Loopback by default; 0.0.0.0:9101 (firewalled) for a remote Prometheus."),
        ConfigKey("agent_id", help: "Id of this gateway, sent upstream as the user property tributary-agent."),
        ConfigKey("device.listen", default: "0.0.0.0:1883", help: "MQTT listener for devices (TCP), or off (then local_broker.url must be set)."),
        ConfigKey("device.tls_listen", default: "", help: "MQTT over TLS listener for devices (e.g. 0.0.0.0:8883), beside or instead of device.listen; empty: none."),
        ConfigKey("device.tls.cert_file", help: "PEM certificate chain of the device TLS listener (required with device.tls_listen)."),
        ConfigKey("device.tls.key_file", help: "PEM private key of the device TLS listener (required with device.tls_listen)."),
        ConfigKey("device.tls.client_ca_file", help: "PEM CA bundle that device client certificates must chain to (needed for device.tls.client_certificates optional or required)."),
        ConfigKey("device.tls.client_certificates", default: "none", help: "none (not asked for), optional (verified if sent) or required (a device without a valid one fails the handshake)."),
        ConfigKey("device.receive_maximum", default: "100", help: "MQTT 5 Receive Maximum announced to devices: unacknowledged QoS 1/2 publishes per device."),
        ConfigKey("device.max_packet_size", default: "1MiB", help: "Largest device packet accepted; larger ones close that connection (packet too large)."),
        ConfigKey("upstream.url", help: "Cloud broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS). The host is resolved again on every reconnect."),
        ConfigKey("upstream.client_id", help: "MQTT client id upstream (default: tributary-<agent_id>). Must be stable: the broker keeps the QoS 2 session under it."),
        ConfigKey("upstream.protocol", default: "5", help: "MQTT version upstream: 5, or 3.1.1 (no user properties then)."),
        ConfigKey("upstream.qos", default: "2", help: "QoS of forwarded records: 2 (exactly once, acknowledged on PUBCOMP) or 1 (PUBACK; duplicates possible)."),
        ConfigKey("upstream.keep_alive", default: "30s", help: "MQTT keep-alive upstream."),
        ConfigKey("upstream.response_timeout", default: "10s", help: "A CONNACK or PINGRESP later than this closes the link (dead-link detection)."),
        ConfigKey("upstream.tcp_user_timeout", default: "20s", help: "TCP_USER_TIMEOUT upstream: unacknowledged bytes older than this close the connection; 0 turns it off."),
        ConfigKey("upstream.connect_timeout", default: "10s", help: "TCP (and TLS) connect timeout upstream."),
        ConfigKey("upstream.session_expiry", default: "7d", help: "MQTT 5 Session Expiry Interval requested upstream (s, m, h or d); the broker keeps QoS 2 state this long while the agent is away."),
        ConfigKey("upstream.max_inflight", default: "100", help: "Cap on forwarded records in flight; the broker's Receive Maximum lowers it."),
        ConfigKey("upstream.max_bytes_per_second", default: "0", help: "Replay pacing: cap on forwarded bytes per second (e.g. 512KiB); 0 means no cap."),
        ConfigKey("upstream.command_topics", default: "", help: "Comma-separated topic filters the uplink subscribes to (QoS 1); messages on them go to devices subscribed to matching topics."),
        ConfigKey("upstream.topic_prefix", default: "", help: "Prepended to each device topic upstream (e.g. site-7/)."),
        ConfigKey("upstream.username", help: "User name upstream (optional)."),
        ConfigKey("upstream.password", help: "Password upstream (optional; prefer TRIBUTARY_UPSTREAM_PASSWORD)."),
        ConfigKey("upstream.reconnect_initial", default: "200ms", help: "First reconnect delay; doubles per failure, with jitter (delay/2 to delay)."),
        ConfigKey("upstream.reconnect_max", default: "30s", help: "Largest reconnect delay."),
        ConfigKey("upstream.tls.ca_file", help: "PEM CA bundle to verify the broker (default: the system trust store)."),
        ConfigKey("upstream.tls.cert_file", help: "PEM client certificate chain for mTLS (with upstream.tls.key_file)."),
        ConfigKey("upstream.tls.key_file", help: "PEM private key of the client certificate."),
        ConfigKey("upstream.tls.server_name", help: "TLS server name (SNI and verification) if not the URL's host."),
        ConfigKey("local_broker.url", default: "", help: "Optional second source: an existing local broker (mqtt://HOST:PORT) the agent subscribes to with a persistent session; empty: none."),
        ConfigKey("local_broker.topics", default: "#", help: "Comma-separated topic filters subscribed on the local broker (QoS 2)."),
        ConfigKey("local_broker.client_id", help: "Client id on the local broker (default: tributary-<agent_id>-source). Must be stable: the broker keeps the session under it."),
        ConfigKey("local_broker.protocol", default: "5", help: "MQTT version to the local broker: 5, or 3.1.1."),
        ConfigKey("local_broker.session_expiry", default: "7d", help: "MQTT 5 Session Expiry Interval requested from the local broker (it keeps messages for the agent this long while the agent is away)."),
        ConfigKey("local_broker.keep_alive", default: "30s", help: "MQTT keep-alive to the local broker."),
        ConfigKey("local_broker.username", help: "User name on the local broker (optional)."),
        ConfigKey("local_broker.password", help: "Password on the local broker (optional; prefer TRIBUTARY_LOCAL_BROKER_PASSWORD)."),
        ConfigKey("local_broker.device_from", default: "", help: "Where tributary-device comes from for local broker messages: topic:N (topic level N, 1-based), property:NAME (an MQTT 5 user property), or empty."),
        ConfigKey("local_broker.device_name", default: "local-broker", help: "tributary-device of a local broker message whose publisher is not known (local_broker.device_from unset or not found)."),
        ConfigKey("routes", default: "", help: "Comma-separated routes 'FILTER [priority=0-9] [qos=1|2]': records on matching topics (first match) go to that priority's lane (its own buffer and upstream session; higher first, never behind a lower lane's backlog) and upstream with that QoS. Unmatched: priority 0, upstream.qos."),
        ConfigKey("buffer.directory", default: "/var/lib/tributary-edge-agent", help: "Directory of the disk buffer and the persisted uplink / device session state."),
        ConfigKey("buffer.max_bytes", default: "1GiB", help: "Cap on the buffer's segment files."),
        ConfigKey("buffer.segment_max_bytes", default: "64MiB", help: "Size of one segment file (space is reclaimed a segment at a time)."),
        ConfigKey("buffer.overflow", default: "reject-new", help: "When full: reject-new (devices get no ack / quota exceeded) or drop-oldest (counted)."),
        ConfigKey("buffer.fsync", default: "interval", help: "always (group commit before each ack), interval (fdatasync every buffer.fsync_interval_ms; power loss may take that much), never (unsafe)."),
        ConfigKey("buffer.fsync_interval_ms", default: "10", help: "Milliseconds between syncs with buffer.fsync interval."),
        ConfigKey("shutdown.timeout", default: "10s", help: "On SIGTERM: time allowed to finish in-flight work before exiting."),
        ConfigKey("runtime.event_loops", default: "1", help: "Network threads (device connections, uplink, HTTP). One serves thousands of devices; more only for very high ingest on a multi-core gateway."),
        ConfigKey("runtime.blocking_threads", default: "2", help: "Threads for blocking work: the uplink's and device sessions' state file writes, DNS lookups (two, so a slow lookup does not hold back a write)."),
        ConfigKey("runtime.tasks_on_event_loop", default: "true", help: "Run the agent's Swift tasks on the network threads instead of a separate pool (fewer threads and thread switches). Takes effect with a dynamically linked Swift runtime only; a static build logs that it is not applied."),
        ConfigKey("runtime.malloc_arenas", default: "1", help: "glibc malloc arenas (M_ARENA_MAX): fewer keep resident memory low; 0 leaves glibc's default (8 per core)."),
    ]

    enum Overflow: String, CaseIterable { case rejectNew = "reject-new", dropOldest = "drop-oldest" }
    enum Fsync: String, CaseIterable { case always, interval, never }
    enum ProtocolSetting: String, CaseIterable { case v5 = "5", v311 = "3.1.1" }
    enum QoSSetting: String, CaseIterable { case one = "1", two = "2" }

    var agentId: String
    /// nil: no device listener (`device.listen: off`).
    var deviceListen: HostPort?
    var localBroker: LocalBrokerConfiguration?
    var deviceTLS: DeviceTLSConfiguration?
    var deviceReceiveMaximum: UInt16
    var deviceMaxPacketSize: Int
    var httpListen: HostPort
    var upstream: UpstreamURL
    var upstreamClientId: String
    var upstreamVersion: MQTTProtocolVersion
    var upstreamQoS: MQTTQoS
    var keepAlive: Duration
    var responseTimeout: Duration
    var tcpUserTimeout: Duration
    var connectTimeout: Duration
    var sessionExpirySeconds: UInt32
    var maxInflight: Int
    var topicPrefix: String
    var maxBytesPerSecond: Int
    var commandTopics: [MQTTTopicFilter]
    var username: String?
    var password: String?
    var reconnectInitial: Duration
    var reconnectMax: Duration
    var tlsCAFile: String?
    var tlsCertFile: String?
    var tlsKeyFile: String?
    var tlsServerName: String?
    var buffer: DiskBuffer.Configuration
    var shutdownTimeout: Duration
    var runtime: AgentRuntime.Settings
    var routes: [Route]

    /// One lane per priority in `routes` and priority 0, highest first.
    var lanePriorities: [Int] { Route.lanePriorities(routes) }

    /// Priority 0 lives in `buffer.directory` itself (as without routes); priority p in `priority-p` in it.
    func laneDirectory(_ priority: Int) -> String {
        priority == 0 ? buffer.directory : buffer.directory + "/priority-\(priority)"
    }

    var bufferDirectory: String { buffer.directory }

    init(_ values: ConfigValues) throws(ConfigError) {
        agentId = try values.string("agent_id")
        guard !agentId.isEmpty else { throw ConfigError(key: "agent_id", "must not be empty") }
        deviceListen = values.raw("device.listen")?.value.lowercased() == "off" ? nil : try values.hostPort("device.listen")
        localBroker = try LocalBrokerConfiguration(values, agentId: agentId)
        deviceTLS = try DeviceTLSConfiguration(values)
        if deviceListen == nil && deviceTLS == nil && localBroker == nil {
            throw ConfigError(key: "device.listen", "is off and neither device.tls_listen nor local_broker.url is set: the agent would have nothing to forward")
        }
        deviceReceiveMaximum = UInt16(try values.int("device.receive_maximum", range: 1...65_535))
        deviceMaxPacketSize = try values.bytes("device.max_packet_size")
        httpListen = try values.hostPort("http.listen")
        let url = try values.string("upstream.url")
        do {
            upstream = try UpstreamURL(parsing: url)
        } catch {
            throw ConfigError(key: "upstream.url", origin: values.raw("upstream.url")?.origin, error.message)
        }
        upstreamClientId = values.optionalString("upstream.client_id") ?? "tributary-\(agentId)"
        upstreamVersion = try values.oneOf("upstream.protocol", ProtocolSetting.self) == .v5 ? .v5 : .v311
        upstreamQoS = try values.oneOf("upstream.qos", QoSSetting.self) == .two ? .exactlyOnce : .atLeastOnce
        keepAlive = try values.duration("upstream.keep_alive")
        responseTimeout = try values.duration("upstream.response_timeout")
        tcpUserTimeout = try values.duration("upstream.tcp_user_timeout")
        connectTimeout = try values.duration("upstream.connect_timeout")
        sessionExpirySeconds = try Self.seconds(values, "upstream.session_expiry")
        maxInflight = try values.int("upstream.max_inflight", range: 1...65_535)
        topicPrefix = values.optionalString("upstream.topic_prefix") ?? ""
        maxBytesPerSecond = try values.bytes("upstream.max_bytes_per_second")
        var filters: [MQTTTopicFilter] = []
        for text in values.list("upstream.command_topics") {
            do {
                filters.append(try MQTTTopicFilter(text))
            } catch {
                throw ConfigError(key: "upstream.command_topics", "'\(text)' is not a valid topic filter: \(error.message)")
            }
        }
        commandTopics = filters
        username = values.optionalString("upstream.username")
        password = values.optionalString("upstream.password")
        reconnectInitial = try values.duration("upstream.reconnect_initial")
        reconnectMax = try values.duration("upstream.reconnect_max")
        tlsCAFile = values.optionalString("upstream.tls.ca_file")
        tlsCertFile = values.optionalString("upstream.tls.cert_file")
        tlsKeyFile = values.optionalString("upstream.tls.key_file")
        tlsServerName = values.optionalString("upstream.tls.server_name")
        if (tlsCertFile == nil) != (tlsKeyFile == nil) {
            throw ConfigError(key: "upstream.tls.cert_file", "upstream.tls.cert_file and upstream.tls.key_file go together")
        }
        let fsync: DiskBuffer.FsyncPolicy
        switch try values.oneOf("buffer.fsync", Fsync.self) {
        case .always: fsync = .always
        case .never: fsync = .never
        case .interval: fsync = .interval(milliseconds: try values.int("buffer.fsync_interval_ms", range: 1...60_000))
        }
        buffer = DiskBuffer.Configuration(
            directory: try values.string("buffer.directory"),
            segmentMaxBytes: try values.bytes("buffer.segment_max_bytes"),
            maxBytes: Int64(try values.bytes("buffer.max_bytes")),
            overflowPolicy: try values.oneOf("buffer.overflow", Overflow.self) == .dropOldest ? .dropOldest : .rejectNew,
            fsync: fsync)
        shutdownTimeout = try values.duration("shutdown.timeout")
        runtime = AgentRuntime.Settings(
            eventLoops: try values.int("runtime.event_loops", range: 1...256),
            blockingThreads: try values.int("runtime.blocking_threads", range: 1...256),
            tasksOnEventLoop: try values.bool("runtime.tasks_on_event_loop"),
            mallocArenas: try values.int("runtime.malloc_arenas", range: 0...1024))
        var routes: [Route] = []
        for text in values.list("routes") { routes.append(try Route(parsing: text)) }
        self.routes = routes
    }

    /// Durations with a `d` (days) unit as well; whole seconds.
    static func seconds(_ values: ConfigValues, _ key: String) throws(ConfigError) -> UInt32 {
        if let raw = values.raw(key)?.value.trimmingBlanks(), raw.hasSuffix("d"),
            let days = UInt32(raw.dropLast())
        {
            return days * 86_400
        }
        let duration = try values.duration(key)
        return UInt32(clamping: duration.components.seconds)
    }
}

/// The device TLS listener's keys (present when `device.tls_listen` is set).
struct DeviceTLSConfiguration: Sendable {
    enum ClientCertificates: String, CaseIterable { case none, optional, required }

    var address: HostPort
    var certFile: String
    var keyFile: String
    var clientCAFile: String?
    var clientCertificates: ClientCertificates

    init?(_ values: ConfigValues) throws(ConfigError) {
        guard values.optionalString("device.tls_listen") != nil else { return nil }
        address = try values.hostPort("device.tls_listen")
        guard let cert = values.optionalString("device.tls.cert_file"), let key = values.optionalString("device.tls.key_file") else {
            throw ConfigError(key: "device.tls_listen", "needs device.tls.cert_file and device.tls.key_file")
        }
        certFile = cert
        keyFile = key
        clientCAFile = values.optionalString("device.tls.client_ca_file")
        clientCertificates = try values.oneOf("device.tls.client_certificates", ClientCertificates.self)
        if clientCertificates != .none && clientCAFile == nil {
            throw ConfigError(key: "device.tls.client_certificates", "\(clientCertificates.rawValue) needs device.tls.client_ca_file")
        }
    }
}

/// The `local_broker.*` keys (present when `local_broker.url` is set).
struct LocalBrokerConfiguration: Sendable {
    var address: HostPort
    var topics: [MQTTTopicFilter]
    var clientId: String
    var version: MQTTProtocolVersion
    var sessionExpirySeconds: UInt32
    var keepAlive: Duration
    var username: String?
    var password: String?
    var deviceIdentity: LocalBrokerSource.DeviceIdentity
    var deviceName: String

    init?(_ values: ConfigValues, agentId: String) throws(ConfigError) {
        guard let url = values.optionalString("local_broker.url") else { return nil }
        let parsed: UpstreamURL
        do {
            parsed = try UpstreamURL(parsing: url)
        } catch {
            throw ConfigError(key: "local_broker.url", origin: values.raw("local_broker.url")?.origin, error.message)
        }
        guard !parsed.useTLS else {
            throw ConfigError(key: "local_broker.url", "TLS to the local broker is not supported; use mqtt://HOST:PORT (a broker on the gateway)")
        }
        address = parsed.address
        var filters: [MQTTTopicFilter] = []
        for text in values.list("local_broker.topics") {
            do {
                filters.append(try MQTTTopicFilter(text))
            } catch {
                throw ConfigError(key: "local_broker.topics", "'\(text)' is not a valid topic filter: \(error.message)")
            }
        }
        guard !filters.isEmpty else { throw ConfigError(key: "local_broker.topics", "needs at least one topic filter") }
        topics = filters
        clientId = values.optionalString("local_broker.client_id") ?? "tributary-\(agentId)-source"
        version = try values.oneOf("local_broker.protocol", EdgeAgentConfiguration.ProtocolSetting.self) == .v5 ? .v5 : .v311
        sessionExpirySeconds = try EdgeAgentConfiguration.seconds(values, "local_broker.session_expiry")
        keepAlive = try values.duration("local_broker.keep_alive")
        username = values.optionalString("local_broker.username")
        password = values.optionalString("local_broker.password")
        deviceName = try values.string("local_broker.device_name")
        let from = values.optionalString("local_broker.device_from") ?? ""
        if from.isEmpty {
            deviceIdentity = .none
        } else if from.hasPrefix("topic:"), let level = Int(from.dropFirst(6)), level >= 1 {
            deviceIdentity = .topicLevel(level)
        } else if from.hasPrefix("property:"), from.count > 9 {
            deviceIdentity = .userProperty(String(from.dropFirst(9)))
        } else {
            throw ConfigError(key: "local_broker.device_from", "expected topic:N (N ≥ 1), property:NAME or nothing, got '\(from)'")
        }
    }
}

/// `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (TLS). The port defaults to 1883 / 8883.
struct UpstreamURL: Sendable, Hashable, CustomStringConvertible {
    var useTLS: Bool
    var address: HostPort

    init(parsing text: String) throws(ConfigError) {
        let schemes = [("mqtt://", false, 1883), ("tcp://", false, 1883), ("mqtts://", true, 8883), ("ssl://", true, 8883)]
        guard let (prefix, tls, defaultPort) = schemes.first(where: { text.hasPrefix($0.0) }) else {
            throw ConfigError("expected mqtt://HOST:PORT or mqtts://HOST:PORT, got '\(text)'")
        }
        var rest = String(text.dropFirst(prefix.count))
        if rest.hasSuffix("/") { rest.removeLast() }
        useTLS = tls
        // "]:" somewhere after "[", else any ":" (Character and split: the standard library's, not Foundation's).
        let hasPort =
            rest.hasPrefix("[")
            ? rest.split(separator: "]" as Character, omittingEmptySubsequences: false).dropFirst().contains { $0.hasPrefix(":") }
            : rest.contains(":" as Character)
        address = try HostPort(parsing: hasPort ? rest : "\(rest):\(defaultPort)")
    }

    var description: String { (useTLS ? "mqtts://" : "mqtt://") + address.description }
}
