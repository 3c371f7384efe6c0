import Common
import Foundation
import Testing

@testable import DeviceSimulator

@Suite struct SimulatorSummaryTests {
    private func worker(clients: Int, sent: Int, latenciesMicros: [UInt64], reconnects: Int) -> SimulatorSummary {
        var summary = SimulatorSummary()
        summary.clients = clients
        summary.sent = sent
        summary.acked = sent
        summary.reconnects = reconnects
        summary.publishSeconds = Double(clients) / 10
        for micros in latenciesMicros { summary.ackLatency.record(nanoseconds: Int64(micros * 1_000)) }
        return summary
    }

    @Test func mergesWorkersExactlyThroughTheirJSON() throws {
        let first = worker(clients: 10, sent: 100, latenciesMicros: Array(repeating: 1_000, count: 99) + [50_000], reconnects: 1)
        let second = worker(clients: 30, sent: 300, latenciesMicros: Array(repeating: 2_000, count: 300), reconnects: 2)
        // What the parent does: parse each worker's line and add.
        var merged = try #require(SimulatorSummary.fromWorkerJSON(Substring(first.workerJSON())))
        merged.merge(try #require(SimulatorSummary.fromWorkerJSON(Substring(second.workerJSON()))))
        #expect(merged.clients == 40)
        #expect(merged.sent == 400)
        #expect(merged.acked == 400)
        #expect(merged.reconnects == 3)
        #expect(merged.processes == 2)
        #expect(merged.publishSeconds == 3)  // the slowest worker
        #expect(merged.ackLatency.count == 400)
        // 99 at 1 ms, 300 at 2 ms, one at 50 ms.
        #expect(abs(merged.ackLatency.milliseconds(atPercentile: 20) - 1) < 0.01)
        #expect(abs(merged.ackLatency.milliseconds(atPercentile: 50) - 2) < 0.01)
        #expect(abs(merged.ackLatency.maxMilliseconds - 50) < 0.1)
    }

    @Test func mergesSubscriberAccountingOfDisjointClients() {
        var a = SequenceAccounting()
        var b = SequenceAccounting()
        for seq in [0, 1, 1, 3] { a.record(client: "x", sequence: UInt64(seq)) }
        for seq in [0, 2, 1] { b.record(client: "y", sequence: UInt64(seq)) }
        var left = SimulatorSummary()
        left.sequence = a.report(expected: 4)
        var right = SimulatorSummary()
        right.sequence = b.report(expected: 3)
        left.merge(right)
        #expect(left.sequence.expected == 7)
        #expect(left.sequence.distinct == 6)
        #expect(left.sequence.lost == 1)
        #expect(left.sequence.duplicates == 1)
        #expect(left.sequence.outOfOrder == 1)
    }

    @Test func summaryLineHasEveryFieldOnce() {
        let line = worker(clients: 1, sent: 5, latenciesMicros: [500], reconnects: 0).line()
        #expect(line.hasPrefix("device-sim summary "))
        let keys = line.split(separator: " ").dropFirst(2).map { $0.split(separator: "=")[0] }
        #expect(Set(keys).count == keys.count)
        for key in [SummaryField.sent, SummaryField.lost, SummaryField.duplicates, SummaryField.outOfOrder, SummaryField.ackP999,
                    SummaryField.e2eP99, SummaryField.connectP50, SummaryField.reconnects, SummaryField.sessionPresent] {
            #expect(keys.contains(Substring(key)), "missing \(key)")
        }
    }

    @Test func workerArgumentsDropWhatTheParentKeeps() {
        let arguments = ["--clients", "100", "--processes", "4", "--subscribe", "s/#", "--json", "--count=5", "--processes=4"]
        #expect(WorkerProcesses.workerArguments(arguments, index: 2, count: 4)
            == ["--clients", "100", "--count=5", "--worker-index", "2", "--worker-count", "4"])
        #expect(WorkerProcesses.processesNeeded(clients: 19_000, extraConnections: 1, fileLimit: 20_000) == 1)
        #expect(WorkerProcesses.processesNeeded(clients: 50_000, extraConnections: 1, fileLimit: 20_000) == 3)
    }
}

/// Commands and the failover measure: the pure parts (the end-to-end part is the cluster node-down test).
@Suite struct CommandAndFailoverTests {
    @Test func commandsGoRoundRobinAndMarkersCarryTheCountPerTarget() {
        // 3 targets, 7 commands: target 0 gets 0,1,2 (sequence 0..2), target 1 gets 0,1, target 2 gets 0,1.
        let addresses = (0..<7).map { DeviceConnection.commandAddress(UInt64($0), targetCount: 3, markersFrom: nil) }
        #expect(addresses.map(\.position) == [0, 1, 2, 0, 1, 2, 0])
        #expect(addresses.map(\.sequence) == [0, 0, 0, 1, 1, 1, 2])
        let markers = (7..<10).map { DeviceConnection.commandAddress(UInt64($0), targetCount: 3, markersFrom: 7) }
        #expect(markers.map(\.position) == [0, 1, 2])
        #expect(markers.map { $0.sequence & ~DeviceConnection.commandEndMarker } == [3, 2, 2])
        #expect(markers.allSatisfy { $0.sequence & DeviceConnection.commandEndMarker != 0 })
        // A marker is never counted as a command.
        #expect(DeviceConnection.commandEndMarker >= SequenceTracker.maximumSequence)
    }

    @Test func failoverMarkIsUnixSecondsWithAFraction() throws {
        let path = FileManager.default.temporaryDirectory.path + "/failover-mark-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try "1764250000.123456789\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try SimulatorRun.readFailoverMark(path) == 1_764_250_000_123_456_789)
        try "1764250000.5".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try SimulatorRun.readFailoverMark(path) == 1_764_250_000_500_000_000)
        try "yesterday".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: SimulatorError.self) { try SimulatorRun.readFailoverMark(path) }
        #expect(throws: SimulatorError.self) { try SimulatorRun.readFailoverMark(path + "-missing") }
    }

    @Test func failoverReportsMergeAcrossWorkers() throws {
        var first = SimulatorSummary()
        first.failover.clients = 3
        first.failover.back = 3
        first.failover.sessionPresent = 2
        first.failover.recovery.record(nanoseconds: 400_000_000)
        var second = SimulatorSummary()
        second.failover.clients = 2
        second.failover.back = 1
        second.failover.sessionPresent = 1
        second.failover.recovery.record(nanoseconds: 1_200_000_000)
        second.commandsAcked = 10
        first.merge(second)
        let decoded = try #require(SimulatorSummary.fromWorkerJSON(Substring(first.workerJSON())))
        #expect(decoded.failover.clients == 5 && decoded.failover.back == 4 && decoded.failover.sessionPresent == 3)
        #expect(abs(decoded.failover.recovery.maxMilliseconds - 1_200) < 2)
        #expect(decoded.commandsLost == 10)
        let line = decoded.line()
        #expect(line.contains(" failover_without_session=1 "))
        #expect(line.contains(" commands_lost=10 "))
    }

    @Test func severalBrokersAreDealtByDeviceNumber() throws {
        var settings = SimulatorSettings()
        settings.count = 1
        settings.brokers = [
            try SimulatorSettings.Broker(parsing: "mqtt://127.0.0.1:1001"), try SimulatorSettings.Broker(parsing: "127.0.0.1:1002"),
        ]
        try settings.validate()
        #expect(settings.brokerFor(index: 0).port == 1001 && settings.brokerFor(index: 3).port == 1002)
        settings.brokers.append(try SimulatorSettings.Broker(parsing: "mqtts://127.0.0.1:1003"))
        #expect(throws: ConfigError.self) { try settings.validate() }
    }
}
