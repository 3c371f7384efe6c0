import Foundation

/// `HOST:PORT`, as used by listen addresses and Kafka bootstrap servers. IPv6 hosts go in brackets.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(ConfigError) {
        let trimmed = text.trimmingBlanks()
        let hostPart: Substring
        let portPart: Substring
        if trimmed.hasPrefix("["), let close = trimmed.firstIndex(of: "]") {
            hostPart = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            let rest = trimmed[trimmed.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ConfigError("expected [HOST]:PORT, got '\(text)'") }
            portPart = rest.dropFirst()
        } else {
            guard let colon = trimmed.lastIndex(of: ":") else {
                throw ConfigError("expected HOST:PORT, got '\(text)'")
            }
            hostPart = trimmed[..<colon]
            portPart = trimmed[trimmed.index(after: colon)...]
        }
        guard !hostPart.isEmpty else { throw ConfigError("missing host in '\(text)'") }
        guard let port = Int(portPart), (0...65535).contains(port) else {
            throw ConfigError("port must be 0...65535 in '\(text)'")
        }
        self.host = String(hostPart)
        self.port = port
    }

    public var description: String { host.contains(":" as Character) ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

