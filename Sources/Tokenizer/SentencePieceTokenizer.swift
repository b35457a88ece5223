/// A SentencePiece BPE tokenizer (GGUF `tokenizer.ggml.model = llama`; tokenizer.json BPE with `byte_fallback`) that
/// reproduces the tokenizer Hugging Face builds from the same file.
///
/// Encoding:
/// 1. Added tokens are cut out wherever they occur literally in the text, leftmost and longest first: control (type 3),
///    user-defined (type 4) and unknown (type 2) tokens, and BOS/EOS (transformers registers them all as added tokens
///    with `normalized: false`; llama.cpp too matches control and user-defined tokens whole). Under
///    `SentencePieceMerges.gemma`, whitespace tokens respelled with "▁" are not added tokens.
/// 2. Each stretch between them: spaces become "▁" and a "▁" may be put in front (`SentencePieceSpacing`); with
///    `splitWords` it is cut before every "▁".
/// 3. Each piece starts as one symbol per Unicode scalar: the scalar's token, or else its UTF-8 bytes as the byte
///    tokens `<0x00>` ... `<0xFF>` (byte fallback).
/// 4. Symbols merge by rank, the best-ranked adjacent pair first, leftmost first among equals (`SentencePieceMerges`).
public final class SentencePieceTokenizer: TextTokenizer {
    private static let metaspace: [UInt8] = Array("\u{2581}".utf8)  // E2 96 81

    private let spacing: SentencePieceSpacing
    private let mergeSource: SentencePieceMerges
    /// Every token by its spelling (after `SentencePieceMerges.gemma`'s respelling).
    private let table: TokenTable
    /// The token of each ASCII scalar, or -1; other one-scalar tokens are in `scalarTokens`.
    private let asciiTokens: [Int32]
    private let scalarTokens: [UInt32: Int32]
    /// The byte token `<0xXX>` of each byte.
    private let byteTokens: [Int32]
    private let merges: MergeTable
    private let addedTokens: AddedTokenMatcher
    /// What each token decodes to: its spelling with "▁" as a space, or the byte of a byte token.
    private let decodedBytes: [UInt8]
    private let decodedOffsets: [Int32]

    /// Builds a tokenizer.
    ///
    /// - Parameters:
    ///   - tokens: Token strings by id, with "▁" for spaces (`tokenizer.ggml.tokens`, or tokenizer.json's vocabulary).
    ///   - tokenTypes: `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte);
    ///     types 2, 3 and 4 are matched whole.
    ///   - merges: The merge rules, or how to derive them.
    ///   - spacing: How spaces become "▁".
    ///   - bosTokenID: The beginning-of-sequence token, also matched whole; never added by `encode`.
    ///   - eosTokenID: The end-of-sequence token, also matched whole.
    /// - Throws: `TokenizerError` for duplicate tokens (after respelling), a missing byte token, counts that differ
    ///   from the tokens', non-finite scores, malformed merges or merges of non-tokens, out-of-range special ids.
    public init(
        tokens: [String], tokenTypes: [Int32]? = nil, merges: SentencePieceMerges, spacing: SentencePieceSpacing,
        bosTokenID: Int32?, eosTokenID: Int32?
    ) throws {
        guard !tokens.isEmpty, tokens.count < Int(Int32.max) else {
            throw TokenizerError("\(tokens.count) tokens (expected 1...\(Int32.max - 1))")
        }
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw TokenizerError("token_type has \(tokenTypes.count) entries but there are \(tokens.count) tokens")
        }
        self.spacing = spacing
        mergeSource = merges
        let spelled = merges == .gemma ? tokens.map(SentencePieceMerges.gemmaSpelling) : tokens
        var table = TokenTable(capacity: tokens.count)
        var ascii = [Int32](repeating: -1, count: 128)
        var scalars: [UInt32: Int32] = [:]
        for (index, token) in spelled.enumerated() {
            if let earlier = table.append(token.utf8) {
                throw TokenizerError("duplicate token '\(token.prefix(40))' at ids \(earlier) and \(index)")
            }
            let unicode = token.unicodeScalars
            if unicode.count == 1, let scalar = unicode.first {
                if scalar.isASCII {
                    ascii[Int(scalar.value)] = Int32(index)
                } else {
                    scalars[scalar.value] = Int32(index)
                }
            }
        }
        var bytes = [Int32](repeating: -1, count: 256)
        for byte in 0..<256 {
            let name = Self.byteTokenName(UInt8(byte))
            guard let id = table.id(of: name.utf8) else {
                throw TokenizerError(
                    "byte fallback needs the 256 tokens <0x00> ... <0xFF>, but '\(name)' is not a token")
            }
            bytes[byte] = id
        }
        self.table = table
        asciiTokens = ascii
        scalarTokens = scalars
        byteTokens = bytes
        self.merges = try Self.mergeTable(merges, table: table, tokens: spelled)
        addedTokens = try Self.addedTokens(tokens: tokens, spelled: spelled, tokenTypes: tokenTypes,
                                           bosTokenID: bosTokenID, eosTokenID: eosTokenID)
        (decodedBytes, decodedOffsets) = Self.decodings(table, byteTokens: bytes)
    }

    /// `<0xXX>` with two upper-case hex digits, as SentencePiece, llama.cpp and Hugging Face spell byte tokens.
    static func byteTokenName(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return "<0x\(digits[Int(byte >> 4)])\(digits[Int(byte & 15)])>"
    }

    private static func mergeTable(
        _ merges: SentencePieceMerges, table: TokenTable, tokens: [String]
    ) throws -> MergeTable {
        switch merges {
        case .explicit(let rules):
            var result = MergeTable(capacity: rules.count)
            for (rank, rule) in rules.enumerated() {
                guard let (first, second) = splitMerge(rule) else {
                    throw TokenizerError("merge \(rank) '\(rule)' is not two tokens separated by one space")
                }
                guard let left = table.id(of: first), let right = table.id(of: second) else {
                    let missing = table.id(of: first) == nil ? first : second
                    throw TokenizerError(
                        "merge \(rank) '\(rule)': '\(String(decoding: missing, as: UTF8.self))' is not a token")
                }
                guard let merged = table.id(of: first + second) else {
                    throw TokenizerError(
                        "merge \(rank) '\(rule)': '\(String(decoding: first + second, as: UTF8.self))' is not a token")
                }
                // A repeated pair keeps its last rank, as in Hugging Face's merge map.
                result.insert(left: left, right: right, rank: Int32(rank), merged: merged)
            }
            return result
        case .scores(let scores):
            guard scores.count == tokens.count else {
                throw TokenizerError("scores has \(scores.count) entries but there are \(tokens.count) tokens")
            }
            if let bad = scores.firstIndex(where: { !$0.isFinite }) {
                throw TokenizerError("score of token \(bad) is \(scores[bad]) (expected a finite number)")
            }
            return ranked(SentencePieceMerges.derive(table) { Double(scores[$0]) })
        case .gemma:
            return ranked(SentencePieceMerges.derive(table) { -Double($0) })
        }
    }

    /// The two parts of a merge rule "left right", split at its one space byte (not by Characters: "▁ह ै" is one
    /// space followed by a combining vowel sign, which Swift's Character view would fuse into one grapheme).
    static func splitMerge(_ rule: String) -> ([UInt8], [UInt8])? {
        let bytes = Array(rule.utf8)
        guard let space = bytes.firstIndex(of: 0x20), space > 0, space + 1 < bytes.count,
              !bytes[(space + 1)...].contains(0x20) else { return nil }
        return (Array(bytes[..<space]), Array(bytes[(space + 1)...]))
    }

    private static func ranked(_ merges: [(left: Int32, right: Int32, merged: Int32)]) -> MergeTable {
        var result = MergeTable(capacity: merges.count)
        for (rank, merge) in merges.enumerated() {
            result.insert(left: merge.left, right: merge.right, rank: Int32(rank), merged: merge.merged)
        }
        return result
    }

    private static func addedTokens(tokens: [String], spelled: [String], tokenTypes: [Int32]?,
                                    bosTokenID: Int32?, eosTokenID: Int32?) throws -> AddedTokenMatcher {
        var added: [Int32] = []
        for (name, id) in [("BOS", bosTokenID), ("EOS", eosTokenID)] {
            guard let id else { continue }
            guard id >= 0, Int(id) < tokens.count else {
                throw TokenizerError("\(name) token id \(id) is outside the vocabulary of \(tokens.count) tokens")
            }
            added.append(id)
        }
        if let tokenTypes {
            // A respelled token (Gemma's "  " as "▁▁") is not in transformers' vocabulary under its file spelling, so
            // transformers does not add it.
            added += tokenTypes.indices
                .filter { [2, 3, 4].contains(tokenTypes[$0]) && tokens[$0].utf8.elementsEqual(spelled[$0].utf8) }
                .map { Int32($0) }
        }
        return AddedTokenMatcher(added.map { AddedTokenMatcher.Token(bytes: Array(tokens[Int($0)].utf8), id: $0) })
    }

    private static func decodings(_ table: TokenTable, byteTokens: [Int32]) -> ([UInt8], [Int32]) {
        var byteOf = [Int16](repeating: -1, count: table.count)
        for (byte, id) in byteTokens.enumerated() { byteOf[Int(id)] = Int16(byte) }
        var bytes: [UInt8] = [], offsets: [Int32] = [0]
        bytes.reserveCapacity(table.bytes.count)
        offsets.reserveCapacity(table.count + 1)
        for id in 0..<table.count {
            if byteOf[id] >= 0 {
                bytes.append(UInt8(byteOf[id]))
            } else {
                let spelling = table.spelling(Int32(id))
                var index = spelling.startIndex
                while index < spelling.endIndex {
                    if spelling[index...].starts(with: metaspace) {
                        bytes.append(0x20)
                        index += 3
                    } else {
                        bytes.append(spelling[index])
                        index += 1
                    }
                }
            }
            offsets.append(Int32(bytes.count))
        }
        return (bytes, offsets)
    }

    /// The number of tokens in the vocabulary.
    public var vocabularySize: Int { table.count }

    /// The tokens as this tokenizer spells them (after `SentencePieceMerges.gemma`'s respelling) and its merge rules as
    /// (left, right) pairs in rank order: the vocabulary and merges of a Hugging Face BPE model that tokenizes the same
    /// way (for derived merges, the list transformers derives from the same GGUF). Listed merges come back as given.
    public func mergeList() -> (tokens: [String], merges: [(String, String)]) {
        let tokens = (0..<table.count).map { String(decoding: table.spelling(Int32($0)), as: UTF8.self) }
        let ranked: [(left: Int32, right: Int32, merged: Int32)]
        switch mergeSource {
        case .explicit(let rules):
            return (tokens, rules.map { rule in
                let parts = Self.splitMerge(rule) ?? ([], [])  // checked when the tokenizer was built
                return (String(decoding: parts.0, as: UTF8.self), String(decoding: parts.1, as: UTF8.self))
            })
        case .scores(let scores): ranked = SentencePieceMerges.derive(table) { Double(scores[$0]) }
        case .gemma: ranked = SentencePieceMerges.derive(table) { -Double($0) }
        }
        return (tokens, ranked.map { (tokens[Int($0.left)], tokens[Int($0.right)]) })
    }

    /// The token ids of `text`, without BOS, EOS or any other token added around it.
    public func encode(_ text: String) -> [Int32] {
        var text = text
        return text.withUTF8 { bytes in
            var output: [Int32] = []
            output.reserveCapacity(bytes.count / 3 + 1)
            var scratch = Scratch()
            var position = 0
            while position < bytes.count {
                let added = addedTokens.next(in: bytes, from: position)
                if added.start > position { encodeStretch(bytes, position, added.start, into: &output, &scratch) }
                if let id = added.id { output.append(id) }
                position = added.end
            }
            return output
        }
    }

    /// Per-call buffers: the normalized stretch, the merger and the cache of merged pieces.
    private struct Scratch {
        var normalized: [UInt8] = []
        var merger = BytePairMerger()
        var cache = WordCache()
    }

    /// Normalizes `bytes[start..<end]` (a stretch between added tokens) and appends its ids.
    private func encodeStretch(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int,
                               into output: inout [Int32], _ scratch: inout Scratch) {
        let startsWithSpace = bytes[start] == 0x20
            || (end - start >= 3 && bytes[start] == 0xE2 && bytes[start + 1] == 0x96 && bytes[start + 2] == 0x81)
        let prefix: Bool
        switch spacing.prefix {
        case .none: prefix = false
        case .first: prefix = start == 0 && !startsWithSpace
        case .always: prefix = !startsWithSpace
        case .every: prefix = true
        }
        scratch.normalized.removeAll(keepingCapacity: true)
        if prefix { scratch.normalized += Self.metaspace }
        for index in start..<end {
            if bytes[index] == 0x20 {
                scratch.normalized += Self.metaspace
            } else {
                scratch.normalized.append(bytes[index])
            }
        }
        let normalized = scratch.normalized
        normalized.withUnsafeBufferPointer { text in
            guard spacing.splitWords else {
                encodePiece(text, 0, text.count, into: &output, &scratch)
                return
            }
            var wordStart = 0, index = 0
            while index < text.count {
                if index > wordStart, text[index] == 0xE2, index + 2 < text.count, text[index + 1] == 0x96,
                    text[index + 2] == 0x81
                {
                    encodePiece(text, wordStart, index, into: &output, &scratch)
                    wordStart = index
                }
                index += CharacterClass.utf8Length(text[index])
            }
            encodePiece(text, wordStart, text.count, into: &output, &scratch)
        }
    }

    /// Appends the ids of the normalized piece `text[start..<end]`: its scalars' tokens (or byte tokens), merged.
    private func encodePiece(_ text: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int,
                             into output: inout [Int32], _ scratch: inout Scratch) {
        let hash = WordCache.hash(text, start, end)
        if let cached = scratch.cache.lookup(hash, text, start, end) {
            output.append(contentsOf: scratch.cache.values[cached])
            return
        }
        let first = output.count
        scratch.merger.begin()
        var index = start
        while index < end {
            let lead = text[index]
            if lead < 0x80, asciiTokens[Int(lead)] >= 0 {
                scratch.merger.append(asciiTokens[Int(lead)])
                index += 1
                continue
            }
            let length = CharacterClass.utf8Length(lead)
            var value = UInt32(lead) & (length == 1 ? 0x7F : length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
            for position in index + 1..<min(index + length, end) { value = value << 6 | UInt32(text[position] & 0x3F) }
            if lead >= 0x80, let id = scalarTokens[value] {
                scratch.merger.append(id)
            } else {
                for position in index..<min(index + length, end) {
                    scratch.merger.append(byteTokens[Int(text[position])])
                }
            }
            index += length
        }
        scratch.merger.finish(merges: merges, into: &output)
        scratch.cache.insert(hash, text, start, end, ids: output[first...])
    }

    /// The text that `ids` spell: byte tokens as their bytes, "▁" as a space, and the space a prefix rule adds removed
    /// from the front (Hugging Face's `Replace`, `ByteFallback`, `Fuse` and `Strip` decoders). Ids outside the
    /// vocabulary are skipped; invalid UTF-8 becomes U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        decodedBytes.withUnsafeBufferPointer { all in
            for id in ids where id >= 0 && Int(id) < vocabularySize {
                bytes.append(contentsOf: all[Int(decodedOffsets[Int(id)]) ..< Int(decodedOffsets[Int(id) + 1])])
            }
        }
        if spacing.prefix != .none, bytes.first == 0x20 { bytes.removeFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }
}
