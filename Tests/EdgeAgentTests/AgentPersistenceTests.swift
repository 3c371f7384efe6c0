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
            for id in UInt16(1)...50 { group.addTask { try await store.insert(id, for: "a") } }
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
        try await store.insert(1, for: "a")
        store.endStore(finished, sequence: 11)
        // Device "b" appended record 12 and the process died before its id was written.
        _ = store.beginStore(lastSequence: 11)
        try await store.insert(2, for: "a")  // another write happens meanwhile
        let reloaded = try DeviceSessionStore.load(path: path)
        #expect(reloaded.coveredThrough == 11)
        #expect(reloaded.session("b") == nil)
        let lost = AgentRecord(qos: .exactlyOnce, retain: false, persistentSession: true, devicePacketId: 9, receivedAtMilliseconds: 0, deviceId: "b", topic: "t", payload: [])
        let clean = AgentRecord(qos: .exactlyOnce, retain: false, persistentSession: false, devicePacketId: 4, receivedAtMilliseconds: 0, deviceId: "c", topic: "t", payload: [])
        #expect(AgentRecord(decoding: lost.encoded()) == lost)
        #expect(try await reloaded.recover(from: [lost, clean], lastSequence: 12) == 1)
        #expect(reloaded.session("b") == [9])
        #expect(reloaded.session("c") == nil)
        #expect(try DeviceSessionStore.load(path: path).coveredThrough == 12)
    }
}
