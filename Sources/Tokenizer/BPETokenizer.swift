/// A byte-level BPE tokenizer that reproduces Hugging Face `tokenizers` for GPT-2-style vocabularies.
///
/// Encoding first cuts out added tokens (control and user-defined tokens, and BOS/EOS) wherever
/// they occur literally in the raw text, leftmost and longest first; every stretch between them is
/// normalized on its own if there is a normalizer (NFC), pre-tokenized with the chosen regex, and each
/// piece's UTF-8 bytes are merged by rank.
public final class BPETokenizer: Sendable {
    private let preTokenizer: PreTokenizer
    /// The token id of each single byte, or -1.
    private let byteTokens: [Int32]
    private let merges: MergeTable
    /// Tokens matched literally before pre-tokenization.
    private let addedTokens: AddedTokenMatcher
    /// The bytes each token decodes to: token `i` is `tokenBytes[tokenOffsets[i] ..< tokenOffsets[i + 1]]`.
    private let tokenBytes: [UInt8]
    private let tokenOffsets: [Int32]
    /// Every token by its bytes, when the pre-tokenizer ignores merges for pieces that are tokens.
    private let wholeTokens: [[UInt8]: Int32]?
    /// Applied to each stretch between added tokens before pre-tokenization, if any.
    private let normalizer: TextNormalizer?

    /// Builds a tokenizer from a vocabulary and merges spelled in GPT-2's byte-to-unicode alphabet.
    ///
    /// - Parameters:
    ///   - tokens: Token strings by id, as in `tokenizer.ggml.tokens` (e.g. `"Ġthe"`).
    ///   - merges: Merge rules `"left right"` by rank, as in `tokenizer.ggml.merges`.
    ///   - preTokenizer: The regex that splits text into pieces before merging.
    ///   - tokenTypes: `tokenizer.ggml.token_type`; types 3 (control) and 4 (user-defined) are matched whole.
    ///   - bosTokenID: The beginning-of-sequence token, also matched whole; never added by `encode`.
    ///   - eosTokenID: The end-of-sequence token, also matched whole.
    ///   - normalizer: Applied to the text between added tokens before pre-tokenization (nil: none).
    /// - Throws: `TokenizerError` for duplicate tokens, malformed merges, merges whose parts or result
    ///   are not tokens, a `tokenTypes` count that differs from `tokens`, or out-of-range special ids.
    public init(tokens: [String], merges: [String], preTokenizer: PreTokenizer, tokenTypes: [Int32]? = nil,
                bosTokenID: Int32?, eosTokenID: Int32?, normalizer: TextNormalizer? = nil) throws {
        guard tokens.count < Int(Int32.max) else { throw TokenizerError("too many tokens: \(tokens.count)") }
        if let tokenTypes, tokenTypes.count != tokens.count {
            throw TokenizerError("token_type has \(tokenTypes.count) entries but there are \(tokens.count) tokens")
        }
        self.preTokenizer = preTokenizer
        self.normalizer = normalizer

        // Tokens are keyed by the bytes they spell; one outside the byte alphabet spells its own UTF-8,
        // as Hugging Face re-spells such tokens when it loads a GGUF vocabulary.
        var ids = [[UInt8]: Int32](minimumCapacity: tokens.count)
        var tokenBytes: [UInt8] = []
        var tokenOffsets: [Int32] = [0]
        tokenOffsets.reserveCapacity(tokens.count + 1)
        for (index, token) in tokens.enumerated() {
            let bytes = ByteLevel.decode(token) ?? Array(token.utf8)
            if let earlier = ids.updateValue(Int32(index), forKey: bytes) {
                throw TokenizerError("duplicate token '\(token)' at ids \(earlier) and \(index)")
            }
            tokenBytes.append(contentsOf: bytes)
            tokenOffsets.append(Int32(tokenBytes.count))
        }
        self.tokenBytes = tokenBytes
        self.tokenOffsets = tokenOffsets
        byteTokens = (0..<256).map { ids[[UInt8($0)]] ?? -1 }
        wholeTokens = preTokenizer.ignoresMerges ? ids : nil

        var table = MergeTable(capacity: merges.count)
        for (rank, merge) in merges.enumerated() {
            let parts = merge.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw TokenizerError("merge \(rank) '\(merge)' is not two tokens separated by one space")
            }
            var lookedUp: [Int32] = []
            var joined: [UInt8] = []
            for part in parts {
                guard let bytes = ByteLevel.decode(String(part)), let id = ids[bytes] else {
                    throw TokenizerError("merge \(rank) '\(merge)': '\(part)' is not a token")
                }
                lookedUp.append(id)
                joined += bytes
            }
            guard let merged = ids[joined] else {
                throw TokenizerError("merge \(rank) '\(merge)': '\(parts[0])\(parts[1])' is not a token")
            }
            // A repeated pair keeps its last rank, as in Hugging Face's merge map.
            table.insert(left: lookedUp[0], right: lookedUp[1], rank: Int32(rank), merged: merged)
        }
        self.merges = table

        var added: [Int32] = []
        for (name, id) in [("BOS", bosTokenID), ("EOS", eosTokenID)] {
            guard let id else { continue }
            guard id >= 0, Int(id) < tokens.count else {
                throw TokenizerError("\(name) token id \(id) is outside the vocabulary of \(tokens.count) tokens")
            }
            added.append(id)
        }
        if let tokenTypes {
            added += tokenTypes.indices.filter { tokenTypes[$0] == 3 || tokenTypes[$0] == 4 }.map { Int32($0) }
        }
        // Hugging Face adds only tokens spelled in the byte alphabet, and matches that spelling literally.
        var seen = Set<Int32>()
        addedTokens = AddedTokenMatcher(added
            .filter { seen.insert($0).inserted && !tokens[Int($0)].isEmpty && ByteLevel.decode(tokens[Int($0)]) != nil }
            .map { AddedTokenMatcher.Token(bytes: Array(tokens[Int($0)].utf8), id: $0) })
    }

    /// The number of tokens in the vocabulary.
    public var vocabularySize: Int { tokenOffsets.count - 1 }

    /// The token ids of `text`, without BOS or any other added special token.
    public func encode(_ text: String) -> [Int32] {
        var text = text
        return text.withUTF8 { encode(utf8: $0) }
    }

    /// The text that `ids` spell; ids outside the vocabulary are skipped, invalid UTF-8 becomes U+FFFD.
    public func decode(_ ids: [Int32]) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        tokenBytes.withUnsafeBufferPointer { all in
            for id in ids where id >= 0 && Int(id) < vocabularySize {
                bytes.append(contentsOf: all[Int(tokenOffsets[Int(id)]) ..< Int(tokenOffsets[Int(id) + 1])])
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The pieces the pre-tokenizer cuts `text` into, ignoring added tokens (for tests).
    func preTokenize(_ text: String) -> [String] {
        var text = text
        return text.withUTF8 { bytes in
            let classes = characterClasses(of: bytes)
            var pieces: [String] = []
            classes.withUnsafeBufferPointer { classes in
                PreTokenizerScanner(bytes: bytes, classes: classes)
                    .forEachPiece(preTokenizer, from: 0, to: bytes.count) { start, end in
                        pieces.append(String(decoding: bytes[start..<end], as: UTF8.self))
                    }
            }
            return pieces
        }
    }

    private func characterClasses(of bytes: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: bytes.count) { buffer, initialized in
            CharacterClass.classify(bytes, into: buffer, currentNumbers: preTokenizer == .smollm)
            initialized = bytes.count
        }
    }

    private func encode(utf8 bytes: UnsafeBufferPointer<UInt8>) -> [Int32] {
        guard !bytes.isEmpty else { return [] }
        var output: [Int32] = []
        output.reserveCapacity(bytes.count / 3 + 1)
        var cache = WordCache()
        var merger = BytePairMerger()
        var position = 0
        while position < bytes.count {
            let added = addedTokens.next(in: bytes, from: position)
            if position < added.start {
                let stretch = UnsafeBufferPointer(rebasing: bytes[position..<added.start])
                if let normalizer, TextNormalizer.mayChange(stretch) {
                    var normalized = normalizer.apply(String(decoding: stretch, as: UTF8.self))
                    normalized.withUTF8 { encodeStretch($0, into: &output, cache: &cache, merger: &merger) }
                } else {
                    encodeStretch(stretch, into: &output, cache: &cache, merger: &merger)
                }
            }
            if let id = added.id { output.append(id) }
            position = added.end
        }
        return output
    }

    /// Appends the ids of text holding no added token: pre-tokenized, each piece merged (or looked up, when merges
    /// are ignored for whole tokens). `cache` holds the ids of pieces seen before, by their bytes.
    private func encodeStretch(_ bytes: UnsafeBufferPointer<UInt8>, into output: inout [Int32], cache: inout WordCache,
                               merger: inout BytePairMerger) {
        let classes = characterClasses(of: bytes)
        let byteTokens = byteTokens, merges = merges, preTokenizer = preTokenizer, wholeTokens = wholeTokens
        classes.withUnsafeBufferPointer { classes in
            let scanner = PreTokenizerScanner(bytes: bytes, classes: classes)
            scanner.forEachPiece(preTokenizer, from: 0, to: bytes.count) { start, end in
                if end - start == 1 {
                    let id = byteTokens[Int(bytes[start])]
                    if id >= 0 { output.append(id) }
                    return
                }
                let hash = WordCache.hash(bytes, start, end)
                if let cached = cache.lookup(hash, bytes, start, end) {
                    output.append(contentsOf: cache.values[cached])
                    return
                }
                let first = output.count
                if let id = wholeTokens?[Array(bytes[start..<end])] {
                    output.append(id)
                } else {
                    merger.merge(bytes, start, end, byteTokens: byteTokens, merges: merges, into: &output)
                }
                cache.insert(hash, bytes, start, end, ids: output[first...])
            }
        }
    }
}
