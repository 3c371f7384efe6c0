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
