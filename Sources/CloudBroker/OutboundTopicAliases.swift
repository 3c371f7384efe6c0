import Common

/// Topic aliases the broker sets on PUBLISH packets towards one MQTT 5 client that announced a Topic Alias
/// Maximum (MQTT 5.0 section 3.3.2.3.4), at most `maximum` of them (the client's maximum, capped by
/// `mqtt.outbound_topic_alias_maximum`). The first publish of a topic carries the topic and a new alias;
/// later ones carry the alias and an empty topic. When every alias is taken, the least recently used one
/// is given to the new topic (sent with its topic again). Aliases live as long as the network connection.
///
/// `plan` does not change the table: the handler commits the `Use` only once the packet is encoded (one
/// too large for the client is discarded, and the client must not miss an alias definition).
struct OutboundTopicAliases: Sendable {
    enum Use: Sendable, Equatable {
        case existing(topic: String)
        case new(topic: String, alias: UInt16, evicting: String?)
    }

    let maximum: Int
    private var entries: [String: (alias: UInt16, lastUse: UInt64)] = [:]
    private var clock: UInt64 = 0

    init(maximum: Int) {
        self.maximum = max(0, min(maximum, Int(UInt16.max)))
    }

    /// The publish as it goes on the wire, and the table change it implies.
    func plan(_ publish: MQTTPublish) -> (MQTTPublish, Use?) {
        guard maximum > 0, !publish.topic.isEmpty else { return (publish, nil) }
        var wire = publish
        if let entry = entries[publish.topic] {
            wire.topic = ""
            wire.properties.topicAlias = entry.alias
            return (wire, .existing(topic: publish.topic))
        }
        let alias: UInt16
        var evicting: String?
        if entries.count < maximum {
            alias = UInt16(entries.count + 1)
        } else {
            guard let victim = entries.min(by: { $0.value.lastUse < $1.value.lastUse }) else { return (publish, nil) }
            alias = victim.value.alias
            evicting = victim.key
        }
        wire.properties.topicAlias = alias
        return (wire, .new(topic: publish.topic, alias: alias, evicting: evicting))
    }

    mutating func commit(_ use: Use) {
        clock += 1
        switch use {
        case .existing(let topic):
            entries[topic]?.lastUse = clock
        case .new(let topic, let alias, let evicting):
            if let evicting { entries[evicting] = nil }
            entries[topic] = (alias, clock)
        }
    }
}
