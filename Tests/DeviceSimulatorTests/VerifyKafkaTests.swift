import Foundation
import TestSupport
import Testing

/// `device-sim verify-kafka` against Tansu, with records written by a Python (confluent_kafka) producer.
@Suite(.serialized) struct VerifyKafkaTests {
    /// Creates `topic` and produces records: `records` is a list of (client, seq) written both as the
    /// simulator's payload and as tributary-agent / tributary-seq headers.
    static let producer = #"""
        import json, struct, sys, time
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        bootstrap, topic, records = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        failures = []
        for client, seq in records:
            cid = client.encode()
            value = struct.pack(">IBQQH", 0x5453494D, 1, time.time_ns(), seq, len(cid)) + cid + b"." * 40
            producer.produce(topic, value=value, key=cid,
                             headers=[("tributary-agent", cid), ("tributary-seq", str(seq).encode())],
                             on_delivery=lambda err, msg: failures.append(err) if err else None)
        producer.flush(30)
        sys.exit(1 if failures else 0)
        """#

    static func python() -> String {
        ProcessInfo.processInfo.environment["TRIBUTARY_PYTHON"] ?? TestEnvironment.toolsDirectory + "/venv/bin/python"
    }

    static func produce(_ scope: ProcessScope, bootstrap: String, topic: String, records: [(String, Int)]) async throws {
        let json = "[" + records.map { "[\"\($0.0)\", \($0.1)]" }.joined(separator: ",") + "]"
        let process = try scope.launch(name: "producer", executable: python(), arguments: ["-c", producer, bootstrap, topic, json])
        let status = await process.waitForExit(timeout: .seconds(45))
        #expect(status == .exited(0), "producer: \(process.logTail())")
    }

    static func verify(_ scope: ProcessScope, _ arguments: [String], expectExit: Int32) async throws -> String {
        let process = try scope.launch(
            name: "verify-kafka", executable: TestEnvironment.binary("device-sim"), arguments: ["verify-kafka"] + arguments,
            environment: TestEnvironment.kafkaClientEnvironment)
        let status = await process.waitForExit(timeout: .seconds(45))
        #expect(status == .exited(expectExit), "verify-kafka: \(process.logTail())")
        return String(process.logText().split(separator: "\n").last { $0.hasPrefix("device-sim summary ") } ?? "")
    }

    @Test func reportsTheDuplicateAndTheGap() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            // Client a: 2 twice, 3 missing. Client b: complete. 8 were sent (a 0...4, b 0...2).
            let records = [("a", 0), ("a", 1), ("a", 2), ("a", 2), ("a", 4), ("b", 0), ("b", 1), ("b", 2)]
            try await Self.produce(scope, bootstrap: tansu.bootstrapServers, topic: "sim-check", records: records)

            let byPayload = try await Self.verify(
                scope, ["--bootstrap", tansu.bootstrapServers, "--topic", "sim-check", "--expect", "8", "--idle-timeout", "1"],
                expectExit: 1)
            #expect(byPayload.contains(" received=8 "), "\(byPayload)")
            #expect(byPayload.contains(" distinct=7 "), "\(byPayload)")
            #expect(byPayload.contains(" lost=1 "), "\(byPayload)")
            #expect(byPayload.contains(" duplicates=1 "), "\(byPayload)")
            #expect(byPayload.contains(" clients_with_gaps=1 "), "\(byPayload)")

            let byHeaders = try await Self.verify(scope, [
                "--bootstrap", tansu.bootstrapServers, "--topic", "sim-check", "--client-header", "tributary-agent",
                "--seq-header", "tributary-seq", "--allow-duplicates",
            ], expectExit: 1)
            // Without --expect only the gap counts as lost; duplicates are allowed but still reported.
            #expect(byHeaders.contains(" lost=1 "), "\(byHeaders)")
            #expect(byHeaders.contains(" duplicates=1 "), "\(byHeaders)")
        }
    }

    @Test func passesACleanTopic() async throws {
        try await withProcesses { scope in
            let tansu = try await scope.startTansu()
            let records = (0..<50).flatMap { seq in [("c1", seq), ("c2", seq)] }
            try await Self.produce(scope, bootstrap: tansu.bootstrapServers, topic: "sim-clean", records: records)
            let line = try await Self.verify(
                scope, ["--bootstrap", tansu.bootstrapServers, "--topic", "sim-clean", "--expect", "100"], expectExit: 0)
            #expect(line.contains(" distinct=100 ") && line.contains(" lost=0 ") && line.contains(" duplicates=0 "), "\(line)")
        }
    }
}
