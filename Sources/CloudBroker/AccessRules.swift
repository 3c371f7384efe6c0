import Common

/// Topic access rules (`auth.acl`): each `USER ACCESS FILTER`, where USER is a user name or `*` (anyone,
/// anonymous included), ACCESS is `read`, `write` or `readwrite`, and FILTER is an MQTT topic filter in
/// which `%u` stands for the user name and `%c` for the client identifier. With no rules everything is
/// allowed; with rules, whatever no rule allows is denied.
struct AccessRules: Sendable, Equatable {
    enum Access: String, Sendable { case read, write, readwrite }

    struct Rule: Sendable, Equatable {
        var user: String?
        var access: Access
        var filter: String
    }

    var rules: [Rule] = []

    var isEmpty: Bool { rules.isEmpty }

    init(rules: [Rule] = []) {
        self.rules = rules
    }

    init(parsing entries: [String]) throws(BrokerError) {
        for entry in entries {
            let parts = entry.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard parts.count == 3, let access = Access(rawValue: parts[1]) else {
                throw BrokerError(.configuration, "ACL rule '\(entry)': expected 'USER|* read|write|readwrite FILTER'")
            }
            let probe = parts[2].replacingOccurrences(of: "%u", with: "u").replacingOccurrences(of: "%c", with: "c")
            guard (try? MQTTTopicFilter(probe)) != nil else {
                throw BrokerError(.configuration, "ACL rule '\(entry)': '\(parts[2])' is not a topic filter")
            }
            rules.append(Rule(user: parts[0] == "*" ? nil : parts[0], access: access, filter: parts[2]))
        }
    }

    /// Whether `user` (nil: anonymous) connected as `clientId` may publish to `topic`.
    func mayPublish(topic: String, user: String?, clientId: String) -> Bool {
        guard !rules.isEmpty else { return true }
        return applicable(.write, user: user, clientId: clientId).contains { (try? MQTTTopicFilter($0))?.matches(topic) == true }
    }

    /// Whether the subscription `filter` (a `$share/` prefix ignored) lies within what a read rule allows.
    func maySubscribe(filter: MQTTTopicFilter, user: String?, clientId: String) -> Bool {
        guard !rules.isEmpty else { return true }
        return applicable(.read, user: user, clientId: clientId).contains { Self.covers($0, filter.filter) }
    }

    private func applicable(_ wanted: Access, user: String?, clientId: String) -> [String] {
        rules.compactMap { rule in
            guard rule.access == wanted || rule.access == .readwrite else { return nil }
            if let ruleUser = rule.user, ruleUser != user { return nil }
            // A rule naming %u does not apply to anonymous clients.
            if rule.filter.contains("%u") && user == nil { return nil }
            return rule.filter.replacingOccurrences(of: "%u", with: user ?? "").replacingOccurrences(of: "%c", with: clientId)
        }
    }

    /// Whether every topic matched by `filter` is matched by `rule` (level by level).
    static func covers(_ rule: String, _ filter: String) -> Bool {
        let ruleLevels = rule.split(separator: "/", omittingEmptySubsequences: false)
        let filterLevels = filter.split(separator: "/", omittingEmptySubsequences: false)
        for (index, ruleLevel) in ruleLevels.enumerated() {
            if ruleLevel == "#" { return true }
            guard index < filterLevels.count else { return false }
            let level = filterLevels[index]
            if level == "#" { return false }
            if ruleLevel == "+" { continue }
            if level == "+" || level != ruleLevel { return false }
        }
        return ruleLevels.count == filterLevels.count
    }
}
