import Testing

@testable import DeviceSimulator

@Suite struct SequenceAccountingTests {
    @Test func classifiesEachArrival() {
        var tracker = SequenceTracker()
        let verdicts = [0, 1, 2, 2, 4, 3, 6].map { tracker.record(UInt64($0)) }
        #expect(verdicts == [.new, .new, .new, .duplicate, .new, .outOfOrder, .new])
        #expect(tracker.distinct == 6)
        #expect(tracker.duplicates == 1)
        #expect(tracker.outOfOrder == 1)
        #expect(tracker.gaps == 1)  // 5
        #expect(tracker.highest == 6)
    }

    @Test func reportsLossAgainstWhatWasSent() {
        var accounting = SequenceAccounting()
        for seq in [0, 1, 2, 2, 4, 3, 6] { accounting.record(client: "a", sequence: UInt64(seq)) }
        for seq in [0, 1, 1, 1] { accounting.record(client: "b", sequence: UInt64(seq)) }
        // 7 from a (0...6, 5 never came) and 3 from b (0...2, 2 never came): 10 sent.
        let report = accounting.report(expected: 10)
        #expect(report.clients == 2)
        #expect(report.distinct == 8)
        #expect(report.lost == 2)
        #expect(report.gaps == 1)
        #expect(report.duplicates == 3)
        #expect(report.outOfOrder == 1)
        #expect(report.clientsWithGaps == 1)
        #expect(report.clientsWithDuplicates == 2)
        #expect(report.clientsOutOfOrder == 1)
        // Without an expected total only the gaps below each client's highest count.
        #expect(accounting.report(expected: nil).lost == 1)
        #expect(accounting.distinct == 8)
    }

    @Test func duplicatedAfterReorderIsADuplicateNotReordered() {
        var tracker = SequenceTracker()
        tracker.record(5)
        #expect(tracker.record(1) == .outOfOrder)
        #expect(tracker.record(1) == .duplicate)
        #expect(tracker.record(5) == .duplicate)
        #expect(tracker.outOfOrder == 1)
        #expect(tracker.gaps == 4)
    }

    @Test func hugeSequenceNumbersAreIgnoredNotAllocated() {
        var tracker = SequenceTracker()
        #expect(tracker.record(UInt64.max) == .ignored)
        #expect(tracker.distinct == 0)
    }

    @Test func manyMessagesStayDense() {
        var tracker = SequenceTracker()
        for seq in (0..<100_000).reversed() { tracker.record(UInt64(seq)) }
        #expect(tracker.distinct == 100_000)
        #expect(tracker.outOfOrder == 99_999)
        #expect(tracker.gaps == 0)
    }
}
