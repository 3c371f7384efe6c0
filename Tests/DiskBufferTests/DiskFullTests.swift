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

/// A 512 KiB tmpfs, mostly filled by a file (`filler`) whose removal frees the space again, and a
/// buffer configuration in it (64 KiB segments, policy always).
struct SmallTmpfs {
    let directory = TemporaryDirectory("tmpfs")
    var filler: String { directory.path + "/filler" }
    var configuration: DiskBuffer.Configuration {
        .init(directory: directory.path + "/buffer", segmentMaxBytes: 64 << 10, maxBytes: 64 << 20, fsync: .always)
    }

    init() throws {
        guard mount("tmpfs", directory.path, "tmpfs", 0, "size=512k") == 0 else {
            directory.remove()
            throw DiskBufferError(.io, "cannot mount a tmpfs", errno: Glibc.errno, path: directory.path)
        }
        try AtomicFile.write([UInt8](repeating: 7, count: 300 << 10), to: filler)
    }

    func unmount() {
        umount2(directory.path, Int32(MNT_DETACH))
        directory.remove()
    }
}

/// A small tmpfs stands in for a full disk. Needs root (CAP_SYS_ADMIN); skipped elsewhere.
@Suite(.enabled(if: canMountTmpfs, "needs permission to mount a tmpfs"))
struct DiskFullTests {
    @Test func diskFullRefusesAppendsAndRecoversWhenSpaceReturns() async throws {
        let mountPoint = try SmallTmpfs()
        defer { mountPoint.unmount() }
        let filler = mountPoint.filler
        let configuration = mountPoint.configuration
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
    /// A batch append that runs out of space is refused whole: nothing of it is stored, and the next
    /// append gets the next sequence after the last stored batch.
    @Test func diskFullRefusesABatchWhole() async throws {
        let mountPoint = try SmallTmpfs()
        defer { mountPoint.unmount() }
        let filler = mountPoint.filler
        let configuration = mountPoint.configuration
        let (buffer, _) = try DiskBuffer.open(configuration, logger: testLogger)
        var last: UInt64 = 0
        var failure: DiskBufferError?
        while failure == nil {
            do {
                let range = try await buffer.append(contentsOf: (last + 1...last + 7).map { body(for: $0, size: 1000) })
                #expect(range == last + 1..<last + 8)
                last = range.upperBound - 1
            } catch {
                failure = error
            }
        }
        #expect(failure?.code == .diskFull)
        #expect(last > 0 && last % 7 == 0)
        #expect(try readAll(buffer).map(\.sequence) == Array(1...last))
        unlink(filler)
        #expect(try await buffer.append(contentsOf: [body(for: last + 1, size: 1000)]) == last + 1..<last + 2)
        await buffer.close()
        let (reopened, report) = try DiskBuffer.open(configuration, logger: testLogger)
        #expect(report.isClean)
        let records = try readAll(reopened)
        #expect(records.map(\.sequence) == Array(1...(last + 1)))
        #expect(records.allSatisfy { $0.body == body(for: $0.sequence, size: 1000) })
        await reopened.close()
    }
}
