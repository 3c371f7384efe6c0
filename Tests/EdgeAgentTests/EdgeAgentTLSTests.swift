#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport

/// TLS on both sides of the agent, with real processes and openssl-made certificates (`TestCertificates`):
/// mosquitto_pub over TLS → the agent's device TLS listener; the uplink over TLS / mTLS → mosquitto's TLS
/// listener.
@Suite("Edge agent TLS")
struct EdgeAgentTLSTests {
    static func publish(_ scope: ProcessScope, port: Int, certificates: String, clientCertificate: Bool, message: String) async throws -> (ChildProcess.ExitStatus, String) {
        var arguments = ["-h", "127.0.0.1", "-p", "\(port)", "--cafile", "\(certificates)/ca.pem", "-q", "1", "-t", "tls/a", "-m", message]
        if clientCertificate { arguments += ["--cert", "\(certificates)/client.pem", "--key", "\(certificates)/client.key"] }
        return try await scope.run("pub-\(message)", try AgentHarness.tool("mosquitto_pub"), arguments, timeout: .seconds(20))
    }

    static func deviceTLSSettings(_ certificates: String, port: Int, clientCertificates: String) -> [String] {
        [
            "--set", "device.tls_listen=127.0.0.1:\(port)", "--set", "device.tls.cert_file=\(certificates)/server.pem",
            "--set", "device.tls.key_file=\(certificates)/server.key", "--set", "device.tls.client_ca_file=\(certificates)/ca.pem",
            "--set", "device.tls.client_certificates=\(clientCertificates)",
        ]
    }

    @Test("device TLS, client certificates none or optional: mosquitto_pub --cafile publishes through the agent's TLS listener with and without a client certificate; a plain client on the TLS port stores nothing", arguments: ["none", "optional"])
    func deviceTLS(clientCertificates: String) async throws {
        try await withProcesses { scope in
            let certificates = try await TestCertificates.make(scope)
            let data = try AgentHarness.temporaryDirectory("device-tls-\(clientCertificates)")
            let broker = try await scope.startMosquitto()
            let subscriber = try await AgentHarness.startMosquittoSub(scope, port: broker.port, topic: "tls/#", count: 2, format: "MSG|%t|%p")
            let ports = try AgentHarness.ports()
            let tlsPort = try FreePort.next()
            _ = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port,
                extra: Self.deviceTLSSettings(certificates, port: tlsPort, clientCertificates: clientCertificates))
            let plain = try await scope.run("pub-plain", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(tlsPort)", "-q", "1", "-t", "tls/a", "-m", "plain", "-V", "5",
            ], timeout: .seconds(20))
            #expect(plain.0 != .exited(0), "plain MQTT on the TLS port: \(plain.1)")
            let without = try await Self.publish(scope, port: tlsPort, certificates: certificates, clientCertificate: false, message: "no-cert")
            #expect(without.0 == .exited(0), "mosquitto_pub --cafile: \(without.1)")
            let with = try await Self.publish(scope, port: tlsPort, certificates: certificates, clientCertificate: true, message: "with-cert")
            #expect(with.0 == .exited(0), "mosquitto_pub --cafile --cert: \(with.1)")
            #expect(try await AgentHarness.messageLines(subscriber) == ["MSG|tls/a|no-cert", "MSG|tls/a|with-cert"])
        }
    }

    @Test("device mTLS required: with a client certificate the publish goes through; without one the handshake fails and nothing is stored")
    func deviceMutualTLS() async throws {
        try await withProcesses { scope in
            let certificates = try await TestCertificates.make(scope)
            let data = try AgentHarness.temporaryDirectory("device-mtls")
            let broker = try await scope.startMosquitto()
            let subscriber = try await AgentHarness.startMosquittoSub(scope, port: broker.port, topic: "tls/#", count: 2, format: "MSG|%t|%p")
            let ports = try AgentHarness.ports()
            let tlsPort = try FreePort.next()
            let agent = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port,
                extra: Self.deviceTLSSettings(certificates, port: tlsPort, clientCertificates: "required"))
            let first = try await Self.publish(scope, port: tlsPort, certificates: certificates, clientCertificate: true, message: "with-cert")
            #expect(first.0 == .exited(0), "with a client certificate: \(first.1)")
            let refused = try await Self.publish(scope, port: tlsPort, certificates: certificates, clientCertificate: false, message: "no-cert")
            #expect(refused.0 != .exited(0), "without a client certificate: \(refused.1)")
            let last = try await Self.publish(scope, port: tlsPort, certificates: certificates, clientCertificate: true, message: "again")
            #expect(last.0 == .exited(0), "\(last.1)")
            #expect(try await AgentHarness.messageLines(subscriber) == ["MSG|tls/a|with-cert", "MSG|tls/a|again"])
            #expect(try await AgentHarness.metric(scope, port: ports.http, "tributary_buffer_appends_total") == 2)
            #expect(agent.isRunning)
        }
    }

    /// mosquitto with a TLS listener (its lines follow the `listener` line, so they configure it).
    static func startTLSMosquitto(_ scope: ProcessScope, certificates: String, requireCertificate: Bool) async throws -> MosquittoBroker {
        try await scope.startMosquitto(extraConfiguration: [
            "cafile \(certificates)/ca.pem", "certfile \(certificates)/server.pem", "keyfile \(certificates)/server.key",
            "require_certificate \(requireCertificate)",
        ])
    }

    @Test("uplink TLS and mTLS: records reach a mosquitto TLS listener (server verified against the CA; with require_certificate the agent's client certificate is needed, and without it nothing gets through)")
    func uplinkTLSAndMutualTLS() async throws {
        try await withProcesses { scope in
            let certificates = try await TestCertificates.make(scope)
            let tlsClient = ["--cafile", "\(certificates)/ca.pem", "--cert", "\(certificates)/client.pem", "--key", "\(certificates)/client.key"]
            for mutual in [false, true] {
                let label = mutual ? "mtls" : "tls"
                let data = try AgentHarness.temporaryDirectory("uplink-\(label)")
                let broker = try await Self.startTLSMosquitto(scope, certificates: certificates, requireCertificate: mutual)
                let subscriber = try await AgentHarness.startMosquittoSub(
                    scope, port: broker.port, topic: "up/#", count: mutual ? 2 : 1, format: "MSG|%t|%p", extra: tlsClient, name: "sub-\(label)")
                let ports = try AgentHarness.ports()
                let url = "mqtts://127.0.0.1:\(broker.port)"
                var settings = ["--set", "upstream.tls.ca_file=\(certificates)/ca.pem"]
                var expected: [String] = []
                if mutual {
                    // First without the client certificate: the handshake is refused; a device's record waits in the buffer.
                    let refused = try await AgentHarness.startAgent(
                        scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, upstreamURL: url,
                        extra: settings, name: "agent-no-cert")
                    try await refused.waitForLog(containing: "Uplink reconnecting after a delay", timeout: .seconds(10))
                    let (status, output) = try await scope.run("pub-buffered", try AgentHarness.tool("mosquitto_pub"), [
                        "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "1", "-t", "up/buffered", "-m", "buffered",
                    ])
                    #expect(status == .exited(0), "\(output)")
                    _ = try await AgentHarness.waitForMetric(scope, port: ports.http, "tributary_agent_uplink_reconnects_total") { $0 >= 2 }
                    #expect(!refused.logText().contains("Uplink connected"))
                    #expect(!subscriber.logText().contains("MSG|"), "nothing may get through without the client certificate")
                    _ = await refused.stop()
                    settings += ["--set", "upstream.tls.cert_file=\(certificates)/client.pem", "--set", "upstream.tls.key_file=\(certificates)/client.key"]
                    expected.append("MSG|up/buffered|buffered")
                }
                let agent = try await AgentHarness.startAgent(
                    scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, upstreamURL: url,
                    extra: settings, name: "agent-\(label)")
                try await agent.waitForLog(containing: "Uplink connected", timeout: .seconds(10))
                let (status, output) = try await scope.run("pub-\(label)", try AgentHarness.tool("mosquitto_pub"), [
                    "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "1", "-t", "up/\(label)", "-m", "via-\(label)",
                ])
                #expect(status == .exited(0), "\(output)")
                expected.append("MSG|up/\(label)|via-\(label)")
                #expect(try await AgentHarness.messageLines(subscriber) == expected, "\(label)")
                _ = await agent.stop()
            }
        }
    }

    @Test("uplink TLS verifies the broker: trusting only the system store (not the test CA) the agent never connects, and nothing is forwarded")
    func uplinkVerifiesTheServer() async throws {
        try await withProcesses { scope in
            let certificates = try await TestCertificates.make(scope)
            let data = try AgentHarness.temporaryDirectory("uplink-untrusted")
            let broker = try await Self.startTLSMosquitto(scope, certificates: certificates, requireCertificate: false)
            let ports = try AgentHarness.ports()
            let agent = try await AgentHarness.startAgent(
                scope, ports: ports, dataDirectory: data + "/agent", upstreamPort: broker.port, upstreamURL: "mqtts://127.0.0.1:\(broker.port)")
            let (status, output) = try await scope.run("pub", try AgentHarness.tool("mosquitto_pub"), [
                "-h", "127.0.0.1", "-p", "\(ports.device)", "-q", "1", "-t", "up/x", "-m", "held",
            ])
            #expect(status == .exited(0), "\(output)")
            _ = try await AgentHarness.waitForMetric(scope, port: ports.http, "tributary_agent_uplink_reconnects_total") { $0 >= 3 }
            #expect(!agent.logText().contains("Uplink connected"))
            #expect(agent.logText().contains("CERTIFICATE_VERIFY_FAILED"), "the failure names the certificate: \(agent.logTail(lines: 3))")
            #expect(try await AgentHarness.metric(scope, port: ports.http, "tributary_agent_forwarded_messages_total") == 0)
            #expect(try await AgentHarness.metric(scope, port: ports.http, "tributary_buffer_records") == 1)
        }
    }
}
