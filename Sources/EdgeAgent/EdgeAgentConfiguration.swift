import Common

/// Everything the agent is told at start-up. Each key is documented in `keys`.
struct EdgeAgentConfiguration: Sendable {
    static let keys: [ConfigKey] = ConfigKey.common + [
        ConfigKey("agent_id", help: "Id of this gateway, sent upstream as the user property tributary-agent."),
        ConfigKey("device.listen", default: "0.0.0.0:1883", help: "MQTT listener for devices."),
        ConfigKey("upstream.url", help: "Cloud broker, mqtt://HOST:PORT or mqtts://HOST:PORT."),
        ConfigKey("buffer.directory", default: "/var/lib/tributary-edge-agent", help: "Directory of the disk buffer and persisted uplink state."),
    ]

    var agentId: String
    var deviceListen: HostPort
    var httpListen: HostPort
    var upstream: UpstreamURL
    var bufferDirectory: String

    init(_ values: ConfigValues) throws(ConfigError) {
        agentId = try values.string("agent_id")
        deviceListen = try values.hostPort("device.listen")
        httpListen = try values.hostPort("http.listen")
        let url = try values.string("upstream.url")
        do {
            upstream = try UpstreamURL(parsing: url)
        } catch {
            throw ConfigError(key: "upstream.url", origin: values.raw("upstream.url")?.origin, error.message)
        }
        bufferDirectory = try values.string("buffer.directory")
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
        let hasPort = rest.hasPrefix("[") ? rest.contains("]:") : rest.contains(":")
        address = try HostPort(parsing: hasPort ? rest : "\(rest):\(defaultPort)")
    }

    var description: String { (useTLS ? "mqtts://" : "mqtt://") + address.description }
}
