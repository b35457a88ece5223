/// A per-call cache from a pre-tokenized piece's bytes to its BPE token ids.
///
/// Keys and values live in two flat arrays; the table holds indices, so lookups allocate nothing.
struct WordCache {
    private struct Entry {
        var hash: UInt64
        var keyStart: Int32
        var keyCount: Int32
        var valueStart: Int32
        var valueCount: Int32
    }

    /// The cache is emptied once its keys take this many bytes.
    private static let maximumKeyBytes = 1 << 24
    private var slots = [Int32](repeating: -1, count: 1 << 12)
    private var entries: [Entry] = []
    private var keyBytes: [UInt8] = []
    private(set) var values: [Int32] = []

    /// FNV-1a over the piece's bytes.
    @inline(__always)
    static func hash(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for index in start..<end { hash = (hash ^ UInt64(bytes[index])) &* 0x100_0000_01B3 }
        return hash
    }

    /// The range in `values` of the ids cached for `bytes[start..<end]`.
    func lookup(_ hash: UInt64, _ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Range<Int>? {
        let mask = slots.count - 1
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] >= 0 {
            let entry = entries[Int(slots[slot])]
            if entry.hash == hash, Int(entry.keyCount) == end - start, matches(entry, bytes, start) {
                return Int(entry.valueStart) ..< Int(entry.valueStart + entry.valueCount)
            }
            slot = (slot + 1) & mask
        }
        return nil
    }

    private func matches(_ entry: Entry, _ bytes: UnsafeBufferPointer<UInt8>, _ start: Int) -> Bool {
        let keyStart = Int(entry.keyStart)
        for offset in 0..<Int(entry.keyCount) where keyBytes[keyStart + offset] != bytes[start + offset] {
            return false
        }
        return true
    }

    /// Caches `ids` for `bytes[start..<end]`, which must not be cached yet.
    mutating func insert(_ hash: UInt64, _ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int,
                         ids: ArraySlice<Int32>) {
        if keyBytes.count + (end - start) > Self.maximumKeyBytes { removeAll() }
        if (entries.count + 1) * 2 > slots.count { grow() }
        entries.append(Entry(hash: hash, keyStart: Int32(keyBytes.count), keyCount: Int32(end - start),
                             valueStart: Int32(values.count), valueCount: Int32(ids.count)))
        keyBytes.append(contentsOf: bytes[start..<end])
        values.append(contentsOf: ids)
        place(entries.count - 1)
    }

    private mutating func place(_ index: Int) {
        let mask = slots.count - 1
        var slot = Int(truncatingIfNeeded: entries[index].hash) & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = Int32(index)
    }

    private mutating func grow() {
        slots = [Int32](repeating: -1, count: slots.count * 2)
        for index in entries.indices { place(index) }
    }

    private mutating func removeAll() {
        slots = [Int32](repeating: -1, count: 1 << 12)
        entries.removeAll(keepingCapacity: true)
        keyBytes.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
    }
}
