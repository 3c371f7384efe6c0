import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Testing
@testable import DiskBuffer

/// A fresh directory under /tmp, removed by `remove()`.
struct TemporaryDirectory {
    let path: String

    init(_ name: String = "buffer") {
        var template = Array("/tmp/tributary-\(name)-XXXXXX".utf8CString)
        let created = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(created != nil, "mkdtemp failed")
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    func remove() {
        removeTree(path)
    }
}

func removeTree(_ path: String) {
    if let names = try? FileSystem.listDirectory(path) {
        for name in names { removeTree(path + "/" + name) }
        rmdir(path)
    } else {
        unlink(path)
    }
}

/// Recovery and model tests damage buffers on purpose, thousands of times: their warnings are expected, so
/// they are shown only with TRIBUTARY_TEST_LOG=1.
let testLogger: Logger = {
    var logger = Logger(label: "tributary.buffer.test")
    logger.logLevel = ProcessInfo.processInfo.environment["TRIBUTARY_TEST_LOG"] == nil ? .error : .debug
    return logger
}()

func segmentFiles(_ directory: String) -> [String] {
    ((try? FileSystem.listDirectory(directory)) ?? []).filter { $0.hasSuffix(".seg") }.sorted()
}

/// A deterministic body for `sequence`, of a length derived from it, so corruption and reordering show.
func body(for sequence: UInt64, size: Int? = nil) -> [UInt8] {
    let length = size ?? Int(sequence % 97) + 1
    return (0..<length).map { UInt8(truncatingIfNeeded: sequence &* 31 &+ UInt64($0)) }
}

func readAll(_ buffer: DiskBuffer, from start: UInt64 = 1) throws -> [DiskBuffer.Record] {
    var records: [DiskBuffer.Record] = []
    var next = start
    while true {
        let batch = try buffer.read(from: next, maxRecords: 1000, maxBytes: 1 << 20)
        guard let last = batch.last else { return records }
        records += batch
        next = last.sequence + 1
    }
}

/// Overwrites bytes of a file at an offset (corruption injection).
func overwrite(_ path: String, at offset: Int64, with bytes: [UInt8]) throws {
    let handle = try FileHandle.open(path, flags: O_WRONLY)
    try handle.write(bytes, at: offset)
}

func truncateFile(_ path: String, to size: Int64) throws {
    let handle = try FileHandle.open(path, flags: O_WRONLY)
    try handle.truncate(to: size)
}

func fileSize(_ path: String) -> Int64 { FileSystem.fileSize(path) ?? -1 }

/// SplitMix64: a small seeded generator so the model test is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
