import Foundation
import Synchronization

/// A dedicated OS thread for one blocking loop. librdkafka's polls block, so they run here and
/// never on a NIO event loop or in Swift's cooperative pool.
final class KafkaPollThread: Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let threadID = Mutex<pthread_t?>(nil)
    private let name: String

    init(name: String) {
        self.name = name
    }

    /// Starts `body` on a new thread. Call once.
    func start(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            threadID.withLock { $0 = pthread_self() }
            body()
            finished.signal()
        }
        thread.name = name
        thread.start()
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
