import Common

/// Everything a broker node is told at start-up. Each key is documented in `keys`; see docs/broker.md.
struct CloudBrokerConfiguration: Sendable {
    static let keys: [ConfigKey] = ConfigKey.common + [
        ConfigKey("node_id", help: "Unique id of this node in the cluster; appears in session ownership records."),
        ConfigKey("mqtt.listen", default: "0.0.0.0:1883", help: "MQTT over TCP listener."),
        ConfigKey("mqtt.tls_listen", default: "", help: "MQTT over TLS listener (HOST:PORT); empty: no TLS listener."),
        ConfigKey("mqtt.tls_certificate", default: "", help: "PEM certificate chain of the TLS listener."),
        ConfigKey("mqtt.tls_private_key", default: "", help: "PEM private key of the TLS listener."),
        ConfigKey("mqtt.tls_client_ca", default: "", help: "PEM CA certificates that client certificates are verified against; empty: client certificates are not requested."),
        ConfigKey("mqtt.tls_client_certificates", default: "optional", help: "With mqtt.tls_client_ca: 'optional' (verified when presented) or 'required'."),
        ConfigKey("mqtt.max_packet_size", default: "1MiB", help: "Largest MQTT packet accepted from a client (announced to MQTT 5 clients); larger ones close the connection with 0x95."),
        ConfigKey("mqtt.receive_maximum", default: "256", help: "QoS 1/2 publishes of one client waiting for Kafka at once (MQTT 5 Receive Maximum; for 3.1.1 the socket is simply not read beyond it)."),
        ConfigKey("mqtt.max_inflight_outbound", default: "64", help: "QoS 1/2 messages sent to one client and not yet acknowledged (lowered to the client's Receive Maximum)."),
        ConfigKey("mqtt.session_queue_limit", default: "1000", help: "Messages queued for one session beyond the in-flight window; beyond it a connected session reads its QoS 1/2 messages back from Kafka, other messages are dropped and counted."),
        ConfigKey("mqtt.read_back_limit", default: "100", help: "Connected sessions of this node that may read overflowing messages back from Kafka at the same time (one Kafka consumer each); beyond, their overflow is dropped and counted as without read-back."),
        ConfigKey("mqtt.topic_alias_maximum", default: "64", help: "Topic aliases an MQTT 5 client may use towards the broker (0 disables them)."),
        ConfigKey("mqtt.outbound_topic_alias_maximum", default: "64", help: "Topic aliases the broker sets on messages to an MQTT 5 client that announces a Topic Alias Maximum (the smaller of the two; 0 disables them; least recently used replaced)."),
        ConfigKey("mqtt.max_keep_alive", default: "0", help: "Longest keep-alive accepted in seconds; a larger (or zero) one is replaced by this via Server Keep Alive for MQTT 5 clients. 0 = accept the client's."),
        ConfigKey("mqtt.max_session_expiry", default: "86400", help: "Longest session expiry interval granted, in seconds (MQTT 3.1.1 persistent sessions get this)."),
        ConfigKey("mqtt.connect_timeout", default: "10s", help: "A connection that sends no CONNECT within this time is closed."),
        ConfigKey("mqtt.retain_available", default: "true", help: "Whether retained messages are supported."),
        ConfigKey("auth.password_file", default: "", help: "Password file (USER:pbkdf2-sha256$...; write it with 'cloud-broker passwd FILE USER'). Empty: no password file (see also auth.jwt.keys, mqtt.tls_identity)."),
        ConfigKey("auth.allow_anonymous", default: "false", help: "When authentication is on (a password file, JWT keys or mqtt.tls_identity): accept clients that send neither user name nor password (and, with mqtt.tls_identity, no certificate) as anonymous."),
        ConfigKey("auth.jwt.keys", default: "", help: "List of 'HS256|RS256|ES256 PATH [KID]': an HMAC secret file or a PEM public key that JWTs are verified with (KID: the token header's kid). Empty: no JWT authentication."),
        ConfigKey("auth.jwt.token_in", default: "password", help: "The CONNECT field carrying the JWT: 'password' (any user name, or none) or 'username'."),
        ConfigKey("auth.jwt.identity_claim", default: "sub", help: "The string claim that becomes the client's user name for the ACL (USER, %u)."),
        ConfigKey("auth.jwt.issuer", default: "", help: "When set, a token's iss claim must equal it."),
        ConfigKey("auth.jwt.audience", default: "", help: "When set, a token's aud claim must contain it."),
        ConfigKey("auth.jwt.leeway", default: "10s", help: "Clock skew allowed when checking exp and nbf."),
        ConfigKey("auth.jwt.require_expiry", default: "true", help: "Refuse tokens without an exp claim."),
        ConfigKey("auth.jwt.disconnect_after_expiry", default: "true", help: "End a connection when its token expires (exp + leeway); MQTT 5 clients get DISCONNECT 0xA0 (maximum connect time). false: tokens are checked at CONNECT only."),
        ConfigKey("mqtt.tls_identity", default: "none", help: "With verified client certificates: 'cn' (subject common name) or 'san' (first DNS/e-mail/URI subject alternative name) becomes the client's user name; a CONNECT with another user name is refused (0x87). 'none': certificates only gate the handshake."),
        ConfigKey("auth.acl", default: "", help: "Ordered list of 'USER|* read|write|readwrite FILTER' (%u = user name, %c = client id); when set, what no rule allows is denied."),
        ConfigKey("kafka.bootstrap_servers", help: "Comma-separated Kafka bootstrap servers, HOST:PORT."),
        ConfigKey("kafka.messages_topic", default: "mqtt.messages", help: "Kafka topic receiving published messages when no rule matches."),
        ConfigKey("kafka.messages_partitions", default: "6", help: "Partitions of the messages topics when the broker creates them."),
        ConfigKey("kafka.retained_topic", default: "mqtt.retained", help: "Compacted Kafka topic holding retained messages (key = MQTT topic, tombstone clears)."),
        ConfigKey("kafka.retained_partitions", default: "3", help: "Partitions of the retained topic when the broker creates it."),
        ConfigKey("kafka.sessions_topic", default: "mqtt.sessions", help: "Compacted Kafka topic holding persistent MQTT sessions (key = client id, tombstone when a session ends); read at start-up."),
        ConfigKey("kafka.sessions_partitions", default: "3", help: "Partitions of the sessions topic when the broker creates it."),
        ConfigKey("sessions.store", default: "kafka", help: "Where offline sessions are kept: 'kafka' (kafka.sessions_topic; they survive a node restart) or 'memory' (lost with the node)."),
        ConfigKey("kafka.connections_topic", default: "mqtt.connections", help: "Kafka topic where nodes announce client connections, so the node a client left disconnects it (takeover across nodes); retention 1 hour."),
        ConfigKey("kafka.connections_partitions", default: "3", help: "Partitions of the connections topic when the broker creates it."),
        ConfigKey("cluster.node_lease", default: "5s", help: "A node with no heartbeat on the connections topic for this long is lost: the live node with the smallest id publishes the wills of its clients."),
        ConfigKey("cluster.heartbeat_interval", default: "1s", help: "How often a node writes its heartbeat to the connections topic (well below cluster.node_lease)."),
        ConfigKey("kafka.dedupe_lookback", default: "5000", help: "Records per messages partition read back at start-up into the index that recognises publishes resent after a node loss (0 = none)."),
        ConfigKey("kafka.delivery_idle_pause", default: "0s", help: "Pause the delivery consumer (it reads every record of the messages topics back) after this long without any subscription on the node and without a duplicate check; a subscription or a resent publish resumes it. While paused, resent publishes are recognised only within kafka.dedupe_lookback. 0s = never pause."),
        ConfigKey("kafka.replication_factor", default: "1", help: "Replication factor of topics the broker creates."),
        ConfigKey("kafka.topic_rules", default: "", help: "Ordered list of 'FILTER -> KAFKA_TOPIC [key=TEMPLATE]'; the first whose MQTT filter matches chooses the topic. TEMPLATE may use {topic}, {client_id} and {1}..{n} (wildcard captures); default key {topic}."),
        ConfigKey("kafka.linger", default: "500us", help: "librdkafka linger.ms: how long the producer waits to batch publishes (fractions of a millisecond allowed, e.g. 500us)."),
        ConfigKey("kafka.max_in_flight", default: "1", help: "Produce requests the producer keeps in flight per Kafka broker (librdkafka max.in.flight, 1 to 5 for the idempotent producer); with 1 the batches grow with the load instead of the request rate."),
        ConfigKey("kafka.compression", default: "lz4", help: "Compression of the batches the producer writes (librdkafka compression.type): none, gzip, snappy, lz4 or zstd; a batch that does not get smaller is sent uncompressed."),
        ConfigKey("kafka.delivery_timeout", default: "30s", help: "A publish not acknowledged by Kafka within this time fails (MQTT 5 clients get reason 0x80, 3.1.1 clients are disconnected)."),
        ConfigKey("kafka.max_queued_messages", default: "100000", help: "Bound of the producer's local queue; when full, publishing sockets are not read."),
        ConfigKey("kafka.fetch_wait_max", default: "50ms", help: "librdkafka fetch.wait.max.ms for the delivery consumer."),
        ConfigKey("kafka.statistics_interval", default: "5s", help: "How often librdkafka's producer statistics are exported as metrics (queue, round trip, brokers up, requests); 0s disables them."),
        ConfigKey("kafka.librdkafka", default: "", help: "List of librdkafka properties 'NAME=VALUE' for every Kafka client of the node (security.protocol, sasl.*, ssl.*, socket.*, ...), applied after Tributary's own; the properties the guarantees rest on (acks, enable.idempotence, offsets, group) are refused. A name or value librdkafka rejects stops the node with its message."),
        ConfigKey("kafka.default_qos", default: "1", help: "QoS of Kafka records that carry no mqtt.qos header (produced by other clients), before the subscription's QoS caps it."),
    ]

    var nodeId: String
    var mqttListen: HostPort
    var httpListen: HostPort
    var kafkaBootstrapServers: String
    var messagesTopic: String
    var messagesPartitions: Int
    var retainedTopic: String
    var retainedPartitions: Int
    var sessionsTopic: String
    var sessionsPartitions: Int
    var dedupeLookback: Int
    /// nil: the delivery consumer never pauses.
    var deliveryIdlePause: Duration?
    var connectionsTopic: String
    var nodeLease: Duration
    var heartbeatInterval: Duration
    var connectionsPartitions: Int
    var sessionsStore: SessionStoreKind
    var replicationFactor: Int
    var topicRules: [TopicRule]
    var linger: Duration
    /// `kafka.max_in_flight`: librdkafka `max.in.flight` of the producer.
    var maxInFlight: Int
    /// `kafka.compression`: librdkafka `compression.type` of the producer.
    var compression: KafkaCompression
    /// `nil`: statistics off.
    var statisticsInterval: Duration?
    var deliveryTimeout: Duration
    var maxQueuedMessages: Int
    var fetchWaitMax: Duration
    /// `kafka.librdkafka`: extra librdkafka properties for every client.
    var librdkafkaProperties: [String: String] = [:]
    var defaultQoS: MQTTQoS
    var limits: BrokerLimits
    var authenticator = Authenticator()
    var tls: TLSSettings?

    init(_ values: ConfigValues) throws(ConfigError) {
        nodeId = try values.string("node_id")
        mqttListen = try values.hostPort("mqtt.listen")
        httpListen = try values.hostPort("http.listen")
        kafkaBootstrapServers = try values.string("kafka.bootstrap_servers")
        for server in kafkaBootstrapServers.split(separator: ",") {
            do {
                _ = try HostPort(parsing: String(server))
            } catch {
                throw ConfigError(key: "kafka.bootstrap_servers", origin: values.raw("kafka.bootstrap_servers")?.origin, error.message)
            }
        }
        messagesTopic = try values.string("kafka.messages_topic")
        messagesPartitions = try values.int("kafka.messages_partitions", range: 1...10_000)
        retainedTopic = try values.string("kafka.retained_topic")
        retainedPartitions = try values.int("kafka.retained_partitions", range: 1...10_000)
        sessionsTopic = try values.string("kafka.sessions_topic")
        sessionsPartitions = try values.int("kafka.sessions_partitions", range: 1...10_000)
        dedupeLookback = try values.int("kafka.dedupe_lookback", range: 0...10_000_000)
        let idlePause = try values.duration("kafka.delivery_idle_pause")
        deliveryIdlePause = idlePause > .zero ? idlePause : nil
        connectionsTopic = try values.string("kafka.connections_topic")
        nodeLease = try values.duration("cluster.node_lease")
        heartbeatInterval = try values.duration("cluster.heartbeat_interval")
        guard heartbeatInterval * 2 <= nodeLease, heartbeatInterval > .zero else {
            throw ConfigError(key: "cluster.heartbeat_interval", "must be positive and at most half of cluster.node_lease (\(nodeLease))")
        }
        connectionsPartitions = try values.int("kafka.connections_partitions", range: 1...10_000)
        sessionsStore = try values.oneOf("sessions.store", SessionStoreKind.self)
        replicationFactor = try values.int("kafka.replication_factor", range: 1...100)
        topicRules = []
        for text in values.list("kafka.topic_rules") {
            do {
                topicRules.append(try TopicRule(parsing: text))
            } catch {
                throw ConfigError(key: "kafka.topic_rules", origin: values.raw("kafka.topic_rules")?.origin, "\(error)")
            }
        }
        linger = try values.duration("kafka.linger")
        maxInFlight = try values.int("kafka.max_in_flight", range: 1...5)
        compression = try values.oneOf("kafka.compression", KafkaCompression.self)
        let statistics = try values.duration("kafka.statistics_interval")
        guard statistics == .zero || statistics >= .milliseconds(100) else {
            throw ConfigError(key: "kafka.statistics_interval", "expected 0s (off) or at least 100ms, got \(statistics)")
        }
        statisticsInterval = statistics > .zero ? statistics : nil
        deliveryTimeout = try values.duration("kafka.delivery_timeout")
        maxQueuedMessages = try values.int("kafka.max_queued_messages", range: 1...10_000_000)
        fetchWaitMax = try values.duration("kafka.fetch_wait_max")
        librdkafkaProperties = try Self.librdkafkaProperties(values.list("kafka.librdkafka"), origin: values.raw("kafka.librdkafka")?.origin)
        guard let qos = MQTTQoS(rawValue: UInt8(try values.int("kafka.default_qos", range: 0...2))) else {
            throw ConfigError(key: "kafka.default_qos", "expected 0, 1 or 2")
        }
        defaultQoS = qos
        limits = BrokerLimits(
            maximumPacketSize: try values.bytes("mqtt.max_packet_size"),
            receiveMaximum: try values.int("mqtt.receive_maximum", range: 1...65_535),
            maxInflightOutbound: try values.int("mqtt.max_inflight_outbound", range: 1...65_535),
            sessionQueueLimit: try values.int("mqtt.session_queue_limit", range: 0...10_000_000),
            readBackLimit: try values.int("mqtt.read_back_limit", range: 0...100_000),
            topicAliasMaximum: try values.int("mqtt.topic_alias_maximum", range: 0...65_535),
            maxKeepAlive: try values.int("mqtt.max_keep_alive", range: 0...65_535),
            maxSessionExpiry: UInt32(try values.int("mqtt.max_session_expiry", range: 0...Int(UInt32.max))),
            connectTimeout: try values.duration("mqtt.connect_timeout"),
            retainAvailable: try values.bool("mqtt.retain_available"),
            outboundTopicAliasMaximum: try values.int("mqtt.outbound_topic_alias_maximum", range: 0...65_535)
        )
        if let listen = values.optionalString("mqtt.tls_listen") {
            let address: HostPort
            do {
                address = try HostPort(parsing: listen)
            } catch {
                throw ConfigError(key: "mqtt.tls_listen", origin: values.raw("mqtt.tls_listen")?.origin, error.message)
            }
            tls = TLSSettings(
                listen: address, certificate: try values.string("mqtt.tls_certificate"), privateKey: try values.string("mqtt.tls_private_key"),
                clientCA: values.optionalString("mqtt.tls_client_ca"),
                requireClientCertificate: try values.oneOf("mqtt.tls_client_certificates", TLSSettings.ClientCertificates.self) == .required)
        }
        try loadAuthentication(values)
        do {
            limits.access = try AccessRules(parsing: values.list("auth.acl"))
        } catch {
            throw ConfigError(key: "auth.acl", origin: values.raw("auth.acl")?.origin, error.message)
        }
        guard (5...MQTTPacket.protocolMaximumPacketSize).contains(limits.maximumPacketSize) else {
            throw ConfigError(key: "mqtt.max_packet_size", "must be between 5 bytes and 256MiB")
        }
    }

    /// `auth.*` and `mqtt.tls_identity` (see `Authenticator` for the order in which they apply).
    private mutating func loadAuthentication(_ values: ConfigValues) throws(ConfigError) {
        func failing<T>(_ key: String, _ body: () throws(BrokerError) -> T) throws(ConfigError) -> T {
            do {
                return try body()
            } catch {
                throw ConfigError(key: key, origin: values.raw(key)?.origin, error.message)
            }
        }
        if let path = values.optionalString("auth.password_file") {
            authenticator.passwordFile = try failing("auth.password_file") { () throws(BrokerError) in try PasswordFile.load(path: path) }
        }
        let keys = values.list("auth.jwt.keys")
        if !keys.isEmpty {
            var jwt = JWTSettings(
                tokenIn: try values.oneOf("auth.jwt.token_in", JWTSettings.Carrier.self), identityClaim: try values.string("auth.jwt.identity_claim"),
                issuer: values.optionalString("auth.jwt.issuer"), audience: values.optionalString("auth.jwt.audience"),
                leeway: try values.duration("auth.jwt.leeway"), requireExpiry: try values.bool("auth.jwt.require_expiry"),
                disconnectAfterExpiry: try values.bool("auth.jwt.disconnect_after_expiry"))
            jwt.keys = try failing("auth.jwt.keys") { () throws(BrokerError) in try keys.map(JWTSettings.parseKey) }
            authenticator.jwt = try failing("auth.jwt.keys") { () throws(BrokerError) in try JWTVerifier(settings: jwt) }
        }
        authenticator.certificateIdentity = try values.oneOf("mqtt.tls_identity", CertificateIdentity.self)
        if authenticator.certificateIdentity != .none && (tls?.clientCA == nil) {
            throw ConfigError(key: "mqtt.tls_identity", "needs a TLS listener that verifies client certificates (mqtt.tls_listen, mqtt.tls_client_ca)")
        }
        authenticator.allowAnonymous = try values.bool("auth.allow_anonymous")
        limits.authentication = authenticator.isEnabled ? .checked : .none
    }

    /// The topics this node writes and consumes (messages topics from the rules, then the retained topic).
    /// librdkafka properties Tributary sets itself because a guarantee rests on them: acknowledgements only
    /// after every in-sync replica has the record, without duplicates from retries (G3), and consumers that
    /// never commit or join a group (they assign partitions and track positions themselves).
    static let protectedLibrdkafkaProperties: Set<String> = [
        "acks", "request.required.acks", "enable.idempotence", "enable.gapless.guarantee", "transactional.id",
        "group.id", "enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset", "enable.partition.eof",
        "bootstrap.servers", "metadata.broker.list",
    ]

    /// Parses `kafka.librdkafka` entries `NAME=VALUE` (the value may contain `=`).
    static func librdkafkaProperties(_ entries: [String], origin: String?) throws(ConfigError) -> [String: String] {
        var properties: [String: String] = [:]
        for entry in entries {
            guard let equals = entry.firstIndex(of: "=") else {
                throw ConfigError(key: "kafka.librdkafka", origin: origin, "expected NAME=VALUE, got '\(entry)'")
            }
            let name = entry[..<equals].trimmingCharacters(in: .whitespaces)
            let value = entry[entry.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty else { throw ConfigError(key: "kafka.librdkafka", origin: origin, "empty property name in '\(entry)'") }
            guard !protectedLibrdkafkaProperties.contains(name) else {
                throw ConfigError(key: "kafka.librdkafka", origin: origin, "\(name) is set by Tributary (the delivery guarantees rest on it); use kafka.bootstrap_servers for the brokers")
            }
            properties[name] = value
        }
        return properties
    }

    var messagesTopics: [String] {
        var topics = [messagesTopic]
        for rule in topicRules where !topics.contains(rule.kafkaTopic) { topics.append(rule.kafkaTopic) }
        return topics
    }
}

/// `sessions.store`.
enum SessionStoreKind: String, Sendable, CaseIterable {
    case kafka, memory
}

/// `kafka.compression`: the codecs librdkafka writes (`compression.type`).
enum KafkaCompression: String, Sendable, CaseIterable {
    case none, gzip, snappy, lz4, zstd
}

/// The protocol limits a node applies to every connection (from `mqtt.*` keys).
struct BrokerLimits: Sendable, Equatable {
    var maximumPacketSize: Int = 1 << 20
    var receiveMaximum: Int = 256
    var maxInflightOutbound: Int = 64
    var sessionQueueLimit: Int = 1000
    /// A connected session whose queue is full reads the overflowing messages back from Kafka instead of
    /// dropping them (`SubscriberReadBack`; set by the node, which provides the reader: `BrokerContext.readBack`).
    var readBack: Bool = false
    /// Sessions of the node reading back at once (`mqtt.read_back_limit`; each holds a Kafka consumer).
    var readBackLimit: Int = 100
    var topicAliasMaximum: Int = 64
    /// 0: accept the client's keep-alive.
    var maxKeepAlive: Int = 0
    var maxSessionExpiry: UInt32 = 86_400
    var connectTimeout: Duration = .seconds(10)
    var retainAvailable: Bool = true
    /// Topic aliases the broker sets towards an MQTT 5 client (capped by the client's Topic Alias Maximum).
    var outboundTopicAliasMaximum: Int = 64
    var authentication: Authentication = .none
    var access = AccessRules()
}

/// Whether CONNECT credentials are checked.
enum Authentication: Sendable, Equatable {
    /// Anyone may connect; passwords are ignored and the user name given is the one the ACL sees.
    case none
    /// The node's `Authenticator` decides (password file, JWT, client certificate identity).
    case checked
}

/// The TLS listener (`mqtt.tls_*`).
struct TLSSettings: Sendable, Equatable {
    enum ClientCertificates: String, CaseIterable { case optional, required }

    var listen: HostPort
    var certificate: String
    var privateKey: String
    var clientCA: String?
    var requireClientCertificate: Bool
}
