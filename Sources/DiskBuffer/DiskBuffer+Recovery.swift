#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

extension DiskBuffer {
    /// What `open` found and repaired.
    public struct RecoveryReport: Sendable, Hashable {
        public enum LedgerState: Sendable, Hashable {
            /// A new, empty buffer.
            case created
            /// The ledger was read and agrees with the data.
            case loaded
            /// Segments exist but the ledger does not: everything stored is replayed.
            case missing
            /// The ledger failed its checksum: everything stored is replayed.
            case corrupt
            /// The ledger acknowledges sequences beyond the last record on disk (the tail was damaged
            /// after being acknowledged): nothing is replayed and no sequence is reused.
            case aheadOfData
        }

        public var ledger: LedgerState
        public var acknowledgedThrough: UInt64
        /// The sequence the next append gets.
        public var nextSequence: UInt64
        public var segments: Int
        /// Unacknowledged records found (older segments are counted from their names, not scanned).
        public var records: UInt64
        public var bytes: Int64
        /// Bytes cut from the newest segment at the first torn record, bad checksum or wrong sequence.
        public var truncatedBytes: Int64
        /// Record frames found in the cut part, the damaged one included (a zero-filled tail counts 0).
        public var truncatedRecords: Int
        /// The segment that was cut, if any.
        public var truncatedSegment: String?
        /// Sequences that were handed out but are neither acknowledged nor on disk (lost).
        public var missingSequences: [ClosedRange<UInt64>]

        /// True if nothing was cut, lost or guessed.
        public var isClean: Bool {
            truncatedBytes == 0 && missingSequences.isEmpty && (ledger == .created || ledger == .loaded)
        }
    }
}

/// Reads a file through a 1 MiB window, so scans do one `pread` per MiB rather than per record. The
/// window's storage can be handed from one reader to the next (`init(window:)`, `takeWindow()`), so
/// that streaming reads do not allocate, and fault in, a fresh MiB each time.
struct ChunkReader {
    let handle: FileHandle
    let limit: Int64
    private var window: [UInt8]
    /// Bytes of `window` holding file data, from `windowStart`.
    private var filled = 0
    private var windowStart: Int64 = 0
    static let chunkSize = 1 << 20
    /// The first refill of a reader reads this much, each further one twice as much up to `chunkSize`: a
    /// reader that wants one record (the uplink refilling one free slot of its window) copies 64 KiB from
    /// the page cache, not 1 MiB.
    static let initialReadSize = 64 << 10
    private var readSize = Self.initialReadSize

    init(handle: FileHandle, limit: Int64, window: [UInt8] = []) {
        self.handle = handle
        self.limit = limit
        self.window = window
    }

    /// The window's storage, for the next reader.
    mutating func takeWindow() -> [UInt8] {
        filled = 0
        defer { window = [] }
        return window
    }

    /// Up to `count` bytes at `offset` (fewer at `limit`).
    mutating func bytes(at offset: Int64, count: Int) throws(DiskBufferError) -> ArraySlice<UInt8> {
        let (start, available) = try fill(at: offset, count: count)
        return window[start..<(start + available)]
    }

    /// Makes up to `count` bytes at `offset` (fewer at `limit`) present in the window; returns where
    /// they start in it and how many there are.
    private mutating func fill(at offset: Int64, count: Int) throws(DiskBufferError) -> (start: Int, count: Int) {
        let wanted = Int(min(Int64(count), max(0, limit - offset)))
        if offset >= windowStart, offset + Int64(wanted) <= windowStart + Int64(filled) {
            return (Int(offset - windowStart), wanted)
        }
        let size = Int(min(Int64(max(readSize, wanted)), max(0, limit - offset)))
        readSize = min(Self.chunkSize, readSize * 2)
        if window.count < size {
            // Grow only: a window sized for one large record stays that size for this reader.
            window = [UInt8](repeating: 0, count: max(size, min(Self.chunkSize, window.count * 2)))
        }
        let handle = handle
        var failure: DiskBufferError?
        var got = 0
        window.withUnsafeMutableBytes { raw in
            do throws(DiskBufferError) {
                got = try handle.read(into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<size]), at: offset)
            } catch { failure = error }
        }
        if let failure {
            filled = 0
            throw failure
        }
        filled = got
        windowStart = offset
        return (0, min(wanted, got))
    }

    /// The reader's fast path: if the record at `offset` is intact (complete, checksum good), passes
    /// its sequence and body (valid only during the call) to `visit` and returns its sequence and
    /// size; nil otherwise, where `record(at:maxBodyBytes:)` tells what is wrong. Creates no slices
    /// (each would retain and release the window).
    mutating func visitRecord(
        at offset: Int64, maxBodyBytes: Int, _ visit: (UInt64, UnsafeRawBufferPointer) -> Void
    ) throws(DiskBufferError) -> (sequence: UInt64, size: Int)? {
        let headerSize = RecordFormat.recordHeaderSize
        var (start, available) = try fill(at: offset, count: headerSize)
        guard available == headerSize else { return nil }
        let length = window.withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: start, as: UInt32.self))) }
        guard length <= maxBodyBytes else { return nil }
        let size = headerSize + length
        (start, available) = try fill(at: offset, count: size)
        guard available == size else { return nil }
        return window.withUnsafeBytes { raw -> (sequence: UInt64, size: Int)? in
            let stored = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: start + 4, as: UInt32.self))
            let sequence = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: start + 8, as: UInt64.self))
            let body = UnsafeRawBufferPointer(rebasing: raw[(start + headerSize)..<(start + size)])
            let state = CRC32C.update(CRC32C.initialState, body)
            guard RecordFormat.checksum(bodyState: state, length: UInt32(length), sequence: sequence) == stored else {
                return nil
            }
            visit(sequence, body)
            return (sequence, size)
        }
    }

    /// Decodes the record at `offset`: nil if the file ends inside it.
    mutating func record(at offset: Int64, maxBodyBytes: Int) throws(DiskBufferError) -> RecordFormat.Decoded {
        let header = try bytes(at: offset, count: RecordFormat.recordHeaderSize)
        guard let (size, _) = RecordFormat.peekHeader(header) else {
            return .incomplete(needed: RecordFormat.recordHeaderSize)
        }
        guard size - RecordFormat.recordHeaderSize <= maxBodyBytes else { return .badChecksum(size: RecordFormat.recordHeaderSize) }
        return RecordFormat.decodeRecord(try bytes(at: offset, count: size), maxBodyBytes: maxBodyBytes)
    }
}

enum Recovery {
    struct Scan {
        /// Offset just past the last good record (0 if even the header is bad).
        var validEnd: Int64
        var records: UInt64
        var headerValid: Bool
        var truncatedRecords: Int
    }

    /// Walks a segment from its header, checking every record's checksum and sequence.
    static func scan(_ handle: FileHandle, first: UInt64, size: Int64, maxBodyBytes: Int) throws(DiskBufferError) -> Scan {
        var reader = ChunkReader(handle: handle, limit: size)
        let header = try reader.bytes(at: 0, count: RecordFormat.segmentHeaderSize)
        guard RecordFormat.parseSegmentHeader(header, firstSequence: first) != nil else {
            let fragments = try countFragments(&reader, from: 0, size: size, maxBodyBytes: maxBodyBytes)
            return Scan(validEnd: 0, records: 0, headerValid: false, truncatedRecords: fragments)
        }
        var offset = Int64(RecordFormat.segmentHeaderSize)
        var expected = first
        while offset < size {
            guard case .record(let sequence, _, let recordSize) = try reader.record(at: offset, maxBodyBytes: maxBodyBytes),
                  sequence == expected
            else { break }
            offset += Int64(recordSize)
            expected += 1
        }
        let fragments = offset < size ? try countFragments(&reader, from: offset, size: size, maxBodyBytes: maxBodyBytes) : 0
        return Scan(validEnd: offset, records: expected - first, headerValid: true, truncatedRecords: fragments)
    }

    /// Estimates how many records a damaged region held by walking its length fields: stops at a
    /// zeroed header (preallocated space) or a length that runs past the end.
    static func countFragments(_ reader: inout ChunkReader, from start: Int64, size: Int64, maxBodyBytes: Int) throws(DiskBufferError) -> Int {
        var offset = start == 0 ? Int64(RecordFormat.segmentHeaderSize) : start
        if start == 0 {
            // A bad segment header: count it as one fragment unless the file is all zeros.
            let head = try reader.bytes(at: 0, count: RecordFormat.segmentHeaderSize)
            if head.allSatisfy({ $0 == 0 }) { return 0 }
        }
        var count = 0
        while offset < size {
            let header = try reader.bytes(at: offset, count: RecordFormat.recordHeaderSize)
            if header.allSatisfy({ $0 == 0 }) { break }
            count += 1
            guard let (recordSize, _) = RecordFormat.peekHeader(header),
                  recordSize - RecordFormat.recordHeaderSize <= maxBodyBytes
            else { break }
            offset += Int64(recordSize)
        }
        return max(count, start == 0 ? 1 : 0)
    }

    static func open(_ configuration: DiskBuffer.Configuration, logger: Logger) throws(DiskBufferError) -> (DiskBuffer, DiskBuffer.RecoveryReport) {
        try configuration.validate()
        let directory = configuration.directory
        try FileSystem.createDirectory(directory)
        let lockDescriptor = try acquireLock(directory + "/" + RecordFormat.lockName)
        do {
            return try recover(configuration, logger: logger, lockDescriptor: lockDescriptor)
        } catch {
            _ = Glibc.close(lockDescriptor)
            throw error
        }
    }

    /// The `previous last` field of a segment's header, nil if the file or header is unreadable.
    private static func previousLast(_ path: String, first: UInt64) throws(DiskBufferError) -> UInt64? {
        guard let handle = try? FileHandle.open(path, flags: O_RDONLY) else { return nil }
        let header = try handle.read(count: RecordFormat.segmentHeaderSize, at: 0)
        return RecordFormat.parseSegmentHeader(header[...], firstSequence: first)
    }

    /// Takes the directory's lock file (flock, exclusive). A lock still held for a moment is waited for
    /// up to 250 ms: a predecessor may be exiting, and a `fork` in another thread of this process briefly
    /// holds a copy of every descriptor until its `exec`.
    private static func acquireLock(_ path: String) throws(DiskBufferError) -> Int32 {
        let descriptor = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw .system("open", errno: Glibc.errno, path: path) }
        var attempts = 0
        while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            let error = Glibc.errno
            attempts += 1
            if error == EINTR { continue }
            if error == EWOULDBLOCK && attempts < 50 {
                usleep(5_000)
                continue
            }
            _ = Glibc.close(descriptor)
            if error == EWOULDBLOCK {
                throw DiskBufferError(.directoryLocked, "another process has this buffer directory open", errno: error, path: path)
            }
            throw .system("flock", errno: error, path: path)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(descriptor, 0)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        return descriptor
    }

    private static func recover(
        _ configuration: DiskBuffer.Configuration, logger: Logger, lockDescriptor: Int32
    ) throws(DiskBufferError) -> (DiskBuffer, DiskBuffer.RecoveryReport) {
        let directory = configuration.directory
        let metrics = DiskBufferMetrics()
        let ledgerPath = directory + "/" + RecordFormat.ledgerName
        try FileSystem.remove(ledgerPath + ".tmp")
        let firsts = try FileSystem.listDirectory(directory)
            .compactMap(RecordFormat.firstSequence(ofSegmentNamed:))
            .filter { $0 > 0 && $0 < UInt64.max / 2 }
            .sorted()
        func path(_ first: UInt64) -> String { directory + "/" + RecordFormat.segmentName(firstSequence: first) }

        var segments: [Segment] = []
        var samples: [(sequence: UInt64, time: Double)] = []
        for (index, first) in firsts.dropLast().enumerated() {
            let bytes = FileSystem.fileSize(path(first)) ?? 0
            // A sealed segment ends where the next one says the previous records ended.
            let next = firsts[index + 1]
            let last = min(next - 1, try previousLast(path(next), first: next) ?? next - 1)
            segments.append(Segment(first: first, last: max(last, first - 1), bytes: bytes))
        }

        // The ledger is decoded first: its acknowledged position bounds what a torn newest header lost.
        let ledgerBytes = try AtomicFile.read(ledgerPath)
        let ledger = ledgerBytes.flatMap(RecordFormat.decodeLedger)

        // Scan and repair the newest segment.
        var truncatedBytes: Int64 = 0
        var truncatedRecords = 0
        var truncatedSegment: String?
        /// Checks every record of a segment and cuts it at the first damage. Returns the open file,
        /// the segment as found and whether its header was intact.
        func repair(_ first: UInt64, previousLast: UInt64) throws(DiskBufferError) -> (FileHandle, Segment, Bool) {
            let handle = try FileHandle.open(path(first), flags: O_RDWR)
            let size = try handle.size()
            let scan = try scan(handle, first: first, size: size, maxBodyBytes: configuration.maxRecordBodyBytes)
            var validEnd = scan.validEnd
            if validEnd < size || !scan.headerValid {
                truncatedBytes += size - validEnd
                truncatedRecords += scan.truncatedRecords
                truncatedSegment = truncatedSegment ?? RecordFormat.segmentName(firstSequence: first)
                try handle.truncate(to: validEnd)
                if !scan.headerValid {
                    try handle.write(RecordFormat.segmentHeader(firstSequence: first, previousLast: previousLast), at: 0)
                    validEnd = Int64(RecordFormat.segmentHeaderSize)
                }
                try handle.syncData()
                logger.warning("buffer tail damaged: truncated", metadata: [
                    "buffer.segment": "\(RecordFormat.segmentName(firstSequence: first))",
                    "buffer.truncated_bytes": "\(size - scan.validEnd)",
                    "buffer.truncated_records": "\(scan.truncatedRecords)",
                    "buffer.kept_records": "\(scan.records)",
                ])
            }
            return (handle, Segment(first: first, last: first + scan.records - 1, bytes: validEnd), scan.headerValid)
        }
        var tail: FileHandle?
        if let first = firsts.last {
            var (handle, newest, headerValid) = try repair(first, previousLast: min(first - 1, ledger?.acknowledgedThrough ?? first - 1))
            if !headerValid, let previous = segments.popLast() {
                // The newest header, which bounds the previous segment, is lost (crash while creating
                // it): check the previous segment record by record, then rewrite the header from it.
                let (_, repaired, _) = try repair(previous.first, previousLast: previous.first - 1)
                segments.append(repaired)
                (handle, newest, _) = try repair(first, previousLast: min(repaired.last, first - 1))
                try handle.write(RecordFormat.segmentHeader(firstSequence: first, previousLast: min(repaired.last, first - 1)), at: 0)
                try handle.syncData()
            }
            segments.append(newest)
            tail = handle
        }
        if truncatedBytes > 0 {
            metrics.truncatedBytes.increment(by: truncatedBytes)
            metrics.droppedCorrupt.increment(by: Int64(truncatedRecords))
        }
        for segment in segments {
            if let time = FileHandle.modificationTime(path(segment.first)) { samples.append((segment.first, time)) }
        }

        // The ledger, checked against the data.
        let dataNext = (segments.last?.last ?? 0) + 1
        let oldest = segments.first?.first
        var ledgerState: DiskBuffer.RecoveryReport.LedgerState
        var acknowledged: UInt64
        var ledgerNext: UInt64 = 1
        switch ledgerBytes {
        case nil:
            ledgerState = segments.isEmpty ? .created : .missing
            acknowledged = (oldest ?? 1) - 1
        case _?:
            if let ledger {
                acknowledged = ledger.acknowledgedThrough
                ledgerNext = ledger.nextSequence
                ledgerState = acknowledged >= dataNext && !segments.isEmpty ? .aheadOfData : .loaded
            } else {
                ledgerState = .corrupt
                acknowledged = (oldest ?? 1) - 1
            }
        }
        if ledgerState == .missing || ledgerState == .corrupt {
            logger.warning("buffer ledger unusable: replaying from the oldest segment", metadata: [
                "buffer.ledger": "\(ledgerState)", "buffer.sequence": "\(acknowledged + 1)",
            ])
        }
        let nextSequence = max(dataNext, ledgerNext, acknowledged + 1)

        // Sequences handed out before but neither acknowledged nor on disk.
        var missing: [ClosedRange<UInt64>] = []
        if let oldest, oldest > acknowledged + 1 {
            // Records before the oldest segment that were never acknowledged. A gap recovery already
            // reported (between the header's previous last and the segment's first) is not reported again.
            let previous = try previousLast(path(oldest), first: oldest) ?? oldest - 1
            if previous > acknowledged { missing.append((acknowledged + 1)...previous) }
        }
        let lostTailStart = max(dataNext, acknowledged + 1)
        if ledgerNext > lostTailStart { missing.append(lostTailStart...(ledgerNext - 1)) }
        if !missing.isEmpty {
            let count = missing.reduce(UInt64(0)) { $0 + $1.upperBound - $1.lowerBound + 1 }
            metrics.droppedMissing.increment(by: Int64(count))
            logger.warning("buffer records missing", metadata: [
                "buffer.missing_records": "\(count)", "buffer.missing_ranges": "\(missing)",
            ])
        }

        // The newest segment must be able to take `nextSequence` next; otherwise start a new one.
        var active: FileHandle
        if let tail, let last = segments.last, last.last + 1 == nextSequence {
            active = tail
        } else {
            active = try FileHandle.open(path(nextSequence), flags: O_RDWR | O_CREAT | O_TRUNC)
            let previous = min(segments.last?.last ?? acknowledged, nextSequence - 1)
            try active.write(RecordFormat.segmentHeader(firstSequence: nextSequence, previousLast: previous), at: 0)
            try active.syncData()
            try FileSystem.syncDirectory(directory)
            segments.append(Segment(first: nextSequence, last: nextSequence - 1, bytes: Int64(RecordFormat.segmentHeaderSize)))
        }
        let activeSize = segments[segments.count - 1].bytes

        // Persist the reconciled ledger, then delete wholly acknowledged segments (never the newest).
        var persisted = acknowledged
        do {
            try AtomicFile.write(
                RecordFormat.encodeLedger(acknowledgedThrough: acknowledged, nextSequence: nextSequence), to: ledgerPath)
        } catch {
            persisted = 0
            logger.warning("cannot write buffer ledger", metadata: ["buffer.error": "\(error)"])
        }
        while segments.count > 1, segments[0].last <= acknowledged {
            try FileSystem.remove(path(segments[0].first))
            segments.removeFirst()
        }

        let writtenThrough = nextSequence - 1
        var state = State(
            segments: segments,
            diskBytes: segments.reduce(0) { $0 + $1.bytes },
            writtenThrough: writtenThrough,
            readableThrough: writtenThrough,
            acknowledgedThrough: acknowledged,
            persistedAcknowledgedThrough: persisted
        )
        state.samples = samples.sorted { $0.sequence < $1.sequence }
        state.pruneSamples()
        let core = Core(configuration: configuration, logger: logger, state: state, lockDescriptor: lockDescriptor)
        let writer = Writer(
            core: core, active: active, activeFirst: segments[segments.count - 1].first,
            activeSize: activeSize, nextSequence: nextSequence)
        // The writer stops the other two when it exits; if it cannot start, they are stopped here.
        let housekeeper = Housekeeper(core: core)
        do {
            if case .interval(let milliseconds) = configuration.fsync {
                let syncer = Syncer(core: core, intervalNanoseconds: UInt64(milliseconds) * 1_000_000)
                try startThread(name: "buffer-syncer") { syncer.run() }
            }
            try startThread(name: "buffer-housekeeper") { housekeeper.run() }
            try startThread(name: "buffer-writer") { writer.run() }
        } catch {
            core.lock.withLock { state in
                state.syncerStop = true
                state.housekeeperStop = true
            }
            core.lock.signal(.syncer)
            core.lock.signal(.housekeeper)
            throw error
        }

        let stats = state.stats(now: Clock.wallSeconds())
        let report = DiskBuffer.RecoveryReport(
            ledger: ledgerState,
            acknowledgedThrough: acknowledged,
            nextSequence: nextSequence,
            segments: segments.count,
            records: stats.records,
            bytes: stats.bytes,
            truncatedBytes: truncatedBytes,
            truncatedRecords: truncatedRecords,
            truncatedSegment: truncatedSegment,
            missingSequences: missing
        )
        logger.debug("buffer opened", metadata: [
            "buffer.directory": "\(directory)", "buffer.records": "\(stats.records)",
            "buffer.sequence": "\(nextSequence)", "buffer.acknowledged": "\(acknowledged)",
        ])
        return (DiskBuffer(core: core), report)
    }
}
