/// How a SentencePiece tokenizer turns spaces into "▁" (U+2581) before merging, and where it adds a "▁" in front.
///
/// The prefix rules are Hugging Face `tokenizers`' (each applies to every stretch of text between added tokens, as
/// `tokenizers` normalizes and pre-tokenizes those stretches one by one):
/// - `none`: no "▁" is added (Gemma; GGUF `add_space_prefix` false).
/// - `first`: "▁" before the stretch that starts the text, unless it already starts with a space or "▁" (`Metaspace`
///   with `prepend_scheme` "first": transformers' Llama tokenizer, also the one it builds from a `llama` GGUF).
/// - `always`: "▁" before every stretch that does not start with a space or "▁" (`Metaspace`, `prepend_scheme`
///   "always", or the older `add_prefix_space: true`).
/// - `every`: "▁" before every non-empty stretch, whatever it starts with (a `Prepend("▁")` normalizer, as in Llama 2's
///   and Mistral's tokenizer.json).
///
/// llama.cpp's rule differs: with `add_space_prefix` it adds a space before the text and after every special token
/// (its `is_prev_special`), whether or not one is there; texts that start with a space, or that hold special tokens,
/// can then tokenize differently from Hugging Face's.
///
/// `splitWords` is `Metaspace`'s `split: true`: every "▁" starts a new word (the "▁" kept at the word's start) and no
/// merge crosses from one word into the next.
public struct SentencePieceSpacing: Equatable, Sendable {
    /// Where "▁" is added in front of the text (see the type's documentation).
    public enum Prefix: String, Sendable, CaseIterable {
        case none = "no-prefix"
        case first = "prefix-first"
        case always = "prefix-always"
        case every = "prefix-every"
    }

    public var prefix: Prefix
    public var splitWords: Bool

    public init(prefix: Prefix, splitWords: Bool = false) {
        self.prefix = prefix
        self.splitWords = splitWords
    }

    /// The name a checkpoint stores (`TokenizerSpec.pre` for SentencePiece): the prefix rule, then "+split" when
    /// words are split, e.g. "no-prefix", "prefix-first+split".
    public var name: String { prefix.rawValue + (splitWords ? "+split" : "") }

    /// Parses a `name`; throws naming the supported names otherwise.
    public init(name: String) throws {
        let split = name.hasSuffix("+split")
        guard let prefix = Prefix(rawValue: split ? String(name.dropLast("+split".count)) : name) else {
            let names = Prefix.allCases.map(\.rawValue).joined(separator: ", ")
            throw TokenizerError(
                "unknown SentencePiece spacing '\(name)' (supported: \(names), each optionally followed by +split)")
        }
        self.init(prefix: prefix, splitWords: split)
    }
}
