/// A topic name (MQTT 5.0 section 4.7): at least one character, no wildcards, no U+0000, at most 65,535 bytes.
/// (A v5 PUBLISH may carry an empty topic together with a topic alias; `MQTTPublish.topic` is then empty.)
public struct MQTTTopicName: Sendable, Hashable, CustomStringConvertible {
    public let string: String

    public init(_ string: String) throws(MQTTCodecError) {
        guard MQTTTopicName.isValid(string) else {
            throw MQTTCodecError(reasonCode: .topicNameInvalid, message: "invalid topic name")
        }
        self.string = string
    }

    /// Topics beginning with `$` are not matched by filters beginning with a wildcard (section 4.7.2).
    public var isDollarTopic: Bool { string.utf8.first == UInt8(ascii: "$") }

    public var description: String { string }

    static func isValid(_ string: String) -> Bool {
        let utf8 = string.utf8
        guard !utf8.isEmpty, utf8.count <= 65_535 else { return false }
        return !MQTTEncodingCheck.scan(string) { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }
    }
}

/// A topic filter (MQTT 5.0 section 4.7.1): `+` matches one level and must fill it, `#` matches any number of
/// levels (including the parent) and must be the last level. `$share/{ShareName}/{filter}` is a shared
/// subscription (section 4.8.2): the share name must be non-empty without `/`, `+` or `#`, and a filter must
/// follow.
public struct MQTTTopicFilter: Sendable, Hashable, CustomStringConvertible {
    /// The filter as sent in SUBSCRIBE, including any `$share/{group}/` prefix.
    public let string: String
    /// The share name of a shared subscription, nil otherwise.
    public let shareGroup: String?
    /// The filter that topics are matched against (without the `$share/{group}/` prefix).
    public let filter: String

    public init(_ string: String) throws(MQTTCodecError) {
        guard let parsed = MQTTTopicFilter.parse(string) else {
            throw MQTTCodecError(reasonCode: .topicFilterInvalid, message: "invalid topic filter")
        }
        self = parsed
    }

    private init(string: String, shareGroup: String?, filter: String) {
        self.string = string
        self.shareGroup = shareGroup
        self.filter = filter
    }

    public var description: String { string }

    public var isShared: Bool { shareGroup != nil }

    /// Whether the filter contains `+` or `#`.
    public var hasWildcards: Bool { filter.utf8.contains { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") } }

    /// Whether `topic` matches this filter (ignoring any share group).
    public func matches(_ topic: String) -> Bool {
        MQTTTopicFilter.matches(filter: filter, topic: topic)
    }

    public func matches(_ topic: MQTTTopicName) -> Bool { matches(topic.string) }

    static func parse(_ string: String) -> MQTTTopicFilter? {
        let utf8 = string.utf8
        guard utf8.count <= 65_535 else { return nil }
        let prefix = "$share/".utf8
        if utf8.starts(with: prefix) {
            let groupStart = utf8.index(utf8.startIndex, offsetBy: prefix.count)
            guard let slash = utf8[groupStart...].firstIndex(of: UInt8(ascii: "/")), slash > groupStart else { return nil }
            let group = utf8[groupStart..<slash]
            guard !group.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "#") || $0 == 0 }) else {
                return nil
            }
            let inner = utf8[utf8.index(after: slash)...]
            guard isValidFilter(inner) else { return nil }
            return MQTTTopicFilter(string: string, shareGroup: String(Substring(group)), filter: String(Substring(inner)))
        }
        guard isValidFilter(utf8[...]) else { return nil }
        return MQTTTopicFilter(string: string, shareGroup: nil, filter: string)
    }

    static func isValidFilter(_ utf8: Substring.UTF8View) -> Bool {
        guard !utf8.isEmpty else { return false }
        var levelLength = 0
        var levelHasWildcard = false
        var afterHash = false
        for byte in utf8 {
            if afterHash { return false }  // anything after a `#` level
            switch byte {
            case UInt8(ascii: "/"):
                levelLength = 0
                levelHasWildcard = false
                continue
            case UInt8(ascii: "+"), UInt8(ascii: "#"):
                if levelLength != 0 { return false }  // wildcard not alone in its level, e.g. `a+`
                levelHasWildcard = true
                afterHash = byte == UInt8(ascii: "#")
            case 0:
                return false
            default:
                if levelHasWildcard { return false }  // e.g. `+a`
            }
            levelLength += 1
        }
        return true
    }

    /// Matches level by level over the UTF-8 bytes, without allocating.
    static func matches(filter: String, topic: String) -> Bool {
        var filter = filter
        var topic = topic
        return filter.withUTF8 { f in
            topic.withUTF8 { t in matches(filter: f, topic: t) }
        }
    }

    static func matches(filter f: UnsafeBufferPointer<UInt8>, topic t: UnsafeBufferPointer<UInt8>) -> Bool {
        let slash = UInt8(ascii: "/")
        let plus = UInt8(ascii: "+")
        let hash = UInt8(ascii: "#")
        guard !t.isEmpty, !f.isEmpty else { return false }
        if t[0] == UInt8(ascii: "$") && (f[0] == plus || f[0] == hash) { return false }
        var i = 0
        var j = 0
        while true {
            // Both at the start of a level.
            if i < f.count && f[i] == hash { return true }
            if i < f.count && f[i] == plus {
                while j < t.count && t[j] != slash { j += 1 }
                i += 1
            } else {
                while i < f.count && f[i] != slash {
                    if j >= t.count || t[j] != f[i] { return false }
                    i += 1
                    j += 1
                }
                if j < t.count && t[j] != slash { return false }
            }
            if i == f.count { return j == t.count }
            if j == t.count {
                // The topic ended; only a trailing `/#` still matches (the parent level).
                return f.count - i == 2 && f[i + 1] == hash
            }
            i += 1
            j += 1
        }
    }
}
