import Foundation
import Model
import TensorCore

/// Result of a perplexity evaluation under the pinned protocol.
public struct PerplexityResult: Codable, Sendable {
    /// exp(total NLL / predicted tokens).
    public var ppl: Double
    /// Mean negative log-likelihood per predicted token (nats).
    public var nll: Double
    public var totalNll: Double
    public var predictedTokens: Int
    /// Tokens in the scored windows (windows × window).
    public var tokens: Int
    public var windows: Int
    public var window: Int
    public var seconds: Double
    public var tokensPerSecond: Double
}

/// Why an evaluation cannot run.
public struct EvaluationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Perplexity with the protocol of shared/ASSETS.md: the token stream is cut into consecutive,
/// non-overlapping windows of W tokens from the start (the last partial window dropped); no BOS; each
/// window is scored on its own, predicting its tokens 2..W from the ones before them;
/// PPL = exp(Σ NLL / Σ predicted), accumulated in Float64.
public enum Perplexity {
    /// LM-head rows computed at once: bounds the logits buffer to rowsPerChunk × V floats.
    static let rowsPerChunk = 256

    /// Evaluates `model` on the first `maxTokens` tokens of `tokens` (all when nil).
    /// `progress` is called after each window with (windows done, windows total).
    public static func evaluate(
        model: DecoderModel, tokens: [Int32], window W: Int, maxTokens: Int? = nil,
        progress: ((Int, Int) -> Void)? = nil
    ) throws -> PerplexityResult {
        let V = model.config.vocabSize
        guard W >= 2 else { throw EvaluationError("window must be at least 2 tokens, got \(W)") }
        let usable = min(tokens.count, maxTokens ?? tokens.count)
        let windows = usable / W
        guard windows > 0 else {
            throw EvaluationError("need at least one whole window of \(W) tokens, have \(usable) token(s)")
        }
        if let bad = tokens.prefix(windows * W).first(where: { $0 < 0 || Int($0) >= V }) {
            throw EvaluationError("token id \(bad) is outside the vocabulary (0..<\(V))")
        }
        let start = Date()
        let engine = TransformerDecoder(model: model, window: W)
        let C = model.config.hiddenSize, R = min(rowsPerChunk, W - 1)
        let logits = Tensor(shape: [R, V])
        var nll = [Double](repeating: 0, count: W - 1)
        var total = 0.0
        for w in 0..<windows {
            let ids = Array(tokens[(w * W)..<((w + 1) * W)])
            let h = engine.hiddenStates(ids)
            // Row t of the hidden states predicts token t + 1.
            ids.withUnsafeBufferPointer { idp in
                nll.withUnsafeMutableBufferPointer { out in
                    var r0 = 0
                    while r0 < W - 1 {
                        let rows = min(R, W - 1 - r0)
                        engine.head(h + r0 * C, rows: rows, into: logits.data)
                        crossEntropyForward(nll: out.baseAddress! + r0, logits: logits.data,
                                            targets: idp.baseAddress! + r0 + 1, rows: rows, columns: V)
                        r0 += rows
                    }
                }
            }
            for x in nll { total += x }  // fixed order: deterministic
            progress?(w + 1, windows)
        }
        let seconds = Date().timeIntervalSince(start)
        let predicted = windows * (W - 1)
        return PerplexityResult(
            ppl: Foundation.exp(total / Double(predicted)), nll: total / Double(predicted), totalNll: total,
            predictedTokens: predicted, tokens: windows * W, windows: windows, window: W,
            seconds: seconds, tokensPerSecond: Double(windows * W) / max(seconds, 1e-9))
    }
}
