import Foundation
import GGUF
import XCTest

/// Checks against the real SmolLM2-135M-Instruct Q4_1 GGUF; runs only when `SMOLLM2_GGUF` points to it.
final class SmolLM2Tests: XCTestCase {
    private func open() throws -> GGUFFile {
        guard let path = ProcessInfo.processInfo.environment["SMOLLM2_GGUF"], !path.isEmpty else {
            throw XCTSkip("set SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run")
        }
        return try GGUFFile(path: path)
    }

    func testDirectoryAndConfig() throws {
        let file = try open()
        XCTAssertEqual(file.version, 3)
        // 30 layers x 9 tensors + token_embd + output_norm (210 Q4_1 + 61 F32 + 1 Q8_0); no output.weight.
        XCTAssertEqual(file.tensors.count, 272)
        let byType = Dictionary(grouping: file.tensors, by: \.type).mapValues(\.count)
        XCTAssertEqual(byType, [.q4_1: 210, .f32: 61, .q8_0: 1])
        XCTAssertEqual(file.tensor(named: "token_embd.weight")?.type, .q8_0)
        XCTAssertEqual(try file.strings("tokenizer.ggml.tokens").count, 49152)

        let c = try GGUFConfig(gguf: file, supported: ["llama"])
        XCTAssertEqual(c.vocabSize, 49152)
        XCTAssertEqual(c.hiddenSize, 576)
        XCTAssertEqual(c.intermediateSize, 1536)
        XCTAssertEqual(c.numHiddenLayers, 30)
        XCTAssertEqual(c.numAttentionHeads, 9)
        XCTAssertEqual(c.numKeyValueHeads, 3)
        XCTAssertEqual(c.headDim, 64)
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertEqual(c.ropeTheta, 100_000)
        XCTAssertEqual(c.maxPositionEmbeddings, 8192)
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(c.bosTokenId, 1)
        XCTAssertEqual(c.eosTokenId, 2)
    }

    func testHuggingFaceNamesAndShapes() throws {
        let file = try open()
        let shapes = [
            "self_attn.q_proj": [576, 576], "self_attn.k_proj": [192, 576], "self_attn.v_proj": [192, 576],
            "self_attn.o_proj": [576, 576], "mlp.gate_proj": [1536, 576], "mlp.up_proj": [1536, 576],
            "mlp.down_proj": [576, 1536], "input_layernorm": [576], "post_attention_layernorm": [576],
        ]
        var names = Set<String>()
        for info in file.tensors {
            let name = try llamaHFTensor(info, in: file, config: GGUFConfig(gguf: file, supported: ["llama"])).name
            names.insert(name)
            let shape = info.rowMajorShape
            switch name {
            case "model.embed_tokens.weight": XCTAssertEqual(shape, [49152, 576])
            case "model.norm.weight": XCTAssertEqual(shape, [576])
            default:
                let key = name.split(separator: ".").dropFirst(3).dropLast().joined(separator: ".")
                XCTAssertEqual(shape, shapes[key], name)
            }
        }
        XCTAssertEqual(names.count, 272)
        XCTAssertFalse(names.contains("lm_head.weight"))
    }

    /// Expected values were produced by transformers 5.23.0's GGUF loader from the same file
    /// (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`), printed by tools/smollm2_reference.py.
    func testUnpermutedQKMatchTransformers() throws {
        let file = try open()
        let config = try GGUFConfig(gguf: file, supported: ["llama"])
        let expected: [(String, [Float], [Float], [Float], Double, Double)] = [
            ("blk.0.attn_q.weight",
             [-0.0963134765625, 0.1573486328125, -0.0963134765625, -0.73046875, 1.1719970703125, -0.0963134765625, 0.030517578125, 0.6646728515625],
             [-0.1591796875, 0.39794921875, -0.0198974609375, -1.2734375],
             [-0.1173095703125, -0.1173095703125, -0.19281005859375, 0.26019287109375],
             59.22322082519531, 63395.39872741699),
            ("blk.0.attn_k.weight",
             [-0.1552734375, 0.3402099609375, -0.485595703125, -0.3204345703125, 0.0098876953125, 0.175048828125, 0.175048828125, 0.50537109375],
             [0.203369140625, 0.09136962890625, 0.203369140625, -0.13262939453125],
             [0.056640625, 0.056640625, -0.126953125, 0.1484375],
             26.937057495117188, 29794.78126525879),
        ]
        for (name, first, row1, row32, sum, absSum) in expected {
            let info = try XCTUnwrap(file.tensor(named: name))
            let hf = try llamaHFTensor(info, in: file, config: config)
            let cols = hf.shape[1]
            XCTAssertEqual(Array(hf.values[0..<8]), first, name)
            XCTAssertEqual(Array(hf.values[cols..<(cols + 4)]), row1, name)
            XCTAssertEqual(Array(hf.values[(32 * cols)..<(32 * cols + 4)]), row32, name)
            XCTAssertEqual(hf.values.reduce(0.0) { $0 + Double($1) }, sum, accuracy: 1e-9, name)
            XCTAssertEqual(hf.values.reduce(0.0) { $0 + Double(abs($1)) }, absSum, accuracy: 1e-6, name)
            // Without un-permuting, row 1 would be HF row 32 (pairs interleave the two halves of each 64-row head).
            let raw = try file.dequantize(info)
            XCTAssertEqual(Array(raw[cols..<(cols + 4)]), row32, name)
        }
    }

    func testDequantizeWholeModel() throws {
        let file = try open()
        var elements = 0, nonFinite = 0, seconds = 0.0
        for info in file.tensors {
            let start = Date()
            let values = try file.dequantize(info)
            seconds += Date().timeIntervalSince(start)
            elements += values.count
            nonFinite += values.reduce(0) { $0 + ($1.isFinite ? 0 : 1) }
        }
        print("SmolLM2: dequantized \(file.tensors.count) tensors, \(elements) elements in \(String(format: "%.3f", seconds)) s")
        XCTAssertEqual(elements, 134_515_008)
        XCTAssertEqual(nonFinite, 0)
    }
}
