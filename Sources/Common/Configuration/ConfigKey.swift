/// One configuration key: its dotted name (`buffer.max_bytes`), what it means and its default.
///
/// Every configuration struct in Tributary lists its keys once, as `static let keys: [ConfigKey]`. That list
/// drives everything else: unknown keys in a YAML file are rejected (typos are errors, not silence), each key
/// can be overridden by the environment variable `TRIBUTARY_<KEY>` (dots become underscores, upper case), and
/// `--print-config` / the commented example files are generated from it.
public struct ConfigKey: Sendable, Hashable {
    /// Dotted, scoped name, e.g. `kafka.bootstrap_servers`.
    public var name: String
    /// One line saying what the key controls, with its unit.
    public var help: String
    /// The default as it would be written in YAML, or nil when the key is required or has no default.
    public var defaultValue: String?

    public init(_ name: String, default defaultValue: String? = nil, help: String) {
        self.name = name
        self.help = help
        self.defaultValue = defaultValue
    }

    /// `kafka.bootstrap_servers` → `TRIBUTARY_KAFKA_BOOTSTRAP_SERVERS`.
    public var environmentVariable: String {
        "TRIBUTARY_" + String(name.uppercased().map { $0 == "." ? "_" : $0 })
    }
}
