import Common
import Foundation
import NIOCore
import NIOSSL
import Testing
import TestSupport

@testable import CloudBroker

@Suite("Client certificate identity")
struct CertificateIdentityTests {
    /// `TestCertificates`' CA, server and client (CN=device-1) certificates, plus a client certificate with
    /// subject alternative names.
    static let moreCertificates = """
        openssl req -newkey rsa:2048 -nodes -keyout san.key -out san.csr -subj /CN=not-this-one 2>/dev/null
        printf 'subjectAltName=DNS:device-2.example,email:ops@example.com\\n' > client-san.ext
        openssl x509 -req -in san.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out san.pem -days 1 -extfile client-san.ext 2>/dev/null
        """

    static func certificates(_ scope: ProcessScope) async throws -> String {
        try await TestCertificates.make(scope, extra: moreCertificates)
    }

    @Test func namesAreReadFromTheCertificate() async throws {
        try await withProcesses { scope in
            let directory = try await Self.certificates(scope)
            let plain = CertificateNames(try #require(NIOSSLCertificate.fromPEMFile("\(directory)/client.pem").first))
            #expect(plain == CertificateNames(commonName: "device-1", alternativeNames: []))
            let san = CertificateNames(try #require(NIOSSLCertificate.fromPEMFile("\(directory)/san.pem").first))
            #expect(san == CertificateNames(commonName: "not-this-one", alternativeNames: ["device-2.example", "ops@example.com"]))
        }
    }

    /// mTLS with `mqtt.tls_identity: cn`: the CN is the user name for the ACL (`%u`); a CONNECT naming
    /// another user is refused (3.1.1 return code 5).
    @Test func commonNameIsTheUserNameForTheACL() async throws {
        let pub = try Tools.require("mosquitto_pub")
        try await withProcesses { scope in
            let directory = try await Self.certificates(scope)
            let tlsPort = try FreePort.next()
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: [
                "mqtt.tls_listen": "127.0.0.1:\(tlsPort)", "mqtt.tls_certificate": "\(directory)/server.pem",
                "mqtt.tls_private_key": "\(directory)/server.key", "mqtt.tls_client_ca": "\(directory)/ca.pem",
                "mqtt.tls_client_certificates": "required", "mqtt.tls_identity": "cn", "auth.acl": "* write devices/%u/#",
            ])
            try await TCPProbe.waitUntilServing(port: tlsPort, timeout: .seconds(10), process: broker.process)
            let tls = ["-h", "127.0.0.1", "-p", "\(tlsPort)", "--cafile", "\(directory)/ca.pem", "--cert", "\(directory)/client.pem", "--key", "\(directory)/client.key", "-q", "1"]
            let own = try await scope.run("pub-own", pub, tls + ["-V", "mqttv5", "-t", "devices/device-1/t", "-m", "own-topic"])
            #expect(own.0 == .exited(0), "the CN's own topic: \(own.1)")
            let sameName = try await scope.run("pub-same-name", pub, tls + ["-u", "device-1", "-t", "devices/device-1/t", "-m", "same-name"])
            #expect(sameName.0 == .exited(0), "the CN as user name: \(sameName.1)")
            let otherName = try await scope.run("pub-other-name", pub, tls + ["-u", "device-2", "-t", "devices/device-2/t", "-m", "other-name"])
            #expect(otherName.0 != .exited(0))
            #expect(otherName.1.lowercased().contains("not authori"), "3.1.1 refusal: \(otherName.1)")
            let otherTopic = try await scope.run("pub-other-topic", pub, tls + ["-V", "mqttv5", "-t", "devices/device-2/t", "-m", "other-topic"])
            _ = otherTopic  // acknowledged with 0x87 and not produced: checked in Kafka below
            // The plain TCP listener: no certificate, so a user name cannot claim an identity, nor can nobody.
            let plain = ["-h", "127.0.0.1", "-p", "\(broker.mqttPort)", "-q", "1", "-t", "devices/device-1/t"]
            let claimed = try await scope.run("pub-tcp-claimed", pub, plain + ["-u", "device-1", "-m", "claimed"])
            #expect(claimed.0 != .exited(0) && claimed.1.lowercased().contains("bad user name or password"), "TCP with a user name: \(claimed.1)")
            let nobody = try await scope.run("pub-tcp-anonymous", pub, plain + ["-m", "anonymous"])
            #expect(nobody.0 != .exited(0) && nobody.1.lowercased().contains("not authori"), "TCP anonymous: \(nobody.1)")
            let reader = try KafkaReader(tansu: tansu, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            let records = try await reader.waitUntil("the allowed publishes") { $0.count >= 2 }
            #expect(Set(records.compactMap(\.valueString)) == ["own-topic", "same-name"])
            let metrics = try await MetricsScrape.get(port: broker.httpPort)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_failures_total{method="certificate",reason="username_mismatch"}"#) == 1)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_accepted_total{method="certificate"}"#) == 3)
        }
    }
}
