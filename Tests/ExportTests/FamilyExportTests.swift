import Checkpoint
import Foundation
import GGUF
import Import
import Model
import Tokenizer
import XCTest
@testable import Export

/// Exports of the non-Llama families: the family's Hugging Face class and config, its GGUF architecture and
/// tensor names (biases, q/k norms; Gemma 3's four norms per block, stored as 1 + w in GGUF, its layer pattern), q/k
/// rows left unpermuted (NEOX rotary), read back by our importers with bit-equal logits; heterogeneous models of these
/// families, and specs a server would compute differently, refused with the reason.
final class FamilyExportTests: ExportTestCase {
    /// The tiny Llama fixture's sizes as a `family` spec (Qwen2: q/k/v biases; Qwen3: q/k norms).
    static func familyCheckpoint(_ family: any ModelFamily.Type, seed: UInt64, tied: Bool = false) throws -> Checkpoint {
        let base = try fixture()
        var c = base.config
        c.family = family.name
        c.biases = family == Qwen2Family.self ? [.q, .k, .v] : []
        c.qkNorm = family == Qwen3Family.self
        c.tieWordEmbeddings = tied
        c.extra["architectures"] = nil
        let config = try ModelConfig(json: c.json)  // through the family's own config translation
        XCTAssertEqual(config, { var e = c; e.extra = config.extra; return e }())
        return random(config, seed: seed, tokenizer: base.tokenizer)
    }

    func testQwenHuggingFaceExportReadsBackBitExact() throws {
        for family in [Qwen2Family.self, Qwen3Family.self] as [any ModelFamily.Type] {
            let src = try Self.familyCheckpoint(family, seed: 31)
            let (r, out) = try export(src, .hf, "hf-\(family.name)")
            XCTAssertEqual(r.architecture, family.hfArchitecture)
            XCTAssertTrue(r.lossy.isEmpty, "\(r.lossy)")
            let config = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/config.json")), as: UTF8.self))
            XCTAssertEqual(config.objectValue?["model_type"]?.stringValue, family.hfModelTypes[0])
            XCTAssertEqual(config.objectValue?["architectures"], .array([.string(family.hfArchitecture)]))
            let names = Set(r.tensors.map(\.name))
            if family == Qwen2Family.self {
                XCTAssertTrue(names.isSuperset(of: ["model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias",
                                                    "model.layers.1.self_attn.v_proj.bias"]))
                XCTAssertFalse(names.contains("model.layers.1.self_attn.o_proj.bias"))
            } else {
                XCTAssertTrue(names.isSuperset(of: ["model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"]))
                XCTAssertEqual(config.objectValue?["attention_bias"], .bool(false))
            }
            let back = try Importer.fromHuggingFace(directory: out)
            XCTAssertEqual(back.config.family, family.name)
            XCTAssertEqual(back.config.biases, src.config.biases)
            XCTAssertEqual(back.config.qkNorm, src.config.qkNorm)
            assertBitEqual(logits(src.model), logits(back.model), "\(family.name) HF logits")
        }
    }

    func testQwenGGUFExportReadsBackBitExactWithoutPermutation() throws {
        for family in [Qwen2Family.self, Qwen3Family.self] as [any ModelFamily.Type] {
            for tied in [false, true] {
                let src = try Self.familyCheckpoint(family, seed: 37, tied: tied)
                let (r, out) = try export(src, .gguf, "\(family.name)-\(tied).gguf")
                XCTAssertEqual(r.architecture, family.ggufArchitectures[0])
                let file = try GGUFFile(path: out)
                XCTAssertEqual(try file.string("general.architecture"), family.ggufArchitectures[0])
                XCTAssertEqual(try file.int("\(family.ggufArchitectures[0]).attention.key_length"), src.config.headDim)
                // q rows as Hugging Face holds them (llama.cpp runs NEOX rotary for these architectures).
                let q = src.model.layers[1].attention!.q.dequantized(), stored = try file.dequantize(file.tensor(named: "blk.1.attn_q.weight")!)
                XCTAssertEqual(Array(UnsafeBufferPointer(start: q.data, count: q.count)), stored)
                if family == Qwen2Family.self {
                    let b = src.model.layers[0].attention!.biases[.k]!
                    XCTAssertEqual(try file.dequantize(file.tensor(named: "blk.0.attn_k.bias")!), Array(UnsafeBufferPointer(start: b.data, count: b.count)))
                } else {
                    XCTAssertNotNil(file.tensor(named: "blk.0.attn_q_norm.weight"))
                    XCTAssertNotNil(file.tensor(named: "blk.1.attn_k_norm.weight"))
                }
                let back = try Importer.fromGGUF(path: out)
                XCTAssertEqual(back.config.family, family.name)
                XCTAssertEqual(back.config.tieWordEmbeddings, tied)
                assertBitEqual(logits(src.model), logits(back.model), "\(family.name) GGUF logits, tied \(tied)")
            }
        }
    }

    func testHeterogeneousQwenIsRefusedNamingTheReason() throws {
        let src = try Self.familyCheckpoint(Qwen2Family.self, seed: 41)
        let pruned = try src.model.removingSublayers([1])
        let ckpt = Checkpoint(model: pruned, tokenizer: src.tokenizer)
        for format in [ExportFormat.hf, .gguf] {
            XCTAssertThrowsError(try export(ckpt, format, "het-\(format)")) { e in
                let m = "\(e)"
                for part in ["heterogeneous qwen2 model", "removed sublayers", "Qwen2ForCausalLM", "DeciLMForCausalLM", "only our checkpoint holds it"] {
                    XCTAssertTrue(m.contains(part), "missing '\(part)' in: \(m)")
                }
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("het-\(format)")))
        }
    }

    // MARK: Gemma 3

    /// The tiny Gemma 3 fixture from transformers (3 layers sliding, full, sliding; window 5; query_pre_attn_scalar 24 ≠
    /// head_dim 16; tied; (1 + w) norms around 0, post-sublayer norms, q/k norms).
    static func gemma3() throws -> Checkpoint { try Checkpoint.read(fixtures.appendingPathComponent("tiny-gemma3.h5").path) }

    /// The same weights under another spec (e.g. llama.cpp's attention scale 1/√head_dim).
    static func withConfig(_ ckpt: Checkpoint, _ edit: (inout ModelConfig) -> Void) throws -> Checkpoint {
        var c = ckpt.model.config
        edit(&c)
        let weights = Dictionary(uniqueKeysWithValues: ckpt.model.weights.map { ($0.id, $0.weight) })
        return Checkpoint(model: try DecoderModel(config: c, weights: weights), tokenizer: ckpt.tokenizer)
    }

    func config(_ dir: String) throws -> [String: JSONValue] {
        try XCTUnwrap(JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/config.json")), as: UTF8.self)).objectValue)
    }

    func testGemma3HuggingFaceExportReadsBackBitExact() throws {
        let src = try Self.gemma3()
        let (r, out) = try export(src, .hf, "hf-gemma3")
        XCTAssertEqual(r.architecture, "Gemma3ForCausalLM")
        XCTAssertTrue(r.lossy.isEmpty, "\(r.lossy)")
        let o = try config(out)
        XCTAssertEqual(o["model_type"], .string("gemma3_text"))
        XCTAssertEqual(o["architectures"], .array([.string("Gemma3ForCausalLM")]))
        XCTAssertEqual(o["layer_types"], .array(["sliding_attention", "full_attention", "sliding_attention"].map { .string($0) }))
        XCTAssertEqual(o["sliding_window"], .int(5))
        XCTAssertEqual(o["query_pre_attn_scalar"], .int(24))  // an integer, not 23.999999999999993
        XCTAssertEqual(o["hidden_activation"], .string("gelu_pytorch_tanh"))
        XCTAssertEqual(o["tie_word_embeddings"], .bool(true))
        XCTAssertEqual(o["rope_parameters"]?.objectValue?["sliding_attention"]?.objectValue?["rope_theta"]?.doubleValue, 10_000)
        XCTAssertEqual(o["rope_parameters"]?.objectValue?["full_attention"]?.objectValue?["rope_theta"]?.doubleValue, 1_000_000)
        XCTAssertNil(o["rope_theta"])
        let names = Set(r.tensors.map(\.name))
        XCTAssertTrue(names.isSuperset(of: ["model.layers.2.input_layernorm.weight", "model.layers.2.post_attention_layernorm.weight",
                                            "model.layers.2.pre_feedforward_layernorm.weight", "model.layers.2.post_feedforward_layernorm.weight",
                                            "model.layers.2.self_attn.q_norm.weight", "model.layers.2.self_attn.k_norm.weight",
                                            "model.norm.weight", "model.embed_tokens.weight"]))
        XCTAssertFalse(names.contains("lm_head.weight"))  // tied
        XCTAssertEqual(names.count, 1 + 3 * 13 + 1)
        let back = try Importer.fromHuggingFace(directory: out)
        XCTAssertEqual(back.model.config, { var e = src.model.config; e.extra = back.model.config.extra; return e }())
        for (id, w) in src.model.weights {  // norms unshifted: the file holds w, transformers adds the 1
            guard case .vector(let t) = w, case .vector(let u)? = back.model.weights.first(where: { $0.id == id })?.weight else { continue }
            XCTAssertEqual(Array(UnsafeBufferPointer(start: t.data, count: t.count)), Array(UnsafeBufferPointer(start: u.data, count: u.count)), "\(id)")
        }
        assertBitEqual(logits(src.model), logits(back.model), "gemma3 HF logits")
    }

    func testGemma3GGUFExportIsRefusedWhenLlamaCppWouldScaleAttentionDifferently() throws {
        let src = try Self.gemma3()  // query_pre_attn_scalar 24, head_dim 16
        XCTAssertThrowsError(try export(src, .gguf, "g.gguf")) { e in
            let m = "\(e)"
            for part in ["llama.cpp's 'gemma3'", "query_pre_attn_scalar is 24", "1/√key_length = 1/√16", "export --format hf"] {
                XCTAssertTrue(m.contains(part), "missing '\(part)' in: \(m)")
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("g.gguf")))
        XCTAssertEqual(ServerSpec.llamaCppGemma3Scale(try Self.withConfig(src) { $0.attentionScale = 0.25 }.model.config).scale, 0.25)
        // The 27B rule: 62 layers scale by 1/√(hidden / heads).
        var big = src.model.config
        big.numHiddenLayers = 62
        XCTAssertEqual(ServerSpec.llamaCppGemma3Scale(big).scale, 1 / Float(8).squareRoot())
    }

    /// tiny-gemma3 with llama.cpp's attention scale (1/√16): GGUF `gemma3` with Gemma's keys and llama.cpp's names,
    /// every norm weight stored as 1 + w, q/k rows unpermuted, the layer pattern as per-layer flags (sliding, full,
    /// sliding is not the period-6 rule); our importer reads it back to the same spec and bit-equal logits.
    func testGemma3GGUFExportShiftsNormsAndReadsBackBitExact() throws {
        let src = try Self.withConfig(try Self.gemma3()) { $0.attentionScale = 0.25 }
        let (r, out) = try export(src, .gguf, "gemma3.gguf")
        XCTAssertEqual(r.architecture, "gemma3")
        XCTAssertTrue(r.lossy.isEmpty, "\(r.lossy)")
        let file = try GGUFFile(path: out)
        XCTAssertEqual(try file.string("general.architecture"), "gemma3")
        XCTAssertEqual(try file.int("gemma3.attention.key_length"), 16)
        XCTAssertEqual(try file.int("gemma3.attention.value_length"), 16)
        XCTAssertEqual(try file.int("gemma3.attention.sliding_window"), 5)
        XCTAssertEqual(try file.float("gemma3.rope.freq_base"), 1_000_000)
        XCTAssertEqual(try file.float("gemma3.rope.freq_base_swa"), 10_000)
        XCTAssertEqual(file.metadata["gemma3.attention.sliding_window_pattern"]?.arrayValue?.compactMap(\.boolValue), [true, false, true])
        XCTAssertNil(file.tensor(named: "output.weight"))  // tied
        let c = src.model.config
        for (id, w) in src.model.weights {
            let name = Gemma3Family.ggufName(id)
            let stored = try file.dequantize(XCTUnwrap(file.tensor(named: name), name))
            let ours: [Float]
            switch w {
            case .vector(let t): ours = Array(UnsafeBufferPointer(start: t.data, count: t.count))
            case .matrix(let m): let t = m.dequantized(); ours = Array(UnsafeBufferPointer(start: t.data, count: t.count))
            }
            let isNorm: Bool = { if case .norm = id { return true }; return id == .finalNorm }()
            XCTAssertEqual(stored, isNorm ? ours.map { $0 + 1 } : ours, name)  // q/k rows unpermuted
        }
        for l in 0..<3 {
            for n in ["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", "attn_q_norm", "attn_k_norm"] {
                XCTAssertNotNil(file.tensor(named: "blk.\(l).\(n).weight"), "blk.\(l).\(n)")
            }
        }
        XCTAssertEqual(file.tensors.count, 1 + 3 * 13 + 1)
        let back = try Importer.fromGGUF(path: out)
        XCTAssertEqual(back.model.config.blocks, c.blocks)
        XCTAssertEqual(back.model.config.slidingWindow, 5)
        XCTAssertEqual(back.model.config.slidingRopeTheta, 10_000)
        XCTAssertEqual(back.model.config.attentionScale, 0.25)
        XCTAssertEqual(back.model.config.normKind, .rmsUnitOffset)
        XCTAssertEqual(back.model.config.embeddingScale, c.embeddingScale)
        assertBitEqual(logits(src.model), logits(back.model), "gemma3 GGUF logits")
    }

    /// Depth pruning keeps every layer's sizes, so the model stays homogeneous: Hugging Face `layer_types` and the GGUF
    /// layer pattern follow the kept layers. Dropping the full layer leaves [sliding, sliding], which llama.cpp's default
    /// period-6 rule gives (no pattern key); dropping layer 0 leaves [full, sliding] (per-layer flags).
    func testDepthPrunedGemma3ExportsTheKeptLayerTypes() throws {
        let base = try Self.withConfig(try Self.gemma3()) { $0.attentionScale = 0.25 }
        for (drop, types) in [(0, [AttentionLayerType.full, .sliding]), (1, [.sliding, .sliding])] {
            let src = Checkpoint(model: try base.model.removingLayers([drop]), tokenizer: base.tokenizer)
            XCTAssertTrue(src.model.config.isHomogeneous)
            XCTAssertEqual(src.model.config.blocks.map(\.layerType), types)
            let (_, hf) = try export(src, .hf, "hf-drop\(drop)")
            let o = try config(hf)
            XCTAssertEqual(o["num_hidden_layers"], .int(2))
            XCTAssertEqual(o["layer_types"], .array(types.map { .string($0.rawValue) }))
            let fromHF = try Importer.fromHuggingFace(directory: hf)
            XCTAssertEqual(fromHF.model.config.blocks, src.model.config.blocks)
            assertBitEqual(logits(src.model), logits(fromHF.model), "drop \(drop): HF logits")

            let (_, gguf) = try export(src, .gguf, "drop\(drop).gguf")
            let file = try GGUFFile(path: gguf)
            XCTAssertEqual(try file.int("gemma3.block_count"), 2)
            let pattern = file.metadata["gemma3.attention.sliding_window_pattern"]?.arrayValue?.compactMap(\.boolValue)
            XCTAssertEqual(pattern, drop == 0 ? [false, true] : nil)
            let fromGGUF = try Importer.fromGGUF(path: gguf)
            XCTAssertEqual(fromGGUF.model.config.blocks, src.model.config.blocks)
            assertBitEqual(logits(src.model), logits(fromGGUF.model), "drop \(drop): GGUF logits")
        }
    }

    func testHeterogeneousGemma3IsRefusedNamingWhatDeciLacks() throws {
        let src = try Self.gemma3()
        let ckpt = Checkpoint(model: try src.model.removingSublayers([1]), tokenizer: src.tokenizer)
        for format in [ExportFormat.hf, .gguf] {
            XCTAssertThrowsError(try export(ckpt, format, "het-\(format)")) { e in
                let m = "\(e)"
                for part in ["heterogeneous gemma3 model", "removed sublayers", "Gemma3ForCausalLM", "GGUF 'gemma3'", "DeciLMForCausalLM",
                             "q/k norms", "(1 + w) norms", "post-sublayer norms", "sliding-window layers", "only our checkpoint holds it"] {
                    XCTAssertTrue(m.contains(part), "missing '\(part)' in: \(m)")
                }
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("het-\(format)")))
        }
    }

    /// transformers and llama.cpp compute Gemma's embedding scale from hidden_size; a model whose scale is another
    /// (width pruning changes hidden_size and keeps the trained scale) would be computed differently: refused.
    func testGemma3WithAnotherEmbeddingScaleIsRefused() throws {
        let src = try Self.withConfig(try Self.gemma3()) { $0.attentionScale = 0.25; $0.embeddingScale = 8 }
        for format in [ExportFormat.hf, .gguf] {
            XCTAssertThrowsError(try export(src, format, "scale-\(format)")) { e in
                let m = "\(e)"
                for part in ["would compute another model", "embedding scale 8.0", "√hidden_size, hidden_size 32"] {
                    XCTAssertTrue(m.contains(part), "missing '\(part)' in: \(m)")
                }
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: path("scale-\(format)")))
        }
    }

    /// A SentencePiece vocabulary read from a GGUF derives its merges; the Hugging Face export writes them as
    /// transformers derives them (Gemma rule: vocabulary order, "  " respelled "▁▁" and reached by merging, so not an
    /// added token), keeps tokens that differ only in Unicode normalization apart (NFC "é", NFD "e\u{301}"), names
    /// Gemma's <unk> (a control token there); the importer reads the directory back to a tokenizer with the same ids.
    func testGemma3SentencePieceTokenizerJSONWithDerivedMerges() throws {
        var tokens = ["<pad>", "<eos>", "<bos>", "<unk>"] + (0..<256).map { String(format: "<0x%02X>", $0) }
        var types = [Int32](repeating: 3, count: 4) + [Int32](repeating: 6, count: 256)
        for (t, type) in [("\u{2581}", 1), ("a", 1), ("b", 1), ("\u{2581}a", 1), ("ab", 1), ("\u{2581}ab", 1), ("e", 1), ("\u{301}", 1),
                          ("\u{e9}", 1), ("e\u{301}", 1), ("  ", 4), ("\n\n", 4)] as [(String, Int32)] {
            tokens.append(t)
            types.append(type)
        }
        let spec = TokenizerSpec(model: "llama", pre: "no-prefix", tokens: tokens, merges: [], tokenTypes: types, bosTokenID: 2,
                                 eosTokenID: 1, addBosToken: true, scores: [Float](repeating: 0, count: tokens.count), mergeOrder: "gemma")
        var c = try Self.gemma3().model.config
        c.vocabSize = tokens.count
        c.attentionScale = 0.25  // llama.cpp's, so the GGUF export is allowed too
        let src = Self.random(c, seed: 43, tokenizer: spec)
        let (_, out) = try export(src, .hf, "hf-sp")
        let json = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/tokenizer.json")), as: UTF8.self))
        let model = try XCTUnwrap(json.objectValue?["model"]?.objectValue)
        XCTAssertEqual(model["unk_token"], .string("<unk>"))
        XCTAssertEqual(model["byte_fallback"], .bool(true))
        let merges = try XCTUnwrap(model["merges"]?.arrayValue)
        XCTAssertTrue(merges.contains(.array([.string("\u{2581}"), .string("\u{2581}")])), "the respelled \"  \" is reached by merging")
        let added = try XCTUnwrap(json.objectValue?["added_tokens"]?.arrayValue).compactMap { $0.objectValue?["id"]?.intValue }
        XCTAssertEqual(added, [0, 1, 2, 3, tokens.count - 1])  // control tokens and "\n\n"; not the respelled "  "

        let back = try XCTUnwrap(try Importer.fromHuggingFace(directory: out).tokenizer)
        XCTAssertEqual(back.tokens.count, tokens.count)
        XCTAssertEqual(Array(back.tokens[tokens.count - 2].utf8), Array("\u{2581}\u{2581}".utf8))
        XCTAssertEqual(Array(back.tokens[tokens.count - 4].utf8), Array("\u{e9}".utf8))
        XCTAssertEqual(Array(back.tokens[tokens.count - 3].utf8), Array("e\u{301}".utf8))
        XCTAssertEqual(back.bosTokenID, 2)
        XCTAssertTrue(back.addBosToken)
        let ours = try SentencePieceTokenizer(tokens: spec.tokens, tokenTypes: spec.tokenTypes, merges: .gemma,
                                              spacing: SentencePieceSpacing(name: spec.pre), bosTokenID: 2, eosTokenID: 1)
        let theirs = try SentencePieceTokenizer(tokens: back.tokens, tokenTypes: back.tokenTypes, merges: .explicit(back.merges),
                                                spacing: SentencePieceSpacing(name: back.pre), bosTokenID: back.bosTokenID, eosTokenID: back.eosTokenID)
        for text in ["ab a  b\n\nab", "\u{e9} e\u{301}  ", "  ab", "x<bos>ab", " a"] {
            XCTAssertEqual(theirs.encode(text), ours.encode(text), text.debugDescription)
        }
        XCTAssertEqual(ours.encode("  "), [Int32(tokens.count - 2)])  // "▁▁", merged from two spaces
        let config = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/tokenizer_config.json")), as: UTF8.self))
        XCTAssertEqual(config.objectValue?["unk_token"], .string("<unk>"))
        XCTAssertEqual(config.objectValue?["pad_token"], .string("<pad>"))

        // GGUF keeps the vocabulary and scores (llama.cpp and transformers derive the merges): Gemma's special ids.
        let (_, gguf) = try export(src, .gguf, "sp.gguf")
        let file = try GGUFFile(path: gguf)
        XCTAssertEqual(try file.string("tokenizer.ggml.model"), "llama")
        XCTAssertEqual(try file.int("tokenizer.ggml.unknown_token_id"), 3)
        XCTAssertEqual(try file.int("tokenizer.ggml.padding_token_id"), 0)
        XCTAssertEqual(try file.int("tokenizer.ggml.bos_token_id"), 2)
        XCTAssertEqual(try file.bool("tokenizer.ggml.add_bos_token"), true)
        XCTAssertEqual(try file.bool("tokenizer.ggml.add_space_prefix"), false)
        let fromGGUF = try XCTUnwrap(try Importer.fromGGUF(path: gguf).tokenizer)
        XCTAssertEqual(fromGGUF.tokens.map { Array($0.utf8) }, spec.tokens.map { Array($0.utf8) })
        XCTAssertEqual(fromGGUF.mergeOrder, "gemma")
    }
}
