import Common

/// One mapping rule: MQTT topics matching `filter` go to `kafkaTopic`, keyed by `keyTemplate`.
///
/// Written in configuration as `FILTER -> KAFKA_TOPIC` or `FILTER -> KAFKA_TOPIC key=TEMPLATE`.
/// The template's placeholders: `{topic}` (the MQTT topic), `{client_id}` and `{1}`...`{n}`, the
/// topic levels matched by the filter's wildcards in order (`#` captures the rest, slashes included).
struct TopicRule: Sendable, Equatable {
    var filter: MQTTTopicFilter
    var kafkaTopic: String
    var keyTemplate: String

    static let defaultKeyTemplate = "{topic}"

    init(filter: MQTTTopicFilter, kafkaTopic: String, keyTemplate: String = TopicRule.defaultKeyTemplate) {
        self.filter = filter
        self.kafkaTopic = kafkaTopic
        self.keyTemplate = keyTemplate
    }

    init(parsing text: String) throws(BrokerError) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard parts.count >= 3, parts[1] == "->" else {
            throw BrokerError(.configuration, "rule '\(text)': expected 'FILTER -> KAFKA_TOPIC [key=TEMPLATE]'")
        }
        let filter: MQTTTopicFilter
        do {
            filter = try MQTTTopicFilter(parts[0])
        } catch {
            throw BrokerError(.configuration, "rule '\(text)': '\(parts[0])' is not a valid MQTT topic filter")
        }
        guard !filter.isShared else { throw BrokerError(.configuration, "rule '\(text)': shared filters cannot be rules") }
        guard Self.isValidKafkaTopic(parts[2]) else {
            throw BrokerError(.configuration, "rule '\(text)': '\(parts[2])' is not a valid Kafka topic name")
        }
        var template = Self.defaultKeyTemplate
        if parts.count == 4, parts[3].hasPrefix("key=") {
            template = String(parts[3].dropFirst(4))
        } else if parts.count != 3 {
            throw BrokerError(.configuration, "rule '\(text)': expected 'FILTER -> KAFKA_TOPIC [key=TEMPLATE]'")
        }
        self.init(filter: filter, kafkaTopic: parts[2], keyTemplate: template)
    }

    /// Kafka's rule: 1...249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
    static func isValidKafkaTopic(_ name: String) -> Bool {
        guard (1...249).contains(name.utf8.count), name != ".", name != ".." else { return false }
        return name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }
}

/// Chooses the Kafka topic and key of each MQTT publish: the first matching rule, else the default topic
/// keyed by the MQTT topic.
struct TopicMapping: Sendable {
    var rules: [TopicRule]
    var defaultTopic: String

    struct Destination: Sendable, Equatable {
        var kafkaTopic: String
        var key: String
    }

    func destination(topic: String, clientId: String) -> Destination {
        for rule in rules where rule.filter.matches(topic) {
            let key = Self.render(rule.keyTemplate, topic: topic, clientId: clientId, captures: Self.captures(filter: rule.filter.filter, topic: topic))
            return Destination(kafkaTopic: rule.kafkaTopic, key: key)
        }
        return Destination(kafkaTopic: defaultTopic, key: topic)
    }

    /// The topic levels matched by each wildcard of `filter` (assumes `filter` matches `topic`).
    static func captures(filter: String, topic: String) -> [Substring] {
        let filterLevels = filter.split(separator: "/", omittingEmptySubsequences: false)
        let topicLevels = topic.split(separator: "/", omittingEmptySubsequences: false)
        var result: [Substring] = []
        for (index, level) in filterLevels.enumerated() {
            if level == "+", index < topicLevels.count {
                result.append(topicLevels[index])
            } else if level == "#" {
                if index < topicLevels.count {
                    let start = topicLevels[index].startIndex
                    result.append(topic[start...])
                } else {
                    result.append("")
                }
            }
        }
        return result
    }

    static func render(_ template: String, topic: String, clientId: String, captures: [Substring]) -> String {
        guard template.contains("{") else { return template }
        var output = ""
        var rest = template[...]
        while let open = rest.firstIndex(of: "{") {
            output += rest[..<open]
            guard let close = rest[open...].firstIndex(of: "}") else { break }
            let name = rest[rest.index(after: open)..<close]
            switch name {
            case "topic": output += topic
            case "client_id": output += clientId
            default:
                if let number = Int(name), number >= 1, number <= captures.count {
                    output += captures[number - 1]
                } else {
                    output += rest[open...close]
                }
            }
            rest = rest[rest.index(after: close)...]
        }
        output += rest
        return output
    }
}
