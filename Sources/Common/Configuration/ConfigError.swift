/// A configuration problem: which key, from where, and what is wrong. Always closes the process at start-up
/// (exit code 2), never later.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var key: String?
    public var origin: String?
    public var message: String

    public init(key: String? = nil, origin: String? = nil, _ message: String) {
        self.key = key
        self.origin = origin
        self.message = message
    }

    public var description: String {
        var text = ""
        if let key { text += "config key \(key)" }
        if let origin { text += (text.isEmpty ? "" : " ") + "(from \(origin))" }
        return text.isEmpty ? message : text + ": " + message
    }
}
