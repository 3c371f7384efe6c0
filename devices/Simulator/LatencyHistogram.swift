import Histogram

/// A latency distribution in microseconds (HdrHistogram, 3 significant digits, 1 µs to 1 hour).
///
/// Encodes compactly as `[[value, count], ...]` of the recorded buckets, so that worker processes can hand
/// their histograms to the parent, which adds them exactly.
struct LatencyHistogram: Sendable {
    private(set) var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: .three)

    var count: UInt64 { histogram.totalCount }

    mutating func record(nanoseconds: Int64) {
        let micros = UInt64(max(1, nanoseconds / 1_000))
        _ = histogram.record(min(micros, histogram.highestTrackableValue))
    }

    mutating func record(microseconds: UInt64, count: UInt64) {
        guard count > 0 else { return }
        _ = histogram.record(min(max(1, microseconds), histogram.highestTrackableValue), count: count)
    }

    mutating func add(_ other: LatencyHistogram) {
        histogram.add(other.histogram)
    }

    /// The value at `percentile` (0...100) in milliseconds, 0 when empty.
    func milliseconds(atPercentile percentile: Double) -> Double {
        guard count > 0 else { return 0 }
        return Double(histogram.valueAtPercentile(percentile)) / 1_000
    }

    var maxMilliseconds: Double { count > 0 ? Double(histogram.max) / 1_000 : 0 }

    /// p50, p90, p99, p99.9 and max, in milliseconds.
    var percentiles: Percentiles {
        Percentiles(
            count: count,
            p50: milliseconds(atPercentile: 50), p90: milliseconds(atPercentile: 90), p99: milliseconds(atPercentile: 99),
            p999: milliseconds(atPercentile: 99.9), max: maxMilliseconds)
    }

    struct Percentiles: Sendable, Codable, Hashable {
        var count: UInt64
        var p50: Double
        var p90: Double
        var p99: Double
        var p999: Double
        var max: Double
    }
}

extension LatencyHistogram: Codable {
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        self.init()
        while !container.isAtEnd {
            var pair = try container.nestedUnkeyedContainer()
            let value = try pair.decode(UInt64.self)
            let count = try pair.decode(UInt64.self)
            record(microseconds: value, count: count)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        for bucket in histogram.recordedValues() where bucket.count > 0 {
            try container.encode([bucket.value, UInt64(bucket.count)])
        }
    }
}
