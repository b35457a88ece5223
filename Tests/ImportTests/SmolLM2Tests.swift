import Checkpoint
import Foundation
import Import
import Model
import TensorCore
import XCTest

/// The real model: SmolLM2-135M imported from its GGUF (SMOLLM2_GGUF) must reproduce transformers' per-token
/// NLL and argmax on a fixed passage (Tests/Fixtures/smollm2-reference.json, made by tools/make_smollm2_fixture.py).
final class SmolLM2Tests: XCTestCase {
    struct Reference: Decodable {
        let text: String
        let ids: [Int32]
        let nll: [Double]
        let argmax: [Int]
        let top2_gap: [Double]
    }

    func testImportedSmolLM2MatchesTransformers() throws {
        guard let gguf = ProcessInfo.processInfo.environment["SMOLLM2_GGUF"], !gguf.isEmpty else {
            throw XCTSkip("set SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run (tools/test.sh does)")
        }
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/smollm2-reference.json")
        let ref = try JSONDecoder().decode(Reference.self, from: Data(contentsOf: url))
        let ckpt = try Importer.load(gguf)
        XCTAssertEqual(ckpt.model.parameterCount, 134_515_008)
        let T = ref.ids.count, V = ckpt.config.vocabSize
        let logits = TransformerDecoder(model: ckpt.model, window: T).logits(ref.ids)
        var nll = [Double](repeating: 0, count: T - 1)
        ref.ids.withUnsafeBufferPointer { ids in
            nll.withUnsafeMutableBufferPointer {
                crossEntropyForward(nll: $0.baseAddress!, logits: logits.data, targets: ids.baseAddress! + 1, rows: T - 1, columns: V)
            }
        }
        let worst = zip(nll, ref.nll).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(worst, 2e-3)  // observed 2.3e-4 over 149 positions
        for t in 0..<T where ref.top2_gap[t] > 1e-3 {
            let row = UnsafeBufferPointer(start: logits.data + t * V, count: V)
            XCTAssertEqual(row.indices.max { row[$0] < row[$1] }, ref.argmax[t], "position \(t)")
        }
    }
}
