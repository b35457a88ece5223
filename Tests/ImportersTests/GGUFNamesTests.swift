import Foundation
import GGUF
import Model
import XCTest

/// Every weight id of a model of `layers` layers with biases on every projection and q/k norms (test helper:
/// the GGUF-name → id lookup the importer builds from a config's `weightSpecs`).
func allWeightIDs(layers: Int) -> [WeightID] {
    var ids: [WeightID] = [.embedTokens, .finalNorm, .lmHead]
    for l in 0..<layers {
        ids += NormSite.allCases.map { .norm(layer: l, $0) }
        for k in LinearKind.allCases { ids += [.linear(LinearID(layer: l, kind: k)), .bias(LinearID(layer: l, kind: k))] }
    }
    return ids
}

/// A GGUF tensor of a Llama-family file in Hugging Face layout, as the importer reads it.
func llamaHFTensor(_ info: GGUFTensorInfo, in file: GGUFFile, config: GGUFConfig) throws -> HFTensor {
    let byName = Dictionary(uniqueKeysWithValues: allWeightIDs(layers: config.numHiddenLayers).map { (LlamaFamily.ggufName($0), $0) })
    let id = try XCTUnwrap(byName[info.name], "no weight named '\(info.name)'")
    var heads: Int? = nil
    if case .linear(let lid) = id, lid.kind == .q || lid.kind == .k {
        let b = config.blockConfigs?[lid.layer]
        heads = lid.kind == .q ? b?.numAttentionHeads ?? config.numAttentionHeads : b?.numKeyValueHeads ?? config.numKeyValueHeads
    }
    return try GGUFTensors.hfTensor(info, in: file, name: id.hfName, rotaryHeads: heads)
}

final class GGUFNamesTests: XCTestCase {
    func testNamesBothWays() throws {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
            ("blk.12.attn_k.weight", "model.layers.12.self_attn.k_proj.weight"),
            ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
            ("blk.3.attn_output.weight", "model.layers.3.self_attn.o_proj.weight"),
            ("blk.29.ffn_gate.weight", "model.layers.29.mlp.gate_proj.weight"),
            ("blk.29.ffn_up.weight", "model.layers.29.mlp.up_proj.weight"),
            ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight"),
            ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
            ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
            ("blk.2.attn_q.bias", "model.layers.2.self_attn.q_proj.bias"),
            ("blk.2.attn_v.bias", "model.layers.2.self_attn.v_proj.bias"),
            ("blk.4.attn_q_norm.weight", "model.layers.4.self_attn.q_norm.weight"),
            ("blk.4.attn_k_norm.weight", "model.layers.4.self_attn.k_norm.weight"),
        ]
        // Gemma 3 names its four sublayer norms its own way (HF's post_attention_layernorm is the norm on the attention's
        // output there, Llama's pre-MLP norm elsewhere).
        let gemmaPairs = pairs.filter { !$0.0.hasSuffix("ffn_norm.weight") } + [
            ("blk.7.ffn_norm.weight", "model.layers.7.pre_feedforward_layernorm.weight"),
            ("blk.7.post_attention_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
            ("blk.7.post_ffw_norm.weight", "model.layers.7.post_feedforward_layernorm.weight"),
        ]
        let ids = allWeightIDs(layers: 30)
        XCTAssertEqual(Set(ids.map(\.hfName)).count, ids.count, "checkpoint names are distinct")
        for family in ModelFamilies.all {
            XCTAssertEqual(Set(ids.map { family.hfName($0) }).count, ids.count, "\(family.name): Hugging Face names are distinct")
            XCTAssertEqual(Set(ids.map { family.ggufName($0) }).count, ids.count, "\(family.name): GGUF names are distinct")
            let byGGUF = Dictionary(uniqueKeysWithValues: ids.map { (family.ggufName($0), $0) })
            let lineage = family != Gemma3Family.self
            for (gguf, hf) in lineage ? pairs : gemmaPairs {
                let id = try? XCTUnwrap(byGGUF[gguf], gguf)
                XCTAssertEqual(id.map(family.hfName), hf, "\(family.name): \(gguf)")
                if lineage { XCTAssertEqual(WeightID(hfName: hf), id, hf) }
            }
            for unknown in ["rope_freqs.weight", "blk.x.attn_q.weight", "blk.1.attn_qq.weight", "token_embd", "blk.-1.attn_q.weight"] {
                XCTAssertNil(byGGUF[unknown], unknown)
            }
        }
        for unknown in ["model.layers.0.self_attn.rotary_emb.inv_freq", "model.layers.01.self_attn.q_proj.weight", "model.layers.0.mlp.q_proj.weight"] {
            XCTAssertNil(WeightID(hfName: unknown), unknown)
        }
    }

    /// Hand-worked: one head of 8 rows. llama.cpp's permute views rows as (2, 4) [halves x pairs] and
    /// transposes to (4, 2), so HF rows 0...7 are stored as 0 4 1 5 2 6 3 7.
    func testPermutationHandWorkedExample() {
        let hf: [Float] = [0, 1, 2, 3, 4, 5, 6, 7]
        let stored: [Float] = [0, 4, 1, 5, 2, 6, 3, 7]
        XCTAssertEqual(permuteQK(weights: hf, rows: 8, cols: 1, heads: 1), stored)
        XCTAssertEqual(unpermuteQK(weights: stored, rows: 8, cols: 1, heads: 1), hf)
        // Two heads of 4 rows, two columns (rows move as whole rows): head 0 rows [0 2 1 3], head 1 rows [4 6 5 7].
        let hf2: [Float] = (0..<16).map(Float.init)
        XCTAssertEqual(permuteQK(weights: hf2, rows: 8, cols: 2, heads: 2),
                       [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])
    }

    func testPermutationsAreInverses() {
        var rng = SystemRandomNumberGenerator()
        for (rows, cols, heads) in [(12, 5, 3), (64, 7, 4), (16, 3, 8), (576, 2, 9), (192, 3, 3)] {
            let w = (0..<(rows * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
            let p = permuteQK(weights: w, rows: rows, cols: cols, heads: heads)
            XCTAssertEqual(unpermuteQK(weights: p, rows: rows, cols: cols, heads: heads), w)
            XCTAssertEqual(permuteQK(weights: unpermuteQK(weights: w, rows: rows, cols: cols, heads: heads),
                                     rows: rows, cols: cols, heads: heads), w)
            if rows / heads > 2 { XCTAssertNotEqual(p, w) }
        }
    }

    func testTinyLlamaToHuggingFace() throws {
        let file = try GGUFFile(path: Fixtures.path("llama_tiny.gguf"))
        let config = try GGUFConfig(gguf: file, supported: ["llama"])
        let expected = try Fixtures.json("llama_tiny.json")
        let reference = try Fixtures.floats("llama_tiny.ref.bin")
        XCTAssertEqual(Set(expected.keys), Set(file.tensors.map(\.name)))
        for info in file.tensors {
            let entry = try XCTUnwrap(expected[info.name] as? [String: Any])
            let tensor = try llamaHFTensor(info, in: file, config: config)
            XCTAssertEqual(tensor.name, entry["hf_name"] as? String)
            XCTAssertEqual(tensor.shape, entry["hf_shape"] as? [Int])
            if let offset = entry["ref_offset"] as? Int, let count = entry["count"] as? Int {
                XCTAssertEqual(tensor.values, Array(reference[offset..<(offset + count)]), info.name)
                XCTAssertNotEqual(tensor.values, try file.dequantize(info), "\(info.name) should be permuted on disk")
            } else {
                XCTAssertEqual(tensor.values, try file.dequantize(info), info.name)
            }
        }
    }

    func testConfigFromTinyLlama() throws {
        let config = try GGUFConfig(gguf: GGUFFile(path: Fixtures.path("llama_tiny.gguf")), supported: ["llama"])
        XCTAssertEqual(config.vocabSize, 32)
        XCTAssertEqual(config.hiddenSize, 32)
        XCTAssertEqual(config.intermediateSize, 48)
        XCTAssertEqual(config.numHiddenLayers, 2)
        XCTAssertEqual(config.numAttentionHeads, 4)
        XCTAssertEqual(config.numKeyValueHeads, 2)
        XCTAssertEqual(config.headDim, 8)
        XCTAssertEqual(config.rmsNormEps, 1e-5)
        XCTAssertEqual(config.ropeTheta, 10000)
        XCTAssertEqual(config.maxPositionEmbeddings, 256)
        XCTAssertTrue(config.tieWordEmbeddings)
        XCTAssertEqual(config.bosTokenId, 1)
        XCTAssertEqual(config.eosTokenId, 2)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: config.jsonData()) as? [String: Any])
        for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                    "tie_word_embeddings", "bos_token_id", "eos_token_id", "model_type", "architectures"] {
            XCTAssertNotNil(json[key], key)
        }
        XCTAssertEqual(json["rms_norm_eps"] as? Double, 1e-5)
        XCTAssertEqual(json["num_key_value_heads"] as? Int, 2)
        var decoded = try JSONDecoder().decode(GGUFConfig.self, from: config.jsonData())
        XCTAssertEqual(decoded.architecture, "", "general.architecture is not a config.json key")
        decoded.architecture = config.architecture
        XCTAssertEqual(decoded, config)
    }

    func testUnknownArchitecture() throws {
        let file = try GGUFFile(path: Fixtures.path("quants.gguf"))
        XCTAssertThrowsError(try GGUFConfig(gguf: file, supported: ModelFamilies.ggufArchitectures),
                             containing: ["quants.gguf", "unsupported architecture 'fixture'", "supported: llama, deci, qwen2, qwen3"])
    }
}
