/// Where a SentencePiece tokenizer's merge rules come from.
///
/// SentencePiece's BPE (and llama.cpp's `llm_tokenizer_spm`, which follows it) merges, again and again, the adjacent
/// pair of symbols whose concatenation is a token with the best score, leftmost first on ties. A GGUF `llama`
/// vocabulary stores the tokens and scores but no merges; transformers turns it into a Hugging Face BPE model by
/// listing every split of every token into two tokens as a merge, best result first (`generate_merges`). For distinct
/// scores both are the same algorithm; where scores tie, transformers' order (longer left part first) decides, and so
/// it does here.
public enum SentencePieceMerges: Sendable, Equatable {
    /// Merge rules "left right" by rank (a tokenizer.json BPE model's `merges`).
    case explicit([String])
    /// Derived from the vocabulary and one score per token (GGUF `tokenizer.ggml.scores`), as transformers does for a
    /// `llama` GGUF: every pair of tokens whose concatenation is a token, ranked by the result's score (highest first),
    /// then the longer left part, then the longer right part, then the result's id, then the parts' ids.
    case scores([Float])
    /// transformers' builder for Gemma, Gemma 2 and Gemma 3 GGUFs: a token made only of whitespace that holds a space
    /// is spelled with one "▁" per character ("  " becomes "▁▁", so it is reached by merging spaces and is not matched
    /// as a user-defined token), and the derived merges are ranked by the result's position in the vocabulary instead
    /// of its score (then the longer left part first).
    case gemma

    /// The spelling transformers' Gemma builder gives a token: "▁" per character for whitespace-only tokens that hold a
    /// space, the token itself otherwise. Whitespace is Python's `str.isspace` (Unicode White_Space and
    /// U+001C...U+001F).
    static func gemmaSpelling(_ token: String) -> String {
        let scalars = token.unicodeScalars
        guard scalars.contains(" "),
            scalars.allSatisfy({ $0.properties.isWhitespace || (0x1C...0x1F).contains($0.value) })
        else { return token }
        return String(repeating: "\u{2581}", count: scalars.count)
    }

    /// Every split of every token of `table` into two tokens, in rank order (see the cases).
    /// - Parameter priority: The result's priority by id (higher merges first).
    static func derive(_ table: TokenTable, priority: (Int) -> Double) -> [(left: Int32, right: Int32, merged: Int32)] {
        struct Candidate {
            var priority: Double
            var leftLength: Int32, rightLength: Int32
            var merged: Int32, left: Int32, right: Int32
        }
        var candidates: [Candidate] = []
        table.bytes.withUnsafeBufferPointer { all in
            for merged in 0..<table.count {
                let start = Int(table.offsets[merged]), end = Int(table.offsets[merged + 1])
                guard end - start > 1 else { continue }
                var total: Int32 = 0
                for index in start..<end where all[index] & 0xC0 != 0x80 { total += 1 }
                var leftLength: Int32 = 0
                for split in start + 1 ..< end where all[split] & 0xC0 != 0x80 {
                    leftLength += 1
                    guard let left = table.id(all, start, split), let right = table.id(all, split, end) else {
                        continue
                    }
                    candidates.append(
                        Candidate(
                            priority: priority(merged), leftLength: leftLength,
                            rightLength: total - leftLength, merged: Int32(merged), left: left, right: right))
                }
            }
        }
        candidates.sort { a, b in
            if a.priority != b.priority { return a.priority > b.priority }
            if a.leftLength != b.leftLength { return a.leftLength > b.leftLength }
            if a.rightLength != b.rightLength { return a.rightLength > b.rightLength }
            if a.merged != b.merged { return a.merged < b.merged }
            return (a.left, a.right) < (b.left, b.right)
        }
        return candidates.map { ($0.left, $0.right, $0.merged) }
    }
}
