/// Configuration shared by `KafkaProducer`, `KafkaConsumer` and `KafkaAdmin`.
///
/// The typed fields are translated to librdkafka properties first; `properties` is applied last,
/// verbatim, so anything librdkafka accepts (`topic.metadata.refresh.interval.ms`,
/// `fetch.wait.max.ms`, `security.protocol`, ...) can be set or overridden there.
///
/// Keys (typed field → librdkafka property):
/// - `bootstrapServers` → `bootstrap.servers` (comma-separated `host:port`)
/// - `clientId` → `client.id`
/// - `statisticsInterval` → `statistics.interval.ms` (statistics are off when `nil`)
/// - Producer: `idempotent` → `enable.idempotence` + `acks=all`; `linger` → `linger.ms`;
///   `maxQueuedMessages` → `queue.buffering.max.messages`; `deliveryTimeout` → `message.timeout.ms`;
///   `maxInFlight` → `max.in.flight` (when set); `compression` → `compression.type` (when set).
/// - Consumer: `fetchWaitMax` → `fetch.wait.max.ms`; `maxPrefetchKilobytes` →
///   `queued.max.messages.kbytes`; `maxPrefetchMessages` → `queued.min.messages`; `fetchQueueBackoff` →
///   `fetch.queue.backoff.ms` (skipped by a librdkafka older than 2.3);
///   `enable.partition.eof=false`, `enable.auto.commit=false`, a private `group.id` (no group
///   membership is used: partitions are assigned manually), `auto.offset.reset=earliest` (an
///   offset out of range, e.g. after the cluster lost its data, restarts from the oldest record
///   instead of skipping to the end; also ListOffsets "latest" is wrong on Tansu).
public struct KafkaConfiguration: Sendable {
    public var bootstrapServers: String
    public var clientId: String
    /// librdkafka properties applied verbatim after the typed fields.
    public var properties: [String: String]
    /// How often librdkafka emits statistics (delivered to the `statistics` callback of the
    /// producer or consumer); `nil` disables them. An idempotent producer with
    /// `watchProducerEpoch` reads them every second regardless, and still calls its callback at
    /// this interval only.
    public var statisticsInterval: Duration?
    /// Longest blocking wait of one poll call on the dedicated thread. It bounds how long
    /// `shutdown()`/`close()` wait for the thread to notice; it is not a sleep (polls return as
    /// soon as an event arrives).
    public var pollTimeout: Duration

    // MARK: Producer

    /// Idempotent producer (`enable.idempotence=true`, `acks=all`). Default `true`.
    public var idempotent: Bool
    /// How long the producer waits to batch messages (`linger.ms`). Default 5 ms.
    public var linger: Duration
    /// Bound of the producer's local queue (`queue.buffering.max.messages`). When it is full,
    /// `KafkaProducer.send` throws `_QUEUE_FULL` (retriable) at once instead of buffering more.
    public var maxQueuedMessages: Int
    /// `max.in.flight` (requests per broker connection not yet answered); `nil` leaves librdkafka's own
    /// (5 for an idempotent producer). An idempotent producer accepts 1 to 5; with 1, messages arriving
    /// while a request is in flight wait for its answer and go in the next one, so the batches grow with
    /// the load instead of the request rate.
    public var maxInFlight: Int?
    /// `compression.type` of produced batches (`none`, `gzip`, `snappy`, `lz4`, `zstd`); `nil` leaves
    /// librdkafka's own (`none`). librdkafka sends a batch uncompressed when compressing does not make it
    /// smaller; consumers decompress transparently.
    public var compression: String?
    /// `message.timeout.ms`: a message not acknowledged within this time fails with
    /// `_MSG_TIMED_OUT`. Default 30 s.
    public var deliveryTimeout: Duration
    /// If messages are in flight and no delivery succeeded for this long, the producer is
    /// considered wedged (e.g. an idempotent producer whose cluster lost its state) and is
    /// recreated. `nil` disables this watchdog. Default 15 s; keep it below `deliveryTimeout`.
    public var stallTimeout: Duration?
    /// Watch an idempotent producer's epoch in its statistics (every second, whatever
    /// `statisticsInterval` says): `recreateAfterConsecutiveFailures` epoch bumps or more between two
    /// reports without a delivery mean librdkafka is retrying UNKNOWN_PRODUCER_ID forever (it bumps
    /// the epoch locally and never asks for a new producer id; the cluster lost its state), and the
    /// producer is recreated. Default `true`; needs `stallTimeout` non-nil.
    public var watchProducerEpoch: Bool
    /// This many consecutive delivery failures with producer-state errors (`UNKNOWN_PRODUCER_ID`,
    /// `OUT_OF_ORDER_SEQUENCE_NUMBER`, `INVALID_PRODUCER_EPOCH`) or `_MSG_TIMED_OUT` recreate the
    /// producer. Default 3.
    public var recreateAfterConsecutiveFailures: Int
    /// How long shutting down (or releasing) a producer waits for queued messages.
    public var shutdownFlushTimeout: Duration

    // MARK: Consumer

    /// Most records handed to the consumer's handler in one batch.
    public var maxBatchSize: Int
    /// `fetch.wait.max.ms`. Tansu does not answer a waiting fetch early, so keep this small.
    public var fetchWaitMax: Duration
    /// `queued.max.messages.kbytes`: bound of librdkafka's prefetch queue (per consumer).
    public var maxPrefetchKilobytes: Int
    /// `queued.min.messages`: librdkafka prefetches until this many messages are queued per partition.
    public var maxPrefetchMessages: Int
    /// `fetch.queue.backoff.ms`: once a partition's prefetch queue is over `maxPrefetchMessages` or
    /// `maxPrefetchKilobytes`, how long librdkafka postpones its next fetch. librdkafka's default is a
    /// second, so a consumer that reads faster than one prefetch queue per second (a subscriber's
    /// read-back of a backlog, a replay) waits most of each second with an empty queue. Default 20 ms.
    /// librdkafka before 2.3 (Debian 12 ships 2.0.2) does not know the property: it is then not set
    /// (see `propertiesNewerThanSomeLibrdkafka`).
    public var fetchQueueBackoff: Duration

    /// Properties Tributary sets that an older librdkafka does not know: where the linked library answers
    /// "unknown property" for one of these, it is skipped (logged) instead of refusing to create the client.
    public var propertiesNewerThanSomeLibrdkafka: Set<String> = ["fetch.queue.backoff.ms"]

    public init(
        bootstrapServers: String,
        clientId: String = "tributary",
        properties: [String: String] = [:],
        statisticsInterval: Duration? = nil
    ) {
        self.bootstrapServers = bootstrapServers
        self.clientId = clientId
        self.properties = properties
        self.statisticsInterval = statisticsInterval
        self.pollTimeout = .milliseconds(100)
        self.idempotent = true
        self.linger = .milliseconds(5)
        self.maxQueuedMessages = 100_000
        self.deliveryTimeout = .seconds(30)
        self.maxInFlight = nil
        self.compression = nil
        self.stallTimeout = .seconds(15)
        self.recreateAfterConsecutiveFailures = 3
        self.watchProducerEpoch = true
        self.shutdownFlushTimeout = .seconds(5)
        self.maxBatchSize = 500
        self.fetchWaitMax = .milliseconds(50)
        self.maxPrefetchKilobytes = 16_384
        self.maxPrefetchMessages = 10_000
        self.fetchQueueBackoff = .milliseconds(20)
    }

    enum Role { case producer, consumer, admin }

    /// The librdkafka properties for `role`, typed fields first, then `properties`.
    func librdkafkaProperties(for role: Role) -> [(String, String)] {
        var result: [(String, String)] = [
            ("bootstrap.servers", bootstrapServers),
            ("client.id", clientId),
        ]
        if let statisticsInterval, role != .admin {
            result.append(("statistics.interval.ms", String(statisticsInterval.milliseconds)))
        }
        switch role {
        case .producer:
            if idempotent {
                result.append(("enable.idempotence", "true"))
                result.append(("acks", "all"))
            }
            result.append(("linger.ms", linger.fractionalMilliseconds))
            result.append(("queue.buffering.max.messages", String(maxQueuedMessages)))
            result.append(("message.timeout.ms", String(deliveryTimeout.milliseconds)))
            if let maxInFlight { result.append(("max.in.flight", String(maxInFlight))) }
            if let compression { result.append(("compression.type", compression)) }
        case .consumer:
            result.append(("group.id", "tributary-manual-assign-\(clientId)"))
            result.append(("enable.auto.commit", "false"))
            result.append(("enable.auto.offset.store", "false"))
            result.append(("enable.partition.eof", "false"))
            result.append(("auto.offset.reset", "earliest"))
            result.append(("fetch.wait.max.ms", String(fetchWaitMax.milliseconds)))
            result.append(("queued.max.messages.kbytes", String(maxPrefetchKilobytes)))
            result.append(("queued.min.messages", String(maxPrefetchMessages)))
            result.append(("fetch.queue.backoff.ms", String(fetchQueueBackoff.milliseconds)))
        case .admin:
            break
        }
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
            result.append((key, value))
        }
        return result
    }
}

extension Duration {
    /// Milliseconds with up to three decimals (`linger.ms` is a floating-point property): 1 ms → "1",
    /// 500 µs → "0.5", 1,250 µs → "1.25"; never negative.
    var fractionalMilliseconds: String {
        let (seconds, attoseconds) = components
        let micros = max(0, seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
        let whole = micros / 1000
        var fraction = micros % 1000
        guard fraction > 0 else { return String(whole) }
        var digits = 3
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let text = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - text.count) + text
    }

    /// Whole milliseconds, clamped to `Int32` (librdkafka takes `int` timeouts), never negative.
    var milliseconds: Int32 {
        let (seconds, attoseconds) = components
        let ms = seconds.multipliedReportingOverflow(by: 1000)
        if ms.overflow { return seconds < 0 ? 0 : .max }
        let total = ms.partialValue + attoseconds / 1_000_000_000_000_000
        return Int32(clamping: max(0, total))
    }
}
