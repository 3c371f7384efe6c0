extension DiskBuffer {
    /// Records read by `read(from:into:maxRecords:maxBytes:)`: sequences in order and bodies stored back
    /// to back in one buffer, each handed out as a slice of it. Reading into the same batch again
    /// reuses its storage, so a stream of reads allocates nothing per record.
    public struct RecordBatch: Sendable, RandomAccessCollection {
        /// One record of the batch. `body` is a slice of the batch's storage (indices are not 0-based).
        public struct Element: Sendable {
            public var sequence: UInt64
            public var body: ArraySlice<UInt8>
        }

        /// The records' sequences, in order (consecutive unless records were lost to overflow or damage).
        public private(set) var sequences: [UInt64] = []
        /// End offset in `bytes` of each body; body `i` starts where body `i - 1` ends.
        private var ends: [Int] = []
        /// Every body, back to back.
        public private(set) var bytes: [UInt8] = []

        public init() {}

        public var startIndex: Int { 0 }
        public var endIndex: Int { sequences.count }

        public subscript(position: Int) -> Element {
            let start = position == 0 ? 0 : ends[position - 1]
            return Element(sequence: sequences[position], body: bytes[start..<ends[position]])
        }

        /// The last sequence in the batch, nil if it is empty.
        public var lastSequence: UInt64? { sequences.last }

        /// Empties the batch, keeping its storage.
        mutating func removeAll() {
            sequences.removeAll(keepingCapacity: true)
            ends.removeAll(keepingCapacity: true)
            bytes.removeAll(keepingCapacity: true)
        }

        mutating func append(sequence: UInt64, body: UnsafeRawBufferPointer) {
            sequences.append(sequence)
            bytes.append(contentsOf: body)
            ends.append(bytes.count)
        }
    }
}
