#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import DiskBuffer

/// Whether this process may mount a tmpfs (root / CAP_SYS_ADMIN).
let canMountTmpfs: Bool = {
    let directory = TemporaryDirectory("probe")
    defer { directory.remove() }
    guard mount("tmpfs", directory.path, "tmpfs", 0, "size=64k") == 0 else { return false }
    umount2(directory.path, Int32(MNT_DETACH))
    return true
}()

/// A small tmpfs stands in for a full disk. Needs root (CAP_SYS_ADMIN); skipped elsewhere.
@Suite(.enabled(if: canMountTmpfs, "needs permission to mount a tmpfs"))
struct DiskFullTests {
    @Test func diskFullRefusesAppendsAndRecoversWhenSpaceReturns() async throws {
        let mountPoint = TemporaryDirectory("tmpfs")
        defer { mountPoint.remove() }
        try #require(mount("tmpfs", mountPoint.path, "tmpfs", 0, "size=512k") == 0)
        defer { umount2(mountPoint.path, Int32(MNT_DETACH)) }

        // Fill most of the file system with a file we can delete later.
        let filler = mountPoint.path + "/filler"
        try AtomicFile.write([UInt8](repeating: 7, count: 300 << 10), to: filler)

        let configuration = DiskBuffer.Configuration(
            directory: mountPoint.path + "/buffer", segmentMaxBytes: 64 << 10, maxBytes: 64 << 20, fsync: .always)
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        var last: UInt64 = 0
        var failure: DiskBufferError?
        for sequence in UInt64(1)...1000 {
            do {
                last = try await buffer.append(body(for: sequence, size: 1000))
                #expect(last == sequence)
            } catch {
                failure = error
                break
            }
        }
        #expect(failure?.code == .diskFull)
        #expect(failure?.scope == .record)
        #expect(last > 50)
        // Still refusing while full, without crashing.
        await #expect(throws: DiskBufferError.self) { try await buffer.append(body(for: last + 1, size: 1000)) }
        #expect(try readAll(buffer).map(\.sequence) == Array(1...last))

        // Space returns: appends carry on with the next sequence, no gap.
        unlink(filler)
        #expect(try await buffer.append(body(for: last + 1, size: 1000)) == last + 1)
        #expect(try await buffer.append(body(for: last + 2, size: 1000)) == last + 2)
        await buffer.close()

        let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.isClean)
        let records = try readAll(reopened)
        #expect(records.map(\.sequence) == Array(1...(last + 2)))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence, size: 1000) })
        await reopened.close()
    }
}
