import Foundation
import Testing
import TestSupport

/// The HAProxy configurations: the production example (config/haproxy.cfg), the template that scripts/cluster
/// and the cluster tests render, and scripts/cluster itself check the nodes the same way, and HAProxy accepts
/// what is rendered.
@Suite("cloud-broker cluster: HAProxy configuration")
struct ClusterConfigTests {
    static func file(_ path: String) throws -> String {
        try String(contentsOfFile: TestEnvironment.packageRoot + "/" + path, encoding: .utf8)
    }

    @Test func productionExampleScriptAndTestsUseTheSameHealthCheck() throws {
        let production = try Self.file("config/haproxy.cfg").split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        let script = try Self.file("scripts/cluster")
        for line in HAProxyConfig.brokerHealthCheck {
            if line.hasPrefix("default-server") {
                // Production names the port of /ready once for all servers; local nodes each have their own.
                #expect(production.contains(line.replacingOccurrences(of: "default-server check ", with: "default-server check port 9100 ")),
                        "config/haproxy.cfg lacks: \(line)")
            } else {
                #expect(production.contains(line), "config/haproxy.cfg lacks: \(line)")
            }
            #expect(script.contains(line), "scripts/cluster lacks: \(line)")
        }
        let template = try Self.file("config/haproxy-cluster.cfg.in")
        for setting in ["timeout connect 1s", "option redispatch 1", "balance leastconn", "timeout client 10m", "timeout server 10m"] {
            #expect(production.contains(setting), "config/haproxy.cfg lacks: \(setting)")
            #expect(template.contains(setting), "config/haproxy-cluster.cfg.in lacks: \(setting)")
        }
    }

    @Test func renderedTemplateIsAcceptedByHAProxy() async throws {
        try await withProcesses { scope in
            let template = try String(contentsOfFile: HAProxyConfig.templatePath, encoding: .utf8)
            let config = try HAProxyConfig.render(template: template, values: [
                "MAXCONN": "1000", "FRONTEND_BIND": "127.0.0.1:1", "STATS_BIND": "127.0.0.1:2",
                "HEALTH_CHECK": HAProxyConfig.brokerHealthCheck.joined(separator: "\n"),
                "SERVERS": "server node-1 127.0.0.1:3 port 4\nserver node-2 127.0.0.1:5 port 6",
            ])
            #expect(!config.split(separator: "\n").contains { !$0.hasPrefix("#") && $0.contains("{{") })
            #expect(config.contains("    server node-2 127.0.0.1:5 port 6"))
            let path = try Tools.script(scope, "rendered.cfg", config)
            let (status, output) = try await scope.run("haproxy-check", try Tools.require("haproxy"), ["-c", "-f", path])
            #expect(status == .exited(0), "haproxy -c: \(output)")
            #expect(throws: HarnessError.self) { try HAProxyConfig.render(template: "x {{MISSING}}", values: [:]) }
        }
    }
}
