import Common

/// A device profile (`devices/profiles/*.yaml`): the publishing behaviour of one kind of device. Every key is
/// optional; a command-line flag overrides the profile, the profile overrides the defaults.
///
/// Keys: `name`, `description`, `rate` (messages per second per device), `jitter` (0...1), `size` (bytes,
/// `1KiB`, or a range `512-2048`), `qos` (0, 1, 2), `clean_session` (true/false), `protocol` (3.1.1 or 5),
/// `topic` (template with `{client}` and `{index}`), `keep_alive` (seconds), `inflight`, `ramp_up` (duration),
/// `burst.on` and `burst.period` (durations: send at `rate` for `on` out of every `period`).
enum DeviceProfile {
    static let keys: [ConfigKey] = [
        ConfigKey("name", help: "Profile name."),
        ConfigKey("description", help: "What the device is."),
        ConfigKey("rate", help: "Messages per second per device."),
        ConfigKey("jitter", help: "Interval jitter, 0...1 (0.2 = each interval within ±20%)."),
        ConfigKey("size", help: "Payload bytes, or MIN-MAX."),
        ConfigKey("qos", help: "0, 1 or 2."),
        ConfigKey("clean_session", help: "Clean session / clean start."),
        ConfigKey("protocol", help: "3.1.1 or 5."),
        ConfigKey("topic", help: "Topic template; {client} and {index} are replaced."),
        ConfigKey("keep_alive", help: "Keep-alive in seconds."),
        ConfigKey("inflight", help: "Most unacknowledged QoS 1/2 messages per device."),
        ConfigKey("ramp_up", help: "Time over which the devices connect."),
        ConfigKey("burst.on", help: "Length of each burst."),
        ConfigKey("burst.period", help: "Time from the start of one burst to the next."),
    ]

    /// Applies the profile in `path` to `settings`.
    static func apply(file path: String, to settings: inout SimulatorSettings) throws(ConfigError) {
        var values = ConfigValues(keys: keys)
        try values.merge(yamlFile: path)
        if values.raw("rate") != nil { settings.rate = try double(values, "rate") }
        if values.raw("jitter") != nil { settings.jitter = try double(values, "jitter") }
        if let size = values.optionalString("size") { settings.size = try SimulatorSettings.SizeRange(parsing: size) }
        if values.raw("qos") != nil { settings.qos = try qos(values.int("qos", range: 0...2)) }
        if values.raw("clean_session") != nil { settings.cleanSession = try values.bool("clean_session") }
        if let text = values.optionalString("protocol") { settings.protocolVersion = try protocolVersion(text) }
        if let topic = values.optionalString("topic") { settings.topicTemplate = topic }
        if values.raw("keep_alive") != nil { settings.keepAlive = UInt16(try values.int("keep_alive", range: 0...65_535)) }
        if values.raw("inflight") != nil { settings.inflight = try values.int("inflight", range: 1...65_535) }
        if values.raw("ramp_up") != nil { settings.rampUp = try values.duration("ramp_up") }
        if values.raw("burst.on") != nil || values.raw("burst.period") != nil {
            settings.burst = SimulatorSettings.Burst(on: try values.duration("burst.on"), period: try values.duration("burst.period"))
        }
    }

    static func qos(_ value: Int) throws(ConfigError) -> MQTTQoS {
        guard let qos = MQTTQoS(rawValue: UInt8(clamping: value)) else { throw ConfigError(key: "qos", "must be 0, 1 or 2") }
        return qos
    }

    static func protocolVersion(_ text: String) throws(ConfigError) -> MQTTProtocolVersion {
        switch text {
        case "3.1.1", "311", "4": return .v311
        case "5", "5.0": return .v5
        default: throw ConfigError(key: "protocol", "expected 3.1.1 or 5, got '\(text)'")
        }
    }

    private static func double(_ values: ConfigValues, _ key: String) throws(ConfigError) -> Double {
        let text = values.optionalString(key) ?? ""
        guard let value = Double(text), value.isFinite else {
            throw ConfigError(key: key, origin: values.raw(key)?.origin, "expected a number, got '\(text)'")
        }
        return value
    }
}
