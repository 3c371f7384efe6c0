import Crypto
import Foundation

/// Users and salted password hashes (`auth.password_file`), one per line:
///
///     # comment
///     alice:pbkdf2-sha256$210000$<salt, base64>$<derived key, base64>
///
/// PBKDF2-HMAC-SHA256 (RFC 8018) with a 16-byte random salt and a 32-byte key; written by
/// `cloud-broker passwd FILE USER`. Verification costs `iterations` HMACs, so it runs off the event loops.
struct PasswordFile: Sendable {
    struct Entry: Sendable, Equatable {
        var iterations: Int
        var salt: [UInt8]
        var key: [UInt8]
    }

    static let scheme = "pbkdf2-sha256"
    static let defaultIterations = 210_000

    private(set) var entries: [String: Entry] = [:]

    init(entries: [String: Entry] = [:]) {
        self.entries = entries
    }

    init(contents: String, origin: String) throws(BrokerError) {
        for (index, raw) in contents.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw BrokerError(.configuration, "\(origin):\(index + 1): expected USER:HASH")
            }
            let user = String(line[..<colon])
            let fields = line[line.index(after: colon)...].split(separator: "$", omittingEmptySubsequences: false)
            guard fields.count == 4, fields[0] == Self.scheme, let iterations = Int(fields[1]), iterations > 0,
                let salt = Data(base64Encoded: String(fields[2])), let key = Data(base64Encoded: String(fields[3])), !key.isEmpty
            else {
                throw BrokerError(.configuration, "\(origin):\(index + 1): expected \(Self.scheme)$ITERATIONS$SALT$KEY")
            }
            entries[user] = Entry(iterations: iterations, salt: Array(salt), key: Array(key))
        }
    }

    static func load(path: String) throws(BrokerError) -> PasswordFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw BrokerError(.configuration, "cannot read the password file \(path): \(error.localizedDescription)")
        }
        return try PasswordFile(contents: text, origin: path)
    }

    /// Whether `user` has a line in the file.
    func contains(user: String) -> Bool { entries[user] != nil }

    /// Whether `password` is the password of `user` (unknown users cost the same as known ones).
    func verify(user: String, password: [UInt8]) -> Bool {
        let entry = entries[user] ?? Entry(iterations: Self.defaultIterations, salt: Array(repeating: 0, count: 16), key: Array(repeating: 0, count: 32))
        let derived = Self.pbkdf2SHA256(password: password, salt: entry.salt, iterations: entry.iterations, length: entry.key.count)
        var difference: UInt8 = entries[user] == nil ? 1 : 0
        for (a, b) in zip(derived, entry.key) { difference |= a ^ b }
        return difference == 0
    }

    /// The line for `user` with a fresh salt.
    static func line(user: String, password: [UInt8], iterations: Int = defaultIterations) -> String {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let key = pbkdf2SHA256(password: password, salt: salt, iterations: iterations, length: 32)
        return "\(user):\(scheme)$\(iterations)$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
    }

    /// PBKDF2 (RFC 8018 section 5.2) with HMAC-SHA256.
    static func pbkdf2SHA256(password: [UInt8], salt: [UInt8], iterations: Int, length: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var output: [UInt8] = []
        var block: UInt32 = 1
        while output.count < length {
            var u = Array(HMAC<SHA256>.authenticationCode(for: salt + withUnsafeBytes(of: block.bigEndian, Array.init), using: key))
            var t = u
            if iterations > 1 {
                for _ in 1..<iterations {
                    u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
                    for i in 0..<t.count { t[i] ^= u[i] }
                }
            }
            output += t
            block += 1
        }
        return Array(output.prefix(length))
    }
}
