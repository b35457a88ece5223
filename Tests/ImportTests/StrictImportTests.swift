import Checkpoint
import Foundation
@testable import Import
import Model
import XCTest

/// Unknown input is an error everywhere (issue "Reliability, second round", items 4 and 5): config.json and
/// tokenizer.json keys we do not read, tokenizer settings we do not implement (tokenizer.json and GGUF alike),
/// invalid UTF-8 and numbers past a 64-bit float are refused naming the file and key; `--pre-tokenizer`
/// imports a tokenizer whose pre-tokenizer is missing or unknown.
final class StrictImportTests: XCTestCase {
    var dir: URL!
    let gguf = ImportTests.fixtures.appendingPathComponent("tiny-llama.gguf").path
    let hf = ImportTests.fixtures.appendingPathComponent("tiny-llama-hf")

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("strict-import-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func assertError(_ body: @autoclosure () throws -> Any, _ fragments: [String], line: UInt = #line) {
        XCTAssertThrowsError(try body(), line: line) { error in
            for f in fragments { XCTAssertTrue("\(error)".contains(f), "missing '\(f)' in: \(error)", line: line) }
        }
    }

    /// A copy of the tiny HF directory with its config.json and tokenizer.json objects edited.
    func hfCopy(config: (inout [String: Any]) -> Void = { _ in }, tokenizer: (inout [String: Any]) -> Void = { _ in }) throws -> URL {
        let copy = dir.appendingPathComponent("hf-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: hf, to: copy)
        func edit(_ name: String, _ change: (inout [String: Any]) -> Void) throws {
            let url = copy.appendingPathComponent(name)
            var o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
            change(&o)
            try JSONSerialization.data(withJSONObject: o).write(to: url)
        }
        try edit("config.json", config)
        try edit("tokenizer.json", tokenizer)
        return copy
    }

    func replaceText(_ url: URL, _ of: String, _ with: [UInt8]) throws {
        let text = try Data(contentsOf: url)
        let range = try XCTUnwrap(text.range(of: Data(of.utf8)))
        var out = text
        out.replaceSubrange(range, with: with)
        try out.write(to: url)
    }

    func testConfigJSONUnknownKeysAreRefused() throws {
        XCTAssertNoThrow(try Importer.load(hf.path))  // the fixture's keys (transformers 5.23's LlamaConfig) are all known
        assertError(try Importer.load(hfCopy(config: { $0["sliding_window"] = 4096 }).path),
                    ["config.json: unknown key 'sliding_window' = 4096"])
        assertError(try Importer.load(hfCopy(config: { $0["attention_dropout"] = 0.1 }).path),
                    ["config.json: 'attention_dropout' is 0.1 (supported: 0"])
        // Qwen2's sliding-window keys are read by nobody while use_sliding_window is false.
        XCTAssertNoThrow(try Importer.load(hfCopy(config: { $0["use_sliding_window"] = false; $0["sliding_window"] = 4096 }).path))
    }

    func testConfigJSONOverflowAndInvalidUTF8NameTheirPlace() throws {
        let a = try hfCopy()
        try replaceText(a.appendingPathComponent("config.json"), "\"rope_type\"", Array("\"factor\": 1e400, \"rope_type\"".utf8))
        assertError(try Importer.load(a.path), ["config.json: $.rope_parameters.factor: number 1e400 overflows a 64-bit float"])
        let b = try hfCopy()
        let config = b.appendingPathComponent("config.json")
        let offset = try XCTUnwrap(try Data(contentsOf: config).range(of: Data("LlamaForCausalLM".utf8))).lowerBound
        try replaceText(config, "LlamaForCausalLM", [0xFF] + Array("lamaForCausalLM".utf8))
        assertError(try Importer.load(b.path), ["config.json: not valid UTF-8 at byte offset \(offset) (byte 0xFF)"])
        let c = try hfCopy()
        try replaceText(c.appendingPathComponent("tokenizer.json"), "\"version\"", Array("\"n\": -1E999, \"version\"".utf8))
        assertError(try Importer.load(c.path), ["tokenizer.json: $.n: number -1E999 overflows"])
    }

    func testTokenizerJSONUnknownKeysAndUnimplementedSettingsAreRefused() throws {
        let cases: [((inout [String: Any]) -> Void, [String])] = [
            ({ $0["extra"] = 1 }, ["tokenizer.json: unknown key 'extra'"]),
            ({ $0["truncation"] = ["max_length": 8] }, ["tokenizer.json: truncation is", "supported: null"]),
            ({ $0["padding"] = ["strategy": "BatchLongest"] }, ["tokenizer.json: padding is"]),
            ({ $0["normalizer"] = ["type": "NFKC"] },
             [#"normalizer of type "NFKC" is not supported"#, "--pre-tokenizer"]),
            ({ $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"], ["type": "Lowercase"]]] },
             [#"normalizer.normalizers[1] of type "Lowercase" is not supported with a byte-level BPE"#]),
            ({ $0["normalizer"] = ["type": "NFC", "extra": 1] }, [#"normalizer of type "NFC" is not supported"#]),
            ({ $0["decoder"] = ["type": "WordPiece"] }, [#"decoder {"type":"WordPiece"} is not supported"#]),
            ({ $0["post_processor"] = ["type": "RobertaProcessing"] }, ["post_processor", "RobertaProcessing", "is not supported"]),
            ({ $0["model"] = Self.model($0, ["dropout": 0.1]) }, ["model.dropout is 0.1"]),
            ({ $0["model"] = Self.model($0, ["continuing_subword_prefix": "##"]) }, ["model.continuing_subword_prefix is \"##\""]),
            ({ $0["model"] = Self.model($0, ["end_of_word_suffix": "</w>"]) }, ["model.end_of_word_suffix"]),
            ({ $0["model"] = Self.model($0, ["unk_token": "<unk>"]) }, [#"model.unk_token is "<unk>""#]),
            ({ $0["model"] = Self.model($0, ["cache_capacity": 10]) }, ["model.cache_capacity is not a BPE model key we know"]),
            ({ $0["added_tokens"] = [Self.added(["lstrip": true])] }, ["added_tokens[0].lstrip is true"]),
            ({ $0["added_tokens"] = [Self.added(["single_word": true])] }, ["added_tokens[0].single_word is true"]),
            ({ $0["added_tokens"] = [Self.added(["flag": true])] }, ["added_tokens[0].flag is not an added-token key"]),
        ]
        for (edit, fragments) in cases { assertError(try Importer.load(hfCopy(tokenizer: edit).path), fragments) }
        // No-op values are accepted: dropout null, an empty prefix, fuse_unk (no unknown token is ever produced).
        XCTAssertNoThrow(try Importer.load(hfCopy(tokenizer: {
            $0["model"] = Self.model($0, ["dropout": NSNull(), "continuing_subword_prefix": "", "fuse_unk": true])
            $0["added_tokens"] = [Self.added([:])]
        }).path))
    }

    /// Qwen2's NFC normalizer was refused (any normalizer on a byte-level BPE was): now NFC, alone or in a Sequence of
    /// NFC steps, is the spec's normalizer; `--pre-tokenizer` imports a file with another normalizer without it.
    func testByteLevelNFCNormalizerIsImported() throws {
        XCTAssertNil(try Importer.load(hf.path).tokenizer?.normalizer)
        let nfc = try Importer.load(hfCopy(tokenizer: { $0["normalizer"] = ["type": "NFC"] }).path)
        XCTAssertEqual(nfc.tokenizer?.normalizer, "NFC")
        let sequence = try Importer.load(hfCopy(tokenizer: {
            $0["normalizer"] = ["type": "Sequence", "normalizers": [["type": "NFC"]]]
        }).path)
        XCTAssertEqual(sequence.tokenizer?.normalizer, "NFC")
        let empty = try Importer.load(hfCopy(tokenizer: {
            $0["normalizer"] = ["type": "Sequence", "normalizers": [Any]()]
        }).path)
        XCTAssertNil(empty.tokenizer?.normalizer)
        let nfkc = try hfCopy(tokenizer: { $0["normalizer"] = ["type": "NFKC"] })
        let overridden = try Importer.load(nfkc.path, preTokenizer: "gpt2")
        XCTAssertNil(overridden.tokenizer?.normalizer)
        // An added token with normalized true would be matched in the normalized text: refused with a normalizer.
        assertError(try Importer.load(hfCopy(tokenizer: {
            $0["normalizer"] = ["type": "NFC"]
            $0["added_tokens"] = [Self.added(["normalized": true])]
        }).path), ["added_tokens[0].normalized is true with a normalizer"])
    }

    /// A byte-level TemplateProcessing post-processor (Llama 3's adds its BOS) was ignored: now it sets add_bos_token.
    func testByteLevelTemplateProcessingSetsBOS() throws {
        let template: [String: Any] = [
            "type": "TemplateProcessing",
            "single": [["SpecialToken": ["id": "Ā", "type_id": 0]], ["Sequence": ["id": "A", "type_id": 0]]],
            "pair": [], "special_tokens": ["Ā": ["id": "Ā", "ids": [0], "tokens": ["Ā"]]],
        ]
        let spec = try XCTUnwrap(try Importer.load(hfCopy(tokenizer: {
            $0["post_processor"] = ["type": "Sequence", "processors": [["type": "ByteLevel", "trim_offsets": false], template]]
        }).path).tokenizer)
        XCTAssertEqual(spec.bosTokenID, 0)
        XCTAssertTrue(spec.addBosToken)
        var wrong = template
        wrong["special_tokens"] = ["Ā": ["id": "Ā", "ids": [5], "tokens": ["Ā"]]]
        assertError(try Importer.load(hfCopy(tokenizer: { $0["post_processor"] = wrong }).path),
                    ["post_processor.special_tokens.Ā", "expected the one id of token 'Ā', 0"])
    }

    static func model(_ root: [String: Any], _ extra: [String: Any]) -> [String: Any] {
        (root["model"] as? [String: Any] ?? [:]).merging(extra) { _, b in b }
    }

    static func added(_ extra: [String: Any]) -> [String: Any] {
        ["id": 0, "content": "Ā", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true]
            .merging(extra) { _, b in b }
    }

    func edited(_ name: String, drop: Set<String> = [], add: [(String, GGUFMetadataEdit.Value)] = []) throws -> String {
        let out = dir.appendingPathComponent(name)
        try GGUFMetadataEdit.rewrite(gguf, to: out, drop: drop, add: add)
        return out.path
    }

    func testGGUFTokenizerKeysAreCheckedLikeTokenizerJSON() throws {
        let missingPre = try edited("no-pre.gguf", drop: ["tokenizer.ggml.pre"])
        assertError(try Importer.load(missingPre), ["no-pre.gguf: tokenizer.ggml.pre is missing", "--pre-tokenizer"])
        let overridden = try Importer.load(missingPre, preTokenizer: "gpt2")
        XCTAssertEqual(overridden.tokenizer?.pre, "gpt2")
        XCTAssertTrue(overridden.history.last?.objectValue?["warnings"]?.text.contains("pre-tokenizer set to 'gpt2' by --pre-tokenizer") == true,
                      "\(overridden.history)")
        assertError(try Importer.load(edited("unknown.gguf", add: [("tokenizer.ggml.fancy_option", .bool(true))])),
                    ["unknown.gguf: tokenizer.ggml.fancy_option is not a tokenizer key we know"])
        assertError(try Importer.load(edited("prefix.gguf", add: [("tokenizer.ggml.add_space_prefix", .bool(true))])),
                    ["tokenizer.ggml.add_space_prefix is true with tokenizer.ggml.model gpt2"])
        for key in ["add_sep_token", "remove_extra_whitespaces"] {
            assertError(try Importer.load(edited("\(key).gguf", add: [("tokenizer.ggml.\(key)", .bool(true))])),
                        ["tokenizer.ggml.\(key) is true (supported: false"])
            XCTAssertNoThrow(try Importer.load(edited("\(key)-off.gguf", add: [("tokenizer.ggml.\(key)", .bool(false))])))
        }
        assertError(try Importer.load(edited("charsmap.gguf", add: [("tokenizer.ggml.precompiled_charsmap", .string("x"))])),
                    ["tokenizer.ggml.precompiled_charsmap is not supported"])
        assertError(try Importer.load(edited("pad.gguf", add: [("tokenizer.ggml.padding_token_id", .uint32(999))])),
                    ["tokenizer.ggml.padding_token_id is 999 (expected a token id in 0..<256)"])
        // add_eos_token of a byte-level GGUF was dropped; tokenizer.json's TemplateProcessing sets the same field.
        XCTAssertEqual(try Importer.load(edited("eos.gguf", add: [("tokenizer.ggml.add_eos_token", .bool(true))])).tokenizer?.addEosToken, true)
    }

    func testHFPreTokenizerOverride() throws {
        let odd = try hfCopy(tokenizer: { $0["pre_tokenizer"] = ["type": "Whitespace"] })
        assertError(try Importer.load(odd.path), [#"pre_tokenizer {"type":"Whitespace"} is not supported"#])
        XCTAssertEqual(try Importer.load(odd.path, preTokenizer: "smollm").tokenizer?.pre, "smollm")
    }
}
