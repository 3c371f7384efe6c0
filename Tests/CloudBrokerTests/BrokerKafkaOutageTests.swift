import Foundation
import Testing
import TestSupport
import TributaryKafka

#if canImport(Glibc)
import Glibc
#endif

/// Kafka stopped (SIGSTOP) and restarted (SIGKILL + start on the same port) under QoS 1/2 load (G3).
@Suite("cloud-broker under Kafka outages (Tansu stopped / restarted, paho load)", .serialized)
struct BrokerKafkaOutageTests {
    struct Ack: Decodable {
        var seq: Int
        var ack: Double
        var rc: Int
    }

    struct LoadResult: Decodable {
        var acked: [Ack]
        var published: Int
    }

    static func loadResult(_ path: String) throws -> LoadResult {
        try JSONDecoder().decode(LoadResult.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    static var now: Double { Date().timeIntervalSince1970 }

    @Test func noAckWhileKafkaIsStoppedAndEveryAckedMessageIsInKafkaExactlyOnce() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu)
            let script = try Tools.script(scope, "paho_load.py", Self.pahoLoad)
            var loads: [(ChildProcess, String, Int)] = []
            for qos in [1, 2] {
                let out = scope.logDirectory + "/load-q\(qos).json"
                let process = try scope.launch(
                    name: "load-q\(qos)", executable: Tools.python, arguments: [script, "\(broker.mqttPort)", "\(qos)", "16", "stop-q\(qos)", out])
                loads.append((process, out, qos))
            }
            for (process, _, _) in loads { try await process.waitForLog(containing: "connected", timeout: .seconds(10)) }
            try await Task.sleep(for: .seconds(2))  // publishing under normal conditions first
            let stoppedAt = Self.now
            tansu.process.send(SIGSTOP)
            try await Task.sleep(for: .seconds(10))  // the outage under test
            let resumedAt = Self.now
            tansu.process.send(SIGCONT)
            for (process, _, _) in loads {
                let status = await process.waitForExit(timeout: .seconds(60))
                #expect(status == .exited(0), "\(process.name): \(process.logTail())")
            }
            let reader = try KafkaReader(tansu: tansu, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            for (_, out, qos) in loads {
                let result = try Self.loadResult(out)
                #expect(result.acked.count > 50, "QoS \(qos): too few acks to mean anything")
                #expect(result.acked.allSatisfy { $0.rc == 0 }, "QoS \(qos): every ack is a success")
                // Acks in flight when Tansu stopped may still arrive within a moment; none after that.
                let duringOutage = result.acked.filter { $0.ack > stoppedAt + 0.5 && $0.ack < resumedAt }
                #expect(duringOutage.isEmpty, "QoS \(qos): \(duringOutage.count) acks while Kafka was stopped")
                let afterOutage = result.acked.filter { $0.ack >= resumedAt }
                #expect(!afterOutage.isEmpty, "QoS \(qos): publishing resumed after the outage")
                let prefix = "stop-q\(qos)-"
                let expected = Set(result.acked.map { "\(prefix)\($0.seq)" })
                let records = try await reader.waitUntil(timeout: .seconds(30), "acknowledged QoS \(qos) messages in Kafka") { records in
                    expected.isSubset(of: Set(records.compactMap(\.valueString)))
                }
                var counts: [String: Int] = [:]
                for record in records { if let value = record.valueString, value.hasPrefix(prefix) { counts[value, default: 0] += 1 } }
                let duplicated = counts.filter { $0.value > 1 }
                #expect(duplicated.isEmpty, "QoS \(qos): duplicated in Kafka: \(duplicated.keys.sorted().prefix(5))")
            }
            #expect(broker.process.isRunning)
        }
    }

    @Test func nodeRecoversByItselfWhenKafkaIsRestarted() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let broker = try await scope.startBroker(tansu: tansu, settings: ["kafka.delivery_timeout": "8s"])
            let script = try Tools.script(scope, "paho_load.py", Self.pahoLoad)
            let out = scope.logDirectory + "/load-restart.json"
            let load = try scope.launch(name: "load", executable: Tools.python, arguments: [script, "\(broker.mqttPort)", "1", "20", "restart", out])
            try await load.waitForLog(containing: "connected", timeout: .seconds(10))
            try await Task.sleep(for: .seconds(2))  // publishing under normal conditions first
            _ = await tansu.process.stop(signal: SIGKILL, grace: .seconds(1))
            let restarted = try await scope.startTansu(port: tansu.port, name: "tansu-restarted")
            let restartedAt = Self.now
            let status = await load.waitForExit(timeout: .seconds(90))
            #expect(status == .exited(0), "load: \(load.logTail())")
            let result = try Self.loadResult(out)
            let after = result.acked.filter { $0.ack > restartedAt && $0.rc == 0 }
            #expect(after.count > 20, "publishing continued after the restart (\(after.count) acks)")
            // What was acknowledged after the restart is in the new Kafka.
            let reader = try KafkaReader(tansu: restarted, topic: "mqtt.messages", partitions: 6)
            defer { reader.close() }
            let expected = Set(after.suffix(20).map { "restart-\($0.seq)" })
            _ = try await reader.waitUntil(timeout: .seconds(30), "post-restart messages in Kafka") { records in
                expected.isSubset(of: Set(records.compactMap(\.valueString)))
            }
            #expect(broker.process.isRunning)
            #expect(broker.process.logText().contains("Kafka producer recreated"))
        }
    }

    /// A paho v5 publisher: publishes `prefix-N` at `qos` for `seconds` (at most 20 in flight), records
    /// the time of each acknowledgement and its reason code, waits for the rest (up to 40 s), writes JSON.
    static let pahoLoad = #"""
    import sys, time, json, threading
    import paho.mqtt.client as mqtt
    port, qos, seconds, prefix, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
    acked = {}
    mids = {}
    early = {}
    lock = threading.Lock()
    def record(seq, when, rc):
        if seq not in acked: acked[seq] = (when, rc)
    def on_publish(c, u, mid, rc, props):
        code = rc.value if hasattr(rc, "value") else int(rc)
        with lock:
            seq = mids.pop(mid, None)
            if seq is None: early[mid] = (time.time(), code)
            else: record(seq, time.time(), code)
    connected = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load-" + prefix, protocol=mqtt.MQTTv5)
    c.on_publish = on_publish
    c.on_connect = lambda *a: connected.set()
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(20)
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    assert connected.wait(10)
    print("connected", flush=True)
    end = time.time() + seconds
    seq = 0
    while time.time() < end:
        # Never hold our lock across publish(): paho calls on_publish with its own locks held.
        info = c.publish("load/%s/%d" % (prefix, seq % 8), ("%s-%d" % (prefix, seq)).encode(), qos=qos)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with lock:
                if info.mid in early: record(seq, *early.pop(info.mid))
                else: mids[info.mid] = seq
            seq += 1
        else:
            time.sleep(0.005)
    deadline = time.time() + 40
    while time.time() < deadline:
        with lock:
            if len(acked) >= seq: break
        time.sleep(0.05)
    c.loop_stop()
    with lock:
        json.dump({"published": seq, "acked": [{"seq": s, "ack": t, "rc": rc} for s, (t, rc) in sorted(acked.items())]}, open(out, "w"))
    print("published", seq, "acked", len(acked), flush=True)
    """#
}
