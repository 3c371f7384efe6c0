/// Loss, duplicate and reordering accounting for the messages of one client, by sequence number.
///
/// Sequence numbers start at 0 and are dense, so one bit per message records what was seen (a million
/// messages cost 128 KiB). A sequence number already seen is a duplicate; one seen for the first time
/// below the highest so far is out of order; numbers below the highest never seen are gaps.
struct SequenceTracker: Sendable, Hashable {
    private var seen: [UInt64] = []
    /// The highest sequence number seen, -1 before any.
    private(set) var highest: Int64 = -1
    private(set) var distinct: Int = 0
    private(set) var duplicates: Int = 0
    private(set) var outOfOrder: Int = 0

    /// Sequence numbers above this are not tracked (a corrupt or hostile value must not allocate gigabytes).
    static let maximumSequence: UInt64 = 1 << 32

    enum Verdict: Equatable { case new, duplicate, outOfOrder, ignored }

    @discardableResult
    mutating func record(_ sequence: UInt64) -> Verdict {
        guard sequence < Self.maximumSequence else { return .ignored }
        let word = Int(sequence >> 6)
        let bit = UInt64(1) << (sequence & 63)
        if word >= seen.count {
            seen.append(contentsOf: repeatElement(0, count: max(word + 1 - seen.count, seen.count / 2)))
        }
        if seen[word] & bit != 0 {
            duplicates += 1
            return .duplicate
        }
        seen[word] |= bit
        distinct += 1
        if Int64(sequence) < highest {
            outOfOrder += 1
            return .outOfOrder
        }
        highest = Int64(sequence)
        return .new
    }

    /// Sequence numbers below the highest seen that never arrived.
    var gaps: Int { Int(highest + 1) - distinct }

    func contains(_ sequence: UInt64) -> Bool {
        let word = Int(sequence >> 6)
        guard word < seen.count else { return false }
        return seen[word] & (UInt64(1) << (sequence & 63)) != 0
    }
}

/// The accounting of every client seen by one reader (a subscriber or the Kafka verifier).
struct SequenceAccounting: Sendable {
    private(set) var clients: [String: SequenceTracker] = [:]
    /// Distinct messages over all clients.
    private(set) var distinct = 0

    @discardableResult
    mutating func record(client: String, sequence: UInt64) -> SequenceTracker.Verdict {
        let verdict = clients[client, default: SequenceTracker()].record(sequence)
        if verdict == .new || verdict == .outOfOrder { distinct += 1 }
        return verdict
    }

    /// Totals over all clients. `expected` is how many distinct messages should have arrived in all (what the
    /// publishers sent, or had acknowledged); without it, loss counts only the gaps below each client's highest.
    func report(expected: Int?) -> SequenceReport {
        var report = SequenceReport()
        report.clients = clients.count
        for tracker in clients.values {
            report.distinct += tracker.distinct
            report.duplicates += tracker.duplicates
            report.outOfOrder += tracker.outOfOrder
            report.gaps += tracker.gaps
            if tracker.gaps > 0 { report.clientsWithGaps += 1 }
            if tracker.duplicates > 0 { report.clientsWithDuplicates += 1 }
            if tracker.outOfOrder > 0 { report.clientsOutOfOrder += 1 }
        }
        report.expected = expected ?? (report.distinct + report.gaps)
        report.lost = max(0, report.expected - report.distinct)
        return report
    }
}

/// Totals of a `SequenceAccounting`; adding two reports of disjoint client sets gives the report of the union.
struct SequenceReport: Sendable, Hashable, Codable {
    var clients = 0
    var expected = 0
    var distinct = 0
    var lost = 0
    var gaps = 0
    var duplicates = 0
    var outOfOrder = 0
    var clientsWithGaps = 0
    var clientsWithDuplicates = 0
    var clientsOutOfOrder = 0

    mutating func add(_ other: SequenceReport) {
        clients += other.clients
        expected += other.expected
        distinct += other.distinct
        lost += other.lost
        gaps += other.gaps
        duplicates += other.duplicates
        outOfOrder += other.outOfOrder
        clientsWithGaps += other.clientsWithGaps
        clientsWithDuplicates += other.clientsWithDuplicates
        clientsOutOfOrder += other.clientsOutOfOrder
    }
}
