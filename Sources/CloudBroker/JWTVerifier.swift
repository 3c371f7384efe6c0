import Foundation
import JWTKit

/// `auth.jwt.*`: how JSON Web Tokens are carried and which ones are accepted.
struct JWTSettings: Sendable {
    /// Which CONNECT field carries the token.
    enum Carrier: String, Sendable, CaseIterable { case password, username }

    /// One verification key: its algorithm, optional key id and the PEM file or secret file it came from.
    struct Key: Sendable {
        enum Algorithm: String, Sendable, CaseIterable {
            case hs256 = "HS256", rs256 = "RS256", es256 = "ES256"
        }
        var algorithm: Algorithm
        var kid: String?
        var path: String
    }

    var tokenIn: Carrier = .password
    var identityClaim: String = "sub"
    var issuer: String?
    var audience: String?
    var leeway: Duration = .seconds(10)
    var requireExpiry = true
    /// End a connection when its token expires (`exp` + `leeway`): MQTT 5 clients get DISCONNECT 0xA0.
    var disconnectAfterExpiry = true
    var keys: [Key] = []

    /// Parses one `auth.jwt.keys` entry: `ALG PATH [KID]` (ALG one of HS256, RS256, ES256).
    static func parseKey(_ entry: String) throws(BrokerError) -> Key {
        let parts = entry.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard (2...3).contains(parts.count), let algorithm = Key.Algorithm(rawValue: parts[0].uppercased()) else {
            throw BrokerError(.configuration, "JWT key '\(entry)': expected 'HS256|RS256|ES256 PATH [KID]'")
        }
        return Key(algorithm: algorithm, kid: parts.count == 3 ? parts[2] : nil, path: parts[1])
    }
}

/// Verifies JWTs with jwt-kit: the signature with the key the header's `kid` names (or the only key, or the
/// only key of the header's algorithm when there is no `kid`), the header's `alg` against that key's
/// algorithm (so a token cannot choose how it is checked), then `exp` / `nbf` with `leeway`, `iss` and `aud`
/// when configured, and the identity claim.
final class JWTVerifier: Sendable {
    private struct Entry: Sendable {
        var algorithm: JWTSettings.Key.Algorithm
        var kid: String?
    }

    private enum Material: Sendable {
        case hmac(HMACKey)
        case rsa(JWTKit.Insecure.RSA.PublicKey)
        case ecdsa(ES256PublicKey)
    }

    let settings: JWTSettings
    private let entries: [Entry]
    /// One jwt-kit collection per entry, holding that key only (filled once, asynchronously: adding to
    /// the actor needs `await`; verifications wait for it).
    private let collections: Task<[JWTKeyCollection], Never>

    /// Reads every key file; a missing or unreadable file or a PEM of the wrong kind is a configuration error.
    init(settings: JWTSettings) throws(BrokerError) {
        guard !settings.keys.isEmpty else { throw BrokerError(.configuration, "auth.jwt.keys: at least one key is needed") }
        self.settings = settings
        var entries: [Entry] = []
        var materials: [Material] = []
        for key in settings.keys {
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: key.path))
            } catch {
                throw BrokerError(.configuration, "cannot read the JWT key \(key.path): \(error.localizedDescription)")
            }
            switch key.algorithm {
            case .hs256:
                // A trailing newline (as `echo` writes) is not part of the secret.
                var secret = data
                while let last = secret.last, last == 0x0A || last == 0x0D { secret.removeLast() }
                guard secret.count >= 32 else {
                    throw BrokerError(.configuration, "JWT key \(key.path): an HS256 secret needs at least 32 bytes")
                }
                materials.append(.hmac(HMACKey(from: secret)))
            case .rs256:
                guard let publicKey = try? JWTKit.Insecure.RSA.PublicKey(pem: data) else {
                    throw BrokerError(.configuration, "JWT key \(key.path): not a PEM RSA public key")
                }
                materials.append(.rsa(publicKey))
            case .es256:
                guard let publicKey = try? ES256PublicKey(pem: data) else {
                    throw BrokerError(.configuration, "JWT key \(key.path): not a PEM P-256 public key")
                }
                materials.append(.ecdsa(publicKey))
            }
            entries.append(Entry(algorithm: key.algorithm, kid: key.kid))
        }
        let kids = entries.compactMap(\.kid)
        guard Set(kids).count == kids.count else { throw BrokerError(.configuration, "auth.jwt.keys: a kid is used twice") }
        self.entries = entries
        collections = Task {
            var collections: [JWTKeyCollection] = []
            for material in materials {
                let collection = JWTKeyCollection()
                switch material {
                case .hmac(let key): await collection.add(hmac: key, digestAlgorithm: .sha256)
                case .rsa(let key): await collection.add(rsa: key, digestAlgorithm: .sha256)
                case .ecdsa(let key): await collection.add(ecdsa: key)
                }
                collections.append(collection)
            }
            return collections
        }
    }

    func verify(_ token: String, now: Date = Date()) async -> AuthenticationOutcome {
        guard let header = Self.header(of: token) else { return .refused(.tokenMalformed) }
        let index: Int
        if let kid = header.kid {
            guard let named = entries.firstIndex(where: { $0.kid == kid }) else { return .refused(.unknownKey) }
            index = named
        } else if entries.count == 1 {
            index = 0
        } else {
            let ofAlgorithm = entries.indices.filter { entries[$0].algorithm.rawValue == header.alg }
            guard ofAlgorithm.count == 1 else { return .refused(.unknownKey) }
            index = ofAlgorithm[0]
        }
        guard header.alg == entries[index].algorithm.rawValue else { return .refused(.algorithmMismatch) }
        let claims: Claims
        do {
            claims = try await collections.value[index].verify(token, as: Claims.self)
        } catch let error as JWTError where error.errorType == .signatureVerificationFailed {
            return .refused(.badSignature)
        } catch {
            return .refused(.tokenMalformed)
        }
        return check(claims, now: now)
    }

    /// The claims of a token whose signature verified.
    func check(_ claims: Claims, now: Date) -> AuthenticationOutcome {
        let leeway = Double(settings.leeway.components.seconds) + Double(settings.leeway.components.attoseconds) / 1e18
        let time = now.timeIntervalSince1970
        if let expiry = claims.expiry {
            guard time < expiry + leeway else { return .refused(.expired) }
        } else if settings.requireExpiry {
            return .refused(.missingExpiry)
        }
        if let notBefore = claims.notBefore, time + leeway < notBefore { return .refused(.notYetValid) }
        if let issuer = settings.issuer, claims.strings["iss"] != issuer { return .refused(.wrongIssuer) }
        if let audience = settings.audience, !claims.audience.contains(audience) { return .refused(.wrongAudience) }
        guard let identity = claims.strings[settings.identityClaim], !identity.isEmpty else { return .refused(.missingIdentity) }
        let validUntil = settings.disconnectAfterExpiry ? claims.expiry.map { Date(timeIntervalSince1970: $0 + leeway) } : nil
        return .accepted(.jwt, identity: identity, validUntil: validUntil)
    }

    private struct Header: Decodable {
        var alg: String
        var kid: String?
    }

    private static func header(of token: String) -> Header? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let data = base64URLDecoded(parts[0]) else { return nil }
        return try? JSONDecoder().decode(Header.self, from: data)
    }

    static func base64URLDecoded(_ text: Substring) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        return Data(base64Encoded: base64)
    }
}

/// A JWT payload as the broker reads it: `exp`, `nbf`, `aud` (a string or a list) and every string claim.
/// The claims are checked by `JWTVerifier.check` after jwt-kit verified the signature.
struct Claims: JWTPayload, Equatable {
    var strings: [String: String] = [:]
    var expiry: Double?
    var notBefore: Double?
    var audience: [String] = []

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(strings: [String: String] = [:], expiry: Double? = nil, notBefore: Double? = nil, audience: [String] = []) {
        self.strings = strings
        self.expiry = expiry
        self.notBefore = notBefore
        self.audience = audience
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        for key in container.allKeys {
            switch key.stringValue {
            case "exp": expiry = try container.decode(Double.self, forKey: key)
            case "nbf": notBefore = try container.decode(Double.self, forKey: key)
            case "aud":
                if let one = try? container.decode(String.self, forKey: key) {
                    audience = [one]
                } else {
                    audience = try container.decode([String].self, forKey: key)
                }
            default:
                if let value = try? container.decode(String.self, forKey: key) { strings[key.stringValue] = value }
            }
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        for (name, value) in strings { try container.encode(value, forKey: Key(name)) }
        if let expiry { try container.encode(expiry, forKey: Key("exp")) }
        if let notBefore { try container.encode(notBefore, forKey: Key("nbf")) }
        if !audience.isEmpty { try container.encode(audience, forKey: Key("aud")) }
    }

    /// Nothing here: the broker checks the claims itself, with its leeway and settings (`JWTVerifier.check`).
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
