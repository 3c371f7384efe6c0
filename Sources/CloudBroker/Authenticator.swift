import Common
import Foundation

/// What a client presented when connecting: the CONNECT's user name and password, and the names of the
/// client certificate the TLS listener verified (nil on plain TCP or without a certificate).
struct Credentials: Sendable {
    var username: String?
    var password: [UInt8]?
    var certificate: CertificateNames?
}

/// The names of a verified client certificate.
struct CertificateNames: Sendable, Equatable {
    /// The subject's common name (the last one if there are several).
    var commonName: String?
    /// Subject alternative names in certificate order: DNS names, e-mail addresses and URIs.
    var alternativeNames: [String] = []
}

/// `mqtt.tls_identity`: which name of a verified client certificate becomes the client's identity.
enum CertificateIdentity: String, Sendable, CaseIterable {
    case none, cn, san
}

/// How a client was (or failed to be) authenticated; the `method` label of the auth metrics.
enum AuthenticationMethod: String, Sendable, CaseIterable {
    case certificate, password, jwt, anonymous
}

/// Why a CONNECT was refused; the `reason` label of `tributary_broker_auth_failures_total`.
enum AuthenticationFailure: String, Sendable, CaseIterable, Error {
    case certificateWithoutIdentity = "certificate_without_identity"
    case usernameMismatch = "username_mismatch"
    case badPassword = "bad_password"
    case tokenMalformed = "token_malformed"
    case unknownKey = "unknown_key"
    case algorithmMismatch = "algorithm_mismatch"
    case badSignature = "bad_signature"
    case expired
    case notYetValid = "not_yet_valid"
    case missingExpiry = "missing_expiry"
    case wrongIssuer = "wrong_issuer"
    case wrongAudience = "wrong_audience"
    case missingIdentity = "missing_identity_claim"
    case anonymousNotAllowed = "anonymous_not_allowed"

    var method: AuthenticationMethod {
        switch self {
        case .certificateWithoutIdentity, .usernameMismatch: .certificate
        case .badPassword: .password
        case .tokenMalformed, .unknownKey, .algorithmMismatch, .badSignature, .expired, .notYetValid, .missingExpiry,
            .wrongIssuer, .wrongAudience, .missingIdentity:
            .jwt
        case .anonymousNotAllowed: .anonymous
        }
    }

    /// The CONNACK reason: 0x86 (3.1.1 return code 4) when the credentials do not check out, 0x87 (return
    /// code 5) when they do but the client is still not allowed in.
    var reasonCode: MQTTReasonCode {
        switch self {
        case .badPassword, .tokenMalformed, .unknownKey, .algorithmMismatch, .badSignature, .expired, .notYetValid, .missingExpiry:
            .badUserNameOrPassword
        case .certificateWithoutIdentity, .usernameMismatch, .wrongIssuer, .wrongAudience, .missingIdentity, .anonymousNotAllowed:
            .notAuthorized
        }
    }
}

/// The result of authenticating one CONNECT.
enum AuthenticationOutcome: Sendable, Equatable {
    /// Let in; `identity` is the user name the ACL sees for `USER` and `%u` (nil: anonymous). `validUntil`:
    /// when the credentials stop being valid (a JWT's `exp` plus the leeway); the connection is ended then.
    case accepted(AuthenticationMethod, identity: String?, validUntil: Date? = nil)
    case refused(AuthenticationFailure)
}

/// Decides who a connecting client is (`auth.*`, `mqtt.tls_identity`). The order, first match wins:
///
/// 1. Client certificate (`mqtt.tls_identity` cn|san, TLS connection with a verified certificate): the
///    certificate's name is the identity; a CONNECT user name other than it is refused (0x87), the password
///    is not looked at.
/// 2. Password file: a user name listed in `auth.password_file` must come with its password (0x86).
/// 3. JWT (`auth.jwt.*`): the token (in the password, or in the user name with `auth.jwt.token_in:
///    username`) must verify; the identity is its `auth.jwt.identity_claim`.
/// 4. No credentials: anonymous when `auth.allow_anonymous` (0x87 otherwise).
/// 5. Anything else (a user name nothing verifies): 0x86, after the same PBKDF2 cost as a known user.
///
/// `plan` takes the synchronous decisions; the password and token checks are `Step`s the caller runs off
/// the event loop (PBKDF2 costs milliseconds; jwt-kit is async).
struct Authenticator: Sendable {
    enum Step: Sendable {
        case decided(AuthenticationOutcome)
        case checkPassword(user: String, password: [UInt8])
        case verifyToken(String)
    }

    var passwordFile: PasswordFile?
    var jwt: JWTVerifier?
    var certificateIdentity: CertificateIdentity = .none
    var allowAnonymous: Bool = false

    /// Whether CONNECTs are checked at all (else anyone is let in under the user name they give).
    var isEnabled: Bool { passwordFile != nil || jwt != nil || certificateIdentity != .none }

    func plan(_ credentials: Credentials) -> Step {
        if certificateIdentity != .none, let certificate = credentials.certificate {
            let name: String? = switch certificateIdentity {
            case .cn: certificate.commonName
            case .san: certificate.alternativeNames.first
            case .none: nil
            }
            guard let name, !name.isEmpty else { return .decided(.refused(.certificateWithoutIdentity)) }
            if let username = credentials.username, username != name { return .decided(.refused(.usernameMismatch)) }
            return .decided(.accepted(.certificate, identity: name))
        }
        if let passwordFile, let username = credentials.username, passwordFile.contains(user: username) {
            return .checkPassword(user: username, password: credentials.password ?? [])
        }
        if let jwt {
            let carrier: String? = switch jwt.settings.tokenIn {
            case .password: credentials.password.map { String(decoding: $0, as: UTF8.self) }
            case .username: credentials.username
            }
            if let token = carrier, !token.isEmpty { return .verifyToken(token) }
        }
        if credentials.username == nil && credentials.password == nil {
            return .decided(allowAnonymous ? .accepted(.anonymous, identity: nil) : .refused(.anonymousNotAllowed))
        }
        // A user name nothing can verify (also with certificate identity alone: a client without a
        // certificate may not pick its ACL identity). Pay the PBKDF2 cost anyway so that the answer does
        // not tell who exists.
        return .checkPassword(user: credentials.username ?? "", password: credentials.password ?? [])
    }

    /// Runs `step` to its outcome (the password check on the calling thread).
    func complete(_ step: Step, now: Date = Date()) async -> AuthenticationOutcome {
        switch step {
        case .decided(let outcome):
            return outcome
        case .checkPassword(let user, let password):
            return checkPassword(user: user, password: password)
        case .verifyToken(let token):
            guard let jwt else { return .refused(.tokenMalformed) }
            return await jwt.verify(token, now: now)
        }
    }

    func checkPassword(user: String, password: [UInt8]) -> AuthenticationOutcome {
        (passwordFile ?? PasswordFile()).verify(user: user, password: password)
            ? .accepted(.password, identity: user) : .refused(.badPassword)
    }
}
