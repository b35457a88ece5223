import Checkpoint
import Foundation
@testable import Import
import Model
import XCTest

/// Rewrites a GGUF file's metadata (keys dropped or added), keeping tensor infos and data: the data section
/// starts at the next alignment boundary after the tensor infos, and tensor offsets are relative to it.
struct GGUFMetadataEdit {
    enum Value { case string(String), float32(Float), strings([String]), bool(Bool), uint32(UInt32) }

    static func rewrite(_ source: String, to output: URL, drop: Set<String> = [], add: [(String, Value)] = []) throws {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: source)))
        var o = 8
        func u32() -> UInt32 { defer { o += 4 }; return b[o..<(o + 4)].reversed().reduce(0) { $0 << 8 | UInt32($1) } }
        func u64() -> UInt64 { defer { o += 8 }; return b[o..<(o + 8)].reversed().reduce(0) { $0 << 8 | UInt64($1) } }
        func string() -> String { let n = Int(u64()); defer { o += n }; return String(decoding: b[o..<(o + n)], as: UTF8.self) }
        func skip(_ type: UInt32) {
            switch type {
            case 0, 1, 7: o += 1
            case 2, 3: o += 2
            case 4, 5, 6: o += 4
            case 10, 11, 12: o += 8
            case 8: _ = string()
            case 9: let t = u32(); for _ in 0..<u64() { skip(t) }
            default: preconditionFailure("GGUF value type \(type)")
            }
        }
        let tensorCount = u64(), kvCount = u64()
        var kept: [[UInt8]] = []
        for _ in 0..<kvCount {
            let start = o
            let key = string()
            skip(u32())
            if !drop.contains(key) { kept.append(Array(b[start..<o])) }
        }
        let infoStart = o
        for _ in 0..<tensorCount { _ = string(); let dims = u32(); o += 8 * Int(dims) + 4 + 8 }
        let infos = Array(b[infoStart..<o])
        let dataStart = (o + 31) / 32 * 32
        var out = Array(b[0..<8])
        func put32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func put64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func putString(_ s: String) { put64(UInt64(s.utf8.count)); out += s.utf8 }
        put64(tensorCount)
        put64(UInt64(kept.count + add.count))
        for kv in kept { out += kv }
        for (key, value) in add {
            putString(key)
            switch value {
            case .string(let s): put32(8); putString(s)
            case .float32(let f): put32(6); put32(f.bitPattern)
            case .strings(let a): put32(9); put32(8); put64(UInt64(a.count)); a.forEach(putString)
            case .bool(let v): put32(7); out.append(v ? 1 : 0)
            case .uint32(let v): put32(4); put32(v)
            }
        }
        out += infos
        out += [UInt8](repeating: 0, count: (out.count + 31) / 32 * 32 - out.count)
        out += b[dataStart...]
        try Data(out).write(to: output)
    }
}

/// The bug cases of the importers, each with its right value on a fixture made here from the tiny model.
final class BugCaseImportTests: XCTestCase {
    var dir: URL!
    let gguf = ImportTests.fixtures.appendingPathComponent("tiny-llama.gguf").path
    let hf = ImportTests.fixtures.appendingPathComponent("tiny-llama-hf")

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("bugcases-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func assertError(_ body: @autoclosure () throws -> Any, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            for f in fragments { XCTAssertTrue("\(error)".contains(f), "missing '\(f)' in: \(error)", file: file, line: line) }
        }
    }

    /// A copy of the sharded tiny HF directory with `edit` applied to its config.json and tokenizer.json text.
    func hfCopy(config: (String) -> String = { $0 }, tokenizer: ((String) -> String)? = nil) throws -> URL {
        let copy = dir.appendingPathComponent("hf-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: hf, to: copy)
        let c = copy.appendingPathComponent("config.json")
        try config(try String(contentsOf: c, encoding: .utf8)).write(to: c, atomically: true, encoding: .utf8)
        if let tokenizer {
            let t = copy.appendingPathComponent("tokenizer.json")
            try tokenizer(try String(contentsOf: t, encoding: .utf8)).write(to: t, atomically: true, encoding: .utf8)
        }
        return copy
    }

    // 01: a byte-level vocabulary with multi-byte tokens but no tokenizer.ggml.merges.
    func testGGUFWithoutMergesIsRefused() throws {
        var tokens = try XCTUnwrap(Importer.load(gguf).tokenizer?.tokens)
        tokens[255] = "Ġthe"
        let noMerges = dir.appendingPathComponent("no-merges.gguf")
        try GGUFMetadataEdit.rewrite(gguf, to: noMerges, drop: ["tokenizer.ggml.tokens"], add: [("tokenizer.ggml.tokens", .strings(tokens))])
        assertError(try Importer.load(noMerges.path), ["no-merges.gguf", "tokenizer.ggml.merges is missing", "id 255 'Ġthe'"])
        // The same vocabulary with its merge imports.
        let withMerges = dir.appendingPathComponent("with-merges.gguf")
        try GGUFMetadataEdit.rewrite(gguf, to: withMerges, drop: ["tokenizer.ggml.tokens"], add: [
            ("tokenizer.ggml.tokens", .strings(tokens.enumerated().map { $0.offset == 254 ? "th" : $0.element })),
            ("tokenizer.ggml.merges", .strings(["t h"])),
        ])
        XCTAssertEqual(try Importer.load(withMerges.path).tokenizer?.merges, ["t h"])
        // A byte-only vocabulary needs no merges (the fixture has none).
        XCTAssertEqual(try Importer.load(gguf).tokenizer?.merges, [])
    }

    // 20: GGUF rope scaling follows the rule of config.json's rope_scaling (refused: the forward has none).
    func testGGUFRopeScalingIsRefusedLikeConfigRopeScaling() throws {
        let linear = dir.appendingPathComponent("linear4.gguf")
        try GGUFMetadataEdit.rewrite(gguf, to: linear, add: [("llama.rope.scaling.type", .string("linear")), ("llama.rope.scaling.factor", .float32(4))])
        let expected = #"config: rope_scaling {"factor":4,"rope_type":"linear"} is not supported (expected null)"#
        assertError(try Importer.load(linear.path), ["linear4.gguf", expected, "from llama.rope.scaling.type, llama.rope.scaling.factor"])
        let old = dir.appendingPathComponent("scale-linear.gguf")
        try GGUFMetadataEdit.rewrite(gguf, to: old, add: [("llama.rope.scale_linear", .float32(4))])
        assertError(try Importer.load(old.path), ["scale-linear.gguf", expected, "from llama.rope.scale_linear"])
        let hfScaled = try hfCopy(config: { $0.replacingOccurrences(of: "{", with: #"{"rope_scaling": {"rope_type": "linear", "factor": 4.0},"#, range: $0.range(of: "{")) })
        assertError(try Importer.load(hfScaled.path), ["config.json", expected])
        // Type "none" (and a factor of 1 without a type) is no scaling.
        let none = dir.appendingPathComponent("none.gguf")
        try GGUFMetadataEdit.rewrite(gguf, to: none, add: [("llama.rope.scaling.type", .string("none")), ("llama.rope.scaling.factor", .float32(1))])
        XCTAssertLessThan(try ImportTests.logitsError(Importer.load(none.path).model), 2e-5)
    }

    // 05: a repeated key in config.json or tokenizer.json names the file and the key.
    func testDuplicateKeysInConfigAndTokenizerJSON() throws {
        let config = try hfCopy(config: { $0.replacingOccurrences(of: "{", with: #"{"rms_norm_eps": 0.5, "#, range: $0.range(of: "{")) })
        assertError(try Importer.load(config.path), ["config.json", "key 'rms_norm_eps' appears twice in the object at $"])
        let tokenizer = try hfCopy(tokenizer: { $0.replacingOccurrences(of: #""Ġ": 32,"#, with: #""Ġ": 32, "Ġ": 33,"#) })
        assertError(try Importer.load(tokenizer.path), ["tokenizer.json", "key 'Ġ' appears twice in the object at $.model.vocab"])
    }

    // 15: tie_word_embeddings true with a different stored lm_head.weight: transformers keeps the stored head.
    func testTiedConfigWithDifferentLMHeadImportsUntied() throws {
        let tied = try hfCopy(config: { $0.replacingOccurrences(of: #""tie_word_embeddings": false"#, with: #""tie_word_embeddings": true"#) })
        XCTAssertTrue(try String(contentsOf: tied.appendingPathComponent("config.json"), encoding: .utf8).contains(#""tie_word_embeddings": true"#))
        let c = try Importer.load(tied.path)
        XCTAssertFalse(c.config.tieWordEmbeddings)
        // The untied fixture's stored head is transformers' head: its logits are the reference's.
        XCTAssertLessThan(try ImportTests.logitsError(c.model), 2e-5)
        let warnings = c.history.first?.objectValue?["warnings"]?.arrayValue ?? []
        XCTAssertEqual(warnings.count, 1)
        XCTAssertTrue(warnings.first?.stringValue?.contains("lm_head.weight differs from model.embed_tokens.weight") ?? false, "\(warnings)")
        XCTAssertNil(try Importer.load(hf.path).history.first?.objectValue?["warnings"])
    }

    static let llama3Split = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// tokenizer.json's pre_tokenizer (and model.ignore_merges) replaced.
    func tokenizerCopy(preTokenizer: String, ignoreMerges: Bool?) throws -> URL {
        try hfCopy(tokenizer: { text in
            var t = text.replacingOccurrences(of: #""pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#,
                                              with: #""pre_tokenizer": "# + preTokenizer)
            if let ignoreMerges { t = t.replacingOccurrences(of: #""model": {"type": "BPE","#, with: #""model": {"type": "BPE", "ignore_merges": \#(ignoreMerges),"#) }
            return t
        })
    }

    func split(_ regex: String) throws -> String {
        let pattern = String(decoding: try JSONEncoder().encode(regex), as: UTF8.self)
        return #"{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": \#(pattern)}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}"#
    }

    // 02 and 03: a pre-tokenizer is recognised only by its exact definition; ignore_merges must be what it implies.
    func testPreTokenizerIsRecognisedExactly() throws {
        XCTAssertEqual(try Importer.load(tokenizerCopy(preTokenizer: split(Self.llama3Split), ignoreMerges: true).path).tokenizer?.pre, "llama3")
        assertError(try Importer.load(tokenizerCopy(preTokenizer: split(Self.llama3Split), ignoreMerges: nil).path),
                    ["tokenizer.json", "model.ignore_merges is false with the llama3 pre-tokenizer (expected true"])
        assertError(try Importer.load(tokenizerCopy(preTokenizer: #"{"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}"#, ignoreMerges: true).path),
                    ["model.ignore_merges is true with the gpt2 pre-tokenizer (expected false"])
        // Qwen2's regex (digits one at a time) is qwen2, whose merges are not ignored.
        let single = Self.llama3Split.replacingOccurrences(of: #"\p{N}{1,3}"#, with: #"\p{N}"#)
        XCTAssertEqual(try Importer.load(tokenizerCopy(preTokenizer: split(single), ignoreMerges: nil).path).tokenizer?.pre, "qwen2")
        assertError(try Importer.load(tokenizerCopy(preTokenizer: split(single), ignoreMerges: true).path),
                    ["tokenizer.json", "model.ignore_merges is true with the qwen2 pre-tokenizer (expected false"])
        // Digits in twos: neither regex, quoted in the error.
        let pairs = Self.llama3Split.replacingOccurrences(of: #"\p{N}{1,3}"#, with: #"\p{N}{1,2}"#)
        assertError(try Importer.load(tokenizerCopy(preTokenizer: split(pairs), ignoreMerges: true).path),
                    ["tokenizer.json", "its Split pattern '\(pairs)' is not one we implement"])
        assertError(try Importer.load(tokenizerCopy(preTokenizer: #"{"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}"#, ignoreMerges: nil).path),
                    ["tokenizer.json", "is not supported"])
        assertError(try Importer.load(tokenizerCopy(preTokenizer: "null", ignoreMerges: nil).path), ["tokenizer.json", "pre_tokenizer is null"])
        let smollm = #"{"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}"#
        XCTAssertEqual(try Importer.load(tokenizerCopy(preTokenizer: smollm, ignoreMerges: nil).path).tokenizer?.pre, "smollm")
    }
}
