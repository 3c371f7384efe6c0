/// Topic filters in a tree of levels, for matching one topic against many filters (MQTT 5.0 section 4.7).
///
/// Each entry is a (filter, key) pair, e.g. key = client identifier, with a value (e.g. the subscription
/// options). Shared subscriptions (`$share/group/filter`) are stored under their inner filter and reported with
/// their `shareGroup`, so the caller picks one subscriber per group. Matching walks at most the exact, `+` and
/// `#` branches of each level and allocates nothing with `forEachMatch`.
///
/// A value type with copy-on-write (a copy shares the nodes until one side changes).
public struct SubscriptionTree<Key: Hashable, Value> {
    public struct EntryKey: Hashable {
        public var shareGroup: String?
        public var key: Key

        @inlinable public init(shareGroup: String?, key: Key) {
            self.shareGroup = shareGroup
            self.key = key
        }
    }

    public struct Match {
        public var key: Key
        public var shareGroup: String?
        public var value: Value
    }

    @usableFromInline
    final class Node {
        @usableFromInline var children: [Substring: Node] = [:]
        @usableFromInline var plus: Node?
        @usableFromInline var hash: Node?
        @usableFromInline var entries: [EntryKey: Value] = [:]

        @usableFromInline init() {}

        @usableFromInline var isEmpty: Bool { entries.isEmpty && children.isEmpty && plus == nil && hash == nil }

        @usableFromInline func copy() -> Node {
            let node = Node()
            node.entries = entries
            node.children = children.mapValues { $0.copy() }
            node.plus = plus?.copy()
            node.hash = hash?.copy()
            return node
        }
    }

    @usableFromInline var root = Node()
    @usableFromInline var entryCount = 0

    public init() {}

    /// The number of (filter, key) entries.
    public var count: Int { entryCount }
    public var isEmpty: Bool { entryCount == 0 }

    @inlinable mutating func makeUnique() {
        if !isKnownUniquelyReferenced(&root) { root = root.copy() }
    }

    /// Adds or replaces the entry for (`filter`, `key`); returns the value it replaced.
    @inlinable @discardableResult
    public mutating func insert(_ filter: MQTTTopicFilter, key: Key, value: Value) -> Value? {
        makeUnique()
        var node = root
        for level in filter.filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let name = Substring(level)
            let next: Node
            if name == "+" {
                if let plus = node.plus { next = plus } else { next = Node(); node.plus = next }
            } else if name == "#" {
                if let hash = node.hash { next = hash } else { next = Node(); node.hash = next }
            } else if let child = node.children[name] {
                next = child
            } else {
                next = Node()
                node.children[name] = next
            }
            node = next
        }
        let old = node.entries.updateValue(value, forKey: EntryKey(shareGroup: filter.shareGroup, key: key))
        if old == nil { entryCount += 1 }
        return old
    }

    /// Removes the entry for (`filter`, `key`) and prunes empty branches; returns its value.
    @inlinable @discardableResult
    public mutating func remove(_ filter: MQTTTopicFilter, key: Key) -> Value? {
        makeUnique()
        var path: [(Node, Substring)] = []
        var node = root
        for level in filter.filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let name = Substring(level)
            let next: Node?
            if name == "+" { next = node.plus } else if name == "#" { next = node.hash } else { next = node.children[name] }
            guard let next else { return nil }
            path.append((node, name))
            node = next
        }
        guard let old = node.entries.removeValue(forKey: EntryKey(shareGroup: filter.shareGroup, key: key)) else {
            return nil
        }
        entryCount -= 1
        // Prune from the leaf up while nodes are empty.
        var child = node
        while child.isEmpty, let (parent, name) = path.popLast() {
            if name == "+" { parent.plus = nil } else if name == "#" { parent.hash = nil } else { parent.children[name] = nil }
            child = parent
        }
        return old
    }

    /// Removes every entry of `key` (e.g. when a session ends); returns how many were removed.
    @discardableResult
    public mutating func removeAll(key: Key) -> Int {
        makeUnique()
        var removed = 0
        func prune(_ node: Node) {
            let before = node.entries.count
            node.entries = node.entries.filter { $0.key.key != key }
            removed += before - node.entries.count
            for (name, child) in node.children {
                prune(child)
                if child.isEmpty { node.children[name] = nil }
            }
            if let plus = node.plus {
                prune(plus)
                if plus.isEmpty { node.plus = nil }
            }
            if let hash = node.hash {
                prune(hash)
                if hash.isEmpty { node.hash = nil }
            }
        }
        prune(root)
        entryCount -= removed
        return removed
    }

    /// The value stored for (`filter`, `key`).
    public func value(for filter: MQTTTopicFilter, key: Key) -> Value? {
        var node = root
        for level in filter.filter.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            let name = Substring(level)
            let next: Node?
            if name == "+" { next = node.plus } else if name == "#" { next = node.hash } else { next = node.children[name] }
            guard let next else { return nil }
            node = next
        }
        return node.entries[EntryKey(shareGroup: filter.shareGroup, key: key)]
    }

    /// Calls `body` for every entry whose filter matches `topic`, without allocating. Topics starting with `$`
    /// are not matched by filters starting with a wildcard.
    @inlinable
    public func forEachMatch(_ topic: String, _ body: (_ key: Key, _ shareGroup: String?, _ value: Value) throws -> Void) rethrows {
        let utf8 = topic.utf8
        guard !utf8.isEmpty else { return }
        let dollar = utf8.first == UInt8(ascii: "$")
        try SubscriptionTree.visit(root, topic, utf8.startIndex, dollar, body)
    }

    @inlinable
    static func visit(
        _ node: Node,
        _ topic: String,
        _ start: String.Index,
        _ dollar: Bool,
        _ body: (Key, String?, Value) throws -> Void
    ) rethrows {
        let utf8 = topic.utf8
        let end = utf8[start...].firstIndex(of: UInt8(ascii: "/")) ?? utf8.endIndex
        let isLast = end == utf8.endIndex
        if !dollar, let hash = node.hash {
            try emit(hash, body)
        }
        if !dollar, let plus = node.plus {
            try descend(plus, topic, end, isLast, body)
        }
        if !node.children.isEmpty, let child = node.children[Substring(utf8[start..<end])] {
            try descend(child, topic, end, isLast, body)
        }
    }

    @inlinable
    static func descend(
        _ node: Node,
        _ topic: String,
        _ end: String.Index,
        _ isLast: Bool,
        _ body: (Key, String?, Value) throws -> Void
    ) rethrows {
        if isLast {
            try emit(node, body)
            // `a/#` also matches `a`.
            if let hash = node.hash { try emit(hash, body) }
        } else {
            try visit(node, topic, topic.utf8.index(after: end), false, body)
        }
    }

    @inlinable
    static func emit(_ node: Node, _ body: (Key, String?, Value) throws -> Void) rethrows {
        for (entryKey, value) in node.entries {
            try body(entryKey.key, entryKey.shareGroup, value)
        }
    }

    /// Every entry whose filter matches `topic`.
    public func match(_ topic: String) -> [Match] {
        var result: [Match] = []
        forEachMatch(topic) { key, shareGroup, value in
            result.append(Match(key: key, shareGroup: shareGroup, value: value))
        }
        return result
    }
}

extension SubscriptionTree.EntryKey: Sendable where Key: Sendable {}
extension SubscriptionTree.Match: Sendable where Key: Sendable, Value: Sendable {}
extension SubscriptionTree.Match: Equatable where Value: Equatable {}
// Copy-on-write: nodes are only mutated after `makeUnique()`, so sharing them between copies is safe.
extension SubscriptionTree: @unchecked Sendable where Key: Sendable, Value: Sendable {}
