import Foundation
import Model
import TensorCore
import XCTest

/// Per-layer differences (absent sublayers, fewer heads, narrower MLPs) against the full model with the
/// corresponding weights zeroed: the two must compute the same logits.
final class PerLayerConfigTests: XCTestCase {
    let base = ModelConfig(vocabSize: 64, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 3, numAttentionHeads: 4,
                           numKeyValueHeads: 2, ropeTheta: 10000)
    let ids: [Int32] = (0..<20).map { Int32(($0 * 7 + 3) % 64) }

    func tensors(_ m: DecoderModel) -> [String: Tensor] {
        Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, $0.tensor.copy()) })
    }

    func assertSameLogits(_ a: DecoderModel, _ b: DecoderModel, file: StaticString = #filePath, line: UInt = #line) {
        let la = TransformerDecoder(model: a, window: ids.count).logits(ids)
        let lb = TransformerDecoder(model: b, window: ids.count).logits(ids)
        let worst = (0..<la.count).reduce(Float(0)) { max($0, abs(la[$1] - lb[$1])) }
        XCTAssertLessThan(worst, 1e-5, file: file, line: line)  // observed 0 (absent sublayers), 8.3e-7 (fewer heads and neurons)
    }

    func testAbsentSublayersEqualZeroedOnes() throws {
        let full = DecoderModel.random(config: base, seed: 1)
        var zeroed = tensors(full)
        zeroed["model.layers.1.mlp.down_proj.weight"]!.zero()
        zeroed["model.layers.2.self_attn.o_proj.weight"]!.zero()
        var c = base
        c.blocks[1].mlp = false
        c.blocks[2].attention = false
        var pruned = zeroed
        for k in pruned.keys where k.hasPrefix("model.layers.1.mlp.") || k == "model.layers.1.post_attention_layernorm.weight"
            || k.hasPrefix("model.layers.2.self_attn.") || k == "model.layers.2.input_layernorm.weight" {
            pruned[k] = nil
        }
        assertSameLogits(try DecoderModel(config: base, tensors: zeroed), try DecoderModel(config: c, tensors: pruned))
        XCTAssertFalse(c.isHomogeneous)
        XCTAssertEqual(try ModelConfig(json: c.json), c)  // block_configs round-trip
    }

    func testFewerHeadsAndNeuronsEqualZeroedOnes() throws {
        let full = DecoderModel.random(config: base, seed: 2)
        let D = base.headDim, C = base.hiddenSize
        var zeroed = tensors(full)
        // Layer 0: drop KV group 1 (query heads 2 and 3). Zeroing o_proj's columns of those heads removes them.
        let o = zeroed["model.layers.0.self_attn.o_proj.weight"]!
        for r in 0..<C { for col in (2 * D)..<(4 * D) { o[r * 4 * D + col] = 0 } }
        // Layer 2: drop MLP neurons 40..<48 (down_proj columns).
        let down = zeroed["model.layers.2.mlp.down_proj.weight"]!
        for r in 0..<C { for col in 40..<48 { down[r * 48 + col] = 0 } }

        var c = base
        c.blocks[0].numAttentionHeads = 2
        c.blocks[0].numKeyValueHeads = 1
        c.blocks[2].intermediateSize = 40
        var pruned = zeroed
        func rows(_ name: String, _ n: Int) { pruned[name] = Tensor(shape: [n, C], values: Array(zeroed[name]!.array.prefix(n * C))) }
        func cols(_ name: String, _ n: Int) {
            let t = zeroed[name]!, w = t.shape[1]
            pruned[name] = Tensor(shape: [C, n], values: (0..<C).flatMap { r in (0..<n).map { t[r * w + $0] } })
        }
        rows("model.layers.0.self_attn.q_proj.weight", 2 * D)
        rows("model.layers.0.self_attn.k_proj.weight", D)
        rows("model.layers.0.self_attn.v_proj.weight", D)
        cols("model.layers.0.self_attn.o_proj.weight", 2 * D)
        rows("model.layers.2.mlp.gate_proj.weight", 40)
        rows("model.layers.2.mlp.up_proj.weight", 40)
        cols("model.layers.2.mlp.down_proj.weight", 40)
        assertSameLogits(try DecoderModel(config: base, tensors: zeroed), try DecoderModel(config: c, tensors: pruned))
    }

    func testConfigErrorsNameTheKey() {
        func error(_ json: String) -> String {
            do { _ = try ModelConfig(json: JSONValue.parse(json)); return "no error" } catch { return "\(error)" }
        }
        let ok = #""vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2"#
        XCTAssertEqual(error("{\(ok)}"), "no error")
        XCTAssertTrue(error(#"{"vocab_size": 10}"#).contains("missing required key 'hidden_size'"))
        XCTAssertTrue(error("{\(ok.replacingOccurrences(of: "\"vocab_size\": 10", with: "\"vocab_size\": -3"))}").contains("key 'vocab_size' is -3 (expected an integer in 1..."))
        XCTAssertTrue(error("{\(ok), \"num_key_value_heads\": 3, \"block_configs\": null}").contains("not a multiple"))
        XCTAssertTrue(error("{\(ok), \"model_type\": \"gpt2\"}").contains("model_type 'gpt2'"))
        XCTAssertTrue(error("{\(ok), \"rope_scaling\": {\"type\": \"linear\"}}").contains("rope_scaling"))
        XCTAssertTrue(error("{\(ok), \"block_configs\": [{\"mlp\": false, \"heads\": 1}]}").contains("unknown key 'heads'"))
        XCTAssertTrue(error("{\(ok), \"block_configs\": []}").contains("num_hidden_layers=1"))
    }
}

final class JSONValuePrettyBytesTests: XCTestCase {
    /// prettyBytes parses back to the same document (integral doubles come back as numbers of the same
    /// value), keeps a fraction on every double, and escapes what JSON requires.
    func testPrettyBytesRoundTripsAndKeepsFloats() throws {
        let v: JSONValue = .object([
            "ffn_mult": .double(4), "eps": .double(1e-5), "theta": .double(100000), "n": .int(3),
            "s": .string("a\"b\\c\nd\te\u{01}/é"), "list": .array([.null, .bool(true), .double(-0.25)]),
            "empty": .object([:]), "none": .array([]),
        ])
        let text = String(decoding: v.prettyBytes, as: UTF8.self)
        XCTAssertTrue(text.contains("\"ffn_mult\": 4.0"), text)
        XCTAssertTrue(text.contains("\"theta\": 100000.0"), text)
        XCTAssertTrue(text.contains("\"n\": 3,") || text.contains("\"n\": 3\n"), text)
        let back = try JSONValue.parse(text).objectValue!
        XCTAssertEqual(back["ffn_mult"]?.doubleValue, 4)
        XCTAssertEqual(back["eps"]?.doubleValue, 1e-5)
        XCTAssertEqual(back["s"], .string("a\"b\\c\nd\te\u{01}/é"))
        XCTAssertEqual(back["list"]?.arrayValue?.count, 3)
        XCTAssertEqual(back["list"]?.arrayValue?[2].doubleValue, -0.25)
        XCTAssertEqual(back["empty"], .object([:]))
        XCTAssertEqual(back["none"], .array([]))
    }
}
