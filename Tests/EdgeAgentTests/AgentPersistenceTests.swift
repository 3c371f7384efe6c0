import Common
import DiskBuffer
import Foundation
import NIOCore
import Testing

@testable import EdgeAgent

@Suite("Agent records and persisted state")
struct AgentPersistenceTests {
    @Test("a buffer record round-trips; garbage and other versions are rejected")
    func recordRoundTrip() {
        let record = AgentRecord(qos: .exactlyOnce, retain: true, receivedAtMilliseconds: 1_700_000_000_123, deviceId: "dev-ü", topic: "a/b", payload: [0, 1, 2, 255])
        #expect(AgentRecord(decoding: record.encoded()) == record)
        #expect(record.encoded().first == 1, "no properties: version 1")
        #expect(AgentRecord(decoding: [3] + record.encoded().dropFirst()) == nil)
        #expect(AgentRecord(decoding: Array(record.encoded().prefix(12))) == nil)
        #expect(AgentRecord(decoding: []) == nil)
        var withProperties = record
        withProperties.fromLocalBroker = true
        withProperties.properties = AgentRecord.Properties(
            payloadFormatIndicator: 1, messageExpiryInterval: 3600, contentType: "text/plain", responseTopic: "reply/x",
            correlationData: [0, 0xFF, 7],
            userProperties: [MQTTUserProperty(name: "k", value: "v1"), MQTTUserProperty(name: "k", value: "v2")])
        let bytes = withProperties.encoded()
        #expect(bytes.first == 2, "properties: version 2")
        #expect(AgentRecord(decoding: bytes) == withProperties)
        // A properties length past the end, and an unknown property identifier, are rejected.
        let propertiesAt = 12 + 2 + "dev-ü".utf8.count + 2 + 3
        var tooLong = bytes
        tooLong[propertiesAt] = 0x7F
        #expect(AgentRecord(decoding: tooLong) == nil)
        var unknown = bytes
        unknown[propertiesAt + 4] = 0x23  // topic alias: never stored
        #expect(AgentRecord(decoding: unknown) == nil)
    }

    @Test("upstream: stored properties go out with the tributary-* user properties after them; message expiry counts the time buffered; expired records are dropped unless resent; 3.1.1 sends none")
    func outgoingProperties() throws {
        var record = AgentRecord(
            qos: .exactlyOnce, retain: false, receivedAtMilliseconds: 1_000_000, deviceId: "d-1", topic: "t/1", payload: [1])
        record.properties = AgentRecord.Properties(
            payloadFormatIndicator: 1, messageExpiryInterval: 60, contentType: "application/json", responseTopic: "r/1",
            correlationData: [9, 9], userProperties: [MQTTUserProperty(name: "site", value: "north")])
        let stored = DiskBuffer.Record(sequence: 42, body: record.encoded())
        var settings = Uplink.Settings(
            host: "h", port: 1, tls: nil, tlsServerName: nil, client: .init(clientIdentifier: "c"), qos: .exactlyOnce,
            agentId: "gw", topicPrefix: "p/", backoffInitial: .seconds(1), backoffMaximum: .seconds(1), connectTimeout: .seconds(1),
            tcpUserTimeout: nil, maxBatchBytes: 1 << 20, maxBytesPerSecond: nil, progressInterval: .seconds(5))
        guard case .publish(let publish) = Uplink.outgoing(for: stored, settings: settings, resending: false, nowMilliseconds: 1_010_500) else {
            Issue.record("expected a publish")
            return
        }
        #expect(publish.topic == "p/t/1")
        #expect(publish.properties.messageExpiryInterval == 50)
        #expect(publish.properties.payloadFormatIndicator == .utf8)
        #expect(publish.properties.contentType == "application/json")
        #expect(publish.properties.responseTopic == "r/1")
        #expect(publish.properties.correlationData == ByteBuffer(bytes: [9, 9]))
        #expect(publish.properties.userProperties.map { "\($0.name)=\($0.value)" } == [
            "site=north", "tributary-agent=gw", "tributary-seq=42", "tributary-device=d-1",
        ])
        guard case .expired = Uplink.outgoing(for: stored, settings: settings, resending: false, nowMilliseconds: 1_060_000) else {
            Issue.record("expected expired")
            return
        }
        guard case .publish(let resent) = Uplink.outgoing(for: stored, settings: settings, resending: true, nowMilliseconds: 1_060_000) else {
            Issue.record("a resend is never dropped")
            return
        }
        #expect(resent.properties.messageExpiryInterval == 1)
        settings.client.protocolVersion = .v311
        guard case .publish(let old) = Uplink.outgoing(for: stored, settings: settings, resending: false, nowMilliseconds: 1_000_000) else {
            Issue.record("expected a publish")
            return
        }
        #expect(old.properties == MQTTProperties())
    }

    @Test("the uplink in-flight file round-trips, tracks the highest stored sequence, and detects corruption")
    func uplinkStore() throws {
        let path = try AgentHarness.temporaryDirectory("uplink-store") + "/uplink-inflight"
        let store = try UplinkStateStore.load(path: path)
        try store.apply([.stored(packetId: 1, tag: 10, qos: .exactlyOnce), .stored(packetId: 2, tag: 11, qos: .exactlyOnce)])
        try store.apply([.released(packetId: 1), .removed(packetId: 2)])
        let reloaded = try UplinkStateStore.load(path: path).snapshot
        #expect(reloaded.highestStoredSequence == 11)
        #expect(reloaded.entries == [1: .init(packetId: 1, tag: 10, phase: .awaitingPubComp)])
        // Two slots written alternately: a damaged newest slot (a write cut off) leaves the previous state.
        var bytes = try #require(try AtomicFile.read(path))
        let slot = bytes.count / 2
        bytes[slot + 20] ^= 0x40
        try AtomicFile.write(bytes, to: path)
        let previous = try UplinkStateStore.load(path: path).snapshot
        #expect(previous.entries.keys.sorted() == [1, 2])
        #expect(previous.entries[1]?.phase == .awaitingPubRec)
        bytes[20] ^= 0x40
        try AtomicFile.write(bytes, to: path)
        #expect(throws: AgentError.self) { try UplinkStateStore.load(path: path) }
    }

    @Test("an uplink in-flight file written whole by an earlier version is read, and rewritten as slots")
    func uplinkStoreLegacyFile() throws {
        let path = try AgentHarness.temporaryDirectory("uplink-legacy") + "/uplink-inflight"
        var snapshot = UplinkStateStore.Snapshot(highestStoredSequence: 7)
        snapshot.entries[3] = .init(packetId: 3, tag: 7, phase: .awaitingPubComp)
        try AtomicFile.write(UplinkStateStore.encode(snapshot), to: path)
        let store = try UplinkStateStore.load(path: path)
        #expect(store.snapshot == snapshot)
        try store.apply([.removed(packetId: 3)])
        #expect(try UplinkStateStore.load(path: path).snapshot == UplinkStateStore.Snapshot(highestStoredSequence: 7))
        #expect(try #require(try AtomicFile.read(path)).count >= 2 * SlotFile.minimumCapacity)
    }

    @Test("device sessions persist inserted and removed QoS 2 ids; concurrent updates share writes")
    func deviceSessions() async throws {
        let path = try AgentHarness.temporaryDirectory("device-sessions") + "/device-sessions"
        let store = try DeviceSessionStore.load(path: path)
        #expect(store.open("a") == false)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for id in UInt16(1)...50 { group.addTask { try await store.insert(id, sequence: UInt64(id), for: "a") } }
            try await group.waitForAll()
        }
        try await store.remove(7, for: "a")
        let reloaded = try DeviceSessionStore.load(path: path)
        #expect(reloaded.open("a") == true)
        #expect(reloaded.session("a") == Set(UInt16(1)...50).subtracting([7]))
        #expect(reloaded.session("b") == nil)
    }

    @Test("a persistent QoS 2 store still in progress holds back the covered point, so start-up recovery restores its id")
    func coveredPointAndRecovery() async throws {
        let path = try AgentHarness.temporaryDirectory("device-covered") + "/device-sessions"
        let store = try DeviceSessionStore.load(path: path)
        _ = store.open("a")
        let finished = store.beginStore(lastSequence: 10)
        try await store.insert(1, sequence: 11, for: "a")
        store.endStore(finished, sequence: 11)
        // Device "b" appended record 12 and the process died before its id was written.
        _ = store.beginStore(lastSequence: 11)
        try await store.insert(2, sequence: 5, for: "a")  // another write happens meanwhile
        let reloaded = try DeviceSessionStore.load(path: path)
        #expect(reloaded.coveredThrough == 11)
        #expect(reloaded.session("b") == nil)
        let lost = AgentRecord(qos: .exactlyOnce, retain: false, persistentSession: true, devicePacketId: 9, receivedAtMilliseconds: 0, deviceId: "b", topic: "t", payload: [])
        let clean = AgentRecord(qos: .exactlyOnce, retain: false, persistentSession: false, devicePacketId: 4, receivedAtMilliseconds: 0, deviceId: "c", topic: "t", payload: [])
        #expect(AgentRecord(decoding: lost.encoded()) == lost)
        #expect(try await reloaded.recover(from: [(12, lost), (12, clean)], lastSequence: 12) == 1)
        #expect(reloaded.session("b") == [9])
        #expect(reloaded.session("c") == nil)
        #expect(try DeviceSessionStore.load(path: path).coveredThrough == 12)
    }

    @Test("an id whose PUBREL was handled after the covered point is not recovered, so a new message reusing it is stored")
    func releasedIdIsNotRecovered() async throws {
        let path = try AgentHarness.temporaryDirectory("device-released") + "/device-sessions"
        let store = try DeviceSessionStore.load(path: path)
        _ = store.open("a")
        // Another device's store is in progress (its append comes after 10): the covered point stays at 10.
        _ = store.beginStore(lastSequence: 10)
        // Device "a": record 11 with packet id 1 stored, id recorded, PUBREL handled; then the process dies.
        try await store.insert(1, sequence: 11, for: "a")
        try await store.remove(1, for: "a")
        let reloaded = try DeviceSessionStore.load(path: path)
        #expect(reloaded.coveredThrough == 10)
        #expect(reloaded.released == [11])
        let record = AgentRecord(qos: .exactlyOnce, retain: false, persistentSession: true, devicePacketId: 1, receivedAtMilliseconds: 0, deviceId: "a", topic: "t", payload: [1])
        #expect(try await reloaded.recover(from: [(11, record)], lastSequence: 11) == 0)
        #expect(reloaded.session("a") == [])
        // The device's next message reusing packet id 1 is new: the connection stores it.
        var machine = DeviceConnection.StateMachine()
        _ = machine.received(.connect(MQTTConnect(protocolVersion: .v311, clientIdentifier: "a", cleanStart: false)))
        _ = machine.sessionLoaded(existing: reloaded.session("a"))
        let publish = MQTTPublish(topic: "t", payload: ByteBuffer(bytes: [2]), qos: .exactlyOnce, packetId: 1)
        #expect(machine.received(.publish(publish)) == [.store(publish, completion: .pubrec(1, persist: true))])
        // Once the covered point passes record 11, the released entry is dropped from the file.
        #expect(try DeviceSessionStore.load(path: path).released.isEmpty)
    }

    @Test("a version 1 device session file (ids without sequences) is still read")
    func deviceSessionsVersion1() throws {
        var writer = StateFileWriter(magic: DeviceSessionStore.magic)
        writer.put(UInt64(42))
        writer.put(UInt32(1))
        writer.put("dev-1")
        writer.put(UInt32(2))
        writer.put(UInt16(3))
        writer.put(UInt16(9))
        let path = try AgentHarness.temporaryDirectory("device-v1") + "/device-sessions"
        try AtomicFile.write(writer.finish(), to: path)
        let store = try DeviceSessionStore.load(path: path)
        #expect(store.coveredThrough == 42)
        #expect(store.session("dev-1") == [3, 9])
    }
}
