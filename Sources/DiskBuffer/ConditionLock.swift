#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A mutex guarding a value, with condition variables. `wait` may be called only from inside
/// `withLock`; it releases the mutex while waiting, like `pthread_cond_wait`. Each thread that waits
/// has its own condition (`Condition`), so waking one does not wake the others.
final class ConditionLock<State>: @unchecked Sendable {
    enum Condition: Int, CaseIterable {
        /// The writer thread waits on this one.
        case writer
        /// The interval sync thread waits on this one.
        case syncer
        /// The ledger and deletion thread waits on this one.
        case housekeeper
    }

    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let conditions = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: Condition.allCases.count)
    private let state: UnsafeMutablePointer<State>

    init(_ initial: State) {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        for index in Condition.allCases.indices { pthread_cond_init(conditions + index, &attributes) }
        pthread_condattr_destroy(&attributes)
        state = .allocate(capacity: 1)
        state.initialize(to: initial)
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
        for index in Condition.allCases.indices { pthread_cond_destroy(conditions + index) }
        pthread_mutex_destroy(mutex)
        conditions.deallocate()
        mutex.deallocate()
    }

    func withLock<Result, Failure: Error>(
        _ body: (inout State) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&state.pointee)
    }

    /// What a `waitLoop` step decided.
    enum Step<Result> {
        /// Done: unlock and return this.
        case done(Result)
        /// Wait for `signal` on the loop's condition or until the monotonic deadline (nanoseconds),
        /// then run the step again.
        case wait(until: UInt64?)
    }

    /// Runs `step` under the lock until it returns `.done`, waiting on `condition` in between (the lock
    /// is released while waiting, like `pthread_cond_wait`). Each step is a new access to the state, so
    /// what other threads changed while this one waited is seen: never wait inside `withLock` itself,
    /// where the compiler may keep fields of the `inout` state in registers across the wait.
    func waitLoop<Result>(_ condition: Condition, _ step: (inout State) -> Step<Result>) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        let variable = conditions + condition.rawValue
        while true {
            switch step(&state.pointee) {
            case .done(let result):
                return result
            case .wait(let deadline?):
                var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                _ = pthread_cond_timedwait(variable, mutex, &time)
            case .wait(nil):
                pthread_cond_wait(variable, mutex)
            }
        }
    }

    func signal(_ condition: Condition = .writer) { pthread_cond_broadcast(conditions + condition.rawValue) }
}

private final class ThreadBody: @unchecked Sendable {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

/// Starts a detached POSIX thread running `body`. Fails only if the system cannot create a thread.
func startThread(name: String, _ body: @escaping @Sendable () -> Void) throws(DiskBufferError) {
    let box = Unmanaged.passRetained(ThreadBody(name: name, body: body)).toOpaque()
    var thread = pthread_t()
    let result = pthread_create(&thread, nil, { argument in
        guard let argument else { return nil }
        let box = Unmanaged<ThreadBody>.fromOpaque(argument).takeRetainedValue()
        box.body()
        return nil
    }, box)
    guard result == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        throw DiskBufferError(.io, "cannot start the \(name) thread", errno: result)
    }
    pthread_detach(thread)
}
