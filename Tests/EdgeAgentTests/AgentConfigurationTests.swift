import Common
import DiskBuffer
import Testing

@testable import EdgeAgent

@Suite("Edge agent configuration")
struct AgentConfigurationTests {
    static func configuration(_ settings: [String: String], environment: [String: String] = [:]) throws(ConfigError) -> EdgeAgentConfiguration {
        let base = ["agent_id": "gw", "upstream.url": "mqtt://127.0.0.1:1883"]
        let values = try ConfigValues.load(
            keys: EdgeAgentConfiguration.keys, file: nil, environment: environment, overrides: base.merging(settings) { $1 })
        return try EdgeAgentConfiguration(values)
    }

    static func error(_ settings: [String: String]) -> String? {
        do {
            _ = try configuration(settings)
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test("upstream URL: scheme sets TLS and the default port; an IPv6 host in brackets; a bad URL is named")
    func upstreamURL() throws {
        #expect(try UpstreamURL(parsing: "mqtt://cloud.example").description == "mqtt://cloud.example:1883")
        #expect(try UpstreamURL(parsing: "mqtts://cloud.example/").description == "mqtts://cloud.example:8883")
        #expect(try UpstreamURL(parsing: "ssl://10.0.0.1:9000").address == HostPort(host: "10.0.0.1", port: 9000))
        #expect(try UpstreamURL(parsing: "mqtt://[::1]").address == HostPort(host: "::1", port: 1883))
        #expect(try UpstreamURL(parsing: "mqtt://[::1]:1884").address == HostPort(host: "::1", port: 1884))
        #expect(try UpstreamURL(parsing: "tcp://[fe80::1]:2000").useTLS == false)
        #expect(throws: ConfigError.self) { try UpstreamURL(parsing: "http://cloud.example") }
        #expect(throws: ConfigError.self) { try UpstreamURL(parsing: "mqtt://host:99999") }
    }

    @Test("local broker source: keys parsed, environment overrides, every bad value named")
    func localBroker() throws {
        let plain = try Self.configuration([:])
        #expect(plain.localBroker == nil)
        let local = try #require(try Self.configuration(
            ["local_broker.url": "mqtt://127.0.0.1:1884", "local_broker.device_from": "topic:2", "device.listen": "off"],
            environment: ["TRIBUTARY_LOCAL_BROKER_TOPICS": "a/#, b/+/c"]).localBroker)
        #expect(local.address == HostPort(host: "127.0.0.1", port: 1884))
        #expect(local.topics.map(\.description) == ["a/#", "b/+/c"])
        #expect(local.clientId == "tributary-gw-source")
        #expect(local.deviceIdentity == .topicLevel(2))
        #expect(local.sessionExpirySeconds == 7 * 86_400)
        #expect(try Self.configuration(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "property:who"]).localBroker?.deviceIdentity == .userProperty("who"))
        #expect(try Self.configuration(["local_broker.url": "mqtt://h:1", "device.listen": "off"]).deviceListen == nil)

        #expect(Self.error(["device.listen": "off"])?.contains("nothing to forward") == true)
        #expect(Self.error(["local_broker.url": "mqtts://h:1"])?.contains("local_broker.url") == true)
        #expect(Self.error(["local_broker.url": "h:1"])?.contains("local_broker.url") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "topic:0"])?.contains("local_broker.device_from") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.device_from": "header:x"])?.contains("local_broker.device_from") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.topics": "a/#/b"])?.contains("local_broker.topics") == true)
        #expect(Self.error(["local_broker.url": "mqtt://h:1", "local_broker.topics": ""])?.contains("local_broker.topics") == true)
    }

    @Test("device TLS: keys parsed; a listener without certificate and key, or client certificates without a CA, are refused")
    func deviceTLS() throws {
        #expect(try Self.configuration([:]).deviceTLS == nil)
        let files = ["device.tls_listen": "127.0.0.1:8883", "device.tls.cert_file": "/c.pem", "device.tls.key_file": "/k.pem"]
        let tls = try #require(try Self.configuration(files.merging(["device.tls.client_ca_file": "/ca.pem", "device.tls.client_certificates": "required", "device.listen": "off"]) { $1 }).deviceTLS)
        #expect(tls.address == HostPort(host: "127.0.0.1", port: 8883))
        #expect(tls.clientCertificates == .required)
        #expect(Self.error(["device.tls_listen": "127.0.0.1:8883"])?.contains("device.tls.cert_file") == true)
        #expect(Self.error(files.merging(["device.tls.client_certificates": "optional"]) { $1 })?.contains("device.tls.client_ca_file") == true)
        #expect(Self.error(files.merging(["device.tls.client_certificates": "sometimes"]) { $1 })?.contains("device.tls.client_certificates") == true)
    }

    @Test("routes: FILTER [priority=N] [qos=Q], first match wins, lanes per priority; bad routes are named")
    func routes() throws {
        let configuration = try Self.configuration(["routes": "alarms/# priority=5 qos=1, site a/+/x priority=2, alarms/door priority=1"])
        #expect(configuration.routes.map(\.filter.description) == ["alarms/#", "site a/+/x", "alarms/door"])
        #expect(configuration.routes.map(\.priority) == [5, 2, 1])
        #expect(configuration.routes.map(\.qos) == [.atLeastOnce, nil, nil])
        #expect(configuration.lanePriorities == [5, 2, 1, 0])
        #expect(configuration.laneDirectory(0) == configuration.buffer.directory)
        #expect(configuration.laneDirectory(5) == configuration.buffer.directory + "/priority-5")
        #expect(Route.first(configuration.routes, matching: "alarms/door")?.priority == 5, "first match in order")
        #expect(Route.first(configuration.routes, matching: "devices/d/data") == nil)
        #expect(try Self.configuration([:]).lanePriorities == [0])
        for bad in ["a/# priority=10", "a/# priority=x", "a/# qos=0", "a/# weight=2", "a/#/b priority=1"] {
            #expect(Self.error(["routes": bad])?.contains("routes") == true, "\(bad)")
        }
    }

    @Test("record lanes: a device's QoS 2 ids live in the session file of the lane their record went to; open, session, remove and discard see every lane")
    func lanesShareSessions() async throws {
        let directory = try AgentHarness.temporaryDirectory("lanes")
        let high = try DeviceSessionStore.load(path: directory + "/high")
        let normal = try DeviceSessionStore.load(path: directory + "/normal")
        let sink = try DiskBufferSinkStub()
        let lanes = RecordLanes(
            lanes: [.init(priority: 5, sink: sink, sessions: high), .init(priority: 0, sink: sink, sessions: normal)],
            routes: [Route(filter: try MQTTTopicFilter("alarms/#"), priority: 5)])
        #expect(lanes.lane(for: "alarms/a").priority == 5)
        #expect(lanes.lane(for: "other").priority == 0)
        #expect(lanes.open("d") == false)
        try await high.insert(3, sequence: 1, for: "d")
        try await normal.insert(4, sequence: 1, for: "d")
        #expect(lanes.session("d") == [3, 4])
        #expect(lanes.open("d") == true)
        try await lanes.remove([3], for: "d")
        #expect(high.session("d") == [])
        #expect(lanes.session("d") == [4])
        lanes.discard("d")
        #expect(lanes.session("d") == nil)
    }
}

extension AgentConfigurationTests {
    @Test("lane gate: a lane may read unless a higher lane is busy; lanes kept waiting are woken once, when the busy higher lane clears")
    func laneGate() {
        final class Wakes: @unchecked Sendable { var count = 0 }  // touched on this thread only
        let gate = LaneGate()
        let wakes = Wakes()
        #expect(gate.mayRead(0) { wakes.count += 1 })
        gate.setBusy(5, true)
        #expect(gate.mayRead(5) { wakes.count += 100 }, "a busy lane itself still reads")
        #expect(!gate.mayRead(0) { wakes.count += 1 })
        #expect(!gate.mayRead(3) { wakes.count += 10 })
        gate.setBusy(0, false)  // not busy before: no wake
        #expect(wakes.count == 0)
        gate.setBusy(3, true)
        gate.setBusy(5, false)
        #expect(wakes.count == 11, "both waiting lanes woken")
        #expect(!gate.mayRead(0) { wakes.count += 1 }, "lane 3 is busy now")
        #expect(gate.mayRead(4) { wakes.count += 1000 })
        gate.setBusy(3, false)
        gate.setBusy(3, false)
        #expect(wakes.count == 12, "woken once")
    }
}

extension AgentConfigurationTests {
    @Test("lane gate: a lane that connects ends the other lanes' reconnect backoffs, not its own; cancellation ends one too")
    func laneGateEndsBackoffsWhenALaneConnects() async throws {
        let gate = LaneGate()
        let started = ContinuousClock.now
        let low = Task { await gate.sleepBeforeReconnect(0, for: .seconds(60)) }
        let own = Task { await gate.sleepBeforeReconnect(3, for: .seconds(60)) }
        while !gate.isWaitingToReconnect(0) || !gate.isWaitingToReconnect(3) { await Task.yield() }  // both registered
        gate.connected(3)
        #expect(gate.isWaitingToReconnect(3), "a lane's own connection ended its own wait")
        #expect(!gate.isWaitingToReconnect(0), "lane 3's connection did not end lane 0's wait")
        await low.value  // returns now, not after 60 s
        #expect(ContinuousClock.now - started < .seconds(30))
        own.cancel()
        await own.value  // cancellation ends a wait at once
        #expect(!gate.isWaitingToReconnect(3))
        #expect(ContinuousClock.now - started < .seconds(30))
    }
}

/// A sink that is never written to (lane selection only).
struct DiskBufferSinkStub: RecordSink {
    init() throws {}
    func append(_ body: [UInt8]) async throws(DiskBufferError) -> UInt64 { throw DiskBufferError(.closed, "stub") }
    var lastSequence: UInt64 { 0 }
}
