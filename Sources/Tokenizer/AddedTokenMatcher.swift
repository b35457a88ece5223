/// Finds added tokens (control, user-defined, BOS/EOS) spelled literally in UTF-8 text, leftmost first and, among
/// those starting at the same byte, longest first (Hugging Face's `AddedVocabulary`, an Aho-Corasick automaton with
/// leftmost-longest matching; equal spellings cannot occur since tokens are distinct).
///
/// Candidates are bucketed by their first two bytes (tokens of one byte apart), so a vocabulary with thousands of
/// `<unusedN>` tokens costs one bucket scan per `<u` in the text, not one comparison per token per `<`.
struct AddedTokenMatcher: Sendable {
    struct Token: Sendable {
        let bytes: [UInt8]
        let id: Int32
    }

    /// Tokens of two or more bytes by their first two bytes (`b0 << 8 | b1`), longest first.
    private let buckets: [UInt16: [Token]]
    /// Whether some token of two or more bytes starts with this byte.
    private let leads: [Bool]
    /// The token that is exactly this one byte, or -1.
    private let singles: [Int32]
    let isEmpty: Bool

    /// Builds a matcher for `tokens` (empty spellings are ignored; a repeated spelling keeps its first id).
    init(_ tokens: [Token]) {
        var buckets: [UInt16: [Token]] = [:]
        var leads = [Bool](repeating: false, count: 256)
        var singles = [Int32](repeating: -1, count: 256)
        for token in tokens where !token.bytes.isEmpty {
            if token.bytes.count == 1 {
                if singles[Int(token.bytes[0])] < 0 { singles[Int(token.bytes[0])] = token.id }
                continue
            }
            buckets[UInt16(token.bytes[0]) << 8 | UInt16(token.bytes[1]), default: []].append(token)
            leads[Int(token.bytes[0])] = true
        }
        self.buckets = buckets.mapValues { $0.sorted { ($0.bytes.count, -$0.id) > ($1.bytes.count, -$1.id) } }
        self.leads = leads
        self.singles = singles
        isEmpty = buckets.isEmpty && !singles.contains { $0 >= 0 }
    }

    /// The leftmost added token at or after `start` (longest first), or an empty match at the end.
    func next(in bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (start: Int, end: Int, id: Int32?) {
        let count = bytes.count
        guard !isEmpty else { return (count, count, nil) }
        for index in start..<count {
            let lead = bytes[index]
            if leads[Int(lead)], index + 1 < count,
               let bucket = buckets[UInt16(lead) << 8 | UInt16(bytes[index + 1])] {
                for token in bucket where token.bytes.count <= count - index {
                    var offset = 2
                    while offset < token.bytes.count, token.bytes[offset] == bytes[index + offset] { offset += 1 }
                    if offset == token.bytes.count { return (index, index + offset, token.id) }
                }
            }
            let single = singles[Int(lead)]
            if single >= 0 { return (index, index + 1, single) }
        }
        return (count, count, nil)
    }
}
