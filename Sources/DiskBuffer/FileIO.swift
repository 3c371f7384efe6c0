// Thin wrappers over the POSIX calls the buffer uses. Every failure becomes a DiskBufferError carrying
// errno and path; EINTR is retried. No buffering: callers batch their own writes.
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An owned POSIX file descriptor. Not thread-safe by itself; the buffer serialises its use.
final class FileHandle {
    private(set) var fd: Int32
    let path: String

    static func open(_ path: String, flags: Int32, mode: mode_t = 0o644) throws(DiskBufferError) -> FileHandle {
        let fd = try retryingInterrupted("open", path) { Int(Glibc.open(path, flags | O_CLOEXEC, mode)) }
        return FileHandle(fd: Int32(fd), path: path)
    }

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close() }

    /// Closes the descriptor now rather than at deinit. Further calls fail with EBADF.
    func close() {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }

    /// Writes all of `bytes` at `offset`.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws(DiskBufferError) {
        var done = 0
        while done < bytes.count {
            let n = try retryingInterrupted("write", path) {
                pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { throw .system("write", errno: EIO, path: path) }
            done += n
        }
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws(DiskBufferError) {
        var failure: DiskBufferError?
        bytes.withUnsafeBytes { raw in
            do throws(DiskBufferError) { try write(raw, at: offset) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Reads up to `buffer.count` bytes at `offset`; returns how many were read (fewer only at end of file).
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(DiskBufferError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try retryingInterrupted("read", path) {
                pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    func read(count: Int, at offset: Int64) throws(DiskBufferError) -> [UInt8] {
        var failure: DiskBufferError?
        var got = 0
        var bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            do throws(DiskBufferError) {
                got = try read(into: UnsafeMutableRawBufferPointer(buffer), at: offset)
            } catch { failure = error }
            initialized = got
        }
        if let failure { throw failure }
        bytes.removeLast(bytes.count - got)
        return bytes
    }

    /// fdatasync: flushes the data and the metadata needed to read it back (the file size).
    func syncData() throws(DiskBufferError) {
        _ = try retryingInterrupted("fdatasync", path) { Int(fdatasync(fd)) }
    }

    func sync() throws(DiskBufferError) {
        _ = try retryingInterrupted("fsync", path) { Int(fsync(fd)) }
    }

    func truncate(to size: Int64) throws(DiskBufferError) {
        _ = try retryingInterrupted("ftruncate", path) { Int(ftruncate(fd, off_t(size))) }
    }

    func size() throws(DiskBufferError) -> Int64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .system("fstat", errno: Glibc.errno, path: path) }
        return Int64(info.st_size)
    }

    static func modificationTime(_ path: String) -> Double? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
    }
}

/// Runs a system call until it is not interrupted; a negative result becomes a DiskBufferError.
private func retryingInterrupted(_ operation: String, _ path: String, _ call: () -> Int) throws(DiskBufferError) -> Int {
    while true {
        let result = call()
        if result >= 0 { return result }
        let error = Glibc.errno
        if error != EINTR { throw .system(operation, errno: error, path: path) }
    }
}

/// Directory-level operations.
enum FileSystem {
    /// fsync on the directory itself, so that created, renamed and removed entries survive power loss.
    static func syncDirectory(_ path: String) throws(DiskBufferError) {
        let handle = try FileHandle.open(path, flags: O_RDONLY | O_DIRECTORY)
        try handle.sync()
    }

    static func createDirectory(_ path: String) throws(DiskBufferError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 {
                let error = Glibc.errno
                if error != EEXIST { throw .system("mkdir", errno: error, path: prefix) }
            }
        }
    }

    static func listDirectory(_ path: String) throws(DiskBufferError) -> [String] {
        guard let directory = opendir(path) else { throw .system("opendir", errno: Glibc.errno, path: path) }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: Int(NAME_MAX) + 1) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a file; a file that is already gone is not an error.
    static func remove(_ path: String) throws(DiskBufferError) {
        if unlink(path) != 0 {
            let error = Glibc.errno
            if error != ENOENT { throw .system("unlink", errno: error, path: path) }
        }
    }

    static func rename(_ from: String, to: String) throws(DiskBufferError) {
        if Glibc.rename(from, to) != 0 { throw .system("rename", errno: Glibc.errno, path: to) }
    }

    static func fileSize(_ path: String) -> Int64? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int64(info.st_size)
    }
}

/// Monotonic and wall-clock time.
enum Clock {
    static func monotonicNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    static func wallSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
