/// A message to produce.
public struct KafkaOutgoingMessage: Sendable, Hashable {
    public var topic: String
    /// Optional key; with `partition == nil` it chooses the partition (librdkafka's default
    /// partitioner, consistent_random: same key, same partition).
    public var key: [UInt8]?
    /// The value; `nil` produces a tombstone (a null value; deletes `key` in a compacted topic).
    public var value: [UInt8]?
    /// Headers in order; names may repeat.
    public var headers: [KafkaHeader]
    /// An explicit partition, or `nil` to let the partitioner choose.
    public var partition: Int32?

    public init(topic: String, key: [UInt8]? = nil, value: [UInt8]?, headers: [KafkaHeader] = [], partition: Int32? = nil) {
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
        self.partition = partition
    }
}

/// One record header. Kafka header values are bytes and may be null; this wrapper maps a null
/// header value to an empty one.
public struct KafkaHeader: Sendable, Hashable {
    public var name: String
    public var value: [UInt8]

    public init(_ name: String, _ value: [UInt8]) {
        self.name = name
        self.value = value
    }
}

/// Where a successfully produced message ended up.
public struct KafkaDeliveryReport: Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64

    public init(topic: String, partition: Int32, offset: Int64) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}

/// A consumed record.
public struct KafkaRecord: Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    /// `nil` for a tombstone.
    public var value: [UInt8]?
    public var headers: [KafkaHeader]
    /// Milliseconds since the Unix epoch (create or log-append time), `nil` if the broker sent none.
    public var timestampMilliseconds: Int64?

    public init(
        topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8]?,
        headers: [KafkaHeader], timestampMilliseconds: Int64?
    ) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestampMilliseconds = timestampMilliseconds
    }
}

/// Where a manually assigned partition starts.
public enum KafkaOffset: Sendable, Hashable {
    /// The oldest retained record.
    case beginning
    /// The next record to be written. Resolved with ListOffsets "latest", which Tansu answers
    /// wrongly (see docs/kafka-client.md); on Tansu use a concrete offset (e.g. from
    /// `KafkaConsumer.highWatermark`) instead.
    case end
    /// A concrete offset.
    case offset(Int64)

    var rawValue: Int64 {
        switch self {
        case .beginning: -2  // RD_KAFKA_OFFSET_BEGINNING
        case .end: -1  // RD_KAFKA_OFFSET_END
        case .offset(let value): value
        }
    }
}

/// A partition to consume and where to start.
public struct KafkaPartitionAssignment: Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public var offset: KafkaOffset

    public init(topic: String, partition: Int32, offset: KafkaOffset) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
    }
}

/// A topic partition.
public struct KafkaTopicPartition: Sendable, Hashable {
    public var topic: String
    public var partition: Int32

    public init(topic: String, partition: Int32) {
        self.topic = topic
        self.partition = partition
    }
}
