#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Small files replaced atomically: after a crash or power loss a reader sees either the old
/// content or the new, never a mix or an empty file.
///
/// `write` creates `<path>.tmp`, writes and fsyncs it, renames it over `path`, then fsyncs the
/// directory so the rename itself is durable. A `.tmp` left behind by a crash is ignored by `read` and
/// overwritten by the next `write`. Callers that need to detect corruption (bit rot, a torn sector)
/// should put their own checksum in the content; the disk buffer's ledger does.
public enum AtomicFile {
    /// Replaces the file at `path` with `bytes`, durably.
    public static func write(_ bytes: [UInt8], to path: String) throws(DiskBufferError) {
        let temporary = path + ".tmp"
        do {
            let handle = try FileHandle.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC)
            try handle.write(bytes, at: 0)
            try handle.sync()
        }
        try FileSystem.rename(temporary, to: path)
        try FileSystem.syncDirectory(directory(of: path))
    }

    /// The file's content, or nil if there is no such file.
    public static func read(_ path: String) throws(DiskBufferError) -> [UInt8]? {
        let handle: FileHandle
        do {
            handle = try FileHandle.open(path, flags: O_RDONLY)
        } catch where error.errno == ENOENT {
            return nil
        }
        let size = try handle.size()
        return try handle.read(count: Int(size), at: 0)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
