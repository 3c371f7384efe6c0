import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import TestSupport
import Testing

/// What an operator installs (issue 9), checked against what is built: the systemd units pass
/// `systemd-analyze verify`, the install and uninstall scripts stage the expected tree, the example
/// configurations pass the real binaries' `--check-config` and name every key, and every metric a Grafana
/// dashboard queries is exported by a running agent or broker.
@Suite("Operations: units, install, configs, dashboards")
struct OperationsTests {
    static let root = TestEnvironment.packageRoot
    static let units = ["tributary-edge-agent.service", "tributary-cloud-broker.service"]

    // MARK: - systemd units

    /// Stages both components with install.sh, then verifies the installed units inside that root, so that
    /// `ExecStart=` must name a binary the script really installed.
    @Test(.enabled(if: Self.tool("systemd-analyze") != nil, "needs systemd-analyze (Debian package systemd)"))
    func unitsPassSystemdAnalyzeVerify() async throws {
        let stage = try Self.temporaryDirectory("units")
        defer { try? FileManager.default.removeItem(atPath: stage) }
        let install = try await Self.run("/bin/bash", [Self.root + "/systemd/install.sh", "--destdir", stage, "--binary-dir", TestEnvironment.binDirectory, "all"])
        #expect(install.status == .exited(0), "install.sh failed:\n\(install.output)")
        try Self.provideSystemUnits(in: stage)

        let verify = try await Self.verify(root: stage, units: Self.units)
        #expect(verify.status == .exited(0), "systemd-analyze verify failed:\n\(verify.output)")
        let complaints = verify.output.split(separator: "\n").filter { $0.contains("tributary") }
        #expect(complaints.isEmpty, "systemd-analyze verify complains:\n\(complaints.joined(separator: "\n"))")

        // The check above can fail: a unit with an unknown key makes verify print a warning (with exit 0).
        let broken = stage + "/etc/systemd/system/tributary-broken.service"
        let text = try String(contentsOfFile: stage + "/etc/systemd/system/tributary-edge-agent.service", encoding: .utf8)
        try text.replacingOccurrences(of: "[Service]\n", with: "[Service]\nWatchdogSecs=30s\n").write(toFile: broken, atomically: true, encoding: .utf8)
        let control = try await Self.verify(root: stage, units: ["tributary-broken.service"])
        #expect(control.output.contains("Unknown key"), "the negative control was not flagged:\n\(control.output)")
    }

    /// `systemd-analyze security` rates both units "OK" (exposure below 2.0 of 10): the hardening took.
    @Test(.enabled(if: Self.tool("systemd-analyze") != nil, "needs systemd-analyze"))
    func unitsAreHardened() async throws {
        for unit in Self.units {
            let result = try await Self.run(
                Self.tool("systemd-analyze") ?? "systemd-analyze", ["security", "--offline=true", "--no-pager", Self.root + "/systemd/" + unit])
            let line = result.output.split(separator: "\n").first { $0.contains("Overall exposure level") }.map(String.init) ?? ""
            let score = line.split(separator: ":").last?.split(separator: " ").first.flatMap { Double($0) }
            #expect(score != nil && score! < 2.0, "\(unit): \(line.isEmpty ? result.output : line)")
        }
        for unit in Self.units {
            let text = try String(contentsOfFile: Self.root + "/systemd/" + unit, encoding: .utf8)
            for setting in ["Type=notify", "WatchdogSec=", "Restart=on-failure", "ConfigurationDirectory=tributary", "ProtectSystem=strict",
                            "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes", "RestrictAddressFamilies=", "CapabilityBoundingSet=\n"] {
                #expect(text.contains("\n" + setting), "\(unit) lacks \(setting)")
            }
        }
        let agent = try String(contentsOfFile: Self.root + "/systemd/tributary-edge-agent.service", encoding: .utf8)
        #expect(agent.contains("\nStateDirectory=tributary-edge-agent\n"))
        let broker = try String(contentsOfFile: Self.root + "/systemd/tributary-cloud-broker.service", encoding: .utf8)
        #expect(broker.contains("\nLimitNOFILE=1048576\n"))
    }

    /// Type=notify with WatchdogSec only works if the binary sends READY=1 and then WATCHDOG=1 pings at half
    /// of WATCHDOG_USEC. Runs each binary as systemd would: NOTIFY_SOCKET names a datagram socket of the test.
    @Test(.timeLimit(.minutes(2)), arguments: ["edge-agent", "cloud-broker"])
    func binariesSendReadyAndWatchdogPings(binary: String) async throws {
        let directory = try Self.temporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let socket = try NotifySocket(path: directory + "/notify")
        try await withProcesses("notify-\(binary)") { scope in
            let http = try FreePort.next()
            var environment = ["NOTIFY_SOCKET": socket.path, "WATCHDOG_USEC": "1000000"]
            var arguments = ["--http-listen", "127.0.0.1:\(http)"]
            if binary == "cloud-broker" {
                let tansu = try await scope.startTansu()
                environment.merge(TestEnvironment.kafkaClientEnvironment) { $1 }
                arguments += ["--node-id", "notify-1", "--kafka-bootstrap", tansu.bootstrapServers, "--mqtt-listen", "127.0.0.1:\(try FreePort.next())"]
            } else {
                arguments += ["--agent-id", "notify-agent", "--upstream", "mqtt://127.0.0.1:\(try FreePort.next())",
                              "--device-listen", "127.0.0.1:\(try FreePort.next())", "--data-dir", directory + "/data"]
            }
            let process = try scope.launch(name: binary, executable: TestEnvironment.binary(binary), arguments: arguments, environment: environment)
            // WATCHDOG_PID is unset, so the pings are meant for this process; expect READY=1, then 2 pings.
            let isPing: (String) -> Bool = { $0.split(separator: "\n").contains { $0 == "WATCHDOG=1" } }
            let isReady: (String) -> Bool = { $0.split(separator: "\n").contains { $0 == "READY=1" } }
            let messages = socket.receive(until: { $0.contains(where: isReady) && $0.filter(isPing).count >= 2 },
                                          timeout: .seconds(20), stopIf: { !process.isRunning })
            #expect(messages.contains(where: isReady), "\(binary) sent no READY=1 (got \(messages)); log:\n\(process.logTail())")
            #expect(messages.filter(isPing).count >= 2, "\(binary) sent too few WATCHDOG=1 pings with WATCHDOG_USEC=1000000 (got \(messages))")
        }
    }

    // MARK: - install and uninstall

    @Test func installScriptStagesTheExpectedTreeAndUninstallRemovesIt() async throws {
        let stage = try Self.temporaryDirectory("install")
        defer { try? FileManager.default.removeItem(atPath: stage) }
        let script = Self.root + "/systemd/install.sh"
        let bin = TestEnvironment.binDirectory

        // --dry-run changes nothing.
        let dry = try await Self.run("/bin/bash", [script, "--dry-run", "--destdir", stage, "--binary-dir", bin, "all"])
        #expect(dry.status == .exited(0), "\(dry.output)")
        #expect(dry.output.contains("would run: install -D -m 0755 \(bin)/edge-agent \(stage)/usr/local/bin/edge-agent"), "\(dry.output)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: stage).isEmpty, "--dry-run wrote files")

        let first = try await Self.run("/bin/bash", [script, "--destdir", stage, "--binary-dir", bin, "all"])
        #expect(first.status == .exited(0), "\(first.output)")
        let expected: [(String, Int)] = [
            ("/usr/local/bin/edge-agent", 0o755), ("/usr/local/bin/cloud-broker", 0o755),
            ("/etc/systemd/system/tributary-edge-agent.service", 0o644), ("/etc/systemd/system/tributary-cloud-broker.service", 0o644),
            ("/etc/tributary/edge-agent.yaml", 0o640), ("/etc/tributary/edge-agent.env", 0o640),
            ("/etc/tributary/cloud-broker.yaml", 0o640), ("/etc/tributary/cloud-broker.env", 0o640),
            ("/usr/lib/sysusers.d/tributary.conf", 0o644), ("/usr/local/share/doc/tributary/OPERATIONS.md", 0o644),
        ]
        #expect(Self.files(below: stage).sorted() == expected.map(\.0).sorted())
        for (path, mode) in expected {
            let attributes = try FileManager.default.attributesOfItem(atPath: stage + path)
            #expect((attributes[.posixPermissions] as? Int) == mode, "\(path): mode \(String((attributes[.posixPermissions] as? Int) ?? 0, radix: 8))")
        }
        #expect(FileManager.default.contentsEqual(atPath: stage + "/usr/local/bin/edge-agent", andPath: bin + "/edge-agent"))
        #expect(FileManager.default.contentsEqual(atPath: stage + "/etc/tributary/cloud-broker.yaml", andPath: Self.root + "/config/cloud-broker.yaml"))

        // The sysusers entry creates the two service users.
        if let sysusers = Self.tool("systemd-sysusers") {
            let usersRoot = try Self.temporaryDirectory("sysusers")
            defer { try? FileManager.default.removeItem(atPath: usersRoot) }
            let users = try await Self.run(sysusers, ["--root", usersRoot, "--dry-run", stage + "/usr/lib/sysusers.d/tributary.conf"])
            #expect(users.status == .exited(0), "\(users.output)")
            #expect(users.output.contains("Creating user 'tributary-agent'") && users.output.contains("Creating user 'tributary-broker'"), "\(users.output)")
        }

        // Running it again keeps an edited configuration and ships the new one next to it.
        try "# edited by the operator\n".write(toFile: stage + "/etc/tributary/cloud-broker.yaml", atomically: true, encoding: .utf8)
        let second = try await Self.run("/bin/bash", [script, "--destdir", stage, "--binary-dir", bin, "cloud-broker"])
        #expect(second.status == .exited(0), "\(second.output)")
        #expect(try String(contentsOfFile: stage + "/etc/tributary/cloud-broker.yaml", encoding: .utf8) == "# edited by the operator\n")
        #expect(FileManager.default.contentsEqual(atPath: stage + "/etc/tributary/cloud-broker.yaml.dist", andPath: Self.root + "/config/cloud-broker.yaml"))

        // Uninstall keeps configuration and state; --purge removes them.
        let uninstall = Self.root + "/systemd/uninstall.sh"
        let removed = try await Self.run("/bin/bash", [uninstall, "--destdir", stage, "all"])
        #expect(removed.status == .exited(0), "\(removed.output)")
        #expect(Self.files(below: stage).sorted() == [
            "/etc/tributary/cloud-broker.env", "/etc/tributary/cloud-broker.yaml", "/etc/tributary/cloud-broker.yaml.dist",
            "/etc/tributary/edge-agent.env", "/etc/tributary/edge-agent.yaml",
        ])
        let purged = try await Self.run("/bin/bash", [uninstall, "--destdir", stage, "--purge", "all"])
        #expect(purged.status == .exited(0), "\(purged.output)")
        #expect(Self.files(below: stage).isEmpty)

        // Another prefix: the installed units point at it.
        let optStage = try Self.temporaryDirectory("prefix")
        defer { try? FileManager.default.removeItem(atPath: optStage) }
        let opt = try await Self.run("/bin/bash", [script, "--destdir", optStage, "--prefix", "/opt/tributary", "--binary-dir", bin, "edge-agent"])
        #expect(opt.status == .exited(0), "\(opt.output)")
        let unit = try String(contentsOfFile: optStage + "/etc/systemd/system/tributary-edge-agent.service", encoding: .utf8)
        #expect(unit.contains("\nExecStart=/opt/tributary/bin/edge-agent "))
        #expect(FileManager.default.isExecutableFile(atPath: optStage + "/opt/tributary/bin/edge-agent"))
    }

    // MARK: - example configurations

    /// Every `config/*.yaml` passes `--check-config` of the binary it is for. In the files owned here
    /// (`cloud-broker*.yaml`, `edge-agent-gateway.yaml`) every key is set by the file itself, so a key added
    /// to the code and missing from the example fails this test.
    @Test func exampleConfigurationsPassCheckConfigAndSetEveryKey() async throws {
        let configDirectory = Self.root + "/config"
        let files = try FileManager.default.contentsOfDirectory(atPath: configDirectory).filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.contains("cloud-broker.yaml"))
        for file in files {
            let binary = file.hasPrefix("cloud-broker") ? "cloud-broker" : file.hasPrefix("edge-agent") ? "edge-agent" : nil
            guard let binary else {
                Issue.record("config/\(file): no binary is named by its prefix (cloud-broker* or edge-agent*)")
                continue
            }
            let path = configDirectory + "/" + file
            let environment = binary == "cloud-broker" ? TestEnvironment.kafkaClientEnvironment.merging(["TRIBUTARY_NODE_ID": "broker-1"]) { $1 } : [:]
            let result = try await Self.run(TestEnvironment.binary(binary), ["--config", path, "--check-config"], environment: environment)
            #expect(result.status == .exited(0), "\(binary) --check-config config/\(file):\n\(result.output)")
            guard result.status == .exited(0), file.hasPrefix("cloud-broker") || file == "edge-agent-gateway.yaml" else { continue }
            let entries = Self.parseCheckConfig(result.output)
            #expect(!entries.isEmpty)
            for entry in entries where entry.key != "node_id" {
                #expect(entry.origin == path, "config/\(file) does not set \(entry.key) (its value comes from \(entry.origin))")
            }
            // The comment of each key states the built-in default ("Default: 1ms."): a default changed in
            // the code must be changed in the example too.
            let required = binary == "cloud-broker" ? ["--node-id", "n", "--kafka-bootstrap", "127.0.0.1:9092"] : ["--agent-id", "a", "--upstream", "mqtt://127.0.0.1:1883"]
            let defaults = try await Self.run(TestEnvironment.binary(binary), required + ["--check-config"], environment: environment)
            let comments = Self.commentsByKey(try String(contentsOfFile: path, encoding: .utf8))
            for entry in Self.parseCheckConfig(defaults.output) {
                let comment = comments[entry.key] ?? ""
                let stated: [String] = switch entry.origin {
                case "command line": ["Default: none (required).", "Required."]
                case _ where entry.value.isEmpty: ["Default: empty.", "Default: empty (", "Default: none ("]
                default: ["Default: \(entry.value).", "Default: \(entry.value) (", "Defaults: \(entry.value) and", " and \(entry.value)."]
                }
                #expect(stated.contains { comment.contains($0) }, "config/\(file): the comment of \(entry.key) should state its default '\(entry.value)' (\(entry.origin)); it reads: \(comment)")
            }
        }
    }

    /// The environment files name every key of their binary as TRIBUTARY_<KEY>, and nothing else.
    @Test(arguments: ["edge-agent", "cloud-broker"])
    func environmentFilesNameEveryKey(binary: String) async throws {
        let arguments = binary == "cloud-broker" ? ["--node-id", "n", "--kafka-bootstrap", "127.0.0.1:9092"] : ["--agent-id", "a", "--upstream", "mqtt://127.0.0.1:1883"]
        let result = try await Self.run(TestEnvironment.binary(binary), arguments + ["--check-config"], environment: binary == "cloud-broker" ? TestEnvironment.kafkaClientEnvironment : [:])
        #expect(result.status == .exited(0), "\(result.output)")
        let keys = Set(Self.parseCheckConfig(result.output).map { "TRIBUTARY_" + $0.key.uppercased().replacingOccurrences(of: ".", with: "_") })
        let text = try String(contentsOfFile: Self.root + "/systemd/\(binary).env", encoding: .utf8)
        let named = Set(text.split(separator: "\n").compactMap { line -> String? in
            let body = line.hasPrefix("#") ? line.dropFirst() : line[...]
            guard body.hasPrefix("TRIBUTARY_"), let equals = body.firstIndex(of: "=") else { return nil }
            return String(body[..<equals])
        })
        #expect(!keys.isEmpty)
        #expect(keys.subtracting(named).isEmpty, "systemd/\(binary).env lacks \(keys.subtracting(named).sorted())")
        #expect(named.subtracting(keys).isEmpty, "systemd/\(binary).env names unknown keys \(named.subtracting(keys).sorted())")
    }

    @Test(.enabled(if: Self.tool("haproxy") != nil, "needs haproxy"))
    func haproxyExampleIsValid() async throws {
        let result = try await Self.run(Self.tool("haproxy") ?? "haproxy", ["-c", "-f", Self.root + "/config/haproxy.cfg"])
        #expect(result.status == .exited(0), "\(result.output)")
        let text = try String(contentsOfFile: Self.root + "/config/haproxy.cfg", encoding: .utf8)
        for required in ["mode tcp", "option redispatch", "timeout connect 1s", "uri /ready", "inter 500ms", "check port 9100"] {
            #expect(text.contains(required), "config/haproxy.cfg lacks '\(required)'")
        }
        // The commented-out TLS pass-through blocks are valid once uncommented.
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            line.hasPrefix("# frontend mqtts") || line.hasPrefix("# backend tributary_brokers_tls") || line.hasPrefix("#     ") ? String(line.dropFirst(2)) : String(line)
        }.joined(separator: "\n")
        #expect(uncommented.contains("\nfrontend mqtts\n") && uncommented.contains("\nbackend tributary_brokers_tls\n"))
        let directory = try Self.temporaryDirectory("haproxy-tls")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try uncommented.write(toFile: directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
        let tls = try await Self.run(Self.tool("haproxy") ?? "haproxy", ["-c", "-f", directory + "/haproxy.cfg"])
        #expect(tls.status == .exited(0), "with the TLS blocks uncommented: \(tls.output)")
    }

    /// config/haproxy.cfg, moved to loopback ports with one server, in front of a real broker: HAProxy's
    /// `/ready` check marks the node up, an MQTT publish goes through, and a stopped node is marked down.
    @Test(.enabled(if: Self.tool("haproxy") != nil, "needs haproxy"), .timeLimit(.minutes(2)))
    func haproxyExampleRoutesToReadyNodes() async throws {
        let directory = try Self.temporaryDirectory("haproxy")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await withProcesses { scope in
            let (broker, mqtt, http) = try await Self.startBroker(scope, nodeId: "lb-1")
            let (front, stats) = (try FreePort.next(), try FreePort.next())
            var text = try String(contentsOfFile: Self.root + "/config/haproxy.cfg", encoding: .utf8)
            let edits = [
                ("maxconn 200000", "maxconn 2000"), ("    bind :1883\n", "    bind 127.0.0.1:\(front)\n"), ("    bind :8404\n", "    bind 127.0.0.1:\(stats)\n"),
                ("check port 9100", "check port \(http)"), ("server broker-1 10.0.0.11:1883", "server broker-1 127.0.0.1:\(mqtt)"),
                ("    server broker-2 10.0.0.12:1883\n", ""), ("    server broker-3 10.0.0.13:1883\n", ""),
                ("    log /dev/log local0\n", ""), ("    user haproxy\n", ""), ("    group haproxy\n", ""), ("    daemon\n", ""),
            ]
            for (from, to) in edits {
                #expect(text.contains(from), "config/haproxy.cfg no longer contains '\(from)'")
                text = text.replacingOccurrences(of: from, with: to)
            }
            try text.write(toFile: directory + "/haproxy.cfg", atomically: true, encoding: .utf8)
            let haproxy = try scope.launch(name: "haproxy", executable: Self.tool("haproxy") ?? "haproxy", arguments: ["-f", directory + "/haproxy.cfg"])

            try await Self.waitForServerStatus("UP", statsPort: stats, process: haproxy)
            let publish = try await Self.run("mosquitto_pub", ["-h", "127.0.0.1", "-p", "\(front)", "-q", "1", "-t", "ops/lb", "-m", "through haproxy"], scope: scope)
            #expect(publish.status == .exited(0), "publish through HAProxy: \(publish.output)")
            await broker.stop()
            try await Self.waitForServerStatus("DOWN", statsPort: stats, process: haproxy)
        }
    }

    @Test(.enabled(if: Self.tool("promtool") != nil, "needs promtool (Debian package prometheus)"))
    func prometheusConfigAndDashboardQueriesParse() async throws {
        let promtool = Self.tool("promtool") ?? "promtool"
        let config = try await Self.run(promtool, ["check", "config", "--syntax-only", Self.root + "/config/prometheus.yml"])
        #expect(config.status == .exited(0), "\(config.output)")
        // Every dashboard query, as a recording rule, through Prometheus's own PromQL parser.
        // (Grafana's `label_values(...)` in variable definitions is not PromQL: its metric names are checked below.)
        let queries = try Self.dashboardQueries().map { $0.query }.filter { !$0.hasPrefix("label_values(") }
        let rules = "groups:\n- name: dashboards\n  rules:\n" + queries.enumerated().map { index, query in
            let concrete = query.replacingOccurrences(of: "$__rate_interval", with: "1m").replacingOccurrences(of: "$instance", with: ".*")
            let encoder = JSONEncoder()
            encoder.outputFormatting = .withoutEscapingSlashes  // a JSON string is a YAML string, but "\\/" is not
            let quoted = String(decoding: try! encoder.encode(concrete), as: UTF8.self)
            return "  - record: dashboard_query_\(index)\n    expr: \(quoted)\n"
        }.joined()
        let directory = try Self.temporaryDirectory("promql")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try rules.write(toFile: directory + "/rules.yml", atomically: true, encoding: .utf8)
        let check = try await Self.run(promtool, ["check", "rules", directory + "/rules.yml"])
        #expect(check.status == .exited(0), "\(check.output)")
        #expect(check.output.contains("SUCCESS: \(queries.count) rules found"), "\(check.output)")
    }

    /// Each dashboard imports into Grafana: a uid and title, a Prometheus data source variable, unique panel
    /// ids, panels within the 24-column grid, and every query with a refId.
    @Test func dashboardsAreWellFormed() throws {
        let directory = Self.root + "/dashboards"
        let files = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".json") }
        #expect(Set(files) == ["tributary-broker-cluster.json", "tributary-edge-agents.json"])
        for file in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + file))
            let board = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any], "\(file) is not a JSON object")
            #expect((board["uid"] as? String)?.isEmpty == false && (board["title"] as? String)?.isEmpty == false, "\(file): uid and title")
            let variables = ((board["templating"] as? [String: Any])?["list"] as? [[String: Any]]) ?? []
            #expect(variables.contains { $0["type"] as? String == "datasource" && $0["query"] as? String == "prometheus" }, "\(file): no Prometheus data source variable")
            let panels = (board["panels"] as? [[String: Any]]) ?? []
            let ids = panels.compactMap { $0["id"] as? Int }
            #expect(ids.count == panels.count && Set(ids).count == ids.count, "\(file): panel ids missing or repeated")
            for panel in panels {
                let title = panel["title"] as? String ?? "?"
                let grid = panel["gridPos"] as? [String: Int] ?? [:]
                #expect((grid["x"] ?? 99) + (grid["w"] ?? 99) <= 24 && (grid["h"] ?? 0) > 0, "\(file): panel '\(title)' is off the grid")
                guard panel["type"] as? String != "row" else { continue }
                let targets = panel["targets"] as? [[String: Any]] ?? []
                #expect(!targets.isEmpty, "\(file): panel '\(title)' has no query")
                for target in targets {
                    #expect(target["refId"] is String && (target["expr"] as? String)?.isEmpty == false, "\(file): panel '\(title)' has a query without refId or expr")
                }
            }
        }
    }

    // MARK: - dashboards against the running binaries

    /// Metrics that exist only once their event happened (an error, an overflow) and that this test does not
    /// provoke. The test still requires each to be declared in Sources/ under that exact name. The component
    /// owners are asked to register them at start, after which they leave this list.
    static let registeredOnFirstEvent: Set<String> = [
        "tributary_broker_kafka_errors_total",
        "tributary_broker_kafka_producer_recreations_total",
        "tributary_broker_messages_dropped_total",
        "tributary_broker_session_records_rejected_total",
        "tributary_agent_uplink_reconnects_total",
        "tributary_agent_upstream_refused_messages_total",
        "tributary_agent_undecodable_records_total",
        "tributary_agent_device_rejected_messages_total",
    ]

    /// Starts Tansu, a broker and an agent that forwards to it, drives a little traffic through both, then
    /// checks that every metric name in the dashboards' PromQL is exported by the process it is for.
    @Test(.timeLimit(.minutes(2)))
    func everyDashboardMetricIsExported() async throws {
        let wanted = try Self.dashboardQueries()
        let brokerNames = Set(wanted.filter { $0.dashboard.contains("broker") }.flatMap { Self.metricNames(in: $0.query) })
        let agentNames = Set(wanted.filter { $0.dashboard.contains("agent") }.flatMap { Self.metricNames(in: $0.query) })
        #expect(brokerNames.count > 10 && agentNames.count > 10, "too few metric names found in the dashboards")
        let sources = try Self.sourceText()
        for name in Self.registeredOnFirstEvent {
            #expect(brokerNames.union(agentNames).contains(name), "\(name) is listed but no dashboard uses it")
            #expect(sources.contains("\"\(name)\""), "\(name) is not declared in Sources/")
        }
        let dataDirectory = try Self.temporaryDirectory("agent-data")
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }

        try await withProcesses { scope in
            let (broker, mqtt, brokerHTTP) = try await Self.startBroker(scope, nodeId: "ops-1")
            let (devices, agentHTTP) = (try FreePort.next(), try FreePort.next())
            try await Self.waitForHTTP(port: brokerHTTP, path: "/ready", status: 200, process: broker)
            let agent = try scope.launch(
                name: "edge-agent", executable: TestEnvironment.binary("edge-agent"),
                arguments: ["--agent-id", "ops-agent", "--upstream", "mqtt://127.0.0.1:\(mqtt)", "--device-listen", "127.0.0.1:\(devices)",
                            "--data-dir", dataDirectory, "--http-listen", "127.0.0.1:\(agentHTTP)"])
            try await Self.waitForHTTP(port: agentHTTP, path: "/metrics", status: 200, process: agent)

            // Broker traffic: a retained QoS 1 publish (acknowledged after Kafka), QoS 0 and 2 publishes, a
            // persistent subscriber (its session is written to Kafka) that receives the retained message, a
            // client whose will is published when it dies,
            // and a connection that sends garbage.
            for (qos, retain) in [("1", true), ("0", false), ("2", false)] {
                let publish = try await Self.run(
                    "mosquitto_pub", ["-h", "127.0.0.1", "-p", "\(mqtt)", "-q", qos, "-t", "ops/qos\(qos)", "-m", "v"] + (retain ? ["-r"] : []), scope: scope)
                #expect(publish.status == .exited(0), "mosquitto_pub -q \(qos): \(publish.output)")
            }
            let subscribe = try await Self.run(
                "mosquitto_sub", ["-h", "127.0.0.1", "-p", "\(mqtt)", "-q", "1", "-c", "-i", "ops-persistent", "-t", "ops/#", "-C", "1", "-W", "20"], scope: scope)
            #expect(subscribe.status == .exited(0), "mosquitto_sub: \(subscribe.output)")
            let willing = try scope.launch(
                name: "will-client", executable: Self.tool("stdbuf") ?? "stdbuf",
                arguments: ["-oL", Self.tool("mosquitto_sub") ?? "mosquitto_sub", "-d", "-h", "127.0.0.1", "-p", "\(mqtt)", "-i", "ops-will", "-t", "ops/none", "--will-topic", "ops/will", "--will-payload", "gone"])
            try await willing.waitForLog(containing: "CONNACK", timeout: .seconds(20))
            await willing.stop(signal: SIGKILL)
            _ = TCPProbe.exchange(port: mqtt, request: [0xF0, 0x00], minimumReply: 0)

            // Agent traffic: a connection that sends garbage, and a device publish, buffered and forwarded upstream.
            _ = TCPProbe.exchange(port: devices, request: [0xF0, 0x00], minimumReply: 0)
            let device = try await Self.run("mosquitto_pub", ["-h", "127.0.0.1", "-p", "\(devices)", "-q", "1", "-t", "sensors/ops", "-m", "1"], scope: scope)
            #expect(device.status == .exited(0), "mosquitto_pub to the agent: \(device.output)")

            // Counters of these events appear when the events are processed: poll until all are there.
            let brokerMissing = try await Self.missingMetrics(brokerNames.subtracting(Self.registeredOnFirstEvent), port: brokerHTTP)
            let agentMissing = try await Self.missingMetrics(agentNames.subtracting(Self.registeredOnFirstEvent), port: agentHTTP)
            #expect(brokerMissing.isEmpty, "the broker dashboard queries metrics cloud-broker does not export: \(brokerMissing.sorted())")
            #expect(agentMissing.isEmpty, "the agent dashboard queries metrics edge-agent does not export: \(agentMissing.sorted())")
        }
    }
}

// MARK: - Helpers

extension OperationsTests {
    struct CommandResult {
        var status: ChildProcess.ExitStatus
        var output: String
    }

    /// Runs a command to completion (at most 60 s) in its own process scope; output is stdout and stderr.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String] = [:], scope: ProcessScope? = nil) async throws -> CommandResult {
        guard let path = executable.hasPrefix("/") ? executable : Self.tool(executable) else {
            throw HarnessError("\(executable) not found (PATH=\(ProcessInfo.processInfo.environment["PATH"] ?? "unset"))")
        }
        let name = URL(fileURLWithPath: path).lastPathComponent
        func launchAndWait(_ scope: ProcessScope) async throws -> CommandResult {
            let process = try scope.launch(name: name, executable: path, arguments: arguments, environment: environment)
            guard let status = await process.waitForExit(timeout: .seconds(60)) else {
                throw HarnessError("\(name) \(arguments.joined(separator: " ")) did not exit within 60 s:\n\(process.logTail())")
            }
            return CommandResult(status: status, output: process.logText())
        }
        if let scope { return try await launchAndWait(scope) }
        return try await withProcesses("ops-\(name)") { try await launchAndWait($0) }
    }

    /// A program on PATH or in the usual system folders (the test runner's PATH may be minimal).
    static func tool(_ name: String) -> String? {
        TestEnvironment.which(name)
            ?? ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func temporaryDirectory(_ label: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.path + "/tributary-ops-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Regular files below `directory`, as absolute paths inside it ("/etc/tributary/edge-agent.yaml").
    static func files(below directory: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { return [] }
        var result: [String] = []
        while let relative = enumerator.nextObject() as? String {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: directory + "/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue {
                result.append("/" + relative)
            }
        }
        return result
    }

    /// `systemd-analyze verify --root` resolves the units' dependencies (sysinit.target, ...) inside the root.
    static func provideSystemUnits(in root: String) throws {
        let target = root + "/usr/lib/systemd/system"
        try FileManager.default.createDirectory(atPath: root + "/usr/lib/systemd", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "/usr/lib/systemd/system", toPath: target)
    }

    static func verify(root: String, units: [String]) async throws -> CommandResult {
        try await run(Self.tool("systemd-analyze") ?? "systemd-analyze", ["verify", "--man=no", "--root=\(root)"] + units)
    }

    struct ConfigEntry {
        var key: String
        var value: String
        var origin: String
    }

    /// `--check-config` prints, per key, "# HELP (ORIGIN)" then "KEY: VALUE".
    static func parseCheckConfig(_ output: String) -> [ConfigEntry] {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var entries: [ConfigEntry] = []
        for (index, line) in lines.enumerated() where line.hasPrefix("# ") && line.hasSuffix(")") && index + 1 < lines.count {
            guard let open = line.range(of: " (", options: .backwards), let colon = lines[index + 1].range(of: ":") else { continue }
            let origin = String(line[open.upperBound..<line.index(before: line.endIndex)])
            let key = String(lines[index + 1][..<colon.lowerBound])
            let value = String(lines[index + 1][colon.upperBound...]).trimmingCharacters(in: .whitespaces)
            entries.append(ConfigEntry(key: key, value: value, origin: origin))
        }
        return entries
    }

    /// The comment block that documents each key of a commented YAML example: the comment lines above the
    /// key, or above the first of a group of sibling keys that share one comment.
    static func commentsByKey(_ yaml: String) -> [String: String] {
        var result: [String: String] = [:]
        var sections: [(indent: Int, name: String)] = []
        var pending: [String] = []
        var lastComment = ""
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("#") {
                pending.append(String(trimmed.dropFirst()).trimmingCharacters(in: .whitespaces))
                continue
            }
            if trimmed.isEmpty { pending = [] }  // a blank line ends a comment that documents no key
            guard !trimmed.isEmpty, let colon = trimmed.firstIndex(of: ":") else { continue }
            let indent = line.prefix { $0 == " " }.count
            sections.removeAll { $0.indent >= indent }
            let name = String(trimmed[..<colon])
            if !pending.isEmpty { lastComment = pending.joined(separator: " ") }
            pending = []
            if trimmed.hasSuffix(":") {
                sections.append((indent, name))
                lastComment = ""
            } else {
                result[(sections.map(\.name) + [name]).joined(separator: ".")] = lastComment
            }
        }
        return result
    }

    /// Every PromQL expression in dashboards/*.json (panel targets, also inside collapsed rows, and
    /// template variable queries), with the file it is from.
    static func dashboardQueries() throws -> [(dashboard: String, query: String)] {
        let directory = root + "/dashboards"
        var result: [(String, String)] = []
        for file in try FileManager.default.contentsOfDirectory(atPath: directory).filter({ $0.hasSuffix(".json") }).sorted() {
            let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + file))
            let json = try JSONSerialization.jsonObject(with: data)
            func collect(_ value: Any) {
                if let object = value as? [String: Any] {
                    for (key, child) in object {
                        if key == "expr" || key == "definition", let query = child as? String, !query.isEmpty { result.append((file, query)) }
                        collect(child)
                    }
                } else if let array = value as? [Any] {
                    array.forEach(collect)
                }
            }
            collect(json)
        }
        #expect(result.count >= 20, "dashboards/ holds too few queries: \(result.count)")
        return result
    }

    /// Metric names in a PromQL expression: our prefix, and `up`.
    static func metricNames(in query: String) -> [String] {
        let pattern = try! NSRegularExpression(pattern: "\\btributary_[a-z0-9_]+")
        let range = NSRange(query.startIndex..., in: query)
        return pattern.matches(in: query, range: range).compactMap { Range($0.range, in: query).map { String(query[$0]) } }
    }

    static func sourceText() throws -> String {
        var text = ""
        let sources = root + "/Sources"
        for relative in files(below: sources) where relative.hasSuffix(".swift") {
            text += try String(contentsOfFile: sources + relative, encoding: .utf8)
        }
        return text
    }

    /// Polls /metrics (deadline 20 s) until it exports every name in `names`; returns those still missing.
    static func missingMetrics(_ names: Set<String>, port: Int) async throws -> Set<String> {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(20)
        var missing = names
        while true {
            if let (status, body) = await HTTPProbe.get(port: port, path: "/metrics"), status == 200 {
                let exported = Set(body.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
                    String(line.prefix { $0 != "{" && $0 != " " })
                })
                missing = names.filter { !exported.contains($0) }
            }
            if missing.isEmpty || clock.now >= deadline { return missing }
            try await Task.sleep(for: .milliseconds(200))  // a deadline-bounded poll of an HTTP endpoint
        }
    }

    /// Starts Tansu and one cloud-broker on free loopback ports; returns the broker and its MQTT and HTTP ports.
    static func startBroker(_ scope: ProcessScope, nodeId: String) async throws -> (ChildProcess, mqtt: Int, http: Int) {
        let tansu = try await scope.startTansu()
        let (mqtt, http) = (try FreePort.next(), try FreePort.next())
        let broker = try scope.launch(
            name: "cloud-broker", executable: TestEnvironment.binary("cloud-broker"),
            arguments: ["--node-id", nodeId, "--kafka-bootstrap", tansu.bootstrapServers, "--mqtt-listen", "127.0.0.1:\(mqtt)", "--http-listen", "127.0.0.1:\(http)"],
            environment: TestEnvironment.kafkaClientEnvironment)
        return (broker, mqtt, http)
    }

    /// Polls HAProxy's stats CSV until server broker-1 has `status` (deadline 20 s).
    static func waitForServerStatus(_ status: String, statsPort: Int, process: ChildProcess) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(20)
        var last = ""
        while clock.now < deadline {
            if let (_, csv) = await HTTPProbe.get(port: statsPort, path: "/stats;csv") {
                last = csv.split(separator: "\n").first { $0.hasPrefix("tributary_brokers,broker-1,") }.map(String.init) ?? csv
                if last.split(separator: ",", omittingEmptySubsequences: false).dropFirst(17).first == Substring(status) { return }
            }
            if let exit = process.exitStatus { throw HarnessError("haproxy exited (\(exit)):\n\(process.logTail())") }
            try await Task.sleep(for: .milliseconds(100))  // a deadline-bounded poll of an HTTP endpoint
        }
        throw HarnessError("HAProxy did not mark broker-1 \(status) within 20 s; stats: \(last)")
    }

    static func waitForHTTP(port: Int, path: String, status wanted: Int, process: ChildProcess) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(30)
        var last = "no answer"
        while clock.now < deadline {
            if let (status, body) = await HTTPProbe.get(port: port, path: path) {
                if status == wanted { return }
                last = "\(status) \(body)"
            }
            if let exit = process.exitStatus {
                throw HarnessError("\(process.name) exited (\(exit)) before \(path) answered \(wanted):\n\(process.logTail())")
            }
            try await Task.sleep(for: .milliseconds(100))  // a deadline-bounded poll of an HTTP endpoint
        }
        throw HarnessError("\(process.name): \(path) did not answer \(wanted) within 30 s (last: \(last)):\n\(process.logTail())")
    }
}

/// GET on 127.0.0.1 through Foundation's URLSession; nil when nothing answers within 2 s.
enum HTTPProbe {
    static let session: URLSession = {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = 2
        return URLSession(configuration: configuration)
    }()

    static func get(port: Int, path: String) async -> (status: Int, body: String)? {
        guard let url = URL(string: "http://127.0.0.1:\(port)\(path)"),
            let (data, response) = try? await session.data(from: url),
            let http = response as? HTTPURLResponse
        else { return nil }
        return (http.statusCode, String(decoding: data, as: UTF8.self))
    }
}

/// The receiving end of sd_notify: a unix datagram socket, as systemd's NOTIFY_SOCKET.
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket(AF_UNIX) failed: \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw HarnessError("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw HarnessError("bind(\(path)) failed: \(errno)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    /// Receives datagrams until `done(received)` holds, `stopIf()` holds, or `timeout` passes (each receive
    /// blocks at most 200 ms).
    func receive(until done: ([String]) -> Bool, timeout: Duration, stopIf: () -> Bool) -> [String] {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var received: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while clock.now < deadline, !done(received) {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                received.append(String(decoding: buffer[0..<count], as: UTF8.self))
            } else if stopIf() {
                break
            }
        }
        return received
    }
}
