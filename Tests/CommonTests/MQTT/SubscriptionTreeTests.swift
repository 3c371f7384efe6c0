import PropertyBased
import Testing

@testable import Common

@Suite("Subscription tree")
struct SubscriptionTreeTests {
    struct Hit: Hashable {
        var key: Int
        var shareGroup: String?
        var value: Int
    }

    func hits(_ tree: SubscriptionTree<Int, Int>, _ topic: String) -> Set<Hit> {
        var result = Set<Hit>()
        tree.forEachMatch(topic) { key, group, value in
            let inserted = result.insert(Hit(key: key, shareGroup: group, value: value)).inserted
            #expect(inserted, "each entry reported once")
        }
        return result
    }

    @Test func insertMatchRemove() throws {
        var tree = SubscriptionTree<Int, Int>()
        tree.insert(try MQTTTopicFilter("a/b"), key: 1, value: 10)
        tree.insert(try MQTTTopicFilter("a/+"), key: 2, value: 20)
        tree.insert(try MQTTTopicFilter("a/#"), key: 3, value: 30)
        tree.insert(try MQTTTopicFilter("#"), key: 4, value: 40)
        tree.insert(try MQTTTopicFilter("$share/g/a/b"), key: 5, value: 50)
        #expect(tree.count == 5)
        #expect(Set(tree.match("a/b").map(\.key)) == [1, 2, 3, 4, 5])
        #expect(Set(tree.match("a").map(\.key)) == [3, 4])
        #expect(Set(tree.match("$SYS/a").map(\.key)) == [])
        #expect(tree.match("a/b").first { $0.key == 5 }?.shareGroup == "g")
        // Replacing keeps one entry per (filter, key).
        #expect(tree.insert(try MQTTTopicFilter("a/b"), key: 1, value: 11) == 10)
        #expect(tree.count == 5)
        #expect(tree.remove(try MQTTTopicFilter("a/+"), key: 2) == 20)
        #expect(tree.remove(try MQTTTopicFilter("a/+"), key: 2) == nil)
        #expect(Set(tree.match("a/c").map(\.key)) == [3, 4])
        #expect(tree.removeAll(key: 4) == 1)
        #expect(Set(tree.match("a/c").map(\.key)) == [3])
        #expect(tree.value(for: try MQTTTopicFilter("a/b"), key: 1) == 11)
    }

    @Test func copyOnWrite() throws {
        var tree = SubscriptionTree<Int, Int>()
        tree.insert(try MQTTTopicFilter("a/+"), key: 1, value: 1)
        let copy = tree
        tree.insert(try MQTTTopicFilter("a/b"), key: 2, value: 2)
        tree.remove(try MQTTTopicFilter("a/+"), key: 1)
        #expect(copy.match("a/b").map(\.key) == [1])
        #expect(tree.match("a/b").map(\.key) == [2])
    }

    @Test func pruningLeavesAnEmptyTree() throws {
        var tree = SubscriptionTree<Int, Int>()
        let filters = ["a/b/c", "a/+/c", "a/#", "+/+", "#", "a/b/c/d"]
        for (index, filter) in filters.enumerated() { tree.insert(try MQTTTopicFilter(filter), key: index, value: index) }
        for (index, filter) in filters.enumerated() { tree.remove(try MQTTTopicFilter(filter), key: index) }
        #expect(tree.isEmpty)
        #expect(tree.root.isEmpty)
    }

    /// Model test: random inserts and removals against a plain list matched one filter at a time.
    @Test func agreesWithBruteForce() async {
        let levels = ["a", "b", "", "$SYS", "c"]
        let filterLevels = levels + ["+", "+"]
        let generator = Generator { rng -> (filters: [String], operations: [(Int, Int, Bool)], topics: [String]) in
            func pick(_ array: [String]) -> String { array[Int.random(in: 0..<array.count, using: &rng)] }
            let filters: [String] = (0..<12).map { _ in
                var parts = (0..<Int.random(in: 1...3, using: &rng)).map { _ in pick(filterLevels) }
                if Bool.random(using: &rng) { parts.append("#") }
                let filter = parts.joined(separator: "/")
                return Int.random(in: 0...5, using: &rng) == 0 ? "$share/g/" + filter : filter
            }
            let operations = (0..<60).map { _ in
                (Int.random(in: 0..<12, using: &rng), Int.random(in: 0..<3, using: &rng), Int.random(in: 0...3, using: &rng) != 0)
            }
            let topics = (0..<20).map { _ in (0..<Int.random(in: 1...4, using: &rng)).map { _ in pick(levels) }.joined(separator: "/") }
            return (filters, operations, topics)
        }
        await propertyCheck(count: 200, input: generator) { input in
            var tree = SubscriptionTree<Int, Int>()
            var model: [String: [Int: Int]] = [:]  // filter string -> key -> value
            for (step, (filterIndex, key, isInsert)) in input.operations.enumerated() {
                guard let filter = try? MQTTTopicFilter(input.filters[filterIndex]) else { continue }
                if isInsert {
                    tree.insert(filter, key: key, value: step)
                    model[filter.string, default: [:]][key] = step
                } else {
                    tree.remove(filter, key: key)
                    model[filter.string]?[key] = nil
                }
            }
            #expect(tree.count == model.values.reduce(0) { $0 + $1.count })
            for topic in input.topics where !topic.isEmpty {
                var expected = Set<Hit>()
                for (string, entries) in model {
                    guard let filter = try? MQTTTopicFilter(string), filter.matches(topic) else { continue }
                    for (key, value) in entries { expected.insert(Hit(key: key, shareGroup: filter.shareGroup, value: value)) }
                }
                #expect(hits(tree, topic) == expected, "topic \(topic)")
            }
        }
    }
}
