import Foundation
import Testing
import TestSupport

@testable import CloudBroker

@Suite("Password file authentication")
struct AuthenticationTests {
    @Test func pbkdf2MatchesTheRFC7914TestVector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P = "passwd", S = "salt", c = 1, dkLen = 64.
        let key = PasswordFile.pbkdf2SHA256(password: Array("passwd".utf8), salt: Array("salt".utf8), iterations: 1, length: 64)
        #expect(key.map { String(format: "%02x", $0) }.joined() == "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783")
    }

    @Test func linesRoundTripAndWrongPasswordsFail() throws {
        let file = try PasswordFile(contents: "# users\n" + PasswordFile.line(user: "alice", password: Array("s3cret".utf8), iterations: 1000) + "\n", origin: "test")
        #expect(file.verify(user: "alice", password: Array("s3cret".utf8)))
        #expect(!file.verify(user: "alice", password: Array("wrong".utf8)))
        #expect(!file.verify(user: "mallory", password: Array("s3cret".utf8)))
        #expect(throws: BrokerError.self) { try PasswordFile(contents: "alice:md5$x", origin: "bad") }
    }

    @Test func brokerAcceptsGoodCredentialsAndRefusesOthers() async throws {
        let pub = try Tools.require("mosquitto_pub")
        try await withProcesses { scope in
            let path = scope.logDirectory + "/passwords"
            let (written, output) = try await scope.run(
                "passwd", TestEnvironment.binary("cloud-broker"), ["passwd", path, "alice", "--password", "s3cret", "--iterations", "1000"])
            #expect(written == .exited(0), "passwd: \(output)")
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["auth.password_file": path])
            let port = "\(broker.mqttPort)"
            let good = try await scope.run("pub-good", pub, ["-h", "127.0.0.1", "-p", port, "-u", "alice", "-P", "s3cret", "-t", "a", "-m", "x", "-q", "1"])
            #expect(good.0 == .exited(0), "good credentials: \(good.1)")
            let bad = try await scope.run("pub-bad", pub, ["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-u", "alice", "-P", "nope", "-t", "a", "-m", "x", "-q", "1"])
            #expect(bad.0 != .exited(0))
            #expect(bad.1.lowercased().contains("bad user name or password"), "v5 reason: \(bad.1)")
            let anonymous = try await scope.run("pub-anonymous", pub, ["-h", "127.0.0.1", "-p", port, "-t", "a", "-m", "x", "-q", "1"])
            #expect(anonymous.0 != .exited(0))
            #expect(anonymous.1.lowercased().contains("not authorised") || anonymous.1.lowercased().contains("not authorized"), "3.1.1 refusal: \(anonymous.1)")
        }
    }
}
