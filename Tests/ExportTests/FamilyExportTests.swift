import Checkpoint
import Foundation
import GGUF
import Import
import Model
import XCTest
@testable import Export

/// Exports of the non-Llama families: the family's Hugging Face class and config, its GGUF architecture and
/// tensor names (biases, q/k norms), q/k rows left unpermuted (NEOX rotary), read back by our importers with
/// bit-equal logits; heterogeneous models of these families refused with the reason.
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
}
