import Foundation

/// Everything one run measured. Worker processes print theirs as JSON; the parent adds them up with `merge`.
struct SimulatorSummary: Sendable, Codable {
    var mode = "run"
    var clients = 0
    var subscribers = 0
    var processes = 1
    var elapsedSeconds = 0.0
    /// Seconds from the first publish to the last acknowledgement (or the last send at QoS 0).
    var publishSeconds = 0.0

    var connects = 0
    var connectFailures = 0
    var disconnects = 0
    var reconnects = 0
    var sessionPresent = 0
    var protocolErrors = 0

    var sent = 0
    var acked = 0
    var resent = 0
    /// Messages received by the subscribers, duplicates included.
    var received = 0
    /// Loss, duplicates and order as seen by the subscribers (or the Kafka reader).
    var sequence = SequenceReport()

    /// Commands: sent and acknowledged by the commander, received by the devices (duplicates included), and
    /// the devices' accounting (distinct, duplicates, order).
    var commandsSent = 0
    var commandsAcked = 0
    var commandsReceived = 0
    var commands = SequenceReport()
    /// Commands the commander had acknowledged that no device received.
    var commandsLost: Int { max(0, commandsAcked - commands.distinct) }
    var failover = FailoverReport()

    var ackLatency = LatencyHistogram()
    var endToEndLatency = LatencyHistogram()
    var connectTime = LatencyHistogram()
    var reconnectTime = LatencyHistogram()

    /// Acknowledged (QoS 1/2) or sent (QoS 0) messages per second of publishing.
    var publishRate: Double { publishSeconds > 0 ? Double(acked) / publishSeconds : 0 }

    /// Adds a summary of a disjoint part of the same run (another worker process).
    mutating func merge(_ other: SimulatorSummary) {
        clients += other.clients
        subscribers += other.subscribers
        processes = processes + other.processes
        elapsedSeconds = max(elapsedSeconds, other.elapsedSeconds)
        publishSeconds = max(publishSeconds, other.publishSeconds)
        connects += other.connects
        connectFailures += other.connectFailures
        disconnects += other.disconnects
        reconnects += other.reconnects
        sessionPresent += other.sessionPresent
        protocolErrors += other.protocolErrors
        sent += other.sent
        acked += other.acked
        resent += other.resent
        received += other.received
        sequence.add(other.sequence)
        commandsSent += other.commandsSent
        commandsAcked += other.commandsAcked
        commandsReceived += other.commandsReceived
        commands.add(other.commands)
        failover.add(other.failover)
        ackLatency.add(other.ackLatency)
        endToEndLatency.add(other.endToEndLatency)
        connectTime.add(other.connectTime)
        reconnectTime.add(other.reconnectTime)
    }

    /// The final machine-readable line: `device-sim summary key=value ...`, keys in `SummaryField` order.
    func line() -> String {
        "device-sim summary " + fields().map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    }

    /// A shorter line printed every few seconds while running.
    func progressLine() -> String {
        let keys: Set<String> = [
            SummaryField.elapsed, SummaryField.connected, SummaryField.sent, SummaryField.acked, SummaryField.received,
            SummaryField.reconnects, SummaryField.ackP99, SummaryField.e2eP99,
        ]
        return "device-sim progress " + fields().filter { keys.contains($0.0) }.map { "\($0.0)=\($0.1)" }.joined(separator: " ")
    }

    func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(JSONForm(self)) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    /// The raw form exchanged between processes (histograms as buckets).
    func workerJSON() -> String {
        guard let data = try? JSONEncoder().encode(self) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }

    static func fromWorkerJSON(_ text: Substring) -> SimulatorSummary? {
        try? JSONDecoder().decode(SimulatorSummary.self, from: Data(text.utf8))
    }

    var connected: Int { connects - disconnects }

    private func fields() -> [(String, String)] {
        func ms(_ value: Double) -> String { String(format: "%.3f", value) }
        let ack = ackLatency.percentiles
        let e2e = endToEndLatency.percentiles
        let connect = connectTime.percentiles
        let reconnect = reconnectTime.percentiles
        let recovery = failover.recovery.percentiles
        return [
            (SummaryField.mode, mode),
            (SummaryField.clients, "\(clients)"),
            (SummaryField.subscribers, "\(subscribers)"),
            (SummaryField.processes, "\(processes)"),
            (SummaryField.elapsed, String(format: "%.2f", elapsedSeconds)),
            (SummaryField.connected, "\(connected)"),
            (SummaryField.connects, "\(connects)"),
            (SummaryField.connectFailures, "\(connectFailures)"),
            (SummaryField.disconnects, "\(disconnects)"),
            (SummaryField.reconnects, "\(reconnects)"),
            (SummaryField.sessionPresent, "\(sessionPresent)"),
            (SummaryField.protocolErrors, "\(protocolErrors)"),
            (SummaryField.sent, "\(sent)"),
            (SummaryField.acked, "\(acked)"),
            (SummaryField.resent, "\(resent)"),
            (SummaryField.rate, String(format: "%.1f", publishRate)),
            (SummaryField.received, "\(received)"),
            (SummaryField.expected, "\(sequence.expected)"),
            (SummaryField.distinct, "\(sequence.distinct)"),
            (SummaryField.lost, "\(sequence.lost)"),
            (SummaryField.duplicates, "\(sequence.duplicates)"),
            (SummaryField.outOfOrder, "\(sequence.outOfOrder)"),
            (SummaryField.clientsWithGaps, "\(sequence.clientsWithGaps)"),
            (SummaryField.ackP50, ms(ack.p50)), (SummaryField.ackP90, ms(ack.p90)), (SummaryField.ackP99, ms(ack.p99)),
            (SummaryField.ackP999, ms(ack.p999)), (SummaryField.ackMax, ms(ack.max)),
            (SummaryField.e2eP50, ms(e2e.p50)), (SummaryField.e2eP90, ms(e2e.p90)), (SummaryField.e2eP99, ms(e2e.p99)),
            (SummaryField.e2eP999, ms(e2e.p999)), (SummaryField.e2eMax, ms(e2e.max)),
            (SummaryField.connectP50, ms(connect.p50)), (SummaryField.connectP99, ms(connect.p99)),
            (SummaryField.connectMax, ms(connect.max)),
            (SummaryField.reconnectP50, ms(reconnect.p50)), (SummaryField.reconnectMax, ms(reconnect.max)),
            (SummaryField.commandsSent, "\(commandsSent)"), (SummaryField.commandsAcked, "\(commandsAcked)"),
            (SummaryField.commandsReceived, "\(commandsReceived)"), (SummaryField.commandsLost, "\(commandsLost)"),
            (SummaryField.commandsDuplicates, "\(commands.duplicates)"),
            (SummaryField.failoverClients, "\(failover.clients)"), (SummaryField.failoverBack, "\(failover.back)"),
            (SummaryField.failoverSessionPresent, "\(failover.sessionPresent)"),
            (SummaryField.failoverWithoutSession, "\(failover.back - failover.sessionPresent)"),
            (SummaryField.failoverNoticedMax, ms(failover.noticed.percentiles.max)),
            (SummaryField.failoverRecoveryP50, ms(recovery.p50)), (SummaryField.failoverRecoveryP99, ms(recovery.p99)),
            (SummaryField.failoverRecoveryMax, ms(recovery.max)),
        ]
    }
}

/// The keys of the summary and progress lines, declared once (scripts parse them: do not rename lightly).
enum SummaryField {
    static let mode = "mode"
    static let clients = "clients"
    static let subscribers = "subscribers"
    static let processes = "processes"
    static let elapsed = "elapsed_s"
    static let connected = "connected"
    static let connects = "connects"
    static let connectFailures = "connect_failures"
    static let disconnects = "disconnects"
    static let reconnects = "reconnects"
    static let sessionPresent = "session_present"
    static let protocolErrors = "protocol_errors"
    static let sent = "sent"
    static let acked = "acked"
    static let resent = "resent"
    static let rate = "rate_msgs_per_s"
    static let received = "received"
    static let expected = "expected"
    static let distinct = "distinct"
    static let lost = "lost"
    static let duplicates = "duplicates"
    static let outOfOrder = "out_of_order"
    static let clientsWithGaps = "clients_with_gaps"
    static let ackP50 = "ack_p50_ms"
    static let ackP90 = "ack_p90_ms"
    static let ackP99 = "ack_p99_ms"
    static let ackP999 = "ack_p999_ms"
    static let ackMax = "ack_max_ms"
    static let e2eP50 = "e2e_p50_ms"
    static let e2eP90 = "e2e_p90_ms"
    static let e2eP99 = "e2e_p99_ms"
    static let e2eP999 = "e2e_p999_ms"
    static let e2eMax = "e2e_max_ms"
    static let connectP50 = "connect_p50_ms"
    static let connectP99 = "connect_p99_ms"
    static let connectMax = "connect_max_ms"
    static let reconnectP50 = "reconnect_p50_ms"
    static let reconnectMax = "reconnect_max_ms"
    static let commandsSent = "commands_sent"
    static let commandsAcked = "commands_acked"
    static let commandsReceived = "commands_received"
    static let commandsLost = "commands_lost"
    static let commandsDuplicates = "commands_duplicates"
    /// Devices that lost their connection after the failover mark (`--failover-mark`).
    static let failoverClients = "failover_clients"
    /// ... of which reconnected (a CONNACK after that disconnect) ...
    static let failoverBack = "failover_back"
    /// ... with session present, or without it.
    static let failoverSessionPresent = "failover_session_present"
    static let failoverWithoutSession = "failover_without_session"
    /// From the mark to the last of those devices noticing the loss of its connection.
    static let failoverNoticedMax = "failover_noticed_max_ms"
    /// From the mark to each device's CONNACK; the max is "every device that lost its connection is back".
    static let failoverRecoveryP50 = "failover_recovery_p50_ms"
    static let failoverRecoveryP99 = "failover_recovery_p99_ms"
    static let failoverRecoveryMax = "failover_recovery_max_ms"
}

/// The devices that lost their connection after a failover instant, and their way back.
struct FailoverReport: Sendable, Codable {
    var clients = 0
    var back = 0
    var sessionPresent = 0
    /// Mark → the device saw its connection close.
    var noticed = LatencyHistogram()
    /// Mark → the device's next CONNACK.
    var recovery = LatencyHistogram()

    mutating func add(_ other: FailoverReport) {
        clients += other.clients
        back += other.back
        sessionPresent += other.sessionPresent
        noticed.add(other.noticed)
        recovery.add(other.recovery)
    }
}

/// The `--json` form: counts plus percentiles instead of raw buckets.
private struct JSONForm: Encodable {
    var mode: String
    var clients, subscribers, processes: Int
    var elapsedSeconds, publishSeconds, publishRate: Double
    var connects, connectFailures, disconnects, reconnects, sessionPresent, protocolErrors: Int
    var sent, acked, resent, received: Int
    var sequence: SequenceReport
    var commandsSent, commandsAcked, commandsReceived, commandsLost: Int
    var commands: SequenceReport
    var failoverClients, failoverBack, failoverSessionPresent: Int
    var failoverNoticedMs, failoverRecoveryMs: LatencyHistogram.Percentiles
    var ackLatencyMs, endToEndLatencyMs, connectTimeMs, reconnectTimeMs: LatencyHistogram.Percentiles

    init(_ s: SimulatorSummary) {
        mode = s.mode
        clients = s.clients
        subscribers = s.subscribers
        processes = s.processes
        elapsedSeconds = s.elapsedSeconds
        publishSeconds = s.publishSeconds
        publishRate = s.publishRate
        connects = s.connects
        connectFailures = s.connectFailures
        disconnects = s.disconnects
        reconnects = s.reconnects
        sessionPresent = s.sessionPresent
        protocolErrors = s.protocolErrors
        sent = s.sent
        acked = s.acked
        resent = s.resent
        received = s.received
        sequence = s.sequence
        commandsSent = s.commandsSent
        commandsAcked = s.commandsAcked
        commandsReceived = s.commandsReceived
        commandsLost = s.commandsLost
        commands = s.commands
        failoverClients = s.failover.clients
        failoverBack = s.failover.back
        failoverSessionPresent = s.failover.sessionPresent
        failoverNoticedMs = s.failover.noticed.percentiles
        failoverRecoveryMs = s.failover.recovery.percentiles
        ackLatencyMs = s.ackLatency.percentiles
        endToEndLatencyMs = s.endToEndLatency.percentiles
        connectTimeMs = s.connectTime.percentiles
        reconnectTimeMs = s.reconnectTime.percentiles
    }
}
