/// Token ids by the bytes they spell, looked up from a slice of any byte buffer without allocating.
///
/// Token `i` is `bytes[offsets[i] ..< offsets[i + 1]]`; an open-addressing table of ids keyed by FNV-1a finds a
/// spelling. Tokens are appended in id order.
struct TokenTable: Sendable {
    private(set) var bytes: [UInt8] = []
    private(set) var offsets: [Int32] = [0]
    private var slots: [Int32]
    private var hashes: [UInt64] = []

    /// An empty table sized for `count` tokens.
    init(capacity count: Int) {
        var size = 16
        while size < count * 2 { size *= 2 }
        slots = [Int32](repeating: -1, count: size)
        hashes.reserveCapacity(count)
        offsets.reserveCapacity(count + 1)
    }

    /// The number of tokens appended.
    var count: Int { offsets.count - 1 }

    /// Appends the next token (id `count`); returns the id of an earlier token with the same bytes, if any (the new
    /// id then keeps its bytes but is not found by `id(of:)`).
    mutating func append<C: Collection<UInt8>>(_ token: C) -> Int32? {
        let id = Int32(count)
        bytes.append(contentsOf: token)
        offsets.append(Int32(bytes.count))
        let start = Int(offsets[Int(id)]), end = bytes.count
        let hash = bytes.withUnsafeBufferPointer { Self.hash($0, start, end) }
        hashes.append(hash)
        if let earlier = bytes.withUnsafeBufferPointer({ find(hash, $0, start, end) }) { return earlier }
        let mask = slots.count - 1
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] >= 0 { slot = (slot + 1) & mask }
        slots[slot] = id
        return nil
    }

    /// The id of the token spelled by `buffer[start..<end]`.
    @inline(__always)
    func id(_ buffer: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Int32? {
        find(Self.hash(buffer, start, end), buffer, start, end)
    }

    /// The id of the token spelled by `token`.
    func id<C: Collection<UInt8>>(of token: C) -> Int32? {
        let array = Array(token)
        return array.withUnsafeBufferPointer { id($0, 0, $0.count) }
    }

    /// The bytes of token `id`.
    func spelling(_ id: Int32) -> ArraySlice<UInt8> {
        bytes[Int(offsets[Int(id)]) ..< Int(offsets[Int(id) + 1])]
    }

    private func find(_ hash: UInt64, _ buffer: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Int32? {
        let mask = slots.count - 1
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] >= 0 {
            let candidate = Int(slots[slot])
            if hashes[candidate] == hash, matches(candidate, buffer, start, end) { return Int32(candidate) }
            slot = (slot + 1) & mask
        }
        return nil
    }

    private func matches(_ id: Int, _ buffer: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> Bool {
        let from = Int(offsets[id]), to = Int(offsets[id + 1])
        guard to - from == end - start else { return false }
        for offset in 0 ..< to - from where bytes[from + offset] != buffer[start + offset] { return false }
        return true
    }

    /// FNV-1a over `buffer[start..<end]`.
    @inline(__always)
    static func hash(_ buffer: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for index in start..<end { hash = (hash ^ UInt64(buffer[index])) &* 0x100_0000_01B3 }
        return hash
    }
}
