import Checkpoint
import Evaluation
import Foundation
import Model
import TensorCore
import XCTest

/// The whole model against Hugging Face transformers (fixtures from tools/make_tiny_fixture.py): one tiny random
/// model per family (LlamaForCausalLM untied and tied, Qwen2ForCausalLM with random q/k/v biases, Qwen3ForCausalLM
/// with random q/k norms and head_dim 16 != hidden / heads 8).
final class ReferenceParityTests: XCTestCase {
    static let models = ["tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]

    /// The Qwen fixtures read as their family, with the family's features on and their tensors loaded.
    func testFamilyFixturesReadAsTheirFamily() throws {
        let q2 = try Checkpoint.read(Fixtures.path("tiny-qwen2.h5")).model, c2 = q2.config
        XCTAssertEqual(c2.family, "qwen2")
        XCTAssertEqual(c2.biases, [.q, .k, .v])
        XCTAssertFalse(c2.qkNorm)
        XCTAssertEqual(c2.headDim, 8)
        XCTAssertFalse(c2.tieWordEmbeddings)
        for layer in q2.layers {
            let a = try XCTUnwrap(layer.attention)
            XCTAssertEqual(Set(a.biases.keys), [.q, .k, .v])
            XCTAssertEqual(a.biases[.q]?.count, 4 * 8)
            XCTAssertEqual(a.biases[.k]?.count, 2 * 8)
            XCTAssertNotEqual(a.biases[.q]?.array.allSatisfy { $0 == 0 }, true, "biases are random, not zero")
            XCTAssertNil(a.qNorm)
            XCTAssertNil(a.kNorm)
        }
        let q3 = try Checkpoint.read(Fixtures.path("tiny-qwen3.h5")).model, c3 = q3.config
        XCTAssertEqual(c3.family, "qwen3")
        XCTAssertEqual(c3.biases, [])
        XCTAssertTrue(c3.qkNorm)
        XCTAssertEqual(c3.headDim, 16)
        XCTAssertEqual(c3.hiddenSize / c3.numAttentionHeads, 8)
        XCTAssertTrue(c3.tieWordEmbeddings)
        for layer in q3.layers {
            let a = try XCTUnwrap(layer.attention)
            XCTAssertTrue(a.biases.isEmpty)
            XCTAssertEqual(try XCTUnwrap(a.qNorm).count, 16)
            XCTAssertEqual(try XCTUnwrap(a.kNorm).count, 16)
            XCTAssertNotEqual(a.qNorm?.array, a.kNorm?.array)
        }
    }

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
            XCTAssertLessThan(worst, 2e-5, name)  // observed 3.8e-6 (tiny-llama), 6.7e-6 (tied), 3.7e-6 (qwen2), 3.3e-6 (qwen3); logits are O(10)
            XCTAssertEqual(totalNLL / Double(B * (T - 1)), ref.loss, accuracy: 1e-6, name)  // observed 2.8e-7; 5.4e-8 (qwen2), 2.5e-7 (qwen3)
        }
    }

    /// The plain reference forward (`referenceLogits`) against transformers too, not only against the fast forward.
    func testReferenceForwardMatchesTransformers() throws {
        for name in Self.models {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let ref = try Fixtures.reference(name)
            let refLogits = try Fixtures.logits(name)
            let (B, T, V) = (ref.logits_shape[0], ref.logits_shape[1], ref.logits_shape[2])
            var worst: Float = 0
            for b in 0..<B {
                let logits = model.referenceLogits(ref.batch[b])
                for i in 0..<(T * V) { worst = max(worst, abs(logits[i] - refLogits[b * T * V + i])) }
            }
            XCTAssertLessThan(worst, 2e-5, name)  // observed 5.0e-6 (tiny-llama), 6.8e-6 (tied), 2.6e-6 (qwen2), 3.5e-6 (qwen3)
        }
    }

    func testPerplexityMatchesTransformersProtocol() throws {
        for name in Self.models {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let ref = try Fixtures.reference(name)
            let text = try String(contentsOfFile: Fixtures.path("\(name).stream.txt"), encoding: .utf8)
            let tokens = text.split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
            let r = try Perplexity.evaluate(model: model, tokens: tokens, window: ref.perplexity.window, protocol: .noBOS)
            XCTAssertEqual(r.windows, ref.perplexity.windows)
            XCTAssertEqual(r.predictedTokens, ref.perplexity.predicted_tokens)
            XCTAssertEqual(r.totalNll, ref.perplexity.total_nll, accuracy: 1e-4, name)  // observed 1.6e-5 on ~937 nats; 2.0e-5 (qwen2), 3.4e-6 (qwen3) on ~953
            XCTAssertEqual(r.ppl, ref.perplexity.ppl, accuracy: ref.perplexity.ppl * 1e-6, name)  // observed 1.1e-7 relative; 1.3e-7 (qwen2), 2.2e-8 (qwen3)
        }
    }

    func testFastForwardMatchesReferenceOps() throws {
        for name in Self.models {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            // 150 tokens: crosses the attention block boundary (128 rows).
            let ids = (0..<150).map { Int32(($0 * 37 + 11) % 256) }
            let fast = TransformerDecoder(model: model, window: 150).logits(ids)
            let ref = model.referenceLogits(ids)
            let worst = (0..<fast.count).reduce(Float(0)) { max($0, abs(fast[$1] - ref[$1])) }
            XCTAssertLessThan(worst, 2e-5, name)  // observed 5.1e-6 (tiny-llama), 6.7e-6 (tied), 2.5e-6 (qwen2), 6.4e-6 (qwen3)
        }
    }

    func testMaxTokensAndWindowing() throws {
        let model = try Checkpoint.read(Fixtures.path("tiny-llama.h5")).model
        let tokens = (0..<100).map { Int32($0 % 256) }
        let all = try Perplexity.evaluate(model: model, tokens: tokens, window: 16, protocol: .noBOS)
        XCTAssertEqual(all.windows, 6)
        XCTAssertEqual(all.predictedTokens, 6 * 15)
        let some = try Perplexity.evaluate(model: model, tokens: tokens, window: 16, protocol: .noBOS, maxTokens: 40)
        XCTAssertEqual(some.windows, 2)
        // The first two windows alone: their NLL is the sum of scoring each separately.
        let w0 = try Perplexity.evaluate(model: model, tokens: Array(tokens[0..<16]), window: 16, protocol: .noBOS)
        let w1 = try Perplexity.evaluate(model: model, tokens: Array(tokens[16..<32]), window: 16, protocol: .noBOS)
        XCTAssertEqual(some.totalNll, w0.totalNll + w1.totalNll, accuracy: 1e-9)
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: Array(tokens[0..<10]), window: 16, protocol: .noBOS))
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: [Int32](repeating: 300, count: 16), window: 16, protocol: .noBOS)) {
            XCTAssertTrue("\($0)".contains("token id 300"), "\($0)")
        }
    }
}
