import Checkpoint
import Foundation
import Import
import Model

/// tokenizer.json and tokenizer_config.json for a byte-level BPE tokenizer, built from the checkpoint's own
/// `TokenizerSpec` (tokens, merges, token types, special ids, pre-tokenizer), in the layout of Hugging Face
/// `tokenizers` files: a BPE model with the vocabulary and merges, the pre-tokenizer our importer recognises,
/// ByteLevel decoding, and control / user-defined tokens as added tokens.
enum TokenizerFiles {
    static func tokenizerJSON(_ spec: TokenizerSpec) throws -> JSONValue {
        guard spec.model == "gpt2" else { throw ExportError("tokenizer model '\(spec.model)' cannot be exported (supported: gpt2, byte-level BPE)") }
        guard let pre = Importer.hfPreTokenizer(named: spec.pre).map(withTrimOffsets) else {
            throw ExportError("tokenizer pre-tokenizer '\(spec.pre)' has no tokenizer.json form here (supported: gpt2, smollm, llama3, qwen2)")
        }
        var vocab: [String: JSONValue] = [:]
        vocab.reserveCapacity(spec.tokens.count)
        for (i, t) in spec.tokens.enumerated() { vocab[t] = .int(i) }
        var added: [JSONValue] = []
        for (i, t) in spec.tokens.enumerated() {
            guard let type = spec.tokenTypes?[i], type == 3 || type == 4 else { continue }
            added.append(.object(["id": .int(i), "content": .string(t), "single_word": .bool(false), "lstrip": .bool(false),
                                  "rstrip": .bool(false), "normalized": .bool(false), "special": .bool(type == 3)]))
        }
        let merges: [JSONValue] = spec.merges.map { m in
            .array(m.split(separator: " ", maxSplits: 1).map { .string(String($0)) })
        }
        var post: JSONValue = .object(["type": .string("ByteLevel"), "add_prefix_space": .bool(false), "trim_offsets": .bool(false), "use_regex": .bool(false)])
        if spec.addBosToken, let bos = spec.bosTokenID {
            let name = spec.tokens[Int(bos)]
            post = .object([
                "type": .string("TemplateProcessing"),
                "single": .array([.object(["SpecialToken": .object(["id": .string(name), "type_id": .int(0)])]),
                                  .object(["Sequence": .object(["id": .string("A"), "type_id": .int(0)])])]),
                "pair": .array([.object(["SpecialToken": .object(["id": .string(name), "type_id": .int(0)])]),
                                .object(["Sequence": .object(["id": .string("A"), "type_id": .int(0)])]),
                                .object(["SpecialToken": .object(["id": .string(name), "type_id": .int(1)])]),
                                .object(["Sequence": .object(["id": .string("B"), "type_id": .int(1)])])]),
                "special_tokens": .object([name: .object(["id": .string(name), "ids": .array([.int(Int(bos))]), "tokens": .array([.string(name)])])]),
            ])
        }
        return .object([
            "version": .string("1.0"), "truncation": .null, "padding": .null, "added_tokens": .array(added),
            "normalizer": .null, "pre_tokenizer": pre, "post_processor": post,
            "decoder": .object(["type": .string("ByteLevel"), "add_prefix_space": .bool(true), "trim_offsets": .bool(true), "use_regex": .bool(true)]),
            "model": .object([
                "type": .string("BPE"), "dropout": .null, "unk_token": .null, "continuing_subword_prefix": .null,
                "end_of_word_suffix": .null, "fuse_unk": .bool(false), "byte_fallback": .bool(false),
                "ignore_merges": .bool(Importer.hfPreTokenizer(named: spec.pre) == Importer.hfPreTokenizer(named: "llama3")),
                "vocab": .object(vocab), "merges": .array(merges),
            ]),
        ])
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
        return .object([
            "tokenizer_class": .string("PreTrainedTokenizerFast"), "add_bos_token": .bool(spec.addBosToken),
            "add_eos_token": .bool(false), "bos_token": token(spec.bosTokenID), "eos_token": token(spec.eosTokenID),
            "unk_token": .null, "clean_up_tokenization_spaces": .bool(false), "model_max_length": .int(maxLength),
        ])
    }
}
