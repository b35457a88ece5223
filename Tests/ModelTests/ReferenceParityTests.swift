import Checkpoint
import Evaluation
import Foundation
import Model
import TensorCore
import XCTest

/// The whole model against Hugging Face transformers (fixtures from tools/make_tiny_fixture.py).
final class ReferenceParityTests: XCTestCase {
    static let models = ["tiny-llama", "tiny-llama-tied"]

    func testLogitsAndLossMatchTransformers() throws {
        for name in Self.models {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let ref = try Fixtures.reference(name)
            let refLogits = try Fixtures.logits(name)
            let (B, T, V) = (ref.logits_shape[0], ref.logits_shape[1], ref.logits_shape[2])
            let engine = TransformerDecoder(model: model, window: T)
            var worst: Float = 0, totalNLL = 0.0
            for b in 0..<B {
                let logits = engine.logits(ref.batch[b])
                for i in 0..<(T * V) { worst = max(worst, abs(logits[i] - refLogits[b * T * V + i])) }
                var nll = [Double](repeating: 0, count: T - 1)
                ref.batch[b].withUnsafeBufferPointer { ids in
                    nll.withUnsafeMutableBufferPointer {
                        crossEntropyForward(nll: $0.baseAddress!, logits: logits.data, targets: ids.baseAddress! + 1, rows: T - 1, columns: V)
                    }
                }
                totalNLL += nll.reduce(0, +)
            }
            XCTAssertLessThan(worst, 2e-5, name)  // observed 3.8e-6 (tiny-llama), 6.7e-6 (tied); logits are O(10)
            XCTAssertEqual(totalNLL / Double(B * (T - 1)), ref.loss, accuracy: 1e-6, name)  // observed 2.8e-7
        }
    }

    func testPerplexityMatchesTransformersProtocol() throws {
        for name in Self.models {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let ref = try Fixtures.reference(name)
            let text = try String(contentsOfFile: Fixtures.path("\(name).stream.txt"), encoding: .utf8)
            let tokens = text.split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
            let r = try Perplexity.evaluate(model: model, tokens: tokens, window: ref.perplexity.window)
            XCTAssertEqual(r.windows, ref.perplexity.windows)
            XCTAssertEqual(r.predictedTokens, ref.perplexity.predicted_tokens)
            XCTAssertEqual(r.totalNll, ref.perplexity.total_nll, accuracy: 1e-4)  // observed 1.6e-5 on ~937 nats
            XCTAssertEqual(r.ppl, ref.perplexity.ppl, accuracy: ref.perplexity.ppl * 1e-6)  // observed 1.1e-7 relative
        }
    }

    func testFastForwardMatchesReferenceOps() throws {
        let model = try Checkpoint.read(Fixtures.path("tiny-llama.h5")).model
        // 150 tokens: crosses the attention block boundary (128 rows).
        let ids = (0..<150).map { Int32(($0 * 37 + 11) % 256) }
        let fast = TransformerDecoder(model: model, window: 150).logits(ids)
        let ref = model.referenceLogits(ids)
        let worst = (0..<fast.count).reduce(Float(0)) { max($0, abs(fast[$1] - ref[$1])) }
        XCTAssertLessThan(worst, 2e-5)  // observed 5.1e-6
    }

    func testMaxTokensAndWindowing() throws {
        let model = try Checkpoint.read(Fixtures.path("tiny-llama.h5")).model
        let tokens = (0..<100).map { Int32($0 % 256) }
        let all = try Perplexity.evaluate(model: model, tokens: tokens, window: 16)
        XCTAssertEqual(all.windows, 6)
        XCTAssertEqual(all.predictedTokens, 6 * 15)
        let some = try Perplexity.evaluate(model: model, tokens: tokens, window: 16, maxTokens: 40)
        XCTAssertEqual(some.windows, 2)
        // The first two windows alone: their NLL is the sum of scoring each separately.
        let w0 = try Perplexity.evaluate(model: model, tokens: Array(tokens[0..<16]), window: 16)
        let w1 = try Perplexity.evaluate(model: model, tokens: Array(tokens[16..<32]), window: 16)
        XCTAssertEqual(some.totalNll, w0.totalNll + w1.totalNll, accuracy: 1e-9)
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: Array(tokens[0..<10]), window: 16))
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: [Int32](repeating: 300, count: 16), window: 16)) {
            XCTAssertTrue("\($0)".contains("token id 300"), "\($0)")
        }
    }
}
