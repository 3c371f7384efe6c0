#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Yams

/// The merged configuration of one process: every key's text value and where it came from.
///
/// Precedence, lowest first: the key's default, the YAML file (`--config FILE`), the environment
/// (`TRIBUTARY_...`), command-line flags. Values are kept as text and converted by the typed accessors,
/// which name the key and its origin in every error.
public struct ConfigValues: Sendable {
    public struct Entry: Sendable {
        public var value: String
        public var origin: String
    }

    public private(set) var entries: [String: Entry] = [:]
    public let keys: [ConfigKey]

    public init(keys: [ConfigKey]) {
        self.keys = keys
        for key in keys {
            if let value = key.defaultValue { entries[key.name] = Entry(value: value, origin: "default") }
        }
    }

    /// Loads defaults, then `file`, then `environment`, then `overrides` (flags already mapped to keys).
    public static func load(
        keys: [ConfigKey],
        file: String?,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        overrides: [String: String]
    ) throws(ConfigError) -> ConfigValues {
        var values = ConfigValues(keys: keys)
        if let file { try values.merge(yamlFile: file) }
        values.merge(environment: environment)
        for (key, value) in overrides.sorted(by: { $0.key < $1.key }) {
            try values.set(key, value, origin: "command line")
        }
        return values
    }

    public mutating func set(_ key: String, _ value: String, origin: String) throws(ConfigError) {
        guard keys.contains(where: { $0.name == key }) else {
            throw ConfigError(key: key, origin: origin, "unknown key (see --help for the list)")
        }
        entries[key] = Entry(value: value, origin: origin)
    }

    public mutating func merge(environment: [String: String]) {
        for key in keys {
            if let value = environment[key.environmentVariable] {
                entries[key.name] = Entry(value: value, origin: "environment \(key.environmentVariable)")
            }
        }
    }

    public mutating func merge(yamlFile path: String) throws(ConfigError) {
        try merge(yaml: try Self.readTextFile(path), origin: path)
    }

    /// The file's bytes as UTF-8 text, read with plain `read(2)` (Foundation's file reading brings
    /// CoreFoundation's string machinery into the edge agent's resident memory at every start).
    static func readTextFile(_ path: String) throws(ConfigError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ConfigError(origin: path, "cannot read the config file: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw ConfigError(origin: path, "cannot read the config file: \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(origin: path, "the config file is not UTF-8 text")
        }
        return text
    }

    /// Nested YAML maps are flattened to dotted keys: `buffer: {max_bytes: 1GiB}` sets `buffer.max_bytes`.
    /// Scalars are taken as written (typed by the accessors below), so Yams' basic resolver is used: the
    /// default one tags scalars with NSRegularExpressions, which bring ICU's code and tables into the edge
    /// agent's resident memory at every start (about 4 MB) for tags nothing here reads.
    public mutating func merge(yaml text: String, origin: String) throws(ConfigError) {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text, .basic)
        } catch {
            throw ConfigError(origin: origin, "not valid YAML: \(error)")
        }
        guard let node else { return }
        guard case .mapping = node else {
            throw ConfigError(origin: origin, "the top level must be a mapping of keys")
        }
        var flat: [(String, String)] = []
        try Self.flatten(node, prefix: "", origin: origin, into: &flat)
        for (key, value) in flat { try set(key, value, origin: origin) }
    }

    private static func flatten(_ node: Node, prefix: String, origin: String, into flat: inout [(String, String)])
        throws(ConfigError)
    {
        switch node {
        case .mapping(let mapping):
            for (keyNode, valueNode) in mapping {
                guard let name = keyNode.string else {
                    throw ConfigError(origin: origin, "keys must be strings")
                }
                let key = prefix.isEmpty ? name : prefix + "." + name
                try flatten(valueNode, prefix: key, origin: origin, into: &flat)
            }
        case .scalar(let scalar):
            flat.append((prefix, scalar.string))
        case .sequence(let sequence):
            // Lists are stored comma-separated; list-valued keys are read with `list(_:)`.
            var items: [String] = []
            for item in sequence {
                guard case .scalar(let scalar) = item else {
                    throw ConfigError(key: prefix, origin: origin, "list items must be plain values")
                }
                items.append(scalar.string)
            }
            flat.append((prefix, items.joined(separator: ",")))
        }
    }

    // MARK: - Typed accessors

    public func raw(_ key: String) -> Entry? { entries[key] }

    public func string(_ key: String) throws(ConfigError) -> String {
        guard let entry = entries[key], !entry.value.isEmpty else {
            throw ConfigError(key: key, "is required (flag, YAML key or \(ConfigKey(key, help: "").environmentVariable))")
        }
        return entry.value
    }

    public func optionalString(_ key: String) -> String? {
        guard let value = entries[key]?.value, !value.isEmpty else { return nil }
        return value
    }

    public func int(_ key: String, range: ClosedRange<Int>? = nil) throws(ConfigError) -> Int {
        let entry = try requireEntry(key)
        guard let value = Int(entry.value.trimmingBlanks()) else {
            throw ConfigError(key: key, origin: entry.origin, "expected a whole number, got '\(entry.value)'")
        }
        if let range, !range.contains(value) {
            throw ConfigError(key: key, origin: entry.origin, "\(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool {
        let entry = try requireEntry(key)
        switch entry.value.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw ConfigError(key: key, origin: entry.origin, "expected true or false, got '\(entry.value)'")
        }
    }

    /// Sizes: `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers of 1000).
    public func bytes(_ key: String) throws(ConfigError) -> Int {
        let entry = try requireEntry(key)
        guard let value = Self.parseBytes(entry.value) else {
            throw ConfigError(key: key, origin: entry.origin, "expected a size like 64MiB, got '\(entry.value)'")
        }
        return value
    }

    /// Durations: `500us`, `250ms`, `10s`, `5m`, `1h`; a bare number is milliseconds.
    public func duration(_ key: String) throws(ConfigError) -> Duration {
        let entry = try requireEntry(key)
        guard let value = Self.parseDuration(entry.value) else {
            throw ConfigError(key: key, origin: entry.origin, "expected a duration like 500ms or 10s, got '\(entry.value)'")
        }
        return value
    }

    public func hostPort(_ key: String) throws(ConfigError) -> HostPort {
        let entry = try requireEntry(key)
        do {
            return try HostPort(parsing: entry.value)
        } catch {
            throw ConfigError(key: key, origin: entry.origin, error.message)
        }
    }

    public func list(_ key: String) -> [String] {
        guard let value = entries[key]?.value else { return [] }
        return value.split(separator: ",").map { $0.trimmingBlanks() }.filter { !$0.isEmpty }
    }

    public func oneOf<T: RawRepresentable & CaseIterable>(_ key: String, _ type: T.Type) throws(ConfigError) -> T
    where T.RawValue == String {
        let entry = try requireEntry(key)
        guard let value = T(rawValue: entry.value) else {
            let allowed = T.allCases.map(\.rawValue).joined(separator: ", ")
            throw ConfigError(key: key, origin: entry.origin, "expected one of \(allowed), got '\(entry.value)'")
        }
        return value
    }

    private func requireEntry(_ key: String) throws(ConfigError) -> Entry {
        guard let entry = entries[key] else {
            throw ConfigError(key: key, "is required (flag, YAML key or \(ConfigKey(key, help: "").environmentVariable))")
        }
        return entry
    }

    static func parseBytes(_ text: String) -> Int? {
        let trimmed = text.trimmingBlanks()
        let units: [(String, Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("B", 1),
        ]
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count).trimmingBlanks()
            guard let value = Int(number), value >= 0 else { return nil }
            let (product, overflow) = value.multipliedReportingOverflow(by: factor)
            return overflow ? nil : product
        }
        guard let value = Int(trimmed), value >= 0 else { return nil }
        return value
    }

    static func parseDuration(_ text: String) -> Duration? {
        let trimmed = text.trimmingBlanks()
        let units: [(String, (Int) -> Duration)] = [
            ("us", { .microseconds($0) }), ("ms", { .milliseconds($0) }), ("s", { .seconds($0) }),
            ("m", { .seconds($0 * 60) }), ("h", { .seconds($0 * 3600) }),
        ]
        for (suffix, make) in units where trimmed.hasSuffix(suffix) {
            guard let value = Int(trimmed.dropLast(suffix.count)), value >= 0 else { return nil }
            return make(value)
        }
        guard let value = Int(trimmed), value >= 0 else { return nil }
        return .milliseconds(value)
    }

    /// The effective configuration as commented YAML-ish text, for `--print-config`.
    public func rendered() -> String {
        keys.map { key in
            let entry = entries[key.name]
            let value = entry?.value ?? ""
            let origin = entry.map { " (\($0.origin))" } ?? " (unset)"
            return "# \(key.help)\(origin)\n\(key.name): \(value)"
        }.joined(separator: "\n")
    }
}
