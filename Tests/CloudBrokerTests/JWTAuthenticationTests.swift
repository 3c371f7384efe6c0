import CryptoExtras
import Common
import Crypto
import Foundation
import NIOCore
import Testing
import TestSupport

@testable import CloudBroker

/// Signs JWTs with swift-crypto directly (not with jwt-kit, which the broker verifies with).
struct TokenSigner: Sendable {
    enum Key: Sendable {
        case hs256([UInt8])
        case rs256(_RSA.Signing.PrivateKey)
        case es256(P256.Signing.PrivateKey)
    }

    let key: Key
    var kid: String?

    static func hs256(kid: String? = nil) -> TokenSigner {
        TokenSigner(key: .hs256((0..<48).map { _ in UInt8.random(in: 0...255) }), kid: kid)
    }
    static func rs256(kid: String? = nil) throws -> TokenSigner { TokenSigner(key: .rs256(try _RSA.Signing.PrivateKey(keySize: .bits2048)), kid: kid) }
    static func es256(kid: String? = nil) -> TokenSigner { TokenSigner(key: .es256(P256.Signing.PrivateKey()), kid: kid) }

    var algorithm: String {
        switch key {
        case .hs256: "HS256"
        case .rs256: "RS256"
        case .es256: "ES256"
        }
    }

    /// The file the broker is configured with: the secret, or the public key in PEM.
    var verificationFile: Data {
        switch key {
        case .hs256(let secret): Data(secret)
        case .rs256(let key): Data(key.publicKey.pemRepresentation.utf8)
        case .es256(let key): Data(key.publicKey.pemRepresentation.utf8)
        }
    }

    func token(_ claims: [String: Any], algorithm header: String? = nil) throws -> String {
        var head: [String: Any] = ["alg": header ?? algorithm, "typ": "JWT"]
        if let kid { head["kid"] = kid }
        let input = Self.encode(try JSONSerialization.data(withJSONObject: head, options: .sortedKeys)) + "."
            + Self.encode(try JSONSerialization.data(withJSONObject: claims, options: .sortedKeys))
        let data = Data(input.utf8)
        let signature: Data = switch key {
        case .hs256(let secret): Data(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: secret)))
        case .rs256(let key): try key.signature(for: data, padding: .insecurePKCS1v1_5).rawRepresentation
        case .es256(let key): try key.signature(for: data).rawRepresentation
        }
        return input + "." + Self.encode(signature)
    }

    static func encode(_ data: Data) -> String {
        data.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    /// Claims valid for an hour from now.
    static func claims(sub: String, expiresIn: TimeInterval = 3600, extra: [String: Any] = [:]) -> [String: Any] {
        var claims: [String: Any] = ["sub": sub, "exp": Int(Date().timeIntervalSince1970 + expiresIn), "iat": Int(Date().timeIntervalSince1970)]
        for (name, value) in extra { claims[name] = value }
        return claims
    }
}

@Suite("JWT authentication")
struct JWTAuthenticationTests {
    /// Writes each signer's verification file into `directory` and returns the `auth.jwt.keys` entries.
    static func keyEntries(_ signers: [TokenSigner], in directory: String) throws -> [String] {
        try signers.enumerated().map { index, signer in
            let path = "\(directory)/jwt-key-\(index).\(signer.algorithm.lowercased())"
            try signer.verificationFile.write(to: URL(fileURLWithPath: path))
            return "\(signer.algorithm) \(path)" + (signer.kid.map { " \($0)" } ?? "")
        }
    }

    static func verifier(_ signers: [TokenSigner], _ configure: (inout JWTSettings) -> Void = { _ in }) throws -> JWTVerifier {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var settings = JWTSettings()
        settings.keys = try keyEntries(signers, in: directory).map(JWTSettings.parseKey)
        configure(&settings)
        return try JWTVerifier(settings: settings)
    }

    @Test(arguments: ["HS256", "RS256", "ES256"])
    func eachAlgorithmAcceptsValidTokensAndRefusesExpiredForgedAndWrongAlgorithm(_ algorithm: String) async throws {
        let make: () throws -> TokenSigner = switch algorithm {
        case "HS256": { .hs256() }
        case "RS256": { try .rs256() }
        default: { .es256() }
        }
        let signer = try make()
        let verifier = try Self.verifier([signer])
        let before = Date().timeIntervalSince1970
        let valid = try signer.token(TokenSigner.claims(sub: "device-7"))
        let accepted = await verifier.verify(valid)
        let after = Date().timeIntervalSince1970
        guard case .accepted(.jwt, "device-7", let validUntil?) = accepted else {
            Issue.record("expected accepted with an expiry, got \(accepted)")
            return
        }
        // The connection ends at exp + leeway (10 s); exp is an hour after the token was made (whole seconds).
        #expect((before + 3609...after + 3611).contains(validUntil.timeIntervalSince1970), "\(validUntil)")
        #expect(await verifier.verify(try signer.token(TokenSigner.claims(sub: "d", expiresIn: -60))) == .refused(.expired))
        // Within the leeway (10 s) an expired token still passes; a not-yet-valid one beyond it does not.
        #expect(acceptedIdentity(await verifier.verify(try signer.token(TokenSigner.claims(sub: "d", expiresIn: -3)))) == "d")
        let future = Int(Date().timeIntervalSince1970 + 120)
        #expect(await verifier.verify(try signer.token(TokenSigner.claims(sub: "d", extra: ["nbf": future]))) == .refused(.notYetValid))
        // Signed by another key of the same algorithm.
        let other = try make()
        #expect(await verifier.verify(try other.token(TokenSigner.claims(sub: "d"))) == .refused(.badSignature))
        // A tampered payload.
        var parts = try signer.token(TokenSigner.claims(sub: "d")).split(separator: ".").map(String.init)
        parts[1] = TokenSigner.encode(try JSONSerialization.data(withJSONObject: TokenSigner.claims(sub: "admin")))
        #expect(await verifier.verify(parts.joined(separator: ".")) == .refused(.badSignature))
        // A header naming another algorithm than the key's, `none`, and garbage.
        let otherAlgorithm = algorithm == "HS256" ? "RS256" : "HS256"
        #expect(await verifier.verify(try signer.token(TokenSigner.claims(sub: "d"), algorithm: otherAlgorithm)) == .refused(.algorithmMismatch))
        #expect(await verifier.verify(try signer.token(TokenSigner.claims(sub: "d"), algorithm: "none")) == .refused(.algorithmMismatch))
        #expect(await verifier.verify("not-a-token") == .refused(.tokenMalformed))
        // No exp at all.
        #expect(await verifier.verify(try signer.token(["sub": "d"])) == .refused(.missingExpiry))
    }

    @Test func publicKeyUsedAsAnHMACSecretIsRefused() async throws {
        // The classic confusion: an HS256 token whose secret is the RS256 public key the broker holds.
        let rsa = try TokenSigner.rs256()
        let verifier = try Self.verifier([rsa])
        let forged = TokenSigner(key: .hs256(Array(rsa.verificationFile)))
        #expect(await verifier.verify(try forged.token(TokenSigner.claims(sub: "admin"))) == .refused(.algorithmMismatch))
    }

    @Test func keysAreChosenByKidAndClaimsChecked() async throws {
        let a = TokenSigner.hs256(kid: "a")
        let b = TokenSigner.es256(kid: "b")
        let verifier = try Self.verifier([a, b]) {
            $0.issuer = "https://issuer.example"
            $0.audience = "tributary"
            $0.identityClaim = "device"
        }
        let good = TokenSigner.claims(sub: "s", extra: ["iss": "https://issuer.example", "aud": ["x", "tributary"], "device": "dev-1"])
        #expect(acceptedIdentity(await verifier.verify(try a.token(good))) == "dev-1")
        #expect(acceptedIdentity(await verifier.verify(try b.token(good))) == "dev-1")
        var unknown = b
        unknown.kid = "c"
        #expect(await verifier.verify(try unknown.token(good)) == .refused(.unknownKey))
        var wrongKid = b
        wrongKid.kid = "a"  // an ES256 signature presented as key a (HS256)
        #expect(await verifier.verify(try wrongKid.token(good)) == .refused(.algorithmMismatch))
        var issuer = good
        issuer["iss"] = "https://elsewhere.example"
        #expect(await verifier.verify(try a.token(issuer)) == .refused(.wrongIssuer))
        var audience = good
        audience["aud"] = "other"
        #expect(await verifier.verify(try a.token(audience)) == .refused(.wrongAudience))
        var identity = good
        identity["device"] = nil
        #expect(await verifier.verify(try a.token(identity)) == .refused(.missingIdentity))
    }

    @Test func theOrderOfMethods() throws {
        let file = try PasswordFile(contents: PasswordFile.line(user: "alice", password: Array("pw".utf8), iterations: 10), origin: "test")
        let verifier = try Self.verifier([.hs256()])
        var authenticator = Authenticator(passwordFile: file, jwt: verifier, certificateIdentity: .cn, allowAnonymous: false)
        let certificate = CertificateNames(commonName: "device-1", alternativeNames: ["device-1.example"])
        // 1. A certificate decides, whatever the password; another user name is refused.
        guard case .decided(.accepted(.certificate, identity: "device-1", _)) = authenticator.plan(Credentials(username: nil, password: Array("x".utf8), certificate: certificate)) else {
            Issue.record("certificate identity")
            return
        }
        guard case .decided(.refused(.usernameMismatch)) = authenticator.plan(Credentials(username: "alice", password: nil, certificate: certificate)) else {
            Issue.record("user name mismatch")
            return
        }
        // 2. A password-file user is checked against the file, 3. anyone else's password is a token.
        guard case .checkPassword(user: "alice", _) = authenticator.plan(Credentials(username: "alice", password: Array("pw".utf8))) else {
            Issue.record("password file first")
            return
        }
        guard case .verifyToken("t.o.k") = authenticator.plan(Credentials(username: "bob", password: Array("t.o.k".utf8))) else {
            Issue.record("JWT second")
            return
        }
        // 4. No credentials: anonymous only when allowed.
        guard case .decided(.refused(.anonymousNotAllowed)) = authenticator.plan(Credentials()) else {
            Issue.record("anonymous refused")
            return
        }
        authenticator.allowAnonymous = true
        guard case .decided(.accepted(.anonymous, identity: nil, _)) = authenticator.plan(Credentials()) else {
            Issue.record("anonymous allowed")
            return
        }
        authenticator.certificateIdentity = .san
        guard case .decided(.accepted(.certificate, identity: "device-1.example", _)) = authenticator.plan(Credentials(certificate: certificate)) else {
            Issue.record("SAN identity")
            return
        }
        // Certificate identity alone: without a certificate a client cannot choose its ACL identity.
        let certificateOnly = Authenticator(certificateIdentity: .cn, allowAnonymous: false)
        guard case .checkPassword = certificateOnly.plan(Credentials(username: "device-1", password: nil)) else {
            Issue.record("an unverifiable user name")
            return
        }
        #expect(certificateOnly.checkPassword(user: "device-1", password: []) == .refused(.badPassword))
        guard case .decided(.refused(.anonymousNotAllowed)) = certificateOnly.plan(Credentials()) else {
            Issue.record("anonymous with certificate identity alone")
            return
        }
    }

    /// A broker with HS256, RS256 and ES256 keys (by kid) and an ACL on `%u`; real clients connect with
    /// tokens in the password (mosquitto_pub, v3.1.1 and v5) and raw CONNECTs check the reason codes.
    @Test func brokerAuthenticatesTokensEndToEnd() async throws {
        let pub = try Tools.require("mosquitto_pub")
        let signers = [TokenSigner.hs256(kid: "hmac"), try TokenSigner.rs256(kid: "rsa"), TokenSigner.es256(kid: "ec")]
        try await withProcesses { scope in
            let keys = try Self.keyEntries(signers, in: scope.logDirectory)
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: [
                "auth.jwt.keys": keys.joined(separator: ","), "auth.acl": "* readwrite devices/%u/#",
            ])
            let port = "\(broker.mqttPort)"
            for (index, signer) in signers.enumerated() {
                let token = try signer.token(TokenSigner.claims(sub: "dev-\(index)"))
                let v5 = try await scope.run("pub-\(signer.algorithm)", pub, [
                    "-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-u", "jwt", "-P", token, "-t", "devices/dev-\(index)/t", "-m", "ok-\(index)", "-q", "1",
                ])
                #expect(v5.0 == .exited(0), "\(signer.algorithm) token: \(v5.1)")
            }
            // MQTT 3.1.1 with a token: allowed for its own topics (%u = sub), the ACL denies the others.
            let v3 = try await scope.run("pub-v3", pub, [
                "-h", "127.0.0.1", "-p", port, "-u", "anything", "-P", try signers[0].token(TokenSigner.claims(sub: "dev-0")), "-t", "devices/dev-0/v3", "-m", "ok-v3", "-q", "1",
            ])
            #expect(v3.0 == .exited(0), "3.1.1 token: \(v3.1)")
            // paho (MQTT 5; it sends a password only with a user name): an expired token gets 0x86 (134).
            let paho = try Tools.script(scope, "paho_jwt.py", Self.pahoJWT)
            let pahoRun = try await scope.run("paho-jwt", Tools.python, [
                paho, port, try signers[1].token(TokenSigner.claims(sub: "dev-1")), try signers[1].token(TokenSigner.claims(sub: "dev-1", expiresIn: -120)),
            ])
            #expect(pahoRun.0 == .exited(0) && pahoRun.1.contains("OK paho"), "paho: \(pahoRun.1)")
            let v5Client = try await RawMQTTClient.connect(port: broker.mqttPort)
            // MQTT 5 allows a password without a user name: the token alone.
            var connect = MQTTConnect(protocolVersion: .v5, clientIdentifier: "acl-probe", username: nil, password: ByteBuffer(string: try signers[2].token(TokenSigner.claims(sub: "dev-2"))))
            #expect(try await v5Client.handshake(connect).reasonCode == .success)
            try await v5Client.send(.publish(MQTTPublish(topic: "devices/dev-1/t", payload: ByteBuffer(string: "denied"), qos: .atLeastOnce, packetId: 1)))
            let denied = try await v5Client.next { if case .puback(let ack) = $0 { ack } else { nil } }
            #expect(denied.reasonCode == .notAuthorized, "another device's topic")
            await v5Client.close()

            // Refusals: expired, forged, wrong algorithm (v5: 0x86), and 3.1.1 (return code 4); then AUTH (0x8C).
            let expired = try signers[1].token(TokenSigner.claims(sub: "dev-1", expiresIn: -120))
            let forged = try TokenSigner.es256(kid: "ec").token(TokenSigner.claims(sub: "dev-2"))
            let wrongAlgorithm = try TokenSigner(key: .hs256(Array(signers[1].verificationFile)), kid: "rsa").token(TokenSigner.claims(sub: "dev-1"))
            for (name, token) in [("expired", expired), ("forged", forged), ("wrong-alg", wrongAlgorithm)] {
                for version in [MQTTProtocolVersion.v5, .v311] {
                    let client = try await RawMQTTClient.connect(port: broker.mqttPort)
                    connect = MQTTConnect(protocolVersion: version, clientIdentifier: "refused-\(name)", username: "jwt", password: ByteBuffer(string: token))
                    let ack = try await client.handshake(connect)
                    #expect(ack.reasonCode == .badUserNameOrPassword, "\(name) \(version)")
                    await client.close()
                }
            }
            let anonymous = try await RawMQTTClient.connect(port: broker.mqttPort)
            #expect(try await anonymous.handshake(MQTTConnect(protocolVersion: .v5, clientIdentifier: "anon")).reasonCode == .notAuthorized)
            await anonymous.close()
            let enhanced = try await RawMQTTClient.connect(port: broker.mqttPort)
            var properties = MQTTProperties()
            properties.authenticationMethod = "SCRAM-SHA-256"
            #expect(try await enhanced.handshake(MQTTConnect(protocolVersion: .v5, clientIdentifier: "scram", properties: properties)).reasonCode == .badAuthenticationMethod)
            await enhanced.close()

            let reader = try KafkaReader(tansu: tansu, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            let records = try await reader.waitUntil("the token-authenticated publishes") { $0.count >= 5 }
            #expect(Set(records.compactMap(\.valueString)) == ["ok-0", "ok-1", "ok-2", "ok-v3", "ok-paho"])
            let metrics = try await MetricsScrape.get(port: broker.httpPort)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_failures_total{method="jwt",reason="expired"}"#) == 3)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_failures_total{method="jwt",reason="bad_signature"}"#) == 2)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_failures_total{method="jwt",reason="algorithm_mismatch"}"#) == 2)
            #expect(MetricsScrape.value(metrics, #"tributary_broker_auth_accepted_total{method="jwt"}"#) == 6)
            let log = broker.process.logText()
            #expect(log.contains("authentication refused"))
            for token in [expired, forged, wrongAlgorithm] { #expect(!log.contains(token), "a token was logged") }
        }
    }

    /// argv: port, valid token (sub dev-1), expired token. Prints "OK paho" when the valid token connects and
    /// publishes to devices/dev-1/paho and the expired one is refused with 134 (bad user name or password).
    static let pahoJWT = """
        import sys, threading
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        port, good, expired = int(sys.argv[1]), sys.argv[2], sys.argv[3]

        def connect(token, client_id):
            done, result = threading.Event(), {}
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
            client.username_pw_set("jwt", token)
            def on_connect(c, userdata, flags, reason, properties):
                result["rc"] = reason.value
                done.set()
            client.on_connect = on_connect
            client.connect("127.0.0.1", port)
            client.loop_start()
            if not done.wait(10):
                sys.exit("no CONNACK")
            return client, result["rc"]

        client, rc = connect(good, "paho-jwt")
        if rc != 0:
            sys.exit(f"valid token refused: {rc}")
        info = client.publish("devices/dev-1/paho", b"ok-paho", qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            sys.exit("publish not acknowledged")
        client.disconnect()
        client.loop_stop()
        refused, rc = connect(expired, "paho-expired")
        refused.loop_stop()
        if rc != 134:
            sys.exit(f"expired token: reason {rc}, expected 134")
        print("OK paho")
        """

    /// The token in the user name (`auth.jwt.token_in: username`), with a password-file user beside it.
    /// A connection lives only as long as its token: at `exp` (leeway 0 here) an MQTT 5 client gets DISCONNECT
    /// 0xA0 and is closed, a 3.1.1 client is closed; a client whose token is still valid stays connected.
    @Test func connectionsEndWhenTheirTokenExpires() async throws {
        let signer = TokenSigner.hs256(kid: "hmac")
        try await withProcesses { scope in
            let keys = try Self.keyEntries([signer], in: scope.logDirectory)
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["auth.jwt.keys": keys.joined(separator: ","), "auth.jwt.leeway": "0s"])
            let shortLived = try signer.token(TokenSigner.claims(sub: "dev-1", expiresIn: 3))
            var clients: [RawMQTTClient] = []
            for version in [MQTTProtocolVersion.v5, .v311] {
                let client = try await RawMQTTClient.connect(port: broker.mqttPort)
                let connect = MQTTConnect(protocolVersion: version, clientIdentifier: "short-\(version)", keepAlive: 0, username: "jwt", password: ByteBuffer(string: shortLived))
                #expect(try await client.handshake(connect).reasonCode == .success)
                clients.append(client)
            }
            let longLived = try await RawMQTTClient.connect(port: broker.mqttPort)
            let connect = MQTTConnect(protocolVersion: .v5, clientIdentifier: "long", keepAlive: 0, username: "jwt", password: ByteBuffer(string: try signer.token(TokenSigner.claims(sub: "dev-2"))))
            #expect(try await longLived.handshake(connect).reasonCode == .success)

            let disconnect = try await clients[0].next(timeout: .seconds(15)) { if case .disconnect(let d) = $0 { d } else { nil } }
            #expect(disconnect.reasonCode == .maximumConnectTime)
            #expect(try await clients[0].next(timeout: .seconds(5)) == .closed)
            #expect(try await clients[1].next(timeout: .seconds(5)) == .closed, "3.1.1: closed without a DISCONNECT")
            // The long-lived token's connection is still served.
            try await longLived.send(.pingreq)
            _ = try await longLived.next { if case .pingresp = $0 { true } else { nil } }
            await longLived.close()
        }
    }

    @Test func tokenInTheUserNameBesideAPasswordFile() async throws {
        let pub = try Tools.require("mosquitto_pub")
        let signer = TokenSigner.es256()
        try await withProcesses { scope in
            let keys = try Self.keyEntries([signer], in: scope.logDirectory)
            let passwords = scope.logDirectory + "/passwords"
            try (PasswordFile.line(user: "alice", password: Array("s3cret".utf8), iterations: 1000) + "\n").write(toFile: passwords, atomically: true, encoding: .utf8)
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: [
                "auth.jwt.keys": keys[0], "auth.jwt.token_in": "username", "auth.password_file": passwords,
                "auth.acl": "* write users/%u/#",
            ])
            let port = "\(broker.mqttPort)"
            let token = try signer.token(TokenSigner.claims(sub: "dev-9"))
            let viaToken = try await scope.run("pub-token-user", pub, ["-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-u", token, "-t", "users/dev-9/a", "-m", "token", "-q", "1"])
            #expect(viaToken.0 == .exited(0), "token in the user name: \(viaToken.1)")
            let viaPassword = try await scope.run("pub-alice", pub, ["-h", "127.0.0.1", "-p", port, "-u", "alice", "-P", "s3cret", "-t", "users/alice/a", "-m", "password", "-q", "1"])
            #expect(viaPassword.0 == .exited(0), "password file user: \(viaPassword.1)")
            let client = try await RawMQTTClient.connect(port: broker.mqttPort)
            let expired = try signer.token(TokenSigner.claims(sub: "dev-9", expiresIn: -120))
            #expect(try await client.handshake(MQTTConnect(protocolVersion: .v311, clientIdentifier: "old", username: expired)).reasonCode == .badUserNameOrPassword)
            await client.close()
            let reader = try KafkaReader(tansu: tansu, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            let records = try await reader.waitUntil("both publishes") { $0.count >= 2 }
            #expect(Set(records.compactMap(\.valueString)) == ["token", "password"])
            #expect(!broker.process.logText().contains(expired), "the token was logged")
        }
    }
}

/// The identity of an accepted JWT outcome (nil otherwise).
private func acceptedIdentity(_ outcome: AuthenticationOutcome) -> String? {
    if case .accepted(.jwt, let identity, _) = outcome { identity } else { nil }
}

@Suite("Authentication in the connection state machine")
struct AuthenticationStateMachineTests {
    typealias Machine = MQTTServerConnection.StateMachine

    static var limits: BrokerLimits {
        var limits = BrokerLimits()
        limits.authentication = .checked
        limits.access = AccessRules(rules: [.init(user: nil, access: .write, filter: "devices/%u/#")])
        return limits
    }

    static func connect(_ machine: inout Machine, version: MQTTProtocolVersion = .v5) -> [Machine.Action] {
        let connect = MQTTConnect(protocolVersion: version, clientIdentifier: "c1", username: "jwt", password: ByteBuffer(string: "a.b.c"))
        return machine.packetReceived(.connect(connect), now: .now(), wallClock: Date())
    }

    @Test func theAuthenticatedIdentityIsTheUserForTheACL() {
        var machine = Machine(limits: Self.limits)
        let first = Self.connect(&machine)
        guard case .authenticate(username: "jwt", password: let password?) = first.last, password == Array("a.b.c".utf8) else {
            Issue.record("expected authenticate, got \(first)")
            return
        }
        guard case .attachSession(let request) = machine.authenticated(.accepted(.jwt, identity: "dev-1")).last else {
            Issue.record("expected attachSession")
            return
        }
        _ = machine.sessionAttached(SessionState(clientId: request.clientId, expiryInterval: 0), present: false, requestedKeepAlive: 60, now: Date())
        let own = machine.packetReceived(.publish(MQTTPublish(topic: "devices/dev-1/t", payload: ByteBuffer(string: "x"))), now: .now(), wallClock: Date())
        #expect(own.contains { if case .produce = $0 { true } else { false } }, "the identity's own topic")
        let userName = machine.packetReceived(.publish(MQTTPublish(topic: "devices/jwt/t", payload: ByteBuffer(string: "x"))), now: .now(), wallClock: Date())
        #expect(!userName.contains { if case .produce = $0 { true } else { false } }, "the CONNECT user name is not the identity")
    }

    /// A connection authenticated by a token ends when the token expires: MQTT 5 gets DISCONNECT 0xA0 after
    /// the CONNACK; a timer firing before the wall clock reached the expiry is set again; 3.1.1 is closed.
    @Test func aConnectionEndsWhenItsTokenExpires() {
        for version in [MQTTProtocolVersion.v5, .v311] {
            var machine = Machine(limits: Self.limits)
            _ = Self.connect(&machine, version: version)
            let validUntil = Date().addingTimeInterval(30)
            guard case .attachSession(let request) = machine.authenticated(.accepted(.jwt, identity: "dev-1", validUntil: validUntil)).last else {
                Issue.record("expected attachSession")
                return
            }
            let attached = machine.sessionAttached(SessionState(clientId: request.clientId, expiryInterval: 0), present: false, requestedKeepAlive: 60, now: Date())
            #expect(attached.contains { if case .scheduleCredentialsExpiry(validUntil) = $0 { true } else { false } }, "\(attached)")
            let early = machine.credentialsExpired(now: validUntil.addingTimeInterval(-0.5))
            #expect(early.count == 1 && { if case .scheduleCredentialsExpiry(validUntil) = early[0] { true } else { false } }(), "\(early)")
            let due = machine.credentialsExpired(now: validUntil)
            if version == .v5 {
                guard case .send(.disconnect(let disconnect)) = due.first else {
                    Issue.record("expected DISCONNECT, got \(due)")
                    return
                }
                #expect(disconnect.reasonCode == .maximumConnectTime)
            } else {
                #expect(!due.contains { if case .send = $0 { true } else { false } }, "no DISCONNECT in 3.1.1")
            }
            #expect(due.contains { if case .close = $0 { true } else { false } })
        }
        // Credentials without an expiry schedule nothing.
        var machine = Machine(limits: Self.limits)
        _ = Self.connect(&machine)
        guard case .attachSession(let request) = machine.authenticated(.accepted(.password, identity: "u")).last else {
            Issue.record("expected attachSession")
            return
        }
        let attached = machine.sessionAttached(SessionState(clientId: request.clientId, expiryInterval: 0), present: false, requestedKeepAlive: 60, now: Date())
        #expect(!attached.contains { if case .scheduleCredentialsExpiry = $0 { true } else { false } })
    }

    @Test(arguments: [AuthenticationFailure.expired, .wrongAudience])
    func aRefusalSendsItsReasonCodeAndCloses(_ failure: AuthenticationFailure) {
        var machine = Machine(limits: Self.limits)
        _ = Self.connect(&machine)
        let actions = machine.authenticated(.refused(failure))
        guard case .send(.connack(let connack)) = actions.first, case .close = actions.last else {
            Issue.record("expected CONNACK then close, got \(actions)")
            return
        }
        #expect(connack.reasonCode == failure.reasonCode)
        #expect(machine.isClosed)
    }
}
