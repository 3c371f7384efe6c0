import DiskBuffer
import Metrics

/// Every metric the edge agent exports, declared in one place. Prefix `tributary_agent_`; the disk buffer's
/// own metrics (`tributary_buffer_*`: records, bytes, oldest unacknowledged age, appends, fsyncs, drops)
/// are declared in the DiskBuffer module, and the agent only refreshes that module's gauges periodically
/// (`bufferRecords`, `bufferBytes`, `bufferOldestAge`) so they move while nothing is appended or acknowledged.
enum AgentMetrics {
    static let deviceConnections = Meter(label: "tributary_agent_device_connections")
    static let deviceConnectionsTotal = Counter(label: "tributary_agent_device_connections_total")
    static func received(qos: MQTTQoSLabel) -> Counter {
        Counter(label: "tributary_agent_received_messages_total", dimensions: [("qos", qos.rawValue)])
    }
    static let receivedBytes = Counter(label: "tributary_agent_received_bytes_total")
    static let duplicatesIgnored = Counter(label: "tributary_agent_device_duplicates_ignored_total")
    static let rejected = Counter(label: "tributary_agent_device_rejected_messages_total")
    static let malformed = Counter(label: "tributary_agent_device_protocol_errors_total")

    /// 0 disconnected, 1 connecting, 2 connected.
    static let uplinkState = Gauge(label: "tributary_agent_uplink_state")
    static let uplinkReconnects = Counter(label: "tributary_agent_uplink_reconnects_total")
    /// Lookups of the upstream host name: one per connection attempt.
    static let uplinkResolutions = Counter(label: "tributary_agent_uplink_dns_resolutions_total")
    static let uplinkInflight = Gauge(label: "tributary_agent_uplink_inflight_messages")
    static let forwarded = Counter(label: "tributary_agent_forwarded_messages_total")
    static let forwardedBytes = Counter(label: "tributary_agent_forwarded_bytes_total")
    static let acknowledged = Counter(label: "tributary_agent_acknowledged_messages_total")
    static let refusedUpstream = Counter(label: "tributary_agent_upstream_refused_messages_total")
    static let undecodable = Counter(label: "tributary_agent_undecodable_records_total")
    /// Records whose device-set message expiry interval passed while they waited in the buffer.
    static let expired = Counter(label: "tributary_agent_expired_records_total")
    static let replayRate = Gauge(label: "tributary_agent_replay_rate_messages_per_second")
    /// The local broker source: 0 disconnected, 1 connecting, 2 connected; messages received from it.
    static let localBrokerState = Gauge(label: "tributary_agent_local_broker_state")
    static let localBrokerMessages = Counter(label: "tributary_agent_local_broker_messages_total")
    static let commandsDelivered = Counter(label: "tributary_agent_commands_delivered_total")
    static let persistSeconds = Timer(label: "tributary_agent_uplink_state_persist_seconds")

    /// The disk buffer's own gauges (same series as the DiskBuffer module's), refreshed by the uplink.
    static let bufferRecords = Gauge(label: DiskBufferMetricNames.records)
    static let bufferBytes = Gauge(label: DiskBufferMetricNames.bytes)
    static let bufferOldestAge = Gauge(label: DiskBufferMetricNames.oldestUnacknowledgedAgeSeconds)

    /// Creates every metric at start-up, so /metrics lists them all (at zero) before their first use.
    static func registerAll() {
        deviceConnections.set(0)
        for qos in [MQTTQoSLabel.zero, .one, .two] { _ = received(qos: qos) }
        _ = [
            deviceConnectionsTotal, uplinkResolutions, receivedBytes, duplicatesIgnored, rejected, malformed, uplinkReconnects, forwarded,
            forwardedBytes, acknowledged, refusedUpstream, undecodable, expired, commandsDelivered, localBrokerMessages,
        ]
        for gauge in [uplinkState, uplinkInflight, replayRate, localBrokerState] { gauge.record(0) }
        _ = persistSeconds
    }
}

enum MQTTQoSLabel: String {
    case zero = "0", one = "1", two = "2"
}
