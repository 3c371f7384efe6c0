import Foundation
import Synchronization

/// A dedicated OS thread for one blocking loop. librdkafka's polls block, so they run here and
/// never on a NIO event loop or in Swift's cooperative pool.
final class KafkaPollThread: Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let threadID = Mutex<pthread_t?>(nil)
    private let name: String

    /// `name` is the OS thread name (at most 15 bytes on Linux, else it is not set).
    init(name: String) {
        self.name = name
    }

    /// Starts `body` on a new thread. Call once.
    func start(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            Self.nameCurrentThread(name)
            threadID.withLock { $0 = pthread_self() }
            body()
            finished.signal()
        }
        thread.start()
    }

    /// Names the OS thread (visible in top -H, gdb, /proc). Foundation's `Thread.name` does not
    /// reach the OS thread on Linux and Glibc does not export pthread_setname_np to Swift.
    private static func nameCurrentThread(_ name: String) {
        #if os(Linux)
        try? String(name.prefix(15)).write(toFile: "/proc/thread-self/comm", atomically: false, encoding: .utf8)
        #endif
    }

    /// Whether the caller is running on this thread (e.g. inside a handler called by it).
    var isCurrent: Bool {
        threadID.withLock { id in id.map { pthread_equal($0, pthread_self()) != 0 } ?? false }
    }

    /// Waits until the loop has returned. Returns at once (false) when called from the thread
    /// itself, which cannot wait for its own end.
    @discardableResult
    func join() -> Bool {
        if isCurrent { return false }
        finished.wait()
        finished.signal()  // let any other joiner through as well
        return true
    }
}
