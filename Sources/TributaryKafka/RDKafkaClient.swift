// The one Swift file that talks to librdkafka (C API, module CRDKafka). Everything else in
// TributaryKafka is plain Swift on top of `RDKafkaClient`.
//
// Threading contract (see docs/kafka-client.md):
// - An `rd_kafka_t` is thread-safe; `RDKafkaClient` only guards its lifetime. Every call goes
//   through `withHandle`, which counts the calls in progress; `destroy()` marks the client dead,
//   waits until no call is in progress, then calls `rd_kafka_destroy`. Calls after that throw
//   `_DESTROY` instead of touching freed memory.
// - Delivery-report, error and statistics callbacks run on the thread that polls (the owner's
//   dedicated poll thread, or `flush`). They must not call `destroy()` (it would wait for the
//   poll that is running them). Log callbacks run on librdkafka's internal threads.
// - The callback context is passed to librdkafka unretained; this object keeps it alive until
//   `rd_kafka_destroy` has returned, after which librdkafka calls nothing.
import CRDKafka
import Foundation
import Logging

/// A handle on one `rd_kafka_t` (producer, consumer or admin use).
///
/// `@unchecked Sendable`: `handle` is an `rd_kafka_t *`, whose API is thread-safe; its lifetime
/// (`users`, `destroyed`) is protected by `condition`.
final class RDKafkaClient: @unchecked Sendable {
    /// What librdkafka reports back, called from the threads described at the top of this file.
    struct Events: Sendable {
        /// A delivery report: the per-message opaque given to `produce` and the outcome.
        var deliveryReport: @Sendable (UnsafeMutableRawPointer?, Result<KafkaDeliveryReport, KafkaError>) -> Void = { _, _ in }
        /// An error not tied to one message (`error_cb`); fatal ones have `isFatal` set.
        var error: @Sendable (KafkaError) -> Void = { _ in }
        /// A statistics JSON document (`stats_cb`), if statistics are enabled.
        var statistics: (@Sendable (String) -> Void)?
    }

    /// Passed to librdkafka as the instance opaque.
    final class CallbackContext: Sendable {
        let events: Events
        let logger: Logger

        init(events: Events, logger: Logger) {
            self.events = events
            self.logger = logger
        }
    }

    private let handle: OpaquePointer
    private let context: CallbackContext
    private let role: KafkaConfiguration.Role
    /// The librdkafka instance name (`rdkafka#producer-1`), for logs.
    let name: String
    private let condition = NSCondition()
    private var users = 0  // protected by condition
    private var destroyed = false  // protected by condition

    private init(handle: OpaquePointer, context: CallbackContext, role: KafkaConfiguration.Role) {
        self.handle = handle
        self.context = context
        self.role = role
        self.name = Self.string(rd_kafka_name(handle))
    }

    deinit {
        destroy()
    }

    /// Creates an `rd_kafka_t` for `role` from `configuration`.
    static func make(
        role: KafkaConfiguration.Role,
        configuration: KafkaConfiguration,
        events: Events,
        logger: Logger
    ) throws(KafkaError) -> RDKafkaClient {
        assert(codesMatchHeaders, "KafkaError.Code disagrees with rdkafka.h")
        guard let conf = rd_kafka_conf_new() else {
            throw KafkaError.configuration("rd_kafka_conf_new failed")
        }
        var errorText = [CChar](repeating: 0, count: 512)
        for (key, value) in configuration.librdkafkaProperties(for: role) {
            let result = rd_kafka_conf_set(conf, key, value, &errorText, errorText.count)
            if result == RD_KAFKA_CONF_UNKNOWN && configuration.propertiesNewerThanSomeLibrdkafka.contains(key) {
                logger.debug("librdkafka does not know this property; not set", metadata: ["kafka.property": "\(key)", "kafka.librdkafka_version": "\(String(cString: rd_kafka_version_str()))"])
                continue
            }
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                throw KafkaError.configuration("\(key)=\(value): \(Self.string(errorText))")
            }
        }
        let context = CallbackContext(events: events, logger: logger)
        rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(context).toOpaque())
        rd_kafka_conf_set_log_cb(conf, rdLogCallback)
        rd_kafka_conf_set_error_cb(conf, rdErrorCallback)
        if configuration.statisticsInterval != nil, events.statistics != nil {
            rd_kafka_conf_set_stats_cb(conf, rdStatisticsCallback)
        }
        if role == .producer {
            rd_kafka_conf_set_dr_msg_cb(conf, rdDeliveryReportCallback)
        }
        let type = role == .consumer ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER
        let created = withExtendedLifetime(context) {
            rd_kafka_new(type, conf, &errorText, errorText.count)
        }
        guard let rk = created else {
            rd_kafka_conf_destroy(conf)  // rd_kafka_new only takes ownership on success
            throw KafkaError.configuration("rd_kafka_new: \(Self.string(errorText))")
        }
        if role == .consumer {
            // Serve logs, errors and statistics from the consumer queue, i.e. from consumerPoll.
            rd_kafka_poll_set_consumer(rk)
        }
        return RDKafkaClient(handle: rk, context: context, role: role)
    }

    // MARK: Lifetime

    /// Runs `body` with the live handle; throws `_DESTROY` once `destroy()` has begun.
    func withHandle<T>(_ body: (OpaquePointer) throws(KafkaError) -> T) throws(KafkaError) -> T {
        condition.lock()
        if destroyed {
            condition.unlock()
            throw KafkaError.shutdown()
        }
        users += 1
        condition.unlock()
        defer {
            condition.lock()
            users -= 1
            if users == 0 { condition.broadcast() }
            condition.unlock()
        }
        return try body(handle)
    }

    /// Closes (consumer) and destroys the handle once; waits for calls in progress. Idempotent.
    /// Must not be called from a librdkafka callback.
    func destroy() {
        condition.lock()
        if destroyed {
            condition.unlock()
            return
        }
        destroyed = true
        while users > 0 { condition.wait() }
        condition.unlock()
        if role == .consumer {
            _ = rd_kafka_consumer_close(handle)
        }
        rd_kafka_destroy(handle)
        context.logger.debug("Kafka client destroyed", metadata: ["kafka.client": "\(name)"])
    }

    var isDestroyed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return destroyed
    }

    // MARK: Producer and event serving

    /// Serves queued callbacks for up to `timeout` (returns early when one was served).
    @discardableResult
    func poll(timeout: Duration) -> Int32 {
        (try? withHandle { rd_kafka_poll($0, timeout.milliseconds) }) ?? 0
    }

    /// Makes a blocking `poll` / `consumerPoll` in another thread return early.
    func wakeUp() {
        try? withHandle { rk in
            rd_kafka_yield(rk)
            if role == .consumer, let queue = rd_kafka_queue_get_consumer(rk) {
                rd_kafka_queue_yield(queue)
                rd_kafka_queue_destroy(queue)
            }
        }
    }

    /// Enqueues `message`; `opaque` comes back in its delivery report. Does not block: a full
    /// local queue throws `_QUEUE_FULL`.
    func produce(_ message: KafkaOutgoingMessage, opaque: UnsafeMutableRawPointer) throws(KafkaError) {
        try withHandle { rk throws(KafkaError) in
            // librdkafka copies everything during the call (RD_KAFKA_MSG_F_COPY for key and value; headers
            // are always copied), so nothing here outlives it: the value is passed from its own storage,
            // the C strings and the argument array live in temporary (usually stack) allocations. This
            // runs once per publish on the event loops: no heap allocation of its own.
            var size = message.topic.utf8.count + 1 + (message.key?.count ?? 0)
            for header in message.headers { size += header.name.utf8.count + 1 + header.value.count }
            let failure = withUnsafeTemporaryAllocation(byteCount: max(size, 1), alignment: 8) { scratch in
                withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 6 + message.headers.count) { vus in
                    var used = 0
                    func copy(_ bytes: some Collection<UInt8>, terminate: Bool) -> UnsafeMutableRawPointer {
                        let start = scratch.baseAddress! + used
                        let target = UnsafeMutableRawBufferPointer(rebasing: scratch[used...])
                        let count = bytes.count
                        target.copyBytes(from: bytes)
                        used += count
                        if terminate {
                            scratch[used] = 0
                            used += 1
                        }
                        return start
                    }
                    var count = 0
                    func append(_ configure: (inout rd_kafka_vu_t) -> Void) {
                        var vu = rd_kafka_vu_t()
                        configure(&vu)
                        (vus.baseAddress! + count).initialize(to: vu)
                        count += 1
                    }
                    append {
                        $0.vtype = RD_KAFKA_VTYPE_TOPIC
                        $0.u.cstr = UnsafePointer(copy(message.topic.utf8, terminate: true).assumingMemoryBound(to: CChar.self))
                    }
                    append {
                        $0.vtype = RD_KAFKA_VTYPE_PARTITION
                        $0.u.i32 = message.partition ?? Self.partitionUnassigned
                    }
                    append {
                        $0.vtype = RD_KAFKA_VTYPE_MSGFLAGS
                        $0.u.i = Self.messageFlagCopy
                    }
                    if let key = message.key {
                        append {
                            $0.vtype = RD_KAFKA_VTYPE_KEY
                            $0.u.mem.ptr = copy(key, terminate: false)
                            $0.u.mem.size = key.count
                        }
                    }
                    for header in message.headers {
                        append {
                            $0.vtype = RD_KAFKA_VTYPE_HEADER
                            $0.u.header.name = UnsafePointer(copy(header.name.utf8, terminate: true).assumingMemoryBound(to: CChar.self))
                            $0.u.header.val = UnsafeRawPointer(copy(header.value, terminate: false))
                            $0.u.header.size = header.value.count
                        }
                    }
                    append {
                        $0.vtype = RD_KAFKA_VTYPE_OPAQUE
                        $0.u.ptr = opaque
                    }
                    defer { vus.baseAddress!.deinitialize(count: count) }
                    guard let value = message.value else {  // no VALUE element = null value = tombstone
                        return rd_kafka_produceva(rk, vus.baseAddress, count)
                    }
                    return value.withUnsafeBytes { bytes in
                        // An empty value is not a null one: it still needs a non-null pointer.
                        append {
                            $0.vtype = RD_KAFKA_VTYPE_VALUE
                            $0.u.mem.ptr = UnsafeMutableRawPointer(mutating: bytes.baseAddress ?? UnsafeRawPointer(scratch.baseAddress!))
                            $0.u.mem.size = bytes.count
                        }
                        return rd_kafka_produceva(rk, vus.baseAddress, count)
                    }
                }
            }
            if let failure {
                let error = Self.makeError(failure)
                rd_kafka_error_destroy(failure)
                throw error
            }
        }
    }

    /// `rd_kafka_flush`: sends lingering messages and serves delivery reports until the queue is
    /// empty or `timeout` passes (`_TIMED_OUT`).
    func flush(timeout: Duration) -> KafkaError? {
        do {
            let code = try withHandle { rd_kafka_flush($0, timeout.milliseconds) }
            return code == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : Self.makeError(code, message: "flush")
        } catch {
            return error
        }
    }

    /// Fails every queued and in-flight message; their delivery reports (`_PURGE_QUEUE`,
    /// `_PURGE_INFLIGHT`) are served by the next poll.
    func purge() {
        try? withHandle { _ = rd_kafka_purge($0, Self.purgeQueue | Self.purgeInflight) }
    }

    /// Messages and requests still owned by librdkafka (`rd_kafka_outq_len`).
    var outQueueLength: Int32 {
        (try? withHandle { rd_kafka_outq_len($0) }) ?? 0
    }

    /// Makes librdkafka raise a fabricated fatal error (`rd_kafka_test_fatal_error`), to test
    /// fatal-error handling; real fatal errors cannot be provoked on demand.
    func triggerTestFatalError(code: Int32, reason: String) -> Bool {
        (try? withHandle { rd_kafka_test_fatal_error($0, rd_kafka_resp_err_t(code), reason) == RD_KAFKA_RESP_ERR_NO_ERROR }) ?? false
    }

    // MARK: Consumer

    /// Replaces the assignment (`rd_kafka_assign`): no consumer group is joined.
    func assign(_ assignments: [KafkaPartitionAssignment]) throws(KafkaError) {
        try withHandle { rk throws(KafkaError) in
            let list = try Self.makePartitionList(assignments.map { ($0.topic, $0.partition, $0.offset.rawValue) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let code = rd_kafka_assign(rk, list)
            if code != RD_KAFKA_RESP_ERR_NO_ERROR { throw Self.makeError(code, message: "assign") }
        }
    }

    /// Pauses (or resumes) fetching of `partitions`, or of the whole assignment if `nil`.
    func setPaused(_ paused: Bool, partitions: [KafkaTopicPartition]?) throws(KafkaError) {
        try withHandle { rk throws(KafkaError) in
            var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
            if let partitions {
                list = try Self.makePartitionList(partitions.map { ($0.topic, $0.partition, Int64(-1001)) })
            } else {
                let code = rd_kafka_assignment(rk, &list)
                if code != RD_KAFKA_RESP_ERR_NO_ERROR { throw Self.makeError(code, message: "assignment") }
            }
            guard let list else { return }
            defer { rd_kafka_topic_partition_list_destroy(list) }
            let code = paused ? rd_kafka_pause_partitions(rk, list) : rd_kafka_resume_partitions(rk, list)
            if code != RD_KAFKA_RESP_ERR_NO_ERROR { throw Self.makeError(code, message: paused ? "pause" : "resume") }
        }
    }

    /// The cached low and high watermarks (`rd_kafka_get_watermark_offsets`), from the last Fetch
    /// response; `nil` until a fetch for the partition has been answered.
    func cachedWatermarks(topic: String, partition: Int32) -> (low: Int64, high: Int64)? {
        try? withHandle { rk -> (low: Int64, high: Int64)? in
            var low: Int64 = -1001
            var high: Int64 = -1001
            let code = rd_kafka_get_watermark_offsets(rk, topic, partition, &low, &high)
            guard code == RD_KAFKA_RESP_ERR_NO_ERROR, high >= 0 else { return nil }
            return (low, high)
        } ?? nil
    }

    /// Assigned partitions whose consumed position is beyond the high watermark of the latest
    /// Fetch response: the log was truncated or recreated (a cluster that lost its data). Kafka
    /// answers such fetches with OFFSET_OUT_OF_RANGE; Tansu answers them with an empty result, so
    /// the consumer would wait there forever.
    func partitionsBeyondEnd() -> [(partition: KafkaTopicPartition, position: Int64, high: Int64)] {
        (try? withHandle { rk -> [(partition: KafkaTopicPartition, position: Int64, high: Int64)] in
            var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
            guard rd_kafka_assignment(rk, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list else { return [] }
            defer { rd_kafka_topic_partition_list_destroy(list) }
            guard rd_kafka_position(rk, list) == RD_KAFKA_RESP_ERR_NO_ERROR else { return [] }
            var result: [(partition: KafkaTopicPartition, position: Int64, high: Int64)] = []
            for i in 0..<Int(list.pointee.cnt) {
                let element = list.pointee.elems[i]
                let topic = Self.string(element.topic)
                var low: Int64 = -1001
                var high: Int64 = -1001
                guard element.offset >= 0,
                      rd_kafka_get_watermark_offsets(rk, topic, element.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                      high >= 0, element.offset > high
                else { continue }
                result.append((KafkaTopicPartition(topic: topic, partition: element.partition), element.offset, high))
            }
            return result
        }) ?? []
    }

    /// Moves the fetch position of assigned partitions (`rd_kafka_seek_partitions`).
    func seek(_ assignments: [KafkaPartitionAssignment], timeout: Duration) throws(KafkaError) {
        try withHandle { rk throws(KafkaError) in
            let list = try Self.makePartitionList(assignments.map { ($0.topic, $0.partition, $0.offset.rawValue) })
            defer { rd_kafka_topic_partition_list_destroy(list) }
            if let failure = rd_kafka_seek_partitions(rk, list, timeout.milliseconds) {
                let error = Self.makeError(failure)
                rd_kafka_error_destroy(failure)
                throw error
            }
        }
    }

    /// Waits up to `timeout` for a first record, then takes whatever else is already queued, up
    /// to `maxCount`. Errors not tied to a record position (and per-partition errors) go to
    /// `Events.error`.
    func consumerPoll(timeout: Duration, maxCount: Int) -> [KafkaRecord] {
        (try? withHandle { rk -> [KafkaRecord] in
            var records: [KafkaRecord] = []
            var wait = timeout.milliseconds
            while records.count < maxCount, let message = rd_kafka_consumer_poll(rk, wait) {
                defer { rd_kafka_message_destroy(message) }
                wait = 0
                if message.pointee.err == RD_KAFKA_RESP_ERR_NO_ERROR {
                    records.append(Self.makeRecord(message))
                } else if message.pointee.err != RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    var error = Self.makeError(message.pointee.err, message: "consume")
                    let topic = Self.string(message.pointee.rkt.flatMap { rd_kafka_topic_name($0) })
                    if !topic.isEmpty {
                        error.message = "\(topic)[\(message.pointee.partition)]: \(error.message)"
                    }
                    context.logger.debug(
                        "Kafka consumer error",
                        metadata: ["kafka.topic": "\(topic)", "kafka.partition": "\(message.pointee.partition)", "kafka.error": "\(error)"]
                    )
                    context.events.error(error)
                }
            }
            return records
        }) ?? []
    }

    // MARK: Admin

    /// All topics and brokers (`rd_kafka_metadata`), blocking up to `timeout`.
    func metadata(timeout: Duration) throws(KafkaError) -> KafkaClusterMetadata {
        try withHandle { rk throws(KafkaError) in
            var metadata: UnsafePointer<rd_kafka_metadata>?
            let code = rd_kafka_metadata(rk, 1, nil, &metadata, timeout.milliseconds)
            guard code == RD_KAFKA_RESP_ERR_NO_ERROR, let metadata else {
                throw Self.makeError(code, message: "metadata")
            }
            defer { rd_kafka_metadata_destroy(metadata) }
            let md = metadata.pointee
            var brokers: [KafkaClusterMetadata.Broker] = []
            for i in 0..<Int(md.broker_cnt) {
                let broker = md.brokers[i]
                brokers.append(.init(id: broker.id, host: Self.string(broker.host), port: broker.port))
            }
            var topics: [KafkaTopicMetadata] = []
            for i in 0..<Int(md.topic_cnt) {
                let topic = md.topics[i]
                topics.append(
                    KafkaTopicMetadata(
                        name: Self.string(topic.topic),
                        partitionCount: topic.partition_cnt,
                        error: topic.err == RD_KAFKA_RESP_ERR_NO_ERROR ? nil : Self.makeError(topic.err, message: "topic metadata")
                    )
                )
            }
            return KafkaClusterMetadata(brokers: brokers, topics: topics)
        }
    }

    /// CreateTopics; returns each topic's outcome (`nil` = created). Throws if the request as a
    /// whole failed (e.g. timed out).
    func createTopics(_ specifications: [KafkaTopicSpecification], timeout: Duration) throws(KafkaError) -> [String: KafkaError?] {
        try withHandle { rk throws(KafkaError) in
            var errorText = [CChar](repeating: 0, count: 512)
            var newTopics: [OpaquePointer?] = []
            defer { for topic in newTopics { rd_kafka_NewTopic_destroy(topic) } }
            for spec in specifications {
                guard let topic = rd_kafka_NewTopic_new(spec.name, spec.partitions, Int32(spec.replicationFactor), &errorText, errorText.count) else {
                    throw KafkaError.invalidArgument("topic \(spec.name): \(Self.string(errorText))")
                }
                newTopics.append(topic)
                for (key, value) in spec.configs.sorted(by: { $0.key < $1.key }) {
                    let code = rd_kafka_NewTopic_set_config(topic, key, value)
                    if code != RD_KAFKA_RESP_ERR_NO_ERROR {
                        throw Self.makeError(code, message: "topic \(spec.name) config \(key)=\(value)")
                    }
                }
            }
            guard let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS) else {
                throw KafkaError.invalidArgument("rd_kafka_AdminOptions_new failed")
            }
            defer { rd_kafka_AdminOptions_destroy(options) }
            _ = rd_kafka_AdminOptions_set_request_timeout(options, timeout.milliseconds, &errorText, errorText.count)
            _ = rd_kafka_AdminOptions_set_operation_timeout(options, timeout.milliseconds, &errorText, errorText.count)
            guard let queue = rd_kafka_queue_new(rk) else { throw KafkaError.invalidArgument("rd_kafka_queue_new failed") }
            defer { rd_kafka_queue_destroy(queue) }
            newTopics.withUnsafeMutableBufferPointer {
                rd_kafka_CreateTopics(rk, $0.baseAddress, $0.count, options, queue)
            }
            // The result event arrives within the request timeout; the margin covers connecting.
            guard let event = rd_kafka_queue_poll(queue, (timeout + .seconds(5)).milliseconds) else {
                throw Self.makeError(RD_KAFKA_RESP_ERR__TIMED_OUT, message: "CreateTopics got no answer")
            }
            defer { rd_kafka_event_destroy(event) }
            let eventError = rd_kafka_event_error(event)
            if eventError != RD_KAFKA_RESP_ERR_NO_ERROR {
                throw Self.makeError(eventError, message: "CreateTopics: " + Self.string(rd_kafka_event_error_string(event)))
            }
            guard let result = rd_kafka_event_CreateTopics_result(event) else {
                throw Self.makeError(RD_KAFKA_RESP_ERR__FAIL, message: "CreateTopics: unexpected event")
            }
            var count = 0
            guard let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return [:] }
            var outcome: [String: KafkaError?] = [:]
            for i in 0..<count {
                guard let topicResult = results[i] else { continue }
                let name = Self.string(rd_kafka_topic_result_name(topicResult))
                let code = rd_kafka_topic_result_error(topicResult)
                if code == RD_KAFKA_RESP_ERR_NO_ERROR {
                    outcome[name] = .some(nil)
                } else {
                    let text = Self.string(rd_kafka_topic_result_error_string(topicResult))
                    outcome[name] = Self.makeError(code, message: text.isEmpty ? "create topic \(name)" : text)
                }
            }
            return outcome
        }
    }

    // MARK: Conversions

    /// Values of C macros that Swift does not import.
    static let partitionUnassigned: Int32 = -1  // RD_KAFKA_PARTITION_UA
    static let messageFlagCopy: Int32 = 0x2  // RD_KAFKA_MSG_F_COPY
    static let purgeQueue: Int32 = 0x1  // RD_KAFKA_PURGE_F_QUEUE
    static let purgeInflight: Int32 = 0x2  // RD_KAFKA_PURGE_F_INFLIGHT

    static let codesMatchHeaders: Bool = {
        typealias Code = KafkaError.Code
        let pairs: [(rd_kafka_resp_err_t, Int32)] = [
            (RD_KAFKA_RESP_ERR__DESTROY, Code.destroy), (RD_KAFKA_RESP_ERR__FAIL, Code.fail),
            (RD_KAFKA_RESP_ERR__TRANSPORT, Code.transport), (RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, Code.msgTimedOut),
            (RD_KAFKA_RESP_ERR__PARTITION_EOF, Code.partitionEOF), (RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION, Code.unknownPartition),
            (RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, Code.unknownTopicLocal), (RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, Code.allBrokersDown),
            (RD_KAFKA_RESP_ERR__INVALID_ARG, Code.invalidArgument), (RD_KAFKA_RESP_ERR__TIMED_OUT, Code.timedOut),
            (RD_KAFKA_RESP_ERR__QUEUE_FULL, Code.queueFull), (RD_KAFKA_RESP_ERR__STATE, Code.state),
            (RD_KAFKA_RESP_ERR__PURGE_QUEUE, Code.purgeQueue), (RD_KAFKA_RESP_ERR__PURGE_INFLIGHT, Code.purgeInflight),
            (RD_KAFKA_RESP_ERR__FATAL, Code.fatal), (RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE, Code.offsetOutOfRange),
            (RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, Code.unknownTopicOrPartition),
            (RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, Code.leaderNotAvailable),
            (RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, Code.notLeaderForPartition),
            (RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, Code.requestTimedOut), (RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, Code.networkException),
            (RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS, Code.topicAlreadyExists), (RD_KAFKA_RESP_ERR_POLICY_VIOLATION, Code.policyViolation),
            (RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, Code.outOfOrderSequenceNumber),
            (RD_KAFKA_RESP_ERR_DUPLICATE_SEQUENCE_NUMBER, Code.duplicateSequenceNumber),
            (RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH, Code.invalidProducerEpoch),
            (RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID, Code.unknownProducerId),
        ]
        return pairs.allSatisfy { $0.0.rawValue == $0.1 }
    }()

    static func string(_ text: UnsafePointer<CChar>?) -> String {
        text.map { String(cString: $0) } ?? ""
    }

    static func string(_ text: UnsafeMutablePointer<CChar>?) -> String {
        string(UnsafePointer(text))
    }

    /// The NUL-terminated text in an error buffer filled by librdkafka.
    static func string(_ buffer: [CChar]) -> String {
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func makeError(_ code: rd_kafka_resp_err_t, message: String, isFatal: Bool = false) -> KafkaError {
        KafkaError(
            code: code.rawValue,
            name: string(rd_kafka_err2name(code)),
            message: "\(message): \(string(rd_kafka_err2str(code)))",
            isFatal: isFatal
        )
    }

    static func makeError(_ error: OpaquePointer) -> KafkaError {
        KafkaError(
            code: rd_kafka_error_code(error).rawValue,
            name: string(rd_kafka_error_name(error)),
            message: string(rd_kafka_error_string(error)),
            isFatal: rd_kafka_error_is_fatal(error) != 0,
            isRetriable: rd_kafka_error_is_retriable(error) != 0 || KafkaError.retriableCodes.contains(rd_kafka_error_code(error).rawValue)
        )
    }

    private static func makePartitionList(_ entries: [(String, Int32, Int64)]) throws(KafkaError) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        guard let list = rd_kafka_topic_partition_list_new(Int32(max(entries.count, 1))) else {
            throw KafkaError.invalidArgument("rd_kafka_topic_partition_list_new failed")
        }
        for (topic, partition, offset) in entries {
            rd_kafka_topic_partition_list_add(list, topic, partition)?.pointee.offset = offset
        }
        return list
    }

    private static func bytes(_ pointer: UnsafeMutableRawPointer?, _ count: Int) -> [UInt8]? {
        guard let pointer else { return nil }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    private static func makeRecord(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> KafkaRecord {
        let m = message.pointee
        var headers: [KafkaHeader] = []
        var list: OpaquePointer?
        if rd_kafka_message_headers(message, &list) == RD_KAFKA_RESP_ERR_NO_ERROR, let list {
            headers.reserveCapacity(rd_kafka_header_cnt(list))  // one allocation, not one per doubling
            var index = 0
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(list, index, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                let bytes = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                headers.append(KafkaHeader(string(name), bytes))
                index += 1
            }
        }
        var timestampType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let timestamp = rd_kafka_message_timestamp(message, &timestampType)
        return KafkaRecord(
            topic: string(m.rkt.flatMap { rd_kafka_topic_name($0) }),
            partition: m.partition,
            offset: m.offset,
            key: bytes(m.key, m.key_len),
            value: bytes(m.payload, m.len),
            headers: headers,
            timestampMilliseconds: timestampType == RD_KAFKA_TIMESTAMP_NOT_AVAILABLE || timestamp < 0 ? nil : timestamp
        )
    }
}

// MARK: C callbacks (no captures; state comes from the instance opaque)

private func context(of rk: OpaquePointer?) -> RDKafkaClient.CallbackContext? {
    guard let rk, let opaque = rd_kafka_opaque(rk) else { return nil }
    return Unmanaged<RDKafkaClient.CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
}

private func rdDeliveryReportCallback(_ rk: OpaquePointer?, _ message: UnsafePointer<rd_kafka_message_t>?, _ opaque: UnsafeMutableRawPointer?) {
    guard let message, let opaque else { return }
    let context = Unmanaged<RDKafkaClient.CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
    let m = message.pointee
    let topic = RDKafkaClient.string(m.rkt.flatMap { rd_kafka_topic_name($0) })
    let result: Result<KafkaDeliveryReport, KafkaError>
    if m.err == RD_KAFKA_RESP_ERR_NO_ERROR {
        result = .success(KafkaDeliveryReport(topic: topic, partition: m.partition, offset: m.offset))
    } else {
        let error = RDKafkaClient.makeError(m.err, message: "delivery to \(topic)[\(m.partition)]")
        context.logger.trace(
            "Kafka delivery failed",
            metadata: ["kafka.topic": "\(topic)", "kafka.partition": "\(m.partition)", "kafka.error": "\(error)"]
        )
        result = .failure(error)
    }
    context.events.deliveryReport(m._private, result)
}

private func rdErrorCallback(_ rk: OpaquePointer?, _ code: Int32, _ reason: UnsafePointer<CChar>?, _ opaque: UnsafeMutableRawPointer?) {
    guard let opaque else { return }
    let context = Unmanaged<RDKafkaClient.CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
    var error = RDKafkaClient.makeError(rd_kafka_resp_err_t(code), message: RDKafkaClient.string(reason))
    error.message = RDKafkaClient.string(reason)
    if code == RD_KAFKA_RESP_ERR__FATAL.rawValue, let rk {
        var text = [CChar](repeating: 0, count: 512)
        let underlying = rd_kafka_fatal_error(rk, &text, text.count)
        error = KafkaError(
            code: underlying.rawValue,
            name: RDKafkaClient.string(rd_kafka_err2name(underlying)),
            message: RDKafkaClient.string(text),
            isFatal: true,
            isRetriable: false
        )
    }
    context.logger.debug(
        "Kafka client error",
        metadata: ["kafka.client": "\(RDKafkaClient.string(rk.flatMap { rd_kafka_name($0) }))", "kafka.error": "\(error)"]
    )
    context.events.error(error)
}

private func rdLogCallback(_ rk: OpaquePointer?, _ level: Int32, _ facility: UnsafePointer<CChar>?, _ text: UnsafePointer<CChar>?) {
    guard let context = context(of: rk) else { return }
    // Libraries log at debug/trace only: syslog levels up to 6 (info) become debug, 7 trace.
    let logLevel: Logger.Level = level >= 7 ? .trace : .debug
    guard context.logger.logLevel <= logLevel else { return }
    context.logger.log(
        level: logLevel,
        "librdkafka log",
        metadata: [
            "kafka.client": "\(RDKafkaClient.string(rk.flatMap { rd_kafka_name($0) }))",
            "kafka.facility": "\(RDKafkaClient.string(facility))",
            "kafka.syslog_level": "\(level)",
            "kafka.message": "\(RDKafkaClient.string(text))",
        ]
    )
}

private func rdStatisticsCallback(_ rk: OpaquePointer?, _ json: UnsafeMutablePointer<CChar>?, _ length: Int, _ opaque: UnsafeMutableRawPointer?) -> Int32 {
    guard let json, let opaque else { return 0 }
    let context = Unmanaged<RDKafkaClient.CallbackContext>.fromOpaque(opaque).takeUnretainedValue()
    let text = String(decoding: UnsafeRawBufferPointer(start: json, count: length), as: UTF8.self)
    context.events.statistics?(text)
    return 0  // librdkafka frees json
}
