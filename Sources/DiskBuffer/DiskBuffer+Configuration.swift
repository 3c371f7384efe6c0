extension DiskBuffer {
    /// When appended records reach the disk, and so what a power loss can take.
    ///
    /// A process crash (SIGKILL, panic) loses nothing that `append` returned under any policy: `append`
    /// returns only after the record was written to the file (the kernel holds it). The policies differ
    /// only on power loss or kernel crash:
    public enum FsyncPolicy: Sendable, Hashable {
        /// Group commit: concurrent appends share one `fdatasync`, and `append` returns only after the
        /// sync that covers its record. Power loss loses nothing that `append` returned.
        case always
        /// `fdatasync` every `milliseconds`: power loss can lose records that `append` returned during the
        /// last interval (plus the time one sync takes). Readers see a record only once it is synced,
        /// so a lost record was never forwarded and its sequence number is never seen upstream. A write
        /// after a quiet spell waits half an interval for its sync, so that a burst shares one.
        case interval(milliseconds: Int)
        /// Never sync (except at `close`). Unsafe: power loss can lose any amount of recent data, and a
        /// record forwarded before the loss may have its sequence number reused afterwards.
        case never
    }

    /// What `append` does when the buffer holds `maxBytes`.
    public enum OverflowPolicy: Sendable, Hashable {
        /// Delete the oldest segment, acknowledged or not, counting its unacknowledged records in
        /// `tributary_buffer_dropped_records_total{reason="overflow"}` and logging once per segment.
        case dropOldest
        /// Refuse the new record with ``DiskBufferError/Code/bufferFull``: the device gets no ack (or the
        /// MQTT 5 reason code 0x97 quota exceeded) and retries later.
        case rejectNew
    }

    /// The buffer's settings. Config keys (dotted, in the agent's YAML): `buffer.directory`,
    /// `buffer.segment_max_bytes`, `buffer.max_bytes`, `buffer.overflow` (`drop-oldest` | `reject-new`),
    /// `buffer.fsync` (`always` | `interval` | `never`), `buffer.fsync_interval_ms`.
    public struct Configuration: Sendable, Hashable {
        /// The buffer's own directory (created if missing). One buffer per directory, enforced by `lock`.
        public var directory: String
        /// A segment is closed and a new one started when the next record would take it past this size.
        /// Space is reclaimed a whole segment at a time. Default 64 MiB; capped at `maxBytes / 4`.
        public var segmentMaxBytes: Int
        /// Cap on the segment files' total size (headers included), acknowledged records included until
        /// their segment is deleted. Default 1 GiB.
        public var maxBytes: Int64
        public var overflowPolicy: OverflowPolicy
        public var fsync: FsyncPolicy
        /// How often, at most, the acknowledged position is written to the ledger when no segment is
        /// being deleted. After a crash, records acknowledged within this window are sent again
        /// (upstream deduplicates by sequence). Default 1000 ms.
        public var ledgerIntervalMilliseconds: Int
        /// Whether the writer publishes the `tributary_buffer_bytes` / `_records` /
        /// `_oldest_unacknowledged_age_seconds` gauges itself. An owner of several buffers in one process
        /// (the agent's priority lanes) turns it off and publishes their sum, so the gauges do not jump
        /// between one buffer's values and another's. Default true.
        public var publishesGauges: Bool = true

        public init(
            directory: String,
            segmentMaxBytes: Int = 64 << 20,
            maxBytes: Int64 = 1 << 30,
            overflowPolicy: OverflowPolicy = .rejectNew,
            fsync: FsyncPolicy = .always,
            ledgerIntervalMilliseconds: Int = 1000
        ) {
            self.directory = directory
            self.segmentMaxBytes = segmentMaxBytes
            self.maxBytes = maxBytes
            self.overflowPolicy = overflowPolicy
            self.fsync = fsync
            self.ledgerIntervalMilliseconds = ledgerIntervalMilliseconds
        }

        /// The segment size actually used: at most a quarter of `maxBytes`, so that dropping or deleting
        /// one segment always frees a useful share of the cap.
        var effectiveSegmentMaxBytes: Int {
            Int(min(Int64(segmentMaxBytes), maxBytes / 4))
        }

        /// The largest body `append` accepts.
        public var maxRecordBodyBytes: Int {
            min(effectiveSegmentMaxBytes - RecordFormat.segmentHeaderSize - RecordFormat.recordHeaderSize,
                Int(UInt32.max))
        }

        func validate() throws(DiskBufferError) {
            guard !directory.isEmpty else {
                throw DiskBufferError(.invalidConfiguration, "buffer.directory is empty")
            }
            guard maxBytes >= 4 * 4096 else {
                throw DiskBufferError(.invalidConfiguration, "buffer.max_bytes must be at least 16 KiB")
            }
            guard segmentMaxBytes >= 4096 else {
                throw DiskBufferError(.invalidConfiguration, "buffer.segment_max_bytes must be at least 4 KiB")
            }
            if case .interval(let milliseconds) = fsync, milliseconds <= 0 {
                throw DiskBufferError(.invalidConfiguration, "buffer.fsync_interval_ms must be positive")
            }
            guard ledgerIntervalMilliseconds > 0 else {
                throw DiskBufferError(.invalidConfiguration, "ledger interval must be positive")
            }
        }
    }
}
