import Foundation
import Testing
import TestSupport

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

@testable import CloudBroker

@Suite("Broker metrics")
struct BrokerMetricsTests {
    /// Every metric (and every authentication label combination) is on /metrics of a fresh node, at zero.
    @Test func aFreshNodeExportsEveryMetric() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            let text = try await MetricsScrape.get(port: broker.httpPort)
            let exported = MetricsScrape.names(text)
            for name in BrokerMetrics.Name.all {
                let present = exported.contains(name) || exported.contains(name + "_count") || exported.contains(name + "_bucket")
                #expect(present, "\(name) is not exported by a fresh node")
            }
            for failure in AuthenticationFailure.allCases {
                let series = #"tributary_broker_auth_failures_total{method="\#(failure.method.rawValue)",reason="\#(failure.rawValue)"}"#
                #expect(MetricsScrape.value(text, series) == 0, "\(series)")
            }
            for qos in 0...2 {
                #expect(MetricsScrape.value(text, #"tributary_broker_publishes_received_total{qos="\#(qos)"}"#) == 0)
            }
        }
    }
}

/// Reads `/metrics` of a broker node.
enum MetricsScrape {
    static func get(port: Int) async throws -> String {
        let (data, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/metrics")!)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else { throw HarnessError("/metrics: \(response)") }
        return String(decoding: data, as: UTF8.self)
    }

    /// The value of the series `series` (name with its labels exactly as exported), nil when absent.
    static func value(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1).split(separator: " ").first ?? "")
        }
        return nil
    }

    /// The metric names exported (series names without labels).
    static func names(_ text: String) -> Set<String> {
        Set(text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { String($0.prefix { $0 != "{" && $0 != " " }) })
    }
}
