import Metrics

/// Every metric the disk buffer emits, declared in one place. snake_case, units in the name.
public enum DiskBufferMetricNames {
    /// Gauge: total size of the segment files (headers and acknowledged-but-not-yet-deleted records included).
    public static let bytes = "tributary_buffer_bytes"
    /// Gauge: records not yet acknowledged.
    public static let records = "tributary_buffer_records"
    /// Gauge: age of the oldest unacknowledged record, seconds (1 s resolution; after a restart,
    /// estimated from segment modification times).
    public static let oldestUnacknowledgedAgeSeconds = "tributary_buffer_oldest_unacknowledged_age_seconds"
    /// Counter: records appended (returned to the caller as stored).
    public static let appends = "tributary_buffer_appends_total"
    /// Counter: records refused by append (a refused batch counts each of its records), label `reason`: `buffer_full`, `disk_full`, `record_too_large`, `io`.
    public static let rejectedAppends = "tributary_buffer_rejected_appends_total"
    /// Counter: fdatasync/fsync calls on segment files.
    public static let fsyncs = "tributary_buffer_fsyncs_total"
    /// Timer: duration of each segment fdatasync (exported in seconds).
    public static let fsyncDurationSeconds = "tributary_buffer_fsync_duration_seconds"
    /// Counter: records lost before being acknowledged, label `reason`: `overflow` (drop-oldest),
    /// `corrupt` (bad checksum or torn record, at recovery or read), `missing` (a segment file is gone).
    public static let droppedRecords = "tributary_buffer_dropped_records_total"
    /// Counter: bytes cut from segment tails by recovery.
    public static let truncatedBytes = "tributary_buffer_truncated_bytes_total"
}

/// The metric handles of one buffer.
struct DiskBufferMetrics: Sendable {
    let bytes = Gauge(label: DiskBufferMetricNames.bytes)
    let records = Gauge(label: DiskBufferMetricNames.records)
    let oldestAge = Gauge(label: DiskBufferMetricNames.oldestUnacknowledgedAgeSeconds)
    let appends = Counter(label: DiskBufferMetricNames.appends)
    let rejectedFull = Counter(label: DiskBufferMetricNames.rejectedAppends, dimensions: [("reason", "buffer_full")])
    let rejectedDiskFull = Counter(label: DiskBufferMetricNames.rejectedAppends, dimensions: [("reason", "disk_full")])
    let rejectedTooLarge = Counter(label: DiskBufferMetricNames.rejectedAppends, dimensions: [("reason", "record_too_large")])
    let rejectedIO = Counter(label: DiskBufferMetricNames.rejectedAppends, dimensions: [("reason", "io")])
    let fsyncs = Counter(label: DiskBufferMetricNames.fsyncs)
    let fsyncDuration = Metrics.Timer(label: DiskBufferMetricNames.fsyncDurationSeconds)
    let droppedOverflow = Counter(label: DiskBufferMetricNames.droppedRecords, dimensions: [("reason", "overflow")])
    let droppedCorrupt = Counter(label: DiskBufferMetricNames.droppedRecords, dimensions: [("reason", "corrupt")])
    let droppedMissing = Counter(label: DiskBufferMetricNames.droppedRecords, dimensions: [("reason", "missing")])
    let truncatedBytes = Counter(label: DiskBufferMetricNames.truncatedBytes)

    func rejected(_ error: DiskBufferError, records: Int = 1) {
        let records = Int64(records)
        switch error.code {
        case .bufferFull: rejectedFull.increment(by: records)
        case .diskFull: rejectedDiskFull.increment(by: records)
        case .recordTooLarge: rejectedTooLarge.increment(by: records)
        default: rejectedIO.increment(by: records)
        }
    }
}
