import Checkpoint
import Foundation
import GGUF
@testable import Import
import Model
import XCTest

/// SentencePiece tokenizers read from GGUF `tokenizer.ggml.model = llama` metadata and from tokenizer.json (BPE with
/// byte fallback and "▁" for spaces), what is refused and how, and the spec's new fields in a checkpoint file.
final class SentencePieceImportTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("spm-import-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    /// 0 <unk>, 1 <s>, 2 </s>, 3...258 byte tokens, then "▁", "a", "b", "▁a", "ab".
    static let tokens = ["<unk>", "<s>", "</s>"] + (0..<256).map { String(format: "<0x%02X>", $0) } + ["\u{2581}", "a", "b", "\u{2581}a", "ab"]
    static let types: [Int32] = [2, 3, 3] + Array(repeating: 6, count: 256) + [1, 1, 1, 1, 1]
    static let scores: [Float] = [0, 0, 0] + Array(repeating: 0, count: 256) + [-10, -11, -12, -1, -2]

    /// A GGUF holding only metadata: the architecture and a `llama` tokenizer, changed by `edit`.
    func gguf(_ name: String, architecture: String = "llama", _ edit: (inout [String: GGUFValue]) -> Void = { _ in }) throws -> GGUFFile {
        var metadata: [String: GGUFValue] = [
            "general.architecture": .string(architecture),
            "tokenizer.ggml.model": .string("llama"),
            "tokenizer.ggml.tokens": .array(Self.tokens.map { .string($0) }),
            "tokenizer.ggml.scores": .array(Self.scores.map { .float32($0) }),
            "tokenizer.ggml.token_type": .array(Self.types.map { .int32($0) }),
            "tokenizer.ggml.bos_token_id": .uint32(1),
            "tokenizer.ggml.eos_token_id": .uint32(2),
        ]
        edit(&metadata)
        var writer = GGUFWriter()
        for key in metadata.keys.sorted() { writer.add(key, metadata[key]!) }
        let url = dir.appendingPathComponent(name + ".gguf")
        try Data(try writer.encoded()).write(to: url)
        return try GGUFFile(path: url.path)
    }

    func spec(_ file: GGUFFile) throws -> TokenizerSpec? { try Importer.ggufTokenizer(file, family: LlamaFamily.self) }

    func assertRefused(_ body: @autoclosure () throws -> Any?, _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            for part in parts { XCTAssertTrue("\(error)".contains(part), "\(error) lacks \(part)", file: file, line: line) }
        }
    }

    func testGGUFLlamaVocabulary() throws {
        let s = try XCTUnwrap(try spec(gguf("llama")))
        XCTAssertEqual(s.model, "llama")
        XCTAssertEqual(s.pre, "prefix-first")  // transformers' LlamaTokenizer: Metaspace, prepend_scheme "first"
        XCTAssertEqual(s.mergeOrder, "scores")
        XCTAssertEqual(s.scores, Self.scores)
        XCTAssertEqual(s.tokenTypes, Self.types)
        XCTAssertEqual(s.merges, [])
        XCTAssertEqual(s.bosTokenID, 1)
        XCTAssertEqual(s.eosTokenID, 2)
        XCTAssertTrue(s.addBosToken)  // the default for a SentencePiece vocabulary without the key
        XCTAssertNil(s.addEosToken)
        XCTAssertNil(s.problem(vocabSize: Self.tokens.count))
        let phi3 = try XCTUnwrap(try spec(gguf("phi3", architecture: "phi3") { $0["tokenizer.ggml.add_eos_token"] = .bool(true) }))
        XCTAssertEqual(phi3.pre, "prefix-every")
        XCTAssertEqual(phi3.addEosToken, true)
    }

    func testGGUFGemmaVocabulary() throws {
        let s = try XCTUnwrap(try spec(gguf("gemma3", architecture: "gemma3") {
            $0["tokenizer.ggml.add_space_prefix"] = .bool(false)
            $0["tokenizer.ggml.add_bos_token"] = .bool(true)
            $0["tokenizer.ggml.pre"] = .string("default")
        }))
        XCTAssertEqual(s.pre, "no-prefix")
        XCTAssertEqual(s.mergeOrder, "gemma")
        XCTAssertTrue(s.addBosToken)
    }

    func testGGUFSettingsWeDoNotImplementAreRefused() throws {
        assertRefused(try spec(gguf("gemma-prefix", architecture: "gemma3") { $0["tokenizer.ggml.add_space_prefix"] = .bool(true) }),
                      ["tokenizer.ggml.add_space_prefix is true", "'gemma3'", "without a prefix space"])
        assertRefused(try spec(gguf("llama-no-prefix") { $0["tokenizer.ggml.add_space_prefix"] = .bool(false) }),
                      ["tokenizer.ggml.add_space_prefix is false", "with a prefix space"])
        assertRefused(try spec(gguf("merges") { $0["tokenizer.ggml.merges"] = .array([.string("a b")]) }),
                      ["tokenizer.ggml.merges is not supported with tokenizer.ggml.model llama"])
        assertRefused(try spec(gguf("charsmap") { $0["tokenizer.ggml.precompiled_charsmap"] = .array([.uint8(0)]) }),
                      ["tokenizer.ggml.precompiled_charsmap is not supported"])
        assertRefused(try spec(gguf("t5") { $0["tokenizer.ggml.model"] = .string("t5") }),
                      ["tokenizer.ggml.model 't5' is not supported (supported: gpt2", "llama, SentencePiece"])
        assertRefused(try spec(gguf("no-scores") { $0["tokenizer.ggml.scores"] = nil }), ["tokenizer.ggml.scores is missing"])
        assertRefused(try spec(gguf("few-scores") { $0["tokenizer.ggml.scores"] = .array([.float32(0)]) }),
                      ["tokenizer.ggml.scores is not an array of 264 numbers"])
        assertRefused(try spec(gguf("pre") { $0["tokenizer.ggml.pre"] = .string("llama-bpe") }),
                      ["tokenizer.ggml.pre 'llama-bpe' is not supported with tokenizer.ggml.model llama"])
        assertRefused(try spec(gguf("gemma4", architecture: "gemma4") {
            $0["tokenizer.ggml.add_space_prefix"] = .bool(false)
            $0["tokenizer.ggml.add_bos_token"] = .bool(true)
        }), ["tokenizer.ggml.add_bos_token is true", "add_bos_token false"])
        assertRefused(try spec(gguf("dup") { $0["tokenizer.ggml.tokens"] = .array((Self.tokens.dropLast() + ["a"]).map { .string($0) }) }),
                      ["tokenizer.ggml.*", "is also tokens["])
    }

    // MARK: tokenizer.json

    func tokenizerJSON(_ name: String, normalizer: String = "null", preTokenizer: String = "null", postProcessor: String = "null",
                       model: String = #""type": "BPE", "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>""#,
                       added: String? = nil) throws -> String {
        let vocab = Self.tokens.enumerated().map { "\(String(decoding: try! JSONEncoder().encode($0.element), as: UTF8.self)): \($0.offset)" }
        let addedTokens = added ?? #"[{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}]"#
        let text = """
        {"version": "1.0", "added_tokens": \(addedTokens), "normalizer": \(normalizer), "pre_tokenizer": \(preTokenizer),
         "post_processor": \(postProcessor), "decoder": null,
         "model": {\(model), "vocab": {\(vocab.joined(separator: ", "))}, "merges": [["\u{2581}", "a"], "a b"]}}
        """
        let url = dir.appendingPathComponent(name + ".json")
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    static let replace = #"{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}"#
    static let prepend = #"{"type": "Prepend", "prepend": "▁"}"#
    static let bosTemplate = #"{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [], "special_tokens": {}}"#

    func testTokenizerJSONLlama2() throws {
        let s = try HFTokenizerJSON.read(tokenizerJSON("llama2", normalizer: #"{"type": "Sequence", "normalizers": [\#(Self.prepend), \#(Self.replace)]}"#,
                                                       postProcessor: Self.bosTemplate))
        XCTAssertEqual(s.model, "llama")
        XCTAssertEqual(s.pre, "prefix-every")
        XCTAssertEqual(s.merges, ["\u{2581} a", "a b"])
        XCTAssertEqual(s.tokenTypes, Self.types)  // unk 2 (unk_token), <s> </s> 3 (special), bytes 6
        XCTAssertEqual(s.bosTokenID, 1)
        XCTAssertEqual(s.eosTokenID, 2)
        XCTAssertTrue(s.addBosToken)
        XCTAssertNil(s.scores)
        XCTAssertNil(s.problem(vocabSize: nil))
    }

    func testTokenizerJSONSpacings() throws {
        func pre(_ normalizer: String, _ preTokenizer: String) throws -> String {
            try HFTokenizerJSON.read(tokenizerJSON(UUID().uuidString, normalizer: normalizer, preTokenizer: preTokenizer)).pre
        }
        let gemmaSplit = #"{"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}"#
        XCTAssertEqual(try pre(Self.replace, gemmaSplit), "no-prefix")
        XCTAssertEqual(try pre(Self.replace, "null"), "no-prefix")
        XCTAssertEqual(try pre("null", #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}"#), "prefix-first")
        // The older form: add_prefix_space true means prepend_scheme "always"; split defaults to true.
        XCTAssertEqual(try pre("null", #"{"type": "Metaspace", "replacement": "▁", "add_prefix_space": true}"#), "prefix-always+split")
        XCTAssertEqual(try pre("null", #"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true}"#), "no-prefix+split")
    }

    func testTokenizerJSONSettingsWeDoNotImplementAreRefused() throws {
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("unigram", model: #""type": "Unigram""#)),
                      ["model.type \"Unigram\"", "a Unigram model is not"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("no-fallback", normalizer: Self.replace, model: #""type": "BPE", "byte_fallback": false"#)),
                      ["model.byte_fallback is false"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("nfkc", normalizer: #"{"type": "Sequence", "normalizers": [{"type": "NFKC"}, \#(Self.replace)]}"#)),
                      ["normalizer", "NFKC", "is not supported"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("disagree", preTokenizer: #"{"type": "Metaspace", "replacement": "▁", "add_prefix_space": false, "prepend_scheme": "first"}"#)),
                      ["pre_tokenizer.add_prefix_space is false but prepend_scheme is 'first'"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("split-alone", preTokenizer: #"{"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}"#, model: #""type": "BPE", "byte_fallback": true"#)),
                      ["pre_tokenizer", "is not supported with a SentencePiece-style tokenizer"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("ignore", normalizer: Self.replace, model: #""type": "BPE", "byte_fallback": true, "ignore_merges": true"#)),
                      ["model.ignore_merges is true"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("dropout", normalizer: Self.replace, model: #""type": "BPE", "byte_fallback": true, "dropout": 0.1"#)),
                      ["model.dropout is 0.1"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("lstrip", normalizer: Self.replace, added: #"[{"id": 1, "content": "<s>", "special": true, "lstrip": true}]"#)),
                      ["added_tokens[0].lstrip is true"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("no-space", model: #""type": "BPE", "byte_fallback": true"#)),
                      ["neither normalizer nor pre_tokenizer turns spaces into"])
        assertRefused(try HFTokenizerJSON.read(tokenizerJSON("replacement", preTokenizer: #"{"type": "Metaspace", "replacement": "_"}"#)),
                      ["pre_tokenizer.replacement is \"_\""])
    }

    /// model.vocab is read from the file's bytes: tokens that differ only in Unicode normalization (NFC "é", NFD "é")
    /// stay two tokens (a Swift String-keyed object would fold them), escapes are decoded (\u, surrogate pairs, \"),
    /// and whitespace around values is allowed.
    func testTokenizerJSONVocabularyIsReadByBytes() throws {
        let base = Self.tokens.enumerated().map { "\(String(decoding: try! JSONEncoder().encode($0.element), as: UTF8.self)): \($0.offset)" }
        let extra = #""\u00e9" :  264 , "e\u0301"\#t:265,"\ud83d\ude00":266 ,  "\"q\\" : 267"#
        let text = """
        {"added_tokens": [], "normalizer": \(Self.replace), "pre_tokenizer": null, "post_processor": null,
         "model": {"type": "BPE", "byte_fallback": true, "vocab": {\(base.joined(separator: ", ")), \(extra)
         }, "merges": [["\u{2581}", "a"]]}}
        """
        let url = dir.appendingPathComponent("bytes.json")
        try text.write(to: url, atomically: true, encoding: .utf8)
        let s = try HFTokenizerJSON.read(url.path)
        XCTAssertEqual(s.tokens.count, 268)
        XCTAssertEqual(s.tokens[264...].map { Array($0.unicodeScalars) }, [["\u{E9}"], ["e", "\u{301}"], ["\u{1F600}"], ["\"", "q", "\\"]])
        XCTAssertNil(s.problem(vocabSize: nil))  // NFC and NFD "é" are distinct tokens
        try text.replacingOccurrences(of: "[[\"\u{2581}\", \"a\"]]", with: "[]").write(to: url, atomically: true, encoding: .utf8)
        assertRefused(try HFTokenizerJSON.read(url.path), ["model.merges is empty"])
    }

    // MARK: the spec in a checkpoint

    /// The "llama" fields travel through the HDF5 checkpoint (its /tokenizer JSON); a file written before them
    /// (no such keys) still reads, with them nil; problems with them are named.
    func testSpecFieldsInACheckpoint() throws {
        let config = ModelConfig(vocabSize: Self.tokens.count, hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 1,
                                 numAttentionHeads: 4, numKeyValueHeads: 2, ropeTheta: 500, tieWordEmbeddings: true)
        let spec = TokenizerSpec(model: "llama", pre: "no-prefix", tokens: Self.tokens, merges: [], tokenTypes: Self.types,
                                 bosTokenID: 1, eosTokenID: 2, addBosToken: true, scores: Self.scores, mergeOrder: "gemma", addEosToken: false)
        let path = dir.appendingPathComponent("spm.h5").path
        try Checkpoint(model: DecoderModel.random(config: config, seed: 1), tokenizer: spec).write(to: path)
        XCTAssertEqual(try Checkpoint.readTokenizer(path), spec)
        XCTAssertEqual(try Checkpoint.read(path).tokenizer, spec)

        let old = #"{"model": "gpt2", "pre": "gpt2", "tokens": ["a", "b", "ab"], "merges": ["a b"], "add_bos_token": false}"#
        let decoded = try JSONDecoder().decode(TokenizerSpec.self, from: Data(old.utf8))
        XCTAssertNil(decoded.scores)
        XCTAssertNil(decoded.mergeOrder)
        XCTAssertNil(decoded.addEosToken)
        XCTAssertNil(decoded.problem(vocabSize: nil))
        // A spec without the new fields encodes without their keys, as before.
        let encoded = String(decoding: try JSONEncoder().encode(decoded), as: UTF8.self)
        XCTAssertFalse(encoded.contains("scores") || encoded.contains("merge_order") || encoded.contains("add_eos_token"), encoded)

        var bad = spec
        bad.scores = [0]
        XCTAssertEqual(bad.problem(vocabSize: nil), "1 scores for 264 tokens (expected one per token)")
        bad.scores = Self.scores.map { $0 == -1 ? .infinity : $0 }
        XCTAssertEqual(bad.problem(vocabSize: nil), "scores[262] is inf (expected a finite number)")
        bad = spec
        bad.mergeOrder = "rank"
        XCTAssertEqual(bad.problem(vocabSize: nil), "merge_order 'rank' is not known (expected scores or gemma)")
        bad.mergeOrder = nil
        bad.scores = nil
        XCTAssertEqual(bad.problem(vocabSize: nil), "a llama tokenizer needs merges, scores, or merge_order gemma (found none)")
        bad = spec
        bad.model = "t5"
        XCTAssertEqual(bad.problem(vocabSize: nil), "model 't5' is not supported (expected gpt2, byte-level BPE, or llama, SentencePiece BPE with byte fallback)")
        bad = TokenizerSpec(model: "gpt2", pre: "gpt2", tokens: ["a"], merges: [], scores: [0])
        XCTAssertEqual(bad.problem(vocabSize: nil), "scores and merge_order belong to model llama, not gpt2")
    }
}
