import Checkpoint
import Foundation
import Import
import Model
import TensorCore
import XCTest

/// A Gemma 3 GGUF written independently of our exporter (tools/make_gguf_fixtures.py with gguf-py, in llama.cpp's
/// convention: every norm weight stored as 1 + w, the final norm included; layer types as a per-layer bool array;
/// the sliding layers' rotary base under rope.freq_base_swa) from the transformers fixture tiny-gemma3.h5. The
/// import must give back transformers' weights and spec, except the attention scale: llama.cpp scales scores by
/// 1/√key_length (here 1/4), not by query_pre_attn_scalar^(-1/2) (the fixture's 1/√24).
final class Gemma3ImportTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()

    func testGemma3GGUFImportsAsTransformersWeightsAndSpec() throws {
        let gguf = Self.root.appendingPathComponent("ImportersTests/Fixtures/gemma3_tiny.gguf").path
        let h5 = Self.root.appendingPathComponent("Fixtures/tiny-gemma3.h5").path
        let imported = try Importer.fromGGUF(path: gguf).model, reference = try Checkpoint.read(h5).model
        let c = imported.config, r = reference.config
        XCTAssertEqual(c.family, "gemma3")
        XCTAssertEqual(c.normKind, .rmsUnitOffset)
        XCTAssertEqual(c.activation, .geluTanh)
        XCTAssertTrue(c.postNorms && c.qkNorm && c.tieWordEmbeddings)
        XCTAssertEqual(c.blocks.map(\.layerType), [.sliding, .full, .sliding])
        XCTAssertEqual(c.blocks, r.blocks)
        XCTAssertEqual(c.slidingWindow, 5)
        XCTAssertEqual(c.ropeTheta, 1_000_000)
        XCTAssertEqual(c.slidingRopeTheta, 10_000)
        XCTAssertEqual(c.embeddingScale, r.embeddingScale)
        XCTAssertEqual(try XCTUnwrap(c.attentionScale), 0.25, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(r.attentionScale), 1 / 24.0.squareRoot(), accuracy: 1e-12)

        // Every weight, norms with the shift undone (w = (1 + w) − 1 in float32: within an ulp of 1).
        let ours = Dictionary(uniqueKeysWithValues: imported.namedTensors.map { ($0.name, $0.tensor.array) })
        let theirs = Dictionary(uniqueKeysWithValues: reference.namedTensors.map { ($0.name, $0.tensor.array) })
        XCTAssertEqual(Set(ours.keys), Set(theirs.keys))
        for (name, t) in theirs {
            let o = try XCTUnwrap(ours[name], name)
            let tol: Float = name.hasSuffix("norm.weight") ? 2e-7 : 0
            for i in t.indices { XCTAssertEqual(o[i], t[i], accuracy: tol, "\(name)[\(i)]") }
        }
        // The same function: the transformers model with llama.cpp's attention scale gives the same logits.
        var rc = r
        rc.attentionScale = 0.25
        let scaled = try DecoderModel(config: rc, weights: Dictionary(uniqueKeysWithValues: reference.weights.map { ($0.id, $0.weight) }))
        let ids: [Int32] = (0..<24).map { Int32(($0 * 37 + 11) % 256) }
        let a = TransformerDecoder(model: imported, window: 24).logits(ids), b = TransformerDecoder(model: scaled, window: 24).logits(ids)
        var worst: Float = 0
        for i in 0..<a.count { worst = max(worst, abs(a[i] - b[i])) }
        XCTAssertLessThan(worst, 1e-4)
        // And the scale matters: transformers' own scale gives other logits.
        let t = TransformerDecoder(model: reference, window: 24).logits(ids)
        XCTAssertGreaterThan((0..<a.count).map { abs(a[$0] - t[$0]) }.max()!, 1e-2)
    }
}
