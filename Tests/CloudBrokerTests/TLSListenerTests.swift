import Foundation
import Testing
import TestSupport

@Suite("TLS listener")
struct TLSListenerTests {
    @Test func clientsConnectOverTLSWithARequiredClientCertificate() async throws {
        let pub = try Tools.require("mosquitto_pub")
        try await withProcesses { scope in
            let directory = try await TestCertificates.make(scope)
            let tlsPort = try FreePort.next()
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: [
                "mqtt.tls_listen": "127.0.0.1:\(tlsPort)", "mqtt.tls_certificate": "\(directory)/server.pem",
                "mqtt.tls_private_key": "\(directory)/server.key", "mqtt.tls_client_ca": "\(directory)/ca.pem",
                "mqtt.tls_client_certificates": "required",
            ])
            try await TCPProbe.waitUntilServing(port: tlsPort, timeout: .seconds(10), process: broker.process)
            let withCertificate = try await scope.run("pub-tls", pub, [
                "-h", "127.0.0.1", "-p", "\(tlsPort)", "--cafile", "\(directory)/ca.pem", "--cert", "\(directory)/client.pem",
                "--key", "\(directory)/client.key", "-t", "tls/a", "-m", "over-tls", "-q", "1",
            ])
            #expect(withCertificate.0 == .exited(0), "with a client certificate: \(withCertificate.1)")
            let without = try await scope.run("pub-tls-no-cert", pub, [
                "-h", "127.0.0.1", "-p", "\(tlsPort)", "--cafile", "\(directory)/ca.pem", "-t", "tls/a", "-m", "x", "-q", "1",
            ])
            #expect(without.0 != .exited(0), "without a client certificate the handshake fails")
            let reader = try KafkaReader(tansu: tansu, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            let records = try await reader.waitUntil("the TLS publish") { !$0.isEmpty }
            #expect(records.map(\.valueString) == ["over-tls"])
        }
    }
}
