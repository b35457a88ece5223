/// Reusable scratch space that applies BPE merges to one piece, lowest rank first.
///
/// Symbols form a linked list over arrays; candidate merges sit in a binary min-heap keyed by
/// `rank << 32 | position`, so equal ranks merge leftmost first, as in Hugging Face's `Word::merge_all`.
struct BytePairMerger {
    private var symbols: [Int32] = []
    private var next: [Int32] = []
    private var previous: [Int32] = []
    private var heap: [UInt64] = []

    /// Appends to `output` the token ids of `bytes[start..<end]`; bytes without a token are skipped.
    mutating func merge(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int,
                        byteTokens: [Int32], merges: MergeTable, into output: inout [Int32]) {
        begin()
        for index in start..<end {
            let id = byteTokens[Int(bytes[index])]
            if id >= 0 { symbols.append(id) }
        }
        finish(merges: merges, into: &output)
    }

    /// Starts a new piece with no symbols (then `append` its initial symbols and `finish`).
    @inline(__always)
    mutating func begin() { symbols.removeAll(keepingCapacity: true) }

    /// Appends one initial symbol (a token id) to the piece.
    @inline(__always)
    mutating func append(_ id: Int32) { symbols.append(id) }

    /// Merges the piece's symbols by rank (leftmost first among equal ranks) and appends the result to `output`.
    mutating func finish(merges: MergeTable, into output: inout [Int32]) {
        let count = symbols.count
        guard count > 1 else {
            output.append(contentsOf: symbols)
            return
        }
        next.removeAll(keepingCapacity: true)
        previous.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        for index in 0..<count {
            next.append(index + 1 < count ? Int32(index + 1) : -1)
            previous.append(Int32(index - 1))
            if index + 1 < count, let merge = merges.lookup(symbols[index], symbols[index + 1]) {
                push(merge & 0xFFFF_FFFF_0000_0000 | UInt64(index))
            }
        }
        while let top = pop() {
            let position = Int(top & 0xFFFF_FFFF)
            let rank = top >> 32
            let right = Int(next[position])
            guard symbols[position] >= 0, right >= 0,
                  let merge = merges.lookup(symbols[position], symbols[right]), merge >> 32 == rank
            else { continue }
            symbols[position] = Int32(truncatingIfNeeded: merge)
            symbols[right] = -1
            let after = next[right]
            next[position] = after
            if after >= 0 { previous[Int(after)] = Int32(position) }
            let before = Int(previous[position])
            if before >= 0, let merge = merges.lookup(symbols[before], symbols[position]) {
                push(merge & 0xFFFF_FFFF_0000_0000 | UInt64(before))
            }
            if after >= 0, let merge = merges.lookup(symbols[position], symbols[Int(after)]) {
                push(merge & 0xFFFF_FFFF_0000_0000 | UInt64(position))
            }
        }
        var index = 0
        while index >= 0 {
            output.append(symbols[index])
            index = Int(next[index])
        }
    }

    private mutating func push(_ value: UInt64) {
        heap.append(value)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[parent] > heap[child] else { break }
            heap.swapAt(parent, child)
            child = parent
        }
    }

    private mutating func pop() -> UInt64? {
        guard let last = heap.popLast() else { return nil }
        guard !heap.isEmpty else { return last }
        let top = heap[0]
        heap[0] = last
        var parent = 0
        while true {
            let left = 2 * parent + 1
            guard left < heap.count else { break }
            let smaller = left + 1 < heap.count && heap[left + 1] < heap[left] ? left + 1 : left
            guard heap[smaller] < heap[parent] else { break }
            heap.swapAt(parent, smaller)
            parent = smaller
        }
        return top
    }
}
