import Diagnostics
import Checkpoint
import Foundation
import Import
import Model
import Tokenizer

/// tokenizer.json and tokenizer_config.json built from the checkpoint's own `TokenizerSpec`, in the layout of Hugging
/// Face `tokenizers` files. Byte-level BPE: a BPE model with the vocabulary and merges, the normalizer (NFC or null),
/// the pre-tokenizer our importer recognises, ByteLevel decoding, and control / user-defined tokens as added tokens.
/// SentencePiece: a BPE model with
/// byte fallback and the merges (listed, or derived as transformers derives them from a GGUF), the normalizer /
/// Metaspace pre-tokenizer of the spacing rule (as Gemma's and Llama 2's files have them), "▁"-to-space and
/// byte-fallback decoding, and unknown, control and user-defined tokens as added tokens; the importer reads it back to
/// the same tokenizer.
enum TokenizerFiles {
    /// tokenizer.json's bytes. The vocabulary object is written from the tokens' bytes in id order, not through
    /// `JSONValue` (whose objects are keyed by Swift Strings, which compare by canonical equivalence and would fold
    /// tokens that differ only in Unicode normalization, as Gemma's "é" and "e\u{301}" do).
    static func tokenizerJSON(_ spec: TokenizerSpec) throws -> [UInt8] {
        let (object, vocab) = spec.model == "llama" ? try sentencePieceJSON(spec) : try byteLevelJSON(spec)
        let placeholder = Array(JSONValue.string(vocabPlaceholder).prettyBytes.dropLast())
        let bytes = object.prettyBytes
        // From the end: only the keys after "model" (normalizer, ..., version) follow the vocabulary.
        guard let at = stride(from: bytes.count - placeholder.count, through: 0, by: -1).first(where: { i in
            bytes[i] == placeholder[0] && bytes[i..<i + placeholder.count].elementsEqual(placeholder)
        }) else {
            preconditionFailure("tokenizer.json without its vocabulary placeholder")
        }
        var entries: [UInt8] = [UInt8(ascii: "{")]
        entries.reserveCapacity(vocab.reduce(0) { $0 + $1.utf8.count + 24 })
        for (id, token) in vocab.enumerated() {
            if id > 0 { entries.append(UInt8(ascii: ",")) }
            entries.append(contentsOf: Array("\n      ".utf8))
            entries.append(contentsOf: JSONValue.string(token).prettyBytes.dropLast())
            entries.append(contentsOf: Array(": \(id)".utf8))
        }
        entries.append(contentsOf: Array("\n    }".utf8))
        return Array(bytes[..<at]) + entries + Array(bytes[(at + placeholder.count)...])
    }

    /// Stands for the vocabulary object in the `JSONValue` tree until `tokenizerJSON` writes it.
    static let vocabPlaceholder = "\u{0}vocabulary\u{0}"

    /// The tokenizer.json object of a byte-level BPE tokenizer (its vocabulary a placeholder) and the vocabulary.
    static func byteLevelJSON(_ spec: TokenizerSpec) throws -> (JSONValue, [String]) {
        guard spec.model == "gpt2" else {
            throw ExportError(
                "tokenizer model '\(spec.model)' cannot be exported (supported: gpt2, byte-level BPE; llama, "
                    + "SentencePiece BPE)")
        }
        guard let pre = Importer.hfPreTokenizer(named: spec.pre).map(withTrimOffsets) else {
            throw ExportError(
                "tokenizer pre-tokenizer '\(spec.pre)' has no tokenizer.json form here (supported: gpt2, smollm, "
                    + "llama3, qwen2)")
        }
        try checkDistinct(spec.tokens)
        var added: [JSONValue] = []
        for (i, t) in spec.tokens.enumerated() {
            guard let type = spec.tokenTypes?[i], type == 3 || type == 4 else { continue }
            added.append(
                .object([
                    "id": .int(i), "content": .string(t), "single_word": .bool(false), "lstrip": .bool(false),
                    "rstrip": .bool(false), "normalized": .bool(false), "special": .bool(type == 3)
                ]))
        }
        let merges: [JSONValue] = spec.merges.map { m in
            .array(m.split(separator: " ", maxSplits: 1).map { .string(String($0)) })
        }
        let post =
            template(spec)
            ?? .object([
                "type": .string("ByteLevel"), "add_prefix_space": .bool(false), "trim_offsets": .bool(false),
                "use_regex": .bool(false)
            ])
        return (
            .object([
                "version": .string("1.0"), "truncation": .null, "padding": .null, "added_tokens": .array(added),
                "normalizer": spec.normalizer.map { .object(["type": .string($0)]) } ?? .null,
                "pre_tokenizer": pre, "post_processor": post,
                "decoder": .object([
                    "type": .string("ByteLevel"), "add_prefix_space": .bool(true), "trim_offsets": .bool(true),
                    "use_regex": .bool(true)
                ]),
                "model": .object([
                    "type": .string("BPE"), "dropout": .null, "unk_token": .null, "continuing_subword_prefix": .null,
                    "end_of_word_suffix": .null, "fuse_unk": .bool(false), "byte_fallback": .bool(false),
                    "ignore_merges": .bool(
                        Importer.hfPreTokenizer(named: spec.pre) == Importer.hfPreTokenizer(named: "llama3")),
                    "vocab": .string(vocabPlaceholder), "merges": .array(merges),
                ]),
            ]), spec.tokens
        )
    }

    /// Refuses a vocabulary holding the same token twice (by bytes): a tokenizer.json vocabulary maps each token to
    /// one id.
    static func checkDistinct(_ tokens: [String]) throws {
        var seen: [[UInt8]: Int] = [:]
        seen.reserveCapacity(tokens.count)
        for (i, t) in tokens.enumerated() {
            if let j = seen.updateValue(i, forKey: Array(t.utf8)) {
                throw ExportError(
                    "tokenizer.json cannot be written: tokens \(j) and \(i) are both '\(t.prefix(20))' (a vocabulary "
                        + "maps each token to one id)")
            }
        }
    }

    /// The unknown token: the one of type 2, else a control token spelled "<unk>" (Gemma's GGUF marks its <unk>
    /// control).
    static func unknownToken(_ spec: TokenizerSpec) -> Int? {
        spec.tokenTypes?.firstIndex(of: 2)
            ?? spec.tokens.indices.first { spec.tokens[$0] == "<unk>" && spec.tokenTypes?[$0] == 3 }
    }

    /// SentencePiece's padding piece: a control token spelled "<pad>" (Gemma's id 0); the spec keeps no padding id.
    static func paddingToken(_ spec: TokenizerSpec) -> Int? {
        guard spec.model == "llama" else { return nil }
        return spec.tokens.indices.first { spec.tokens[$0] == "<pad>" && spec.tokenTypes?[$0] == 3 }
    }

    /// A TemplateProcessing post-processor that puts BOS before (and, with `add_eos_token`, EOS after) each text, or
    /// nil when nothing is added.
    static func template(_ spec: TokenizerSpec) -> JSONValue? {
        func special(_ id: Int32?, _ wanted: Bool) -> (name: String, id: Int32)? {
            guard wanted, let id else { return nil }
            return (spec.tokens[Int(id)], id)
        }
        let bos = special(spec.bosTokenID, spec.addBosToken), eos = special(spec.eosTokenID, spec.addEosToken ?? false)
        guard bos != nil || eos != nil else { return nil }
        func token(_ t: (name: String, id: Int32)?, _ typeID: Int) -> [JSONValue] {
            t.map { [.object(["SpecialToken": .object(["id": .string($0.name), "type_id": .int(typeID)])])] } ?? []
        }
        func sequence(_ name: String, _ typeID: Int) -> JSONValue {
            .object(["Sequence": .object(["id": .string(name), "type_id": .int(typeID)])])
        }
        var specials: [String: JSONValue] = [:]
        for t in [bos, eos].compactMap({ $0 }) {
            specials[t.name] = .object([
                "id": .string(t.name), "ids": .array([.int(Int(t.id))]), "tokens": .array([.string(t.name)])
            ])
        }
        return .object([
            "type": .string("TemplateProcessing"),
            "single": .array(token(bos, 0) + [sequence("A", 0)] + token(eos, 0)),
            "pair": .array(
                token(bos, 0) + [sequence("A", 0)] + token(eos, 0)
                    + token(bos, 1) + [sequence("B", 1)] + token(eos, 1)),
            "special_tokens": .object(specials),
        ])
    }

    /// The tokenizer.json object of a SentencePiece tokenizer (model "llama"; its vocabulary a placeholder) and the
    /// vocabulary. Listed merges are written as they are. Derived ones (a tokenizer read from a GGUF) are derived as
    /// our tokenizer and transformers derive them (`SentencePieceTokenizer.mergeList`: by score, or by transformers'
    /// Gemma rule, which also respells whitespace tokens holding a space with "▁", "  " as "▁▁"), so transformers'
    /// tokenizer from this file equals the one it builds from the GGUF: the same vocabulary, merges, normalizer,
    /// decoder and added tokens (types 2, 3, 4, except respelled tokens, which merging reaches).
    static func sentencePieceJSON(_ spec: TokenizerSpec) throws -> (JSONValue, [String]) {
        let tokens: [String], merges: [(String, String)]
        if spec.merges.isEmpty {
            let source: SentencePieceMerges
            if spec.mergeOrder == "gemma" {
                source = .gemma
            } else if let scores = spec.scores {
                source = .scores(scores)
            } else {
                throw ExportError(
                    "tokenizer: a SentencePiece tokenizer without merges needs scores or merge_order gemma to derive "
                        + "them")
            }
            do {
                let tokenizer = try SentencePieceTokenizer(
                    tokens: spec.tokens, tokenTypes: spec.tokenTypes, merges: source,
                    spacing: SentencePieceSpacing(name: spec.pre),
                    bosTokenID: spec.bosTokenID, eosTokenID: spec.eosTokenID)
                (tokens, merges) = tokenizer.mergeList()
            } catch { throw error.adding(place: "tokenizer") }
        } else {
            tokens = spec.tokens
            // Split at the space byte: "▁ह ै" is a space then a combining sign, one Character to Swift.
            merges = spec.merges.map { m in
                let parts = m.utf8.split(separator: UInt8(ascii: " "), maxSplits: 1).map {
                    String(decoding: $0, as: UTF8.self)
                }
                return (parts.first ?? "", parts.count > 1 ? parts[1] : "")
            }
        }
        try checkDistinct(tokens)
        let split = spec.pre.hasSuffix("+split")
        let prefix = split ? String(spec.pre.dropLast("+split".count)) : spec.pre
        let space = JSONValue.object([
            "type": .string("Replace"), "pattern": .object(["String": .string(" ")]), "content": .string("\u{2581}")
        ])
        let prepend = JSONValue.object(["type": .string("Prepend"), "prepend": .string("\u{2581}")])
        func metaspace(_ scheme: String) -> JSONValue {
            .object([
                "type": .string("Metaspace"), "replacement": .string("\u{2581}"), "prepend_scheme": .string(scheme),
                "split": .bool(split)
            ])
        }
        let normalizer: JSONValue, preTokenizer: JSONValue
        switch prefix {
        case "no-prefix": (normalizer, preTokenizer) = split ? (.null, metaspace("never")) : (space, .null)
        case "prefix-first": (normalizer, preTokenizer) = (.null, metaspace("first"))
        case "prefix-always": (normalizer, preTokenizer) = (.null, metaspace("always"))
        case "prefix-every":
            (normalizer, preTokenizer) = (
                .object(["type": .string("Sequence"), "normalizers": .array([prepend, space])]),
                split ? metaspace("never") : .null
            )
        default:
            throw ExportError(
                "tokenizer spacing '\(spec.pre)' has no tokenizer.json form here (supported: no-prefix, prefix-first, "
                    + "prefix-always, prefix-every, each optionally +split)")
        }
        var added: [JSONValue] = []
        for (i, t) in tokens.enumerated() {
            // A respelled token ("▁▁" for "  ") is reached by merging, not matched whole (transformers' Gemma builder).
            guard let type = spec.tokenTypes?[i], [2, 3, 4].contains(type), Array(t.utf8) == Array(spec.tokens[i].utf8)
            else { continue }
            added.append(
                .object([
                    "id": .int(i), "content": .string(t), "single_word": .bool(false), "lstrip": .bool(false),
                    "rstrip": .bool(false), "normalized": .bool(false), "special": .bool(type != 4)
                ]))
        }
        let unk = unknownToken(spec).map { JSONValue.string(tokens[$0]) } ?? .null
        var decoders: [JSONValue] = [
            .object([
                "type": .string("Replace"), "pattern": .object(["String": .string("\u{2581}")]), "content": .string(" ")
            ]),
            .object(["type": .string("ByteFallback")]), .object(["type": .string("Fuse")])
        ]
        if prefix != "no-prefix" {
            decoders.append(
                .object(["type": .string("Strip"), "content": .string(" "), "start": .int(1), "stop": .int(0)]))
        }
        return (
            .object([
                "version": .string("1.0"), "truncation": .null, "padding": .null, "added_tokens": .array(added),
                "normalizer": normalizer, "pre_tokenizer": preTokenizer, "post_processor": template(spec) ?? .null,
                "decoder": .object(["type": .string("Sequence"), "decoders": .array(decoders)]),
                "model": .object([
                    "type": .string("BPE"), "dropout": .null, "unk_token": unk, "continuing_subword_prefix": .null,
                    "end_of_word_suffix": .null, "fuse_unk": .bool(true), "byte_fallback": .bool(true),
                    "ignore_merges": .bool(false),
                    "vocab": .string(vocabPlaceholder),
                    "merges": .array(merges.map { .array([.string($0.0), .string($0.1)]) }),
                ]),
            ]), tokens
        )
    }

    /// `tokenizers` requires ByteLevel's `trim_offsets` (it only moves offsets; the importer ignores it).
    static func withTrimOffsets(_ v: JSONValue) -> JSONValue {
        switch v {
        case .object(var o):
            if o["type"] == .string("ByteLevel"), o["trim_offsets"] == nil { o["trim_offsets"] = .bool(true) }
            return .object(o.mapValues(withTrimOffsets))
        case .array(let a): return .array(a.map(withTrimOffsets))
        default: return v
        }
    }

    static func tokenizerConfig(_ spec: TokenizerSpec, maxLength: Int) -> JSONValue {
        func token(_ id: Int32?) -> JSONValue { id.map { .string(spec.tokens[Int($0)]) } ?? .null }
        var o: [String: JSONValue] = [
            "tokenizer_class": .string("PreTrainedTokenizerFast"), "add_bos_token": .bool(spec.addBosToken),
            "add_eos_token": .bool(spec.addEosToken ?? false), "bos_token": token(spec.bosTokenID),
            "eos_token": token(spec.eosTokenID),
            "unk_token": spec.model == "llama" ? token(unknownToken(spec).map { Int32($0) }) : .null,
            "clean_up_tokenization_spaces": .bool(false),
            "model_max_length": .int(maxLength),
        ]
        if let pad = paddingToken(spec) { o["pad_token"] = .string(spec.tokens[pad]) }
        return .object(o)
    }
}
