/// An error from librdkafka or from this wrapper, as a value.
///
/// `code` is librdkafka's `rd_kafka_resp_err_t`: negative codes are client-side (`_QUEUE_FULL`,
/// `_MSG_TIMED_OUT`, ...), positive ones come from the Kafka protocol (`TOPIC_ALREADY_EXISTS`, ...).
///
/// Classification:
/// - `isRetriable`: the operation may succeed if repeated later (a full local queue, a timeout, a
///   producer that was recreated). A message whose delivery failed with a retriable error may or
///   may not be in Kafka; resending it can duplicate it but never loses it.
/// - `isFatal`: the client instance that raised it cannot continue. For the producer this means
///   the instance was destroyed and replaced (see `KafkaProducer`); the error is delivered once to
///   every message that was in flight in it.
public struct KafkaError: Error, Sendable, Hashable, CustomStringConvertible {
    /// librdkafka's `rd_kafka_resp_err_t`.
    public var code: Int32
    /// librdkafka's symbolic name for `code`, e.g. `_QUEUE_FULL` or `TOPIC_ALREADY_EXISTS`.
    public var name: String
    /// Human-readable detail.
    public var message: String
    /// The client instance that raised this error cannot continue (see the type's documentation).
    public var isFatal: Bool
    /// Repeating the operation later may succeed.
    public var isRetriable: Bool

    public init(code: Int32, name: String, message: String, isFatal: Bool = false, isRetriable: Bool? = nil) {
        self.code = code
        self.name = name
        self.message = message
        self.isFatal = isFatal
        self.isRetriable = isRetriable ?? Self.retriableCodes.contains(code)
    }

    public var description: String {
        "KafkaError(\(name) [\(code)]\(isFatal ? ", fatal" : "")\(isRetriable ? ", retriable" : ""): \(message))"
    }
}

extension KafkaError {
    /// Values of librdkafka's `rd_kafka_resp_err_t` that this module and its users test for. They are
    /// part of librdkafka's stable ABI; `RDKafkaClient.swift` checks them against the headers.
    public enum Code {
        public static let noError: Int32 = 0
        public static let destroy: Int32 = -197
        public static let fail: Int32 = -196
        public static let transport: Int32 = -195
        public static let msgTimedOut: Int32 = -192
        public static let partitionEOF: Int32 = -191
        public static let unknownPartition: Int32 = -190
        public static let unknownTopicLocal: Int32 = -188
        public static let allBrokersDown: Int32 = -187
        public static let invalidArgument: Int32 = -186
        public static let timedOut: Int32 = -185
        public static let queueFull: Int32 = -184
        public static let state: Int32 = -172
        public static let purgeQueue: Int32 = -152
        public static let purgeInflight: Int32 = -151
        public static let fatal: Int32 = -150
        public static let offsetOutOfRange: Int32 = 1
        public static let unknownTopicOrPartition: Int32 = 3
        public static let leaderNotAvailable: Int32 = 5
        public static let notLeaderForPartition: Int32 = 6
        public static let requestTimedOut: Int32 = 7
        public static let networkException: Int32 = 13
        public static let topicAlreadyExists: Int32 = 36
        public static let policyViolation: Int32 = 44
        public static let outOfOrderSequenceNumber: Int32 = 45
        public static let duplicateSequenceNumber: Int32 = 46
        public static let invalidProducerEpoch: Int32 = 47
        public static let unknownProducerId: Int32 = 59
    }

    static let retriableCodes: Set<Int32> = [
        Code.transport, Code.msgTimedOut, Code.allBrokersDown, Code.timedOut, Code.queueFull,
        Code.purgeQueue, Code.purgeInflight, Code.leaderNotAvailable, Code.notLeaderForPartition,
        Code.requestTimedOut, Code.networkException, Code.state,
    ]

    /// Codes that, repeated in delivery reports, show that an idempotent producer has lost its
    /// producer id / sequence state on the cluster (e.g. the cluster lost its data).
    static let producerStateCodes: Set<Int32> = [
        Code.unknownProducerId, Code.outOfOrderSequenceNumber, Code.invalidProducerEpoch,
    ]

    /// The client was shut down before the operation completed. The message may or may not be in
    /// Kafka.
    static func shutdown(_ detail: String = "the Kafka client was shut down") -> KafkaError {
        KafkaError(code: Code.destroy, name: "_DESTROY", message: detail, isFatal: false, isRetriable: true)
    }

    /// A message was in flight in a producer instance that failed fatally and was recreated.
    static func producerRecreated(cause: KafkaError) -> KafkaError {
        KafkaError(
            code: Code.fatal,
            name: "_FATAL",
            message: "producer recreated after \(cause.name): \(cause.message); the message may or may not be in Kafka",
            isFatal: true,
            isRetriable: true
        )
    }

    /// The producer is between two instances (recreation in progress); try again shortly.
    static let producerRecreating = KafkaError(
        code: Code.state, name: "_STATE", message: "producer is being recreated", isFatal: false, isRetriable: true
    )

    static func invalidArgument(_ detail: String) -> KafkaError {
        KafkaError(code: Code.invalidArgument, name: "_INVALID_ARG", message: detail, isFatal: false, isRetriable: false)
    }

    static func configuration(_ detail: String) -> KafkaError {
        KafkaError(code: Code.invalidArgument, name: "_INVALID_ARG", message: "configuration: \(detail)", isFatal: false, isRetriable: false)
    }
}
