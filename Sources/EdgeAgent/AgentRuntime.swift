import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Process-wide settings that keep the agent small on a gateway: how many network and blocking threads
/// there are, where Swift tasks run, and how many malloc arenas glibc keeps. Applied once, by `main`,
/// before anything starts a thread (NIO's singletons refuse to be resized after first use).
enum AgentRuntime {
    struct Settings: Sendable, Equatable {
        var eventLoops: Int
        var blockingThreads: Int
        var tasksOnEventLoop: Bool
        var mallocArenas: Int
    }

    /// Returns what could not be applied, for the log (the agent runs either way).
    static func apply(_ settings: Settings) -> [String] {
        var notApplied: [String] = []
        // Each thread that mallocs otherwise gets its own arena (up to 8 per core), each keeping freed memory.
        if settings.mallocArenas > 0 && !setMallocArenas(settings.mallocArenas) {
            notApplied.append("runtime.malloc_arenas")
        }
        NIOSingletons.groupLoopCountSuggestion = settings.eventLoops
        NIOSingletons.blockingPoolThreadCountSuggestion = settings.blockingThreads
        if settings.tasksOnEventLoop && !NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor() {
            notApplied.append("runtime.tasks_on_event_loop")
        }
        return notApplied
    }

    /// glibc's `mallopt(M_ARENA_MAX, n)`; `<malloc.h>` is not part of the Glibc module, so it is looked up.
    private static func setMallocArenas(_ count: Int) -> Bool {
        #if canImport(Glibc)
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        let arenaMaximum: Int32 = -8  // M_ARENA_MAX
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return false }
        return unsafeBitCast(symbol, to: Mallopt.self)(arenaMaximum, Int32(count)) == 1
        #else
        return false
        #endif
    }
}
