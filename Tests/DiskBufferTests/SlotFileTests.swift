import Testing

@testable import DiskBuffer

@Suite("SlotFile: small state rewritten in place, two slots")
struct SlotFileTests {
    @Test("the newest write wins across reopen; writes alternate between the slots of one file")
    func newestWins() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/state"
        let (file, initial) = try SlotFile.open(path)
        #expect(initial == nil)
        for round in UInt8(1)...5 {
            try file.write([round, round, round])
            #expect(try SlotFile.open(path).content == [round, round, round])
        }
        #expect(FileSystem.fileSize(path) == Int64(2 * SlotFile.minimumCapacity))
        // Reopened, it continues in the slot after the newest.
        let (again, _) = try SlotFile.open(path)
        try again.write([9])
        #expect(try SlotFile.open(path).content == [9])
        try again.write([])
        #expect(try SlotFile.open(path).content == [])
    }

    @Test("a torn or damaged newest slot falls back to the previous content; both damaged is an error")
    func damagedSlot() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/state"
        let (file, _) = try SlotFile.open(path)
        try file.write([1])  // slot 0
        try file.write([2, 2])  // slot 1
        var bytes = try #require(try AtomicFile.read(path))
        let slot = SlotFile.minimumCapacity
        bytes[slot + 17] ^= 0x01  // the content of slot 1, as a write cut off by a crash would leave it
        try AtomicFile.write(bytes, to: path)
        #expect(try SlotFile.open(path).content == [1])
        bytes[16] ^= 0x01
        try AtomicFile.write(bytes, to: path)
        #expect(throws: DiskBufferError.self) { try SlotFile.open(path) }
    }

    @Test("content larger than a slot grows the file; a whole-file (AtomicFile) state is read and converted")
    func growthAndLegacy() throws {
        let directory = TemporaryDirectory()
        defer { directory.remove() }
        let path = directory.path + "/state"
        try AtomicFile.write([7, 7], to: path)
        let (file, legacy) = try SlotFile.open(path)
        #expect(legacy == [7, 7])
        let large = [UInt8](repeating: 5, count: 10_000)
        try file.write(large)
        #expect(try SlotFile.open(path).content == large)
        #expect(FileSystem.fileSize(path)! >= 2 * 10_000)
        try file.write([3])
        #expect(try SlotFile.open(path).content == [3])
    }
}
