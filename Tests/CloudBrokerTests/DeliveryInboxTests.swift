import NIOCore
import NIOEmbedded
import Synchronization
import Testing

@testable import CloudBroker

@Suite("Delivery inbox (batched delivery reports)")
struct DeliveryInboxTests {
    /// Reports posted before the loop runs form one batch: one task, run in posting order, and the flushes
    /// asked for during it run once each after its last report; a report posted later starts a new batch.
    @Test func reportsPostedTogetherRunAsOneBatchAndFlushAtItsEnd() {
        let loop = EmbeddedEventLoop()
        let inbox = DeliveryInbox.on(loop)
        let log = Mutex<[String]>([])
        for index in 0..<3 {
            inbox.post {
                #expect(inbox.isRunningBatch)
                log.withLock { $0.append("report \(index)") }
                if index != 1 { inbox.flushAfterBatch { log.withLock { $0.append("flush after \(index)") } } }
            }
        }
        #expect(log.withLock { $0 }.isEmpty, "nothing runs before the loop does")
        loop.run()
        #expect(log.withLock { $0 } == ["report 0", "report 1", "report 2", "flush after 0", "flush after 2"])
        #expect(!inbox.isRunningBatch)
        inbox.post { log.withLock { $0.append("later") } }
        loop.run()
        #expect(log.withLock { $0 }.last == "later")
        #expect(DeliveryInbox.on(loop) === inbox, "one inbox per event loop")
        try? loop.syncShutdownGracefully()
    }
}
