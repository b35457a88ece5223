/// The regex that cuts text into words before byte-level BPE, as Hugging Face applies it.
public enum PreTokenizer: String, Sendable {
    /// GPT-2's ByteLevel regex: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    case gpt2
    /// SmolLM2: every `\p{N}` scalar split off on its own (`Digits(individual_digits)`), then the GPT-2 regex.
    case smollm
    /// Llama 3 (`llama-bpe` in GGUF): case-insensitive contractions, one-scalar word prefixes, numbers in threes;
    /// merges are ignored for a piece that is a token (`ignoresMerges`).
    case llama3
    /// Qwen2 (`qwen2` in GGUF): the Split regex of Qwen2.5's tokenizer.json, which transformers also builds from a
    /// `qwen2` GGUF and llama.cpp applies for its LLAMA_VOCAB_PRE_TYPE_QWEN2 — Llama 3's regex with numbers one
    /// scalar at a time (`\p{N}` for `\p{N}{1,3}`). Merges are not ignored (tokenizer.json `"ignore_merges": false`;
    /// llama.cpp sets ignore_merges only for its LLAMA3 pre-type).
    case qwen2

    /// Whether a piece that is itself a vocabulary entry becomes that token without merging: Hugging Face's
    /// `"ignore_merges": true`, which the Llama 3 tokenizers set and llama.cpp applies to its LLAMA3 pre-type.
    public var ignoresMerges: Bool { self == .llama3 }

    /// The pre-tokenizer named by a GGUF file's `tokenizer.ggml.pre` value.
    public init(ggufName: String) throws {
        switch ggufName {
        case "gpt2", "gpt-2": self = .gpt2  // llama.cpp writes "gpt-2"
        case "smollm": self = .smollm
        case "llama3", "llama-bpe", "llama-v3": self = .llama3
        case "qwen2": self = .qwen2
        default: throw TokenizerError("unknown pre-tokenizer '\(ggufName)' (supported: gpt2, smollm, llama-bpe, qwen2)")
        }
    }
}

/// Hand-written matchers for the pre-tokenizer regexes over UTF-8 bytes and their character classes.
///
/// Each `…Match(at:end:)` returns the end of the regex's leftmost match starting at `start`, with
/// `end` standing for the end of the input (which `(?!\S)` can see).
struct PreTokenizerScanner {
    let bytes: UnsafeBufferPointer<UInt8>
    let classes: UnsafeBufferPointer<UInt8>

    private typealias C = CharacterClass
    private static let apostrophe = UInt8(ascii: "'")

    /// Calls `body` with the byte range of each piece of `start..<end`, in order.
    @inline(__always)
    func forEachPiece(_ kind: PreTokenizer, from start: Int, to end: Int, _ body: (Int, Int) -> Void) {
        var position = start
        switch kind {
        case .gpt2:
            while position < end {
                let next = gpt2Match(at: position, end: end)
                body(position, next)
                position = next
            }
        case .llama3, .qwen2:
            let maxDigits = kind == .llama3 ? 3 : 1
            while position < end {
                let next = llama3Match(at: position, end: end, maxDigits: maxDigits)
                body(position, next)
                position = next
            }
        case .smollm:
            while position < end {
                if classes[position] == C.number {
                    let next = position + C.utf8Length(bytes[position])
                    body(position, next)
                    position = next
                    continue
                }
                let segmentEnd = run(of: { $0 != C.number }, from: position, end: end)
                while position < segmentEnd {
                    let next = gpt2Match(at: position, end: segmentEnd)
                    body(position, next)
                    position = next
                }
            }
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    func gpt2Match(at start: Int, end: Int) -> Int {
        if bytes[start] == Self.apostrophe, let next = contraction(at: start, end: end, ignoringCase: false) {
            return next
        }
        var first = start
        if classes[start] == C.space, start + 1 < end, classes[start + 1] <= C.other { first = start + 1 }
        let cls = classes[first]
        if cls <= C.other { return run(of: { $0 == cls }, from: first + 1, end: end) }
        return trailingWhitespace(at: start, runEnd: run(of: { $0 >= C.space }, from: start, end: end), end: end)
    }

    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`:
    /// Llama 3's regex with `maxDigits` 3, Qwen2's (`\p{N}` alone) with 1.
    func llama3Match(at start: Int, end: Int, maxDigits: Int) -> Int {
        if bytes[start] == Self.apostrophe, let next = contraction(at: start, end: end, ignoringCase: true) {
            return next
        }
        let cls = classes[start]
        if cls == C.letter { return run(of: { $0 == C.letter }, from: start + 1, end: end) }
        if cls != C.newline, cls != C.number {
            let next = start + C.utf8Length(bytes[start])
            if next < end, classes[next] == C.letter { return run(of: { $0 == C.letter }, from: next + 1, end: end) }
        }
        if cls == C.number {
            var next = start + C.utf8Length(bytes[start])
            for _ in 1..<maxDigits {
                guard next < end, classes[next] == C.number else { break }
                next += C.utf8Length(bytes[next])
            }
            return next
        }
        var first = start
        if cls == C.space, start + 1 < end, classes[start + 1] == C.other { first = start + 1 }
        if classes[first] == C.other {
            let next = run(of: { $0 == C.other }, from: first + 1, end: end)
            return run(of: { $0 == C.newline }, from: next, end: end)
        }
        let runEnd = run(of: { $0 >= C.space }, from: start, end: end)
        var last = runEnd - 1
        while last >= start, classes[last] != C.newline { last -= 1 }
        if last >= start { return last + 1 }
        return trailingWhitespace(at: start, runEnd: runEnd, end: end)
    }

    /// `\s+(?!\S)|\s+` for the whitespace run `start..<runEnd`.
    @inline(__always)
    private func trailingWhitespace(at start: Int, runEnd: Int, end: Int) -> Int {
        if runEnd == end { return runEnd }
        var last = runEnd - 1
        while bytes[last] & 0xC0 == 0x80 { last -= 1 }
        return last > start ? last : runEnd
    }

    /// The end of the run of bytes from `start` whose class satisfies `member`.
    @inline(__always)
    private func run(of member: (UInt8) -> Bool, from start: Int, end: Int) -> Int {
        var index = start
        while index < end, member(classes[index]) { index += 1 }
        return index
    }

    /// The end of the contraction `'s|'t|'re|'ve|'m|'ll|'d` at `start` (which holds `'`), if any.
    private func contraction(at start: Int, end: Int, ignoringCase: Bool) -> Int? {
        func letter(_ offset: Int) -> UInt8 {
            guard start + offset < end else { return 0 }
            let byte = bytes[start + offset]
            return ignoringCase && (0x41...0x5A).contains(byte) ? byte | 0x20 : byte
        }
        switch letter(1) {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"):
            return start + 2
        case UInt8(ascii: "r"), UInt8(ascii: "v"):
            return letter(2) == UInt8(ascii: "e") ? start + 3 : nil
        case UInt8(ascii: "l"):
            return letter(2) == UInt8(ascii: "l") ? start + 3 : nil
        case 0xC5 where ignoringCase && letter(2) == 0xBF:
            return start + 3  // U+017F LATIN SMALL LETTER LONG S case-folds to "s"
        default:
            return nil
        }
    }
}
