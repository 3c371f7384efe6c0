#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DiskBuffer

/// Random sequences of append / read / acknowledge / close / crash / power loss against an in-memory
/// model, reproducible from the seed (set TRIBUTARY_MODEL_SEED to replay one).
@Suite struct ModelTests {
    /// What the buffer must contain.
    struct Model {
        /// Every record that exists (acknowledged or not); records cut by a simulated power loss are removed.
        var bodies: [UInt64: [UInt8]] = [:]
        var next: UInt64 = 1
        var acknowledged: UInt64 = 0
        /// The acknowledged position that survives a crash for sure (the last clean open).
        var durableAcknowledged: UInt64 = 0

        var unacknowledged: [UInt64] { bodies.keys.filter { $0 > acknowledged }.sorted() }

        func expectedRead(from: UInt64, maxRecords: Int, maxBytes: Int) -> [UInt64] {
            var result: [UInt64] = []
            var bytes = 0
            var sequence = from
            while sequence < next, result.count < maxRecords, result.isEmpty || bytes < maxBytes {
                if let body = bodies[sequence] {
                    result.append(sequence)
                    bytes += body.count
                }
                sequence += 1
            }
            return result
        }
    }

    static var seeds: [UInt64] {
        if let text = getenv("TRIBUTARY_MODEL_SEED"), let seed = UInt64(String(cString: text)) { return [seed] }
        return [1, 2, 3]
    }

    @Test(arguments: seeds)
    func randomOperationsMatchTheModel(seed: UInt64) async throws {
        let directory = TemporaryDirectory("model")
        defer { directory.remove() }
        var random = SeededGenerator(seed: seed)
        let configuration = DiskBuffer.Configuration(
            directory: directory.path, segmentMaxBytes: 4096, maxBytes: 64 << 20, fsync: .never,
            ledgerIntervalMilliseconds: 60_000)
        var (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        var model = Model()
        var sliceBatch = DiskBuffer.RecordBatch()
        let steps = 2500

        func reopen(_ step: Int, crash: Bool) async throws -> DiskBuffer.RecoveryReport {
            if crash { await buffer.simulateCrash() } else { await buffer.close() }
            let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
            buffer = reopened
            return report
        }

        for step in 0..<steps {
            let context: Comment = "seed \(seed) step \(step)"
            let choice = Int.random(in: 0..<100, using: &random)
            switch choice {
            case 0..<25:
                // Sequential appends.
                for _ in 0..<Int.random(in: 1...5, using: &random) {
                    let payload = (0..<Int.random(in: 0...700, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                    let sequence = try await buffer.append(payload)
                    #expect(sequence == model.next, context)
                    model.bodies[sequence] = payload
                    model.next = sequence + 1
                }
            case 25..<35:
                // Batch appends (one call, consecutive sequences; an empty batch stores nothing).
                for _ in 0..<Int.random(in: 1...3, using: &random) {
                    let payloads = (0..<Int.random(in: 0...6, using: &random)).map { _ in
                        (0..<Int.random(in: 0...500, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                    }
                    let range = try await buffer.append(contentsOf: payloads)
                    if payloads.isEmpty {
                        #expect(range.isEmpty, context)
                        continue
                    }
                    #expect(range == model.next..<(model.next + UInt64(payloads.count)), context)
                    for (sequence, payload) in zip(range, payloads) { model.bodies[sequence] = payload }
                    model.next = range.upperBound
                }
            case 35..<45:
                // Concurrent appends: any order among them, but exactly the next sequences.
                let count = Int.random(in: 2...8, using: &random)
                let payloads = (0..<count).map { index in [UInt8](repeating: UInt8(index), count: 1 + index * 37) }
                let current = buffer
                let results = try await withThrowingTaskGroup(of: (UInt64, [UInt8]).self) { group in
                    for payload in payloads { group.addTask { (try await current.append(payload), payload) } }
                    var all: [(UInt64, [UInt8])] = []
                    for try await result in group { all.append(result) }
                    return all
                }
                #expect(Set(results.map(\.0)) == Set(model.next..<(model.next + UInt64(count))), context)
                for (sequence, payload) in results { model.bodies[sequence] = payload }
                model.next += UInt64(count)
            case 45..<70:
                // Read from somewhere at or after the acknowledged position.
                let from = UInt64.random(in: (model.acknowledged + 1)...(model.next + 1), using: &random)
                let maxRecords = Int.random(in: 1...40, using: &random)
                let maxBytes = Int.random(in: 1...20_000, using: &random)
                let expected = model.expectedRead(from: from, maxRecords: maxRecords, maxBytes: maxBytes)
                if Bool.random(using: &random) {
                    let records = try buffer.read(from: from, maxRecords: maxRecords, maxBytes: maxBytes)
                    #expect(records.map(\.sequence) == expected, context)
                    #expect(records.allSatisfy { model.bodies[$0.sequence] == $0.body }, context)
                } else {
                    // Slice reads, into one batch reused across steps.
                    let count = try buffer.read(from: from, into: &sliceBatch, maxRecords: maxRecords, maxBytes: maxBytes)
                    #expect(count == sliceBatch.count, context)
                    #expect(sliceBatch.map(\.sequence) == expected, context)
                    #expect(sliceBatch.allSatisfy { model.bodies[$0.sequence].map { Array($0) } == Array($0.body) }, context)
                }
            case 70..<85:
                let through = UInt64.random(in: model.acknowledged...(model.next - 1), using: &random)
                try buffer.acknowledge(through: through)
                model.acknowledged = max(model.acknowledged, through)
            case 85..<89:
                let stats = buffer.stats
                #expect(stats.lastSequence == model.next - 1, context)
                #expect(stats.records == UInt64(model.unacknowledged.count), context)
                #expect(stats.acknowledgedThrough == model.acknowledged, context)
            case 89..<93:
                let report = try await reopen(step, crash: false)
                #expect(report.isClean, context)
                #expect(report.acknowledgedThrough == model.acknowledged, context)
                #expect(report.nextSequence == model.next, context)
                #expect(report.records == UInt64(model.unacknowledged.count), context)
                model.durableAcknowledged = model.acknowledged
            case 93..<97:
                // Process crash: nothing returned by append is lost; acknowledgements since the last
                // ledger write may come back (they are replayed, not lost).
                let report = try await reopen(step, crash: true)
                #expect(report.isClean, context)
                #expect(report.nextSequence == model.next, context)
                #expect(report.acknowledgedThrough <= model.acknowledged, context)
                #expect(report.acknowledgedThrough >= model.durableAcknowledged, context)
                let replay = try readAll(buffer, from: report.acknowledgedThrough + 1)
                model.acknowledged = report.acknowledgedThrough
                #expect(replay.map(\.sequence) == model.unacknowledged, context)
                #expect(replay.allSatisfy { model.bodies[$0.sequence] == $0.body }, context)
            default:
                // Power loss with policy never: the newest segment loses an arbitrary tail.
                await buffer.simulateCrash()
                let names = segmentFiles(directory.path)
                if let newest = names.last {
                    let path = directory.path + "/" + newest
                    let size = fileSize(path)
                    try truncateFile(path, to: Int64.random(in: 0...max(0, size), using: &random))
                }
                let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
                buffer = reopened
                #expect(report.acknowledgedThrough <= model.acknowledged, context)
                let replay = try readAll(buffer, from: report.acknowledgedThrough + 1)
                // What is left is exactly a prefix of what was there: nothing before the damage is lost.
                let expected = model.bodies.keys.filter { $0 > report.acknowledgedThrough }.sorted()
                #expect(replay.map(\.sequence) == Array(expected.prefix(replay.count)), context)
                #expect(replay.allSatisfy { model.bodies[$0.sequence] == $0.body }, context)
                let kept = replay.last?.sequence ?? report.acknowledgedThrough
                // Sequences after `kept` may be handed out again: a cut exactly at a record boundary
                // looks like a clean end, and with policy never the ledger may be older. That is the
                // documented risk of `never`; `always` syncs before `append` returns.
                #expect(report.nextSequence >= kept + 1, context)
                for sequence in model.bodies.keys where sequence > kept { model.bodies[sequence] = nil }
                model.acknowledged = report.acknowledgedThrough
                model.durableAcknowledged = report.acknowledgedThrough
                model.next = report.nextSequence
            }
        }
        await buffer.close()
    }
}
