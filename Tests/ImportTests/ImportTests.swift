import Checkpoint
import Foundation
import Import
import Model
import TensorCore
import XCTest

/// Imports of the tiny model from foreign formats must give transformers' logits (fixtures from
/// tools/make_tiny_fixture.py: the same weights as tiny-llama.h5 as GGUF and as safetensors directories).
final class ImportTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")
    func fixture(_ name: String) -> String { Self.fixtures.appendingPathComponent(name).path }

    struct Reference: Decodable { let batch: [[Int32]]; let logits_shape: [Int] }

    /// Largest |logit - transformers' logit| over the reference batch.
    static func logitsError(_ model: DecoderModel) throws -> Float {
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.reference.json")))
        let data = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.logits.f32"))
        let expected = data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let T = ref.logits_shape[1], V = ref.logits_shape[2]
        let engine = TransformerDecoder(model: model, window: T)
        var worst: Float = 0
        for (b, ids) in ref.batch.enumerated() {
            let l = engine.logits(ids)
            for i in 0..<(T * V) { worst = max(worst, abs(l[i] - expected[b * T * V + i])) }
        }
        return worst
    }

    func testGGUFImportMatchesTransformers() throws {
        let c = try Importer.load(fixture("tiny-llama.gguf"))
        // Un-permuting q/k is what makes this pass: without it the rotary pairs are wrong.
        XCTAssertLessThan(try Self.logitsError(c.model), 2e-5)  // observed 3.8e-6
        let original = try Checkpoint.read(fixture("tiny-llama.h5"))
        for (a, b) in zip(c.model.namedTensors, original.model.namedTensors) {
            XCTAssertEqual(a.name, b.name)
            XCTAssertEqual(a.tensor.array, b.tensor.array, a.name)  // F32 GGUF: bit-identical
        }
        XCTAssertEqual(c.config.ropeTheta, 50000)
        XCTAssertEqual(c.tokenizer?.tokens.count, 256)
        XCTAssertEqual(c.tokenizer?.pre, "gpt2")
        XCTAssertEqual(c.history.first?.objectValue?["kind"], .string("import"))
    }

    func testShardedSafetensorsImportMatchesTransformers() throws {
        let c = try Importer.load(fixture("tiny-llama-hf"))
        XCTAssertLessThan(try Self.logitsError(c.model), 2e-5)  // observed 3.8e-6
        XCTAssertEqual(c.history.first?.objectValue?["files"], .int(3))
        XCTAssertEqual(c.tokenizer?.tokens.count, 256)
        XCTAssertEqual(c.tokenizer?.tokens[32], "Ġ")  // byte 0x20 in GPT-2's byte-to-unicode map
    }

    func testBF16ImportRoundsTheFloat32Weights() throws {
        let c = try Importer.load(fixture("tiny-llama-hf-bf16"))
        let original = try Checkpoint.read(fixture("tiny-llama.h5"))
        for (a, b) in zip(c.model.namedTensors, original.model.namedTensors) {
            // bfloat16 keeps the top 16 bits (round to nearest even) of each float32.
            let rounded = b.tensor.array.map { x -> Float in
                let bits = x.bitPattern
                return Float(bitPattern: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) & 0xFFFF_0000)
            }
            XCTAssertEqual(a.tensor.array, rounded, a.name)
        }
        XCTAssertLessThan(try Self.logitsError(c.model), 0.5)  // bf16 weights; observed 0.049
    }

    func testBadSourcesFailWithNames() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("import-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let gguf = try Data(contentsOf: URL(fileURLWithPath: fixture("tiny-llama.gguf")))
        let cut = tmp.appendingPathComponent("cut.gguf")
        try gguf.prefix(gguf.count - 1000).write(to: cut)
        XCTAssertThrowsError(try Importer.load(cut.path)) { XCTAssertTrue("\($0)".contains("cut.gguf"), "\($0)") }
        XCTAssertThrowsError(try Importer.load(tmp.appendingPathComponent("none").path)) {
            XCTAssertTrue("\($0)".contains("no such file"), "\($0)")
        }
        // A directory without weights.
        try Data("{}".utf8).write(to: tmp.appendingPathComponent("config.json"))
        XCTAssertThrowsError(try Importer.load(tmp.path)) { XCTAssertTrue("\($0)".contains("config.json"), "\($0)") }
    }
}
