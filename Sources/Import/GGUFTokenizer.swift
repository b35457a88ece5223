import Diagnostics
import GGUF
import Checkpoint
import Model

// MARK: GGUF tokenizer

extension Importer {
    /// The tokenizer of a GGUF file's `tokenizer.ggml.*` metadata: byte-level BPE for `tokenizer.ggml.model` "gpt2",
    /// SentencePiece BPE for "llama"; nil when the file has none. Other models (Unigram "t5", WordPiece "bert", ...),
    /// unknown `tokenizer.*` keys and settings we do not implement are refused, naming the key (`checkGGUFKeys`).
    /// `preTokenizer` replaces `tokenizer.ggml.pre` (byte-level) or the spacing rule (SentencePiece).
    static func ggufTokenizer(
        _ file: GGUFFile, family: any ModelFamily.Type, preTokenizer: String? = nil
    ) throws -> TokenizerSpec? {
        guard let kind = try file.ifPresent("tokenizer.ggml.model", file.string) else {
            if let key = file.metadata.keys.sorted().first(where: { $0.hasPrefix("tokenizer.ggml.") }) {
                throw ImportError(
                    "\(file.path): \(key) is present but tokenizer.ggml.model is missing (expected gpt2 or llama)")
            }
            return nil
        }
        try checkGGUFKeys(file, model: kind)
        let spec: TokenizerSpec
        switch kind {
        case "gpt2": spec = try ggufByteLevelTokenizer(file, preTokenizer: preTokenizer)
        case "llama": spec = try ggufSentencePieceTokenizer(file, preTokenizer: preTokenizer)
        default:
            throw ImportError(
                "\(file.path): tokenizer.ggml.model '\(kind)' is not supported (supported: gpt2, byte-level BPE; "
                    + "llama, SentencePiece BPE with byte fallback)")
        }
        if let problem = spec.problem(vocabSize: nil) {
            throw ImportError("\(file.path): tokenizer.ggml.*: \(problem)")
        }
        return spec
    }

    /// Byte-level BPE. `tokenizer.ggml.pre` is required (llama.cpp falls back to its own "default" pre-tokenizer
    /// without one, which we do not implement) unless `preTokenizer` names one; `add_space_prefix` must be false
    /// (as tokenizer.json's ByteLevel `add_prefix_space`; llama.cpp ignores it for BPE, so the two readers of
    /// such a file would disagree).
    private static func ggufByteLevelTokenizer(_ file: GGUFFile, preTokenizer: String?) throws -> TokenizerSpec {
        let types = try ggufTokenTypes(file)
        let tokens = try file.strings("tokenizer.ggml.tokens")
        let merges = try file.ifPresent("tokenizer.ggml.merges", file.strings)
        if merges == nil {
            // Byte-level BPE reaches a multi-byte token only through merges; without them every text would be
            // spelled in single bytes (llama.cpp refuses such files). Added tokens (types 3, 4) are matched whole.
            let multiByte = tokens.indices.filter { i in
                tokens[i].unicodeScalars.count > 1
                    && !(types.map { $0.indices.contains(i) && ($0[i] == 3 || $0[i] == 4) } ?? false)
            }
            if let first = multiByte.first {
                throw ImportError(
                    "\(file.path): tokenizer.ggml.merges is missing, but tokenizer.ggml.tokens holds "
                        + "\(multiByte.count) multi-byte tokens (e.g. id \(first) '\(tokens[first])'); expected the "
                        + "merges that build them (byte-level BPE cannot reach them otherwise)")
            }
        }
        let named = try file.ifPresent("tokenizer.ggml.pre", file.string).map { $0 == "gpt-2" ? "gpt2" : $0 }
        guard let pre = preTokenizer ?? named else {
            throw ImportError(
                "\(file.path): tokenizer.ggml.pre is missing (llama.cpp then uses its 'default' pre-tokenizer, which "
                    + "we do not implement; --pre-tokenizer NAME imports with gpt2, smollm, llama3 or qwen2)")
        }
        if preTokenizer == nil, try file.ifPresent("tokenizer.ggml.add_space_prefix", file.bool) == true {
            throw ImportError(
                "\(file.path): tokenizer.ggml.add_space_prefix is true with tokenizer.ggml.model gpt2 (supported: "
                    + "false; llama.cpp ignores it for byte-level BPE while a ByteLevel add_prefix_space adds a space, "
                    + "so the file is ambiguous)")
        }
        return TokenizerSpec(
            model: "gpt2", pre: pre,
            tokens: tokens,
            merges: merges ?? [],
            tokenTypes: types,
            bosTokenID: try ggufTokenID(file, "tokenizer.ggml.bos_token_id", count: tokens.count),
            eosTokenID: try ggufTokenID(file, "tokenizer.ggml.eos_token_id", count: tokens.count),
            addBosToken: try file.ifPresent("tokenizer.ggml.add_bos_token", file.bool) ?? false,
            addEosToken: try file.ifPresent("tokenizer.ggml.add_eos_token", file.bool))
    }

    /// How transformers builds the tokenizer of a `llama` GGUF, by `general.architecture`
    /// (transformers/integrations/gguf/gguf_tokenizer_mapping.py, 5.25): Gemma 1-3 respell whitespace tokens and rank
    /// merges by vocabulary order, with no prefix space; Gemma 4 ranks by score, no prefix, no BOS; Phi-3 prepends "▁"
    /// to every stretch (a `Prepend` normalizer); every other architecture gets `LlamaTokenizer` (Metaspace, prefix
    /// "first"). transformers ignores `tokenizer.ggml.add_space_prefix`; where the file contradicts the builder we
    /// refuse.
    public static func sentencePieceRule(
        architecture: String
    ) -> (mergeOrder: String, spacing: String, prefix: Bool, addBos: Bool?) {
        switch architecture {
        case "gemma", "gemma2", "gemma3": ("gemma", "no-prefix", false, nil)
        case "gemma4": ("scores", "no-prefix", false, false)
        case "phi3": ("scores", "prefix-every", true, nil)
        default: ("scores", "prefix-first", true, nil)
        }
    }

    private static func ggufSentencePieceTokenizer(_ file: GGUFFile, preTokenizer: String?) throws -> TokenizerSpec {
        let path = file.path
        for (key, why) in [
            (
                "tokenizer.ggml.merges",
                "llama.cpp ignores them for a SentencePiece vocabulary and transformers uses them; expected the merges "
                    + "to follow from the scores"),
            ("tokenizer.ggml.precompiled_charsmap", "a SentencePiece normalization (e.g. NFKC) we do not implement")
        ]
        where file.metadata[key] != nil {
            throw ImportError("\(key) is not supported with tokenizer.ggml.model llama (\(why))",
                ErrorContext(file: path))
        }
        if let pre = try file.ifPresent("tokenizer.ggml.pre", file.string), pre != "default" {
            throw ImportError(
                "\(path): tokenizer.ggml.pre '\(pre)' is not supported with tokenizer.ggml.model llama (expected "
                    + "'default' or no key)")
        }
        let tokens = try file.strings("tokenizer.ggml.tokens")
        let architecture = try file.ifPresent("general.architecture", file.string) ?? ""
        let rule = sentencePieceRule(architecture: architecture)
        var scores: [Float]? = nil
        if let values = try file.ifPresent("tokenizer.ggml.scores", { try file.value($0) }) {
            let numbers = values.arrayValue?.compactMap { $0.doubleValue.map(Float.init) } ?? []
            guard values.arrayValue?.count == tokens.count, numbers.count == tokens.count else {
                throw ImportError(
                    "\(path): tokenizer.ggml.scores is not an array of \(tokens.count) numbers (one per token)")
            }
            if let bad = numbers.firstIndex(where: { !$0.isFinite }) {
                throw ImportError("tokenizer.ggml.scores[\(bad)] is \(numbers[bad]) (expected finite scores)",
                    ErrorContext(file: path))
            }
            scores = numbers
        } else if rule.mergeOrder == "scores" {
            throw ImportError("tokenizer.ggml.scores is missing (a SentencePiece vocabulary merges by score)",
                ErrorContext(file: path))
        }
        if preTokenizer == nil, let prefix = try file.ifPresent("tokenizer.ggml.add_space_prefix", file.bool),
            prefix != rule.prefix
        {
            throw ImportError(
                "\(path): tokenizer.ggml.add_space_prefix is \(prefix), but transformers builds a '\(architecture)' "
                    + "SentencePiece tokenizer \(rule.prefix ? "with" : "without") a prefix space (llama.cpp and "
                    + "transformers would disagree; not supported)")
        }
        let addBos = try file.ifPresent("tokenizer.ggml.add_bos_token", file.bool)
        if let forced = rule.addBos, let addBos, addBos != forced {
            throw ImportError(
                "\(path): tokenizer.ggml.add_bos_token is \(addBos), but transformers builds a '\(architecture)' "
                    + "tokenizer with add_bos_token \(forced) (not supported)")
        }
        return TokenizerSpec(
            model: "llama", pre: preTokenizer ?? rule.spacing, tokens: tokens, merges: [],
            tokenTypes: try ggufTokenTypes(file),
            bosTokenID: try ggufTokenID(file, "tokenizer.ggml.bos_token_id", count: tokens.count),
            eosTokenID: try ggufTokenID(file, "tokenizer.ggml.eos_token_id", count: tokens.count),
            addBosToken: addBos ?? rule.addBos ?? true,  // llama.cpp's and transformers' default for SentencePiece
            scores: scores, mergeOrder: rule.mergeOrder,
            addEosToken: try file.ifPresent("tokenizer.ggml.add_eos_token", file.bool))
    }

    static func ggufTokenTypes(_ file: GGUFFile) throws -> [Int32]? {
        try file.ifPresent("tokenizer.ggml.token_type") { key -> [Int32] in
            guard let a = try file.value(key).arrayValue else {
                throw ImportError("\(file.path): \(key) is not an array")
            }
            return try a.map {
                guard let i = $0.intValue else { throw ImportError("\(file.path): \(key) holds a non-integer") }
                guard let t = Int32(exactly: i), (1...6).contains(t) else {
                    throw ImportError("\(file.path): \(key) holds \(i) (expected token types 1...6)")
                }
                return t
            }
        }
    }

    static func ggufTokenID(_ file: GGUFFile, _ key: String, count: Int) throws -> Int32? {
        guard let i = try file.ifPresent(key, file.int) else { return nil }
        guard let v = Int32(exactly: i), v >= 0, Int(v) < count else {
            throw ImportError("\(file.path): \(key) is \(i) (expected a token id in 0..<\(count))")
        }
        return v
    }

    /// Every `tokenizer.*` key we know, with what it does to the ids of an encoded text.
    static let ggufTokenizerKeys: Set<String> = [
        // Read: the vocabulary and how it is used.
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_space_prefix",
        // Refused unless false (`checkGGUFKeys`).
        "tokenizer.ggml.add_sep_token", "tokenizer.ggml.remove_extra_whitespaces",
        // The chat template only formats conversations; it is not applied to text we encode.
        "tokenizer.chat_template",
    ]

    /// Ids of special tokens used by generation and infilling, never produced by encoding plain text: checked to be
    /// token ids, otherwise not read.
    static let ggufSpecialIDKeys: [String] = [
        "unknown_token_id", "padding_token_id", "seperator_token_id", "separator_token_id", "cls_token_id",
        "mask_token_id",
        "eot_token_id", "eom_token_id", "prefix_token_id", "suffix_token_id", "middle_token_id", "fim_pre_token_id",
        "fim_suf_token_id", "fim_mid_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id",
    ].map { "tokenizer.ggml." + $0 }

    /// Refuses an unknown `tokenizer.*` key and the settings we do not implement: `add_sep_token` and
    /// `remove_extra_whitespaces` true, `precompiled_charsmap` (a SentencePiece normalization), and an embedded
    /// `tokenizer.huggingface.json`. `tokenizer.ggml.scores` of a byte-level BPE is accepted: llama.cpp and
    /// transformers rank its merges by `tokenizer.ggml.merges` and never read the scores.
    static func checkGGUFKeys(_ file: GGUFFile, model: String) throws {
        let count = try file.strings("tokenizer.ggml.tokens").count
        for key in file.metadata.keys.sorted() where key.hasPrefix("tokenizer.") {
            if key == "tokenizer.ggml.precompiled_charsmap" {
                throw ImportError(
                    "\(file.path): \(key) is not supported (a SentencePiece normalization, e.g. NFKC, we do not "
                        + "implement)")
            }
            if ggufSpecialIDKeys.contains(key) { _ = try ggufTokenID(file, key, count: count); continue }
            // named chat templates: as tokenizer.chat_template
            if key.hasPrefix("tokenizer.chat_template.") { continue }
            guard ggufTokenizerKeys.contains(key) else {
                throw ImportError(
                    "\(file.path): \(key) is not a tokenizer key we know (a setting we do not read could change the "
                        + "ids; known: \(ggufTokenizerKeys.union(ggufSpecialIDKeys).sorted().joined(separator: ", ")))")
            }
        }
        for key in ["tokenizer.ggml.add_sep_token", "tokenizer.ggml.remove_extra_whitespaces"] {
            if try file.ifPresent(key, file.bool) == true {
                let what =
                    key.hasSuffix("sep_token")
                    ? "a separator appended to every text" : "whitespace runs collapsed before encoding"
                throw ImportError("\(file.path): \(key) is true (supported: false; \(what) is not implemented)")
            }
        }
    }
}
