/// A topic to create (see `KafkaAdmin.createTopics` / `ensureTopics`).
public struct KafkaTopicSpecification: Sendable, Hashable {
    public var name: String
    public var partitions: Int32
    public var replicationFactor: Int16
    /// Topic configs passed to CreateTopics verbatim, e.g. `["cleanup.policy": "compact"]`.
    public var configs: [String: String]

    public init(name: String, partitions: Int32, replicationFactor: Int16 = 1, configs: [String: String] = [:]) {
        self.name = name
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.configs = configs
    }

    /// A compacted topic (`cleanup.policy=compact`), for keyed state such as sessions and retained
    /// messages. Note: Tansu stores this config but never compacts.
    public static func compacted(
        name: String, partitions: Int32, replicationFactor: Int16 = 1, configs: [String: String] = [:]
    ) -> KafkaTopicSpecification {
        var configs = configs
        configs["cleanup.policy"] = "compact"
        return KafkaTopicSpecification(name: name, partitions: partitions, replicationFactor: replicationFactor, configs: configs)
    }
}

extension KafkaTopicSpecification {
    /// Why Kafka would refuse this specification, if it would: names of 1-249 characters from
    /// `[a-zA-Z0-9._-]`, not `.` or `..`; at least one partition; a replication factor of at
    /// least 1 (or -1 for the cluster default).
    public var validationProblem: String? {
        if name.isEmpty || name.utf8.count > 249 || name == "." || name == ".." {
            return "invalid topic name (1-249 characters, not . or ..)"
        }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-".utf8)
        if !name.utf8.allSatisfy(allowed.contains) {
            return "invalid topic name (only letters, digits, '.', '_' and '-')"
        }
        if partitions < 1 { return "partitions must be at least 1 (got \(partitions))" }
        if replicationFactor < 1, replicationFactor != -1 {
            return "replication factor must be at least 1 or -1 (got \(replicationFactor))"
        }
        return nil
    }
}

/// A topic as reported by Metadata.
public struct KafkaTopicMetadata: Sendable, Hashable {
    public var name: String
    public var partitionCount: Int32
    /// A per-topic error reported by the broker (e.g. `UNKNOWN_TOPIC_OR_PART`), if any.
    public var error: KafkaError?
}

/// A cluster as reported by Metadata.
public struct KafkaClusterMetadata: Sendable, Hashable {
    public struct Broker: Sendable, Hashable {
        public var id: Int32
        public var host: String
        public var port: Int32
    }
    public var brokers: [Broker]
    public var topics: [KafkaTopicMetadata]

    /// The topic named `name`, if the cluster reported it without error.
    public func topic(_ name: String) -> KafkaTopicMetadata? {
        topics.first { $0.name == name && $0.error == nil }
    }
}
