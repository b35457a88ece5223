import Checkpoint
import Evaluation
import Foundation
import Model
import TensorCore
import XCTest

/// The perplexity protocols (issue 28 item 3) against a computation that shares nothing with the evaluator but the
/// model: each window's ids built here, the plain reference forward's logits (`referenceLogits`), and a Float64
/// log-softmax written here.
final class BOSPerplexityTests: XCTestCase {
    /// Σ_{t=0}^{T-2} −log softmax(logits_t)[ids[t+1]] in Float64, from the plain reference forward.
    static func referenceNLL(_ model: DecoderModel, _ ids: [Int32]) -> Double {
        let logits = model.referenceLogits(ids)
        let V = model.config.vocabSize
        var total = 0.0
        for t in 0..<(ids.count - 1) {
            let row = (0..<V).map { Double(logits[t * V + $0]) }
            let m = row.max()!
            total += m + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - m) }) - row[Int(ids[t + 1])]
        }
        return total
    }

    static func stream(_ name: String) throws -> [Int32] {
        try String(contentsOfFile: Fixtures.path("\(name).stream.txt"), encoding: .utf8)
            .split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
    }

    /// BOS: the stream cut into chunks of W − 1, each window [BOS] + chunk predicting all W − 1 chunk tokens.
    func testBOSProtocolMatchesIndependentReference() throws {
        for name in ["tiny-llama", "tiny-qwen2"] {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let tokens = try Self.stream(name)
            let W = 32, bos: Int32 = 1
            for maxTokens in [nil, 62] as [Int?] {
                let usable = min(tokens.count, maxTokens ?? tokens.count)
                let windows = usable / (W - 1)
                var expected = 0.0
                for w in 0..<windows {
                    expected += Self.referenceNLL(model, [bos] + tokens[(w * (W - 1))..<((w + 1) * (W - 1))])
                }
                let r = try Perplexity.evaluate(model: model, tokens: tokens, window: W, protocol: .withBOS(bos), maxTokens: maxTokens)
                let label = "\(name), max tokens \(maxTokens.map(String.init) ?? "all")"
                XCTAssertEqual(r.windows, windows, label)
                XCTAssertEqual(r.predictedTokens, windows * (W - 1), label)
                XCTAssertEqual(r.streamTokensScored, windows * (W - 1), label)
                XCTAssertEqual(r.tokens, windows * W, label)
                XCTAssertTrue(r.bos, label)
                XCTAssertEqual(r.bosTokenId, bos, label)
                XCTAssertEqual(r.totalNll, expected, accuracy: 1e-4, label)  // fast vs reference forward: observed ≤ 8.8e-6 on ~930 nats
                XCTAssertEqual(r.ppl, Foundation.exp(expected / Double(windows * (W - 1))), accuracy: r.ppl * 1e-6, label)  // observed ≤ 1.4e-7
            }
        }
    }

    /// The window counts differ between the protocols exactly as defined: ⌊usable / W⌋ against ⌊usable / (W − 1)⌋,
    /// `maxTokens` counting stream tokens (the BOS is not one of them), and BOS actually changes what is scored.
    func testWindowCountsAndMaxTokens() throws {
        let model = try Checkpoint.read(Fixtures.path("tiny-llama.h5")).model
        let tokens = try Self.stream("tiny-llama")
        let plain = try Perplexity.evaluate(model: model, tokens: tokens, window: 32, protocol: .noBOS, maxTokens: 62)
        let bos = try Perplexity.evaluate(model: model, tokens: tokens, window: 32, protocol: .withBOS(1), maxTokens: 62)
        XCTAssertEqual(plain.windows, 1)
        XCTAssertEqual(bos.windows, 2)
        XCTAssertEqual(plain.streamTokensScored, 32)
        XCTAssertEqual(bos.streamTokensScored, 62)
        // W − 1 stream tokens are not one window without BOS, and are one with it.
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: Array(tokens.prefix(31)), window: 32, protocol: .noBOS))
        XCTAssertEqual(try Perplexity.evaluate(model: model, tokens: Array(tokens.prefix(31)), window: 32, protocol: .withBOS(1)).windows, 1)
        // One BOS window equals the reference NLL of [BOS] + the 31 tokens, and differs from the no-BOS scoring.
        let one = try Perplexity.evaluate(model: model, tokens: Array(tokens.prefix(31)), window: 32, protocol: .withBOS(1))
        XCTAssertEqual(one.totalNll, Self.referenceNLL(model, [1] + tokens.prefix(31)), accuracy: 1e-4)  // observed 6.4e-6
        XCTAssertGreaterThan(abs(one.totalNll - Self.referenceNLL(model, Array(tokens.prefix(32)))), 1e-3)
    }

    /// Without BOS the protocol is today's: windows of W stream tokens predicting tokens 2..W, against the same
    /// independent computation; a tokenizer with add_bos_token false gives it whatever its bos_token_id.
    func testNoBOSProtocolUnchanged() throws {
        for name in ["tiny-llama", "tiny-llama-tied"] {
            let model = try Checkpoint.read(Fixtures.path("\(name).h5")).model
            let tokens = try Self.stream(name)
            let W = 32, windows = tokens.count / W
            var expected = 0.0
            for w in 0..<windows { expected += Self.referenceNLL(model, Array(tokens[(w * W)..<((w + 1) * W)])) }
            let p = try PerplexityProtocol(addBosToken: false, bosTokenID: 1)
            XCTAssertEqual(p, .noBOS)
            let r = try Perplexity.evaluate(model: model, tokens: tokens, window: W, protocol: p)
            XCTAssertEqual(r.windows, windows, name)
            XCTAssertEqual(r.predictedTokens, windows * (W - 1), name)
            XCTAssertEqual(r.streamTokensScored, windows * W, name)
            XCTAssertFalse(r.bos, name)
            XCTAssertNil(r.bosTokenId, name)
            XCTAssertEqual(r.totalNll, expected, accuracy: 1e-4, name)  // observed 3.0e-6, 1.5e-5 (tied)
            // And still transformers' figure for the fixture (tools/make_tiny_fixture.py, no BOS).
            let ref = try Fixtures.reference(name)
            XCTAssertEqual(ref.perplexity.window, W)
            XCTAssertEqual(r.ppl, ref.perplexity.ppl, accuracy: ref.perplexity.ppl * 1e-6, name)  // observed 7.0e-8, 1.1e-7 (tied)
        }
    }

    func testProtocolFromTokenizerSettings() throws {
        XCTAssertEqual(try PerplexityProtocol(addBosToken: true, bosTokenID: 2), .withBOS(2))
        XCTAssertEqual(try PerplexityProtocol(addBosToken: false, bosTokenID: nil), .noBOS)
        XCTAssertThrowsError(try PerplexityProtocol(addBosToken: true, bosTokenID: nil)) {
            let message = "\($0)"
            XCTAssertTrue(message.contains("add_bos_token") && message.contains("bos_token_id is missing"), message)
        }
        // A BOS id outside the model's vocabulary is refused before any window runs.
        let model = try Checkpoint.read(Fixtures.path("tiny-llama.h5")).model
        XCTAssertThrowsError(try Perplexity.evaluate(model: model, tokens: try Self.stream("tiny-llama"), window: 32, protocol: .withBOS(300))) {
            XCTAssertTrue("\($0)".contains("bos_token_id 300 is outside the vocabulary"), "\($0)")
        }
    }
}
