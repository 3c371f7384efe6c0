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
        #expect(AgentRecord(decoding: [2] + record.encoded().dropFirst()) == nil)
        #expect(AgentRecord(decoding: Array(record.encoded().prefix(12))) == nil)
        #expect(AgentRecord(decoding: []) == nil)
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
        var bytes = try #require(try AtomicFile.read(path))
        bytes[bytes.count / 2] ^= 0x40
        try AtomicFile.write(bytes, to: path)
        #expect(throws: AgentError.self) { try UplinkStateStore.load(path: path) }
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
