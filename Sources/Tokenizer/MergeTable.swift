/// An open-addressing hash map from a pair of adjacent token ids to the merge that joins them.
struct MergeTable: Sendable {
    private static let empty = UInt64.max
    private var keys: [UInt64]
    private var values: [UInt64]
    private let shift: UInt64

    /// Creates an empty table sized for `count` merges.
    init(capacity count: Int) {
        var bits: UInt64 = 4
        while (1 << bits) < count * 2 { bits += 1 }
        keys = Array(repeating: Self.empty, count: 1 << bits)
        values = Array(repeating: 0, count: 1 << bits)
        shift = 64 - bits
    }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always)
    private func slot(for key: UInt64) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// Records that `left right` merges into `merged` at `rank`, replacing an earlier entry for the pair.
    mutating func insert(left: Int32, right: Int32, rank: Int32, merged: Int32) {
        let key = Self.key(left, right)
        var index = slot(for: key)
        while keys[index] != Self.empty && keys[index] != key { index = (index + 1) & (keys.count - 1) }
        keys[index] = key
        values[index] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    /// The merge for `left right` packed as `rank << 32 | merged`, or nil when the pair never merges.
    @inline(__always)
    func lookup(_ left: Int32, _ right: Int32) -> UInt64? {
        let key = Self.key(left, right)
        var index = slot(for: key)
        while true {
            let stored = keys[index]
            if stored == key { return values[index] }
            if stored == Self.empty { return nil }
            index = (index + 1) & (keys.count - 1)
        }
    }
}
