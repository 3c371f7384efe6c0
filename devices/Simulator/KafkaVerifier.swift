import Foundation
import Synchronization
import TributaryKafka

/// `verify-kafka`: reads a topic from the beginning of every partition to its end and accounts for each
/// record by (client, sequence): from the simulator's payload, or from two record headers (e.g. the agent id
/// and the agent's sequence number).
struct KafkaVerifier: Sendable {
    enum Identity: Sendable, Hashable {
        case payload
        case headers(client: String, sequence: String)
    }

    var bootstrapServers: String
    var topic: String
    var identity: Identity
    var expected: Int?
    /// Only records whose MQTT topic (header `mqtt.topic`, else the key) starts with this are accounted for;
    /// the others are counted as skipped (e.g. commands to devices, which are in the same Kafka topic).
    var mqttTopicPrefix: String? = nil
    var timeout: Duration
    /// At the end of every partition with fewer than `expected` messages: give up after this long without a
    /// new record (the rest is lost, not late).
    var idleTimeout: Duration
    var progressInterval: Duration

    private struct State {
        var accounting = SequenceAccounting()
        var records = 0
        var undecodable = 0
        var skipped = 0
        var latency = LatencyHistogram()
        /// Next offset to read, per partition.
        var nextOffset: [Int32: Int64] = [:]
        /// The first few duplicates: client, sequence, where the second copy is.
        var duplicateExamples: [String] = []
    }

    /// How many duplicates and gaps are named on standard error (the rest are counted only).
    static let examplesShown = 10

    func run(progress: @escaping @Sendable (String) -> Void) async throws(SimulatorError) -> SimulatorSummary {
        let started = Clock.uptimeNanoseconds()
        var configuration = KafkaConfiguration(bootstrapServers: bootstrapServers, clientId: "device-sim-verify")
        configuration.fetchWaitMax = .milliseconds(50)
        let partitions = try await partitionCount(configuration)
        let state = Mutex(State())
        let identity = self.identity
        let prefix = mqttTopicPrefix.map { Array($0.utf8) }
        let consumer: KafkaConsumer
        do {
            consumer = try KafkaConsumer(configuration: configuration) { records in
                let now = Clock.wallNanoseconds()
                state.withLock { state in
                    for record in records {
                        state.records += 1
                        state.nextOffset[record.partition] = record.offset + 1
                        if let prefix, !Self.mqttTopic(of: record).starts(with: prefix) {
                            state.skipped += 1
                            continue
                        }
                        guard let (client, sequence, sentAt) = Self.identify(record, identity) else {
                            state.undecodable += 1
                            continue
                        }
                        if state.accounting.record(client: client, sequence: sequence) == .duplicate,
                            state.duplicateExamples.count < Self.examplesShown
                        {
                            state.duplicateExamples.append(
                                "client=\(client) seq=\(sequence) partition=\(record.partition) offset=\(record.offset)")
                        }
                        if let sentAt {
                            let appended = record.timestampMilliseconds.map { UInt64(max(0, $0)) * 1_000_000 } ?? now
                            state.latency.record(nanoseconds: Int64(bitPattern: appended &- sentAt))
                        }
                    }
                }
            }
            try consumer.assign(topic: topic, partitionCount: partitions, from: .beginning)
        } catch {
            throw SimulatorError(.kafka, "cannot consume \(topic) from \(bootstrapServers): \(error)")
        }
        defer { consumer.close() }

        let deadline = ContinuousClock.now + timeout
        var lastProgress = ContinuousClock.now
        var lastCount = -1
        var lastChange = ContinuousClock.now
        while ContinuousClock.now < deadline {
            let (records, offsets, distinct) = state.withLock { ($0.records, $0.nextOffset, $0.accounting.distinct) }
            if records != lastCount {
                lastCount = records
                lastChange = ContinuousClock.now
            }
            let atEnd = (0..<partitions).allSatisfy { partition in
                guard let high = consumer.highWatermark(topic: topic, partition: partition) else { return false }
                return (offsets[partition] ?? 0) >= high
            }
            if atEnd && (expected.map { distinct >= $0 } ?? true) { break }
            if atEnd && ContinuousClock.now - lastChange >= idleTimeout { break }
            if ContinuousClock.now - lastProgress >= progressInterval {
                lastProgress = ContinuousClock.now
                progress("device-sim progress mode=verify-kafka records=\(records) distinct=\(distinct)")
            }
            // The consumer offers no "caught up" event; checking every 20 ms costs nothing here.
            try? await Task.sleep(for: .milliseconds(20))
        }
        return state.withLock { state in
            if state.skipped > 0 { progress("device-sim verify-kafka skipped=\(state.skipped) records outside the topic prefix") }
            for example in state.duplicateExamples { progress("device-sim verify-kafka duplicate \(example)") }
            var shown = 0
            for (client, tracker) in state.accounting.clients.sorted(by: { $0.key < $1.key }) where tracker.gaps > 0 && shown < Self.examplesShown {
                let missing = (0..<UInt64(max(0, tracker.highest))).lazy.filter { !tracker.contains($0) }.prefix(5).map(String.init)
                progress("device-sim verify-kafka gap client=\(client) missing=\(missing.joined(separator: ",")) highest=\(tracker.highest)")
                shown += 1
            }
            var summary = SimulatorSummary()
            summary.mode = "verify-kafka"
            summary.received = state.records
            summary.protocolErrors = state.undecodable
            summary.sequence = state.accounting.report(expected: expected)
            summary.endToEndLatency = state.latency
            summary.clients = state.accounting.clients.count
            summary.elapsedSeconds = Double(Clock.uptimeNanoseconds() - started) / 1e9
            return summary
        }
    }

    private func partitionCount(_ configuration: KafkaConfiguration) async throws(SimulatorError) -> Int32 {
        let admin: KafkaAdmin
        do {
            admin = try KafkaAdmin(configuration: configuration)
        } catch {
            throw SimulatorError(.kafka, "cannot reach Kafka at \(bootstrapServers): \(error)")
        }
        defer { admin.close() }
        let deadline = ContinuousClock.now + timeout
        var lastError = "topic not found"
        while ContinuousClock.now < deadline {
            do {
                if let metadata = try await admin.metadata(timeout: .seconds(5)).topic(topic), metadata.partitionCount > 0 {
                    return metadata.partitionCount
                }
            } catch {
                lastError = "\(error)"
            }
            try? await Task.sleep(for: .milliseconds(200))
        }
        throw SimulatorError(.kafka, "no topic \(topic) at \(bootstrapServers): \(lastError)")
    }

    /// (client, sequence, send time in wall nanoseconds if known) of a record, or nil.
    static func identify(_ record: KafkaRecord, _ identity: Identity) -> (String, UInt64, UInt64?)? {
        switch identity {
        case .payload:
            guard let value = record.value, let payload = DevicePayload(decoding: value) else { return nil }
            return (payload.clientId, payload.sequence, payload.sentAtNanoseconds)
        case .headers(let clientHeader, let sequenceHeader):
            guard let client = record.headers.first(where: { $0.name == clientHeader }),
                let sequence = record.headers.first(where: { $0.name == sequenceHeader }),
                let number = headerNumber(sequence.value)
            else { return nil }
            let sentAt = record.value.flatMap { DevicePayload(decoding: $0)?.sentAtNanoseconds }
            return (String(decoding: client.value, as: UTF8.self), number, sentAt)
        }
    }

    /// The MQTT topic of a record written by cloud-broker: the `mqtt.topic` header, else the key.
    static func mqttTopic(of record: KafkaRecord) -> [UInt8] {
        record.headers.first { $0.name == "mqtt.topic" }?.value ?? record.key ?? []
    }

    /// A header holding a number: decimal text, or 8 bytes big-endian.
    static func headerNumber(_ bytes: [UInt8]) -> UInt64? {
        if !bytes.isEmpty, bytes.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) {
            return UInt64(String(decoding: bytes, as: UTF8.self))
        }
        guard bytes.count == 8 else { return nil }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }
}
