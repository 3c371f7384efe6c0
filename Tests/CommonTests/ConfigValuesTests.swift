import Foundation
import Testing

@testable import Common

@Suite("Configuration: defaults < YAML file < environment < flags, typed values, clear errors")
struct ConfigValuesTests {
    static let keys: [ConfigKey] = [
        ConfigKey("node_id", help: "id"),
        ConfigKey("mqtt.listen", default: "0.0.0.0:1883", help: "listener"),
        ConfigKey("buffer.max_bytes", default: "64MiB", help: "cap"),
        ConfigKey("buffer.fsync", default: "always", help: "policy"),
        ConfigKey("uplink.timeout", default: "5s", help: "timeout"),
        ConfigKey("routes.command_topics", help: "list"),
    ]

    enum Fsync: String, CaseIterable { case always, interval, never }

    @Test func precedenceIsDefaultThenFileThenEnvironmentThenFlags() throws {
        var values = ConfigValues(keys: Self.keys)
        try values.merge(yaml: "mqtt:\n  listen: 10.0.0.1:1884\nnode_id: from-file\n", origin: "test.yaml")
        #expect(try values.string("node_id") == "from-file")
        #expect(try values.hostPort("mqtt.listen") == HostPort(host: "10.0.0.1", port: 1884))
        values.merge(environment: ["TRIBUTARY_NODE_ID": "from-env"])
        #expect(try values.string("node_id") == "from-env")
        try values.set("node_id", "from-flag", origin: "command line")
        #expect(try values.string("node_id") == "from-flag")
        #expect(values.raw("node_id")?.origin == "command line")
        #expect(try values.bytes("buffer.max_bytes") == 64 << 20)
    }

    @Test func unknownYamlKeyIsAnErrorNamingTheKeyAndFile() {
        var values = ConfigValues(keys: Self.keys)
        #expect {
            try values.merge(yaml: "mqtt:\n  lisen: 1\n", origin: "agent.yaml")
        } throws: { error in
            "\(error)" == "config key mqtt.lisen (from agent.yaml): unknown key (see --help for the list)"
        }
    }

    @Test func typedAccessorsRejectBadValuesWithTheirOrigin() throws {
        var values = ConfigValues(keys: Self.keys)
        try values.set("buffer.max_bytes", "lots", origin: "command line")
        try values.set("mqtt.listen", "nohost", origin: "command line")
        try values.set("buffer.fsync", "sometimes", origin: "command line")
        try values.set("uplink.timeout", "soon", origin: "command line")
        #expect(throws: ConfigError.self) { try values.bytes("buffer.max_bytes") }
        #expect(throws: ConfigError.self) { try values.hostPort("mqtt.listen") }
        #expect(throws: ConfigError.self) { try values.duration("uplink.timeout") }
        #expect {
            try values.oneOf("buffer.fsync", Fsync.self)
        } throws: { error in
            "\(error)".contains("expected one of always, interval, never, got 'sometimes'")
        }
        #expect(throws: ConfigError.self) { try values.string("node_id") }
    }

    @Test("a config file is read as UTF-8 text; a missing or non-UTF-8 file is a clear error naming it")
    func configFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("config-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let good = directory + "/good.yaml"
        try Data("routes:\n  command_topics: [cmd/é, cmd/b]\n".utf8).write(to: URL(fileURLWithPath: good))
        var values = ConfigValues(keys: Self.keys)
        try values.merge(yamlFile: good)
        #expect(values.list("routes.command_topics") == ["cmd/é", "cmd/b"])
        #expect(values.raw("routes.command_topics")?.origin == good)
        let bad = directory + "/bad.yaml"
        try Data([0x61, 0x3A, 0x20, 0xFF, 0xFE, 0x0A]).write(to: URL(fileURLWithPath: bad))
        #expect(throws: ConfigError.self) { try values.merge(yamlFile: bad) }
        do {
            try values.merge(yamlFile: directory + "/missing.yaml")
            Issue.record("a missing file was accepted")
        } catch {
            #expect("\(error)".contains("missing.yaml") && "\(error)".contains("No such file"), "\(error)")
        }
    }

    @Test func sizesDurationsListsAndAddresses() throws {
        #expect(ConfigValues.parseBytes("512KiB") == 512 * 1024)
        #expect(ConfigValues.parseBytes("2GB") == 2_000_000_000)
        #expect(ConfigValues.parseBytes("-1") == nil)
        #expect(ConfigValues.parseDuration("250ms") == .milliseconds(250))
        #expect(ConfigValues.parseDuration("2m") == .seconds(120))
        #expect(ConfigValues.parseDuration("40") == .milliseconds(40))
        #expect(ConfigValues.parseDuration("500us") == .microseconds(500))
        #expect(ConfigValues.parseDuration("5xs") == nil)
        var values = ConfigValues(keys: Self.keys)
        try values.merge(yaml: "routes:\n  command_topics: [cmd/a, cmd/b]\n", origin: "x")
        #expect(values.list("routes.command_topics") == ["cmd/a", "cmd/b"])
        #expect(try HostPort(parsing: "[::1]:8080") == HostPort(host: "::1", port: 8080))
        #expect(throws: ConfigError.self) { try HostPort(parsing: "host:70000") }
        #expect(ConfigKey("kafka.bootstrap_servers", help: "").environmentVariable == "TRIBUTARY_KAFKA_BOOTSTRAP_SERVERS")
    }

    /// Blanks around values are trimmed as Foundation's `.whitespaces` did (spaces, tabs, other Unicode space
    /// separators; not line breaks), with the standard library alone.
    @Test func blanksAroundValuesAreTrimmedLikeFoundationWhitespaces() throws {
        #expect(ConfigValues.parseBytes("\t 64 MiB\u{00A0}") == 64 << 20)
        #expect(ConfigValues.parseDuration("\u{2003}10s ") == .seconds(10))
        #expect(ConfigValues.parseBytes("64MiB\n") == nil)
        #expect(try HostPort(parsing: " \t127.0.0.1:1883\u{3000}") == HostPort(host: "127.0.0.1", port: 1883))
        #expect(" \t ".trimmingBlanks() == "")
        #expect("a b".trimmingBlanks() == "a b")
        #expect("\u{205F}é\u{0301}\t".trimmingBlanks() == "é\u{0301}")
        var values = ConfigValues(keys: Self.keys)
        try values.merge(yaml: "routes:\n  command_topics: ' cmd/a ,\tcmd/b, '\n", origin: "x")
        #expect(values.list("routes.command_topics") == ["cmd/a", "cmd/b"])
        #expect(HostPort(host: "::1", port: 1).description == "[::1]:1")
    }

    @Test func notAMappingIsRejected() {
        var values = ConfigValues(keys: Self.keys)
        #expect(throws: ConfigError.self) { try values.merge(yaml: "- a\n- b\n", origin: "list.yaml") }
        #expect(throws: ConfigError.self) { try values.merge(yaml: "a: [b\n", origin: "broken.yaml") }
    }
}
