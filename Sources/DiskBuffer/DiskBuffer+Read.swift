#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

extension Core {
    /// Reads records from `requested` on and hands each to `emit` (its body is valid only during the
    /// call); returns how many were emitted. See `DiskBuffer.read(from:maxRecords:maxBytes:)`.
    func read(
        from requested: UInt64, maxRecords: Int, maxBytes: Int,
        _ emit: (UInt64, UnsafeRawBufferPointer) -> Void
    ) throws(DiskBufferError) -> Int {
        guard maxRecords > 0 else { return 0 }
        let maxBody = configuration.maxRecordBodyBytes
        var emitted = 0
        var bodyBytes = 0
        var sequence = max(requested, 1)
        var hint: (sequence: UInt64, segmentFirst: UInt64, offset: Int64)?
        var window = lock.withLock { state -> [UInt8] in
            defer { state.spareReadWindow = [] }
            return state.spareReadWindow
        }
        defer {
            // Keep at most one window of at most a chunk: memory stays bounded however large a record was.
            if window.count <= ChunkReader.chunkSize {
                lock.withLock { state in
                    if state.spareReadWindow.isEmpty { state.spareReadWindow = window }
                }
            }
        }
        while emitted < maxRecords && (emitted == 0 || bodyBytes < maxBytes) {
            // Find the segment holding `sequence` (or the next one after a gap) under the lock.
            guard let (segment, readable, startHint) = (try lock.withLock { (state: inout State) throws(DiskBufferError) -> (Segment, UInt64, (sequence: UInt64, segmentFirst: UInt64, offset: Int64)?)? in
                guard state.lifecycle != .closed else { throw DiskBufferError(.closed, "the buffer is closed") }
                // The first segment holding a record at or after `sequence` (empty segments are skipped).
                let start = state.segments.lastIndex(where: { $0.first <= sequence }) ?? 0
                guard let segment = state.segments[start...].first(where: { $0.last >= max(sequence, $0.first) }) else {
                    return nil
                }
                return (segment, state.readableThrough, hint ?? state.readHint)
            }) else { break }
            sequence = max(sequence, segment.first)
            let last = min(segment.last, readable)
            guard sequence <= last else { break }

            let path = segmentPath(segment.first)
            let handle: FileHandle
            do {
                handle = try FileHandle.open(path, flags: O_RDONLY)
            } catch where error.errno == ENOENT {
                // Deleted since we looked (acknowledged or dropped): look again.
                sequence = segment.last + 1
                continue
            }
            var reader = ChunkReader(handle: handle, limit: segment.bytes, window: window)
            defer { window = reader.takeWindow() }
            var offset = Int64(RecordFormat.segmentHeaderSize)
            var expected = segment.first
            if let startHint, startHint.segmentFirst == segment.first, startHint.sequence <= sequence {
                offset = startHint.offset
                expected = startHint.sequence
            }
            var damaged = false
            if expected == segment.first {
                let header = try reader.bytes(at: 0, count: RecordFormat.segmentHeaderSize)
                damaged = RecordFormat.parseSegmentHeader(header, firstSequence: segment.first) == nil
            }
            while !damaged && expected <= last {
                if expected >= sequence && (emitted >= maxRecords || (emitted > 0 && bodyBytes >= maxBytes)) { break }
                let wanted = expected
                let emitFrom = sequence
                let decoded = try reader.visitRecord(at: offset, maxBodyBytes: maxBody) { found, body in
                    guard found == wanted, found >= emitFrom else { return }
                    emit(found, body)
                    emitted += 1
                    bodyBytes += body.count
                }
                guard let (found, size) = decoded, found == expected else {
                    damaged = true
                    break
                }
                offset += Int64(size)
                expected += 1
            }
            hint = (expected, segment.first, offset)
            if damaged {
                markDamaged(segment, lastGood: expected - 1)
                hint = nil
                sequence = segment.last + 1
                continue
            }
            sequence = expected
            if expected <= last { break }  // limits reached inside this segment
            if last < segment.last { break }  // not yet readable
        }
        if let hint {
            lock.withLock { $0.readHint = hint }
        }
        return emitted
    }

    /// Records that a sealed segment ends early (torn, bad checksum, missing file): counts the lost
    /// records once and logs once.
    private func markDamaged(_ segment: Segment, lastGood: UInt64) {
        let lost = lock.withLock { state -> UInt64 in
            guard let index = state.segments.firstIndex(where: { $0.first == segment.first }),
                  !state.segments[index].damaged
            else { return 0 }
            let previousLast = state.segments[index].last
            let isNewest = index == state.segments.count - 1
            guard !isNewest else { return 0 }
            state.segments[index].damaged = true
            state.segments[index].last = max(lastGood, segment.first - 1)
            let start = max(lastGood + 1, state.acknowledgedThrough + 1)
            let lost = previousLast >= start ? previousLast - start + 1 : 0
            state.droppedRecords += lost
            return lost
        }
        guard lost > 0 else { return }
        metrics.droppedCorrupt.increment(by: Int64(lost))
        logger.warning("buffer segment damaged: skipping its remaining records", metadata: [
            "buffer.segment": "\(RecordFormat.segmentName(firstSequence: segment.first))",
            "buffer.sequence": "\(lastGood + 1)",
            "buffer.dropped_records": "\(lost)",
        ])
    }
}
