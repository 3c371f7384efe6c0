// buffer-bench: the disk buffer against SQLite (WAL, GRDB) doing the same work with the same durability,
// and against the disk's raw sequential write rate, in one run. See ../../buffer.sh and BENCHMARKS.md.
//
// Work, for each store and fsync policy: `appenders` tasks append `record-size`-byte records for
// `seconds`; one reader streams every record in order and acknowledges (deletes) what it read. The run
// ends when the reader has acknowledged everything appended. Throughput counts acknowledged records.
//
// Durability pairs (what "the same" means here):
// - always:   DiskBuffer `.always` (group commit: fdatasync before append returns)
//             vs SQLite WAL, synchronous=FULL, one transaction per append (WAL synced at each commit).
// - interval: DiskBuffer `.interval(10 ms)` (append returns after write(2); fdatasync every 10 ms)
//             vs SQLite WAL, synchronous=NORMAL, one transaction per append, and
//             `PRAGMA wal_checkpoint(PASSIVE)` every 10 ms (syncs the WAL, then the database).
import ArgumentParser
import DiskBuffer
import Foundation
import GRDB
import Synchronization

struct Result {
    var name: String
    var records: Int
    var seconds: Double
    var latenciesNanoseconds: [UInt64]
    var syncs: Int
    var syncsEstimated: Bool
    var recordSize: Int
    /// User + system CPU time of this process during the run (all its threads).
    var cpuSeconds: Double = 0

    var recordsPerSecond: Double { Double(records) / seconds }
    var megabytesPerSecond: Double { Double(records * recordSize) / seconds / 1e6 }
    var p99Milliseconds: Double {
        guard !latenciesNanoseconds.isEmpty else { return .nan }
        let sorted = latenciesNanoseconds.sorted()
        return Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * 0.99))]) / 1e6
    }
    var syncsPerSecond: Double { Double(syncs) / seconds }

    var line: String {
        String(format: "%-40@ %10.0f rec/s %8.1f MB/s  p99 %8.3f ms  %8.0f fsync/s%@  (%d records, %.2f s, cpu %.2f s = %.2f us/record)",
               name as NSString, recordsPerSecond, megabytesPerSecond, p99Milliseconds, syncsPerSecond,
               (syncsEstimated ? " (est.)" : "") as NSString, records, seconds, cpuSeconds,
               records > 0 ? cpuSeconds * 1e6 / Double(records) : 0)
    }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// User + system CPU seconds used by this process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    #if os(Linux)
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
    #else
    getrusage(RUSAGE_SELF, &usage)
    #endif
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

@main
struct BufferBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "buffer-bench",
        abstract: "DiskBuffer vs SQLite WAL (GRDB) vs raw disk, append + read + acknowledge.")

    @Option(help: "Directory on the disk to measure (emptied first).")
    var directory = "/var/tmp/tributary-buffer-bench"
    @Option(help: "Seconds of appending per run.")
    var seconds: Double = 5
    @Option(help: "Concurrent appending tasks.")
    var appenders = 64
    @Option(help: "Record body size in bytes.")
    var recordSize = 1024
    @Option(help: "Interval policy period in milliseconds.")
    var intervalMilliseconds = 10
    @Option(help: "Policies to run: interval, always.")
    var policies: [String] = ["interval", "always"]
    @Flag(help: "Skip SQLite.")
    var skipSQLite = false
    @Option(help: "MiB written for each raw rate.")
    var rawMebibytes = 1024
    @Option(parsing: .upToNextOption, help: """
        DiskBuffer variants, each a run: records per append call (1: `append(_:)`, more: \
        `append(contentsOf:)`), then `records` (`read(from:)` returning [Record]) or `slices` \
        (`read(from:into:)` into one reused RecordBatch).
        """)
    var variants: [String] = ["1-records", "1-slices", "16-slices"]

    func run() async throws {
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        print("buffer-bench: \(appenders) appenders, \(recordSize)-byte records, \(seconds) s per run, directory \(directory)")
        let parsed = try variants.map { text -> (batch: Int, slices: Bool) in
            let parts = text.split(separator: "-")
            guard parts.count == 2, let batch = Int(parts[0]), batch >= 1, ["records", "slices"].contains(parts[1]) else {
                throw ValidationError("variant \(text): expected BATCH-records or BATCH-slices, e.g. 16-slices")
            }
            return (batch, parts[1] == "slices")
        }
        for policy in policies {
            print("--- policy \(policy)")
            // Two raw rates, each just before the stores run: the device through O_DIRECT, and the way
            // the buffer must write with `interval` (page cache, fdatasync every interval on a second thread).
            let raw = try rawWriteRate()
            print(String(format: "raw sequential write, dd bs=1M oflag=direct conv=fdatasync: %.1f MB/s", raw))
            let rawInterval = rawIntervalWriteRate()
            print(String(format: "raw sequential write, 4 MiB pwrite into 64 MiB files + fdatasync every %d ms: %.1f MB/s", intervalMilliseconds, rawInterval))
            var sqlite: Result?
            if !skipSQLite {
                let cpu = processCPUSeconds()
                sqlite = try await runSQLite(policy: policy)
                sqlite!.cpuSeconds = processCPUSeconds() - cpu
                print(sqlite!.line)
            }
            for variant in parsed {
                let cpu = processCPUSeconds()
                var buffer = try await runDiskBuffer(policy: policy, batch: variant.batch, slices: variant.slices)
                buffer.cpuSeconds = processCPUSeconds() - cpu
                print(buffer.line)
                var summary = String(format: "  of raw: %.1f%% (direct), %.1f%% (interval pattern)",
                                     100 * buffer.megabytesPerSecond / raw, 100 * buffer.megabytesPerSecond / rawInterval)
                if let sqlite {
                    summary += String(format: "; vs SQLite %@: %.1fx", policy, buffer.recordsPerSecond / sqlite.recordsPerSecond)
                }
                print(summary)
            }
        }
    }

    /// The disk written the way the buffer writes with `interval`, without the buffer: buffered 4 MiB
    /// `pwrite`s into 64 MiB files (the default segment size), an fdatasync of the current file every
    /// `intervalMilliseconds` on a second thread, each full file synced, closed and deleted (as the
    /// buffer deletes acknowledged segments); `rawMebibytes` in all, then a final fdatasync.
    func rawIntervalWriteRate() -> Double {
        let chunk = [UInt8](repeating: 0x5A, count: 4 << 20)
        let fileBytes = 64 << 20
        let current = Mutex<Int32>(-1)
        let done = Atomic<Bool>(false)
        let syncer = Thread {
            while !done.load(ordering: .relaxed) {
                usleep(UInt32(intervalMilliseconds * 1000))
                // A duplicate, so the writer may close its descriptor meanwhile.
                let fd = current.withLock { $0 >= 0 ? dup($0) : -1 }
                if fd >= 0 {
                    fdatasync(fd)
                    close(fd)
                }
            }
        }
        let start = now()
        syncer.start()
        var written = 0
        var index = 0
        var failed = false
        while written < rawMebibytes << 20 && !failed {
            let path = directory + "/raw-interval-\(index).bin"
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { return .nan }
            current.withLock { $0 = fd }
            var offset = 0
            chunk.withUnsafeBytes { raw in
                while offset < fileBytes && written < rawMebibytes << 20 {
                    let n = pwrite(fd, raw.baseAddress!, raw.count, off_t(offset))
                    if n <= 0 {
                        failed = true
                        return
                    }
                    offset += n
                    written += n
                }
            }
            fdatasync(fd)
            current.withLock { $0 = -1 }
            close(fd)
            unlink(path)
            index += 1
        }
        done.store(true, ordering: .relaxed)
        let elapsed = Double(now() - start) / 1e9
        return failed ? .nan : Double(written) / elapsed / 1e6
    }

    func rawWriteRate() throws -> Double {
        let path = directory + "/raw.bin"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/dd")
        process.arguments = ["if=/dev/zero", "of=\(path)", "bs=1M", "count=\(rawMebibytes)", "oflag=direct", "conv=fdatasync"]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        let start = now()
        try process.run()
        process.waitUntilExit()
        let elapsed = Double(now() - start) / 1e9
        try? FileManager.default.removeItem(atPath: path)
        return Double(rawMebibytes) * 1_048_576 / elapsed / 1e6
    }

    func payload() -> [UInt8] { (0..<recordSize).map { UInt8(truncatingIfNeeded: $0 &* 13) } }

    // MARK: DiskBuffer

    func runDiskBuffer(policy: String, batch appendBatch: Int, slices: Bool) async throws -> Result {
        let path = directory + "/buffer-\(policy)"
        let fsync: DiskBuffer.FsyncPolicy = policy == "always" ? .always : .interval(milliseconds: intervalMilliseconds)
        let (buffer, _) = try DiskBuffer.open(
            .init(directory: path, maxBytes: 8 << 30, overflowPolicy: .rejectNew, fsync: fsync))
        let body = payload()
        let total = Mutex<UInt64?>(nil)
        let start = now()
        let deadline = start + UInt64(seconds * 1e9)
        let reader = Task { () throws -> Int in
            var next: UInt64 = 1
            var read = 0
            var records = DiskBuffer.RecordBatch()
            var bodyBytes = 0
            while true {
                var last: UInt64?
                if slices {
                    try buffer.read(from: next, into: &records, maxRecords: 4096, maxBytes: 4 << 20)
                    last = records.lastSequence
                    read += records.count
                    bodyBytes += records.bytes.count
                } else {
                    let batch = try buffer.read(from: next, maxRecords: 4096, maxBytes: 4 << 20)
                    last = batch.last?.sequence
                    read += batch.count
                    for record in batch { bodyBytes += record.body.count }
                }
                if let last {
                    next = last + 1
                    try buffer.acknowledge(through: last)
                    continue
                }
                if let total = total.withLock({ $0 }), next > total {
                    guard bodyBytes == read * recordSize else { throw ValidationError("read \(bodyBytes) body bytes for \(read) records") }
                    return read
                }
                let after = next - 1
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await buffer.waitForRecords(after: after) }
                    group.addTask { try? await Task.sleep(for: .milliseconds(20)) }
                    await group.next()
                    group.cancelAll()
                }
            }
        }
        let appendResults = try await withThrowingTaskGroup(of: ([UInt64], Int).self) { group in
            for _ in 0..<appenders {
                group.addTask {
                    var mine: [UInt64] = []
                    mine.reserveCapacity(1 << 16)
                    let bodies = [[UInt8]](repeating: body, count: appendBatch)
                    var appended = 0
                    while now() < deadline {
                        let t0 = now()
                        if appendBatch == 1 {
                            _ = try await buffer.append(body)
                        } else {
                            _ = try await buffer.append(contentsOf: bodies)
                        }
                        mine.append(now() - t0)
                        appended += appendBatch
                    }
                    return (mine, appended)
                }
            }
            var all: [UInt64] = []
            var appended = 0
            for try await part in group {
                all += part.0
                appended += part.1
            }
            return (all, appended)
        }
        let (latencies, appended) = appendResults
        total.withLock { $0 = UInt64(appended) }
        let read = try await reader.value
        let elapsed = Double(now() - start) / 1e9
        let syncs = Int(buffer.stats.syncs)
        await buffer.close()
        try? FileManager.default.removeItem(atPath: path)
        guard read == appended else { throw ValidationError("read \(read) records of \(appended) appended") }
        let name = "DiskBuffer \(policy) \(appendBatch == 1 ? "append x1" : "append x\(appendBatch)") \(slices ? "slices" : "records")"
        return Result(name: name, records: read, seconds: elapsed, latenciesNanoseconds: latencies,
                      syncs: syncs, syncsEstimated: false, recordSize: recordSize)
    }

    // MARK: SQLite

    func runSQLite(policy: String) async throws -> Result {
        let path = directory + "/sqlite-\(policy).db"
        var configuration = Configuration()
        let synchronous = policy == "always" ? "FULL" : "NORMAL"
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        let pool = try DatabasePool(path: path, configuration: configuration)
        // GRDB's DatabasePool sets synchronous=NORMAL on its own; set ours on the writer connection
        // afterwards and check it, so the comparison is at the stated durability.
        let (journal, level) = try await pool.writeWithoutTransaction { db -> (String, Int) in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
            try db.execute(sql: "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)")
            return (try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "?", try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1)
        }
        print("SQLite writer connection: journal_mode=\(journal) synchronous=\(level) (1 NORMAL, 2 FULL)")
        guard journal == "wal", level == (synchronous == "FULL" ? 2 : 1) else {
            throw ValidationError("SQLite is not in the intended mode")
        }
        let body = payload()
        let total = Mutex<Int64?>(nil)
        let checkpoints = Mutex(0)
        let commits = Mutex(0)
        let start = now()
        let deadline = start + UInt64(seconds * 1e9)
        let checkpointer = Task {
            guard policy != "always" else { return }
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(intervalMilliseconds))
                try? await pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(PASSIVE)") }
                checkpoints.withLock { $0 += 1 }
            }
        }
        let reader = Task { () throws -> Int in
            var last: Int64 = 0
            var read = 0
            while true {
                let rows = try await pool.read { db in
                    try Row.fetchAll(db, sql: "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq LIMIT 4096", arguments: [last])
                }
                if let final = rows.last {
                    read += rows.count
                    last = final["seq"]
                    let through = last
                    try await pool.write { db in try db.execute(sql: "DELETE FROM records WHERE seq <= ?", arguments: [through]) }
                    commits.withLock { $0 += 1 }
                    continue
                }
                if let total = total.withLock({ $0 }), last >= total { return read }
                try await Task.sleep(for: .milliseconds(1))
            }
        }
        let latencies = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for _ in 0..<appenders {
                group.addTask {
                    var mine: [UInt64] = []
                    while now() < deadline {
                        let t0 = now()
                        try await pool.write { db in
                            try db.execute(sql: "INSERT INTO records (body) VALUES (?)", arguments: [Data(body)])
                        }
                        mine.append(now() - t0)
                    }
                    return mine
                }
            }
            var all: [UInt64] = []
            for try await part in group { all += part }
            return all
        }
        commits.withLock { $0 += latencies.count }
        total.withLock { $0 = Int64(latencies.count) }
        let read = try await reader.value
        let elapsed = Double(now() - start) / 1e9
        checkpointer.cancel()
        _ = await checkpointer.value
        try pool.close()
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        // SQLite's syncs are not counted directly: FULL syncs the WAL once per commit; NORMAL syncs at
        // each checkpoint (WAL and database file: two per checkpoint).
        let syncs = policy == "always" ? commits.withLock { $0 } : 2 * checkpoints.withLock { $0 }
        return Result(name: "SQLite WAL \(policy) (\(synchronous))", records: read, seconds: elapsed,
                      latenciesNanoseconds: latencies, syncs: syncs, syncsEstimated: true, recordSize: recordSize)
    }
}
