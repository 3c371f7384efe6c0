#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one error type of the disk buffer: a stable ``Code``, a constant-ish human message and, for
/// file-system failures, the `errno` and the path involved.
public struct DiskBufferError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong. Compare against the static members; new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case bufferFull = "buffer_full"
            case diskFull = "disk_full"
            case recordTooLarge = "record_too_large"
            case closed
            case directoryLocked = "directory_locked"
            case invalidConfiguration = "invalid_configuration"
            case invalidSequence = "invalid_sequence"
            case io
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// `max_bytes` reached with overflow policy `reject-new`. The record was not stored: do not ack
        /// the device (MQTT 5: reason code 0x97 quota exceeded).
        public static let bufferFull = Code(.bufferFull)
        /// The file system is full (ENOSPC / EDQUOT). Behaves like ``bufferFull``; appends succeed again
        /// once space returns.
        public static let diskFull = Code(.diskFull)
        /// The body is larger than a segment can hold (MQTT 5: reason code 0x95 packet too large).
        public static let recordTooLarge = Code(.recordTooLarge)
        /// The buffer was closed, or failed and must be reopened.
        public static let closed = Code(.closed)
        /// Another process (or another `DiskBuffer` in this process) holds the directory's lock file.
        public static let directoryLocked = Code(.directoryLocked)
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// `acknowledge(through:)` named a sequence that was never appended.
        public static let invalidSequence = Code(.invalidSequence)
        /// Any other file-system error; see ``DiskBufferError/errno``.
        public static let io = Code(.io)

        public var description: String { base.rawValue }
    }

    /// What the caller should give up on because of this error.
    public enum Scope: Sendable, Hashable {
        /// Only this record: refuse it (no ack to the device) and carry on.
        case record
        /// The buffer as a whole: it is closed, unusable, or misused; the process should stop or reopen it.
        case buffer
    }

    public var code: Code
    public var message: String
    /// The `errno` of the failed system call, if any.
    public var errno: Int32?
    /// The file involved, if any.
    public var path: String?

    public init(_ code: Code, _ message: String, errno: Int32? = nil, path: String? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
        self.path = path
    }

    public var scope: Scope {
        switch code {
        case .bufferFull, .diskFull, .recordTooLarge: .record
        default: .buffer
        }
    }

    public var description: String {
        var text = "DiskBufferError(\(code)): \(message)"
        if let path { text += " [\(path)]" }
        if let errno { text += " errno \(errno): \(String(cString: strerror(errno)))" }
        return text
    }

    /// Maps a failed system call's `errno` to an error: ENOSPC and EDQUOT become ``Code/diskFull``.
    static func system(_ operation: String, errno: Int32, path: String?) -> DiskBufferError {
        if errno == ENOSPC || errno == EDQUOT {
            return DiskBufferError(.diskFull, "no space left on device during \(operation)", errno: errno, path: path)
        }
        return DiskBufferError(.io, "\(operation) failed", errno: errno, path: path)
    }
}
