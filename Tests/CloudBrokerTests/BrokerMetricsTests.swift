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

    /// librdkafka's producer statistics reach /metrics: a broker connected to Tansu reports one broker up,
    /// a round trip, requests and the bytes of the records it produced; with the interval at 0s nothing
    /// is ever recorded (the series stay at their start-up zero).
    @Test func producerStatisticsAreExported() async throws {
        let pub = try Tools.require("mosquitto_pub")
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["kafka.statistics_interval": "200ms"], name: "with-stats")
            let silent = try await scope.startBroker(tansu: tansu, settings: ["kafka.statistics_interval": "0s"], name: "no-stats", nodeId: "silent")
            for node in [broker, silent] {
                let (status, output) = try await scope.run("pub-\(node.httpPort)", pub, [
                    "-h", "127.0.0.1", "-p", "\(node.mqttPort)", "-i", "stats-\(node.httpPort)", "-t", "stats/x", "-q", "1", "-m", String(repeating: "x", count: 2000),
                ])
                #expect(status == .exited(0), "mosquitto_pub: \(output)")
            }
            // Reports come every 200 ms: wait for one taken after the publish was acknowledged. The bytes count
            // when the request is sent, its round trip when the answer comes, possibly one report later.
            let deadline = ContinuousClock.now + .seconds(20)
            var text = ""
            while ContinuousClock.now < deadline {
                text = try await MetricsScrape.get(port: broker.httpPort)
                if (MetricsScrape.value(text, "tributary_broker_kafka_transmitted_bytes_total") ?? 0) >= 2000
                    && (MetricsScrape.value(text, "tributary_broker_kafka_round_trip_seconds") ?? 0) > 0
                {
                    break
                }
                try await Task.sleep(for: .milliseconds(100))  // polling /metrics; the report arrives by itself
            }
            #expect((MetricsScrape.value(text, "tributary_broker_kafka_transmitted_bytes_total") ?? 0) >= 2000, "\(text)")
            #expect(MetricsScrape.value(text, "tributary_broker_kafka_brokers_up") == 1)
            #expect((MetricsScrape.value(text, "tributary_broker_kafka_requests_total") ?? 0) > 0)
            #expect((MetricsScrape.value(text, "tributary_broker_kafka_round_trip_seconds") ?? 0) > 0)
            let quiet = try await MetricsScrape.get(port: silent.httpPort)
            #expect(MetricsScrape.value(quiet, "tributary_broker_kafka_transmitted_bytes_total") == 0)
            #expect(MetricsScrape.value(quiet, "tributary_broker_kafka_brokers_up") == 0)
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
