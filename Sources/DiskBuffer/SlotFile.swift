#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A small file rewritten often and durably, in place: two fixed slots, written alternately, each with a
/// generation number and a checksum. After a crash or power loss a reader sees the newest slot whose
/// checksum holds, i.e. the last content whose `write` returned, or a newer one.
///
/// Cheaper than `AtomicFile` for state written many times a second (the uplink's in-flight table): one
/// `pwrite` into blocks allocated when the file was created and one `fdatasync`, where `AtomicFile` creates a
/// file, fsyncs it, renames it and fsyncs the directory (two journal commits and a freed inode each time).
///
/// File: `capacity` bytes per slot, two slots (slot 0 at offset 0, slot 1 at `capacity`). Slot: `"TRSL" |
/// generation u64 | length u32 | content | crc32c u32 of everything before it`, little-endian. Content that
/// does not fit a slot makes the file grow: it is replaced whole (`AtomicFile`) with larger slots. A file that
/// does not start with the slot magic is read as a whole-file content (a file written by `AtomicFile`, as
/// earlier versions did) and converted at the first write.
public final class SlotFile: @unchecked Sendable {
    static let magic: [UInt8] = Array("TRSL".utf8)
    static let overhead = 4 + 8 + 4 + 4
    public static let minimumCapacity = 4096

    public let path: String
    /// Serialises writes; the fields below are only touched under it.
    private let lock = Mutex(())
    private var handle: FileHandle?
    private var capacity: Int
    private var generation: UInt64
    /// The slot the next write goes to (the other one holds the newest durable content).
    private var nextSlot: Int

    /// Opens `path` (nothing is created until the first write) and returns the newest valid content: nil if
    /// there is no file. A file in neither format is returned whole, as content for the caller to validate; a
    /// slot file neither of whose slots holds valid content is an error (code `io`).
    public static func open(_ path: String) throws(DiskBufferError) -> (SlotFile, content: [UInt8]?) {
        guard let bytes = try AtomicFile.read(path) else {
            return (SlotFile(path: path, handle: nil, capacity: 0, generation: 0, nextSlot: 0), nil)
        }
        guard bytes.count >= 2 * minimumCapacity, bytes.count % 2 == 0, Array(bytes.prefix(4)) == magic else {
            // Not a slot file (written by AtomicFile): converted at the first write.
            return (SlotFile(path: path, handle: nil, capacity: 0, generation: 0, nextSlot: 0), bytes)
        }
        let capacity = bytes.count / 2
        let slots = [parse(bytes[0..<capacity]), parse(bytes[capacity...])]
        let handle = try FileHandle.open(path, flags: O_WRONLY)
        switch (slots[0], slots[1]) {
        case (let a?, let b?):
            let newest = a.generation >= b.generation ? 0 : 1
            let content = newest == 0 ? a : b
            return (SlotFile(path: path, handle: handle, capacity: capacity, generation: content.generation, nextSlot: 1 - newest), content.content)
        case (let a?, nil):
            return (SlotFile(path: path, handle: handle, capacity: capacity, generation: a.generation, nextSlot: 1), a.content)
        case (nil, let b?):
            return (SlotFile(path: path, handle: handle, capacity: capacity, generation: b.generation, nextSlot: 0), b.content)
        case (nil, nil):
            throw DiskBufferError(.io, "\(path): neither slot holds valid content (bad checksums)")
        }
    }

    private init(path: String, handle: FileHandle?, capacity: Int, generation: UInt64, nextSlot: Int) {
        self.path = path
        self.handle = handle
        self.capacity = capacity
        self.generation = generation
        self.nextSlot = nextSlot
    }

    /// Replaces the content, durably: returns once it survives a crash or power loss. Thread-safe.
    public func write(_ content: [UInt8]) throws(DiskBufferError) {
        try lock.withLock { (_: inout ()) throws(DiskBufferError) in
            let slot = Self.encode(content, generation: generation + 1)
            if let handle, slot.count <= capacity {
                try handle.write(slot, at: Int64(nextSlot * capacity))
                try handle.syncData()
                generation += 1
                nextSlot = 1 - nextSlot
                return
            }
            // First write, a legacy file, or content larger than a slot: a new file with room to grow.
            var newCapacity = max(Self.minimumCapacity, capacity)
            while newCapacity < 2 * slot.count { newCapacity *= 2 }
            var bytes = [UInt8](repeating: 0, count: 2 * newCapacity)
            bytes.replaceSubrange(0..<slot.count, with: slot)
            handle?.close()
            handle = nil
            try AtomicFile.write(bytes, to: path)
            handle = try FileHandle.open(path, flags: O_WRONLY)
            capacity = newCapacity
            generation += 1
            nextSlot = 1
        }
    }

    static func encode(_ content: [UInt8], generation: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(content.count + overhead)
        bytes += magic
        withUnsafeBytes(of: generation.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: UInt32(content.count).littleEndian) { bytes += $0 }
        bytes += content
        withUnsafeBytes(of: CRC32C.checksum(bytes).littleEndian) { bytes += $0 }
        return bytes
    }

    static func parse(_ slot: ArraySlice<UInt8>) -> (generation: UInt64, content: [UInt8])? {
        let start = slot.startIndex
        guard slot.count >= overhead, Array(slot[start..<start + 4]) == magic else { return nil }
        func integer<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T {
            var value: T = 0
            for index in (0..<MemoryLayout<T>.size).reversed() { value = value << 8 | T(slot[start + offset + index]) }
            return value
        }
        let generation = integer(4, UInt64.self)
        let length = Int(integer(12, UInt32.self))
        guard length <= slot.count - overhead else { return nil }
        let end = start + 16 + length
        let stored = integer(16 + length, UInt32.self)
        guard CRC32C.checksum(slot[start..<end]) == stored else { return nil }
        return (generation, Array(slot[start + 16..<end]))
    }
}
