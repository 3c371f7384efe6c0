import Common
import DiskBuffer
import Synchronization

/// The uplink's in-flight table on disk (`<data dir>/uplink-inflight`), so that after a crash the agent
/// resends PUBREL / PUBLISH(DUP) for exactly the publishes it left unfinished, with the same packet ids,
/// before anything new.
///
/// File: `"TRBU" | version 1 | highest stored sequence u64 | count u32 | count × (packet id u16, phase u8,
/// sequence u64) | crc32c`. "Highest stored" is the largest buffer sequence ever given a packet id: every
/// sequence at or below it is either in the table or finished upstream, so reading resumes after it.
///
/// `apply` is called (off the event loop) with each group of changes before the packets that depend on them
/// are sent, and returns only after the new content is durable. The file is a `SlotFile` (two slots written
/// alternately in place, one fdatasync per write); a file written whole by earlier versions is still read.
final class UplinkStateStore: Sendable {
    struct Snapshot: Sendable, Equatable {
        var highestStoredSequence: UInt64 = 0
        var entries: [UInt16: MQTTClientSession.InflightRecord] = [:]
    }

    static let magic = "TRBU"
    let path: String
    private let state: Mutex<Snapshot>
    private let file: SlotFile
    /// Held across encode and write, so that contents reach the file in the order they were made.
    private let writing = Mutex(())

    init(file: SlotFile, snapshot: Snapshot) {
        self.path = file.path
        self.file = file
        self.state = Mutex(snapshot)
    }

    /// Loads the file (an empty snapshot if there is none). A corrupt file is an error: starting without it
    /// could publish records twice, so the operator decides (delete it to accept possible duplicates).
    static func load(path: String) throws -> UplinkStateStore {
        let file: SlotFile
        let content: [UInt8]?
        do {
            (file, content) = try SlotFile.open(path)
        } catch {
            throw AgentError(.process, "\(path) is corrupt (\(error.message)); refusing to guess the uplink in-flight state")
        }
        guard let content else { return UplinkStateStore(file: file, snapshot: Snapshot()) }
        guard let snapshot = decode(content) else {
            throw AgentError(.process, "\(path) is corrupt (bad checksum or format); refusing to guess the uplink in-flight state")
        }
        return UplinkStateStore(file: file, snapshot: snapshot)
    }

    var snapshot: Snapshot { state.withLock { $0 } }

    /// Applies `changes` and writes the file durably. Blocking; call from a thread pool.
    func apply(_ changes: [MQTTClientSession.InflightChange]) throws {
        try writing.withLock { _ in try applyLocked(changes) }
    }

    private func applyLocked(_ changes: [MQTTClientSession.InflightChange]) throws {
        let bytes = state.withLock { snapshot -> [UInt8] in
            for change in changes {
                MQTTClientSession.InflightRecord.apply(change, to: &snapshot.entries)
                if case .stored(_, let tag, _) = change {
                    snapshot.highestStoredSequence = max(snapshot.highestStoredSequence, tag)
                }
            }
            return Self.encode(snapshot)
        }
        try file.write(bytes)
    }

    /// Raises the resume point without an entry (records skipped as undecodable or lost).
    func skip(through sequence: UInt64) throws {
        try writing.withLock { _ in
            let bytes = state.withLock { snapshot -> [UInt8]? in
                guard sequence > snapshot.highestStoredSequence else { return nil }
                snapshot.highestStoredSequence = sequence
                return Self.encode(snapshot)
            }
            if let bytes { try file.write(bytes) }
        }
    }

    static func encode(_ snapshot: Snapshot) -> [UInt8] {
        var writer = StateFileWriter(magic: magic)
        writer.put(snapshot.highestStoredSequence)
        writer.put(UInt32(snapshot.entries.count))
        for record in snapshot.entries.values.sorted(by: { $0.tag < $1.tag }) {
            writer.put(record.packetId)
            writer.put(record.phase.rawValue)
            writer.put(record.tag)
        }
        return writer.finish()
    }

    static func decode(_ bytes: [UInt8]) -> Snapshot? {
        guard var reader = StateFileReader(bytes, magic: magic),
            let highest = reader.get(UInt64.self), let count = reader.get(UInt32.self)
        else { return nil }
        var snapshot = Snapshot(highestStoredSequence: highest)
        for _ in 0..<count {
            guard let packetId = reader.get(UInt16.self), let rawPhase = reader.get(UInt8.self),
                let phase = MQTTClientSession.Phase(rawValue: rawPhase), let tag = reader.get(UInt64.self)
            else { return nil }
            snapshot.entries[packetId] = .init(packetId: packetId, tag: tag, phase: phase)
        }
        return reader.isAtEnd ? snapshot : nil
    }
}
