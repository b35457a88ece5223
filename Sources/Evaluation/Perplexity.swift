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
    /// Tokens in the scored windows (windows × window; with BOS, the added BOS tokens included).
    public var tokens: Int
    public var windows: Int
    public var window: Int
    public var seconds: Double
    public var tokensPerSecond: Double
    /// Which protocol ran: true when every window started with the BOS token `bosTokenId` (see `PerplexityProtocol`).
    public var bos: Bool
    public var bosTokenId: Int32?
    /// Stream tokens the windows cover (windows × W without BOS, windows × (W − 1) with it).
    public var streamTokensScored: Int
}

/// Why an evaluation cannot run.
public struct EvaluationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How a token stream becomes scored windows of W tokens. Chosen by the checkpoint's tokenizer, never by hand:
/// `init(addBosToken:bosTokenID:)` with the tokenizer spec's `add_bos_token` and `bos_token_id`.
/// - no BOS (`add_bos_token` false: SmolLM2, Qwen): the stream is cut into consecutive non-overlapping windows of W
///   tokens from the start (the last partial window dropped); each window predicts its tokens 2..W from the ones
///   before them. Windows = ⌊usable / W⌋.
/// - BOS (`add_bos_token` true: Gemma): the stream is cut into consecutive non-overlapping chunks of W − 1 tokens
///   from the start (the last partial chunk dropped); each window is [BOS] + chunk (W tokens) and predicts all
///   W − 1 chunk tokens (each from the BOS and the chunk tokens before it); the BOS itself is never predicted, so
///   every stream token of a whole chunk is predicted exactly once. Windows = ⌊usable / (W − 1)⌋.
/// Either way each window is scored on its own, predicts W − 1 tokens, and `usable` = min(stream tokens, maxTokens)
/// counts stream tokens only (the added BOS never counts).
public struct PerplexityProtocol: Equatable, Sendable {
    /// The token every window starts with, or nil (no BOS).
    public let bos: Int32?

    /// No BOS: windows of W stream tokens.
    public static let noBOS = PerplexityProtocol(bos: nil)
    /// BOS: windows of [bos] + W − 1 stream tokens.
    public static func withBOS(_ id: Int32) -> PerplexityProtocol { PerplexityProtocol(bos: id) }

    public init(bos: Int32?) { self.bos = bos }

    /// The protocol a tokenizer asks for: BOS when it adds one (`add_bos_token`), which needs its `bos_token_id`.
    public init(addBosToken: Bool, bosTokenID: Int32?) throws {
        guard addBosToken else { self.init(bos: nil); return }
        guard let bosTokenID else {
            throw EvaluationError("tokenizer: add_bos_token is true but bos_token_id is missing (the BOS protocol starts every window with the BOS token)")
        }
        self.init(bos: bosTokenID)
    }

    /// Stream tokens per window of W tokens.
    public func streamTokensPerWindow(_ W: Int) -> Int { bos == nil ? W : W - 1 }

    /// The ids of window `w` (W tokens) of `tokens`.
    public func window(_ w: Int, of tokens: [Int32], window W: Int) -> [Int32] {
        let C = streamTokensPerWindow(W)
        let chunk = tokens[(w * C)..<((w + 1) * C)]
        if let bos { return [bos] + chunk }
        return Array(chunk)
    }

    /// "bos" or "no-bos", for reports.
    public var name: String { bos == nil ? "no-bos" : "bos" }
}

/// Perplexity with the protocol of shared/ASSETS.md (`PerplexityProtocol`: without BOS, consecutive non-overlapping
/// windows of W stream tokens, each predicting its tokens 2..W; with BOS, for tokenizers that add one, windows of
/// [BOS] + W − 1 stream tokens, each predicting its W − 1 stream tokens); each window is scored on its own;
/// PPL = exp(Σ NLL / Σ predicted), accumulated in Float64.
public enum Perplexity {
    /// LM-head rows computed at once: bounds the logits buffer to rowsPerChunk × V floats.
    static let rowsPerChunk = 256

    /// Evaluates `model` on the first `maxTokens` stream tokens of `tokens` (all when nil) under `protocol`
    /// (the checkpoint's tokenizer's: `PerplexityProtocol(addBosToken:bosTokenID:)`); `tokens` never holds the BOS.
    /// `progress` is called after each window with (windows done, windows total).
    public static func evaluate(
        model: DecoderModel, tokens: [Int32], window W: Int, protocol p: PerplexityProtocol, maxTokens: Int? = nil,
        progress: ((Int, Int) -> Void)? = nil
    ) throws -> PerplexityResult {
        let V = model.config.vocabSize
        guard W >= 2 else { throw EvaluationError("window must be at least 2 tokens, got \(W)") }
        let usable = min(tokens.count, maxTokens ?? tokens.count)
        let S = p.streamTokensPerWindow(W)  // stream tokens per window
        let windows = usable / S
        guard windows > 0 else {
            throw EvaluationError(p.bos == nil
                ? "need at least one whole window of \(W) tokens, have \(usable) token(s)"
                : "need at least one whole window of BOS + \(S) tokens (window \(W)), have \(usable) token(s)")
        }
        if let bos = p.bos, bos < 0 || Int(bos) >= V {
            throw EvaluationError("bos_token_id \(bos) is outside the vocabulary (0..<\(V))")
        }
        if let bad = tokens.prefix(windows * S).first(where: { $0 < 0 || Int($0) >= V }) {
            throw EvaluationError("token id \(bad) is outside the vocabulary (0..<\(V))")
        }
        let start = Date()
        let engine = TransformerDecoder(model: model, window: W)
        let C = model.config.hiddenSize, R = min(rowsPerChunk, W - 1)
        let logits = Tensor(shape: [R, V])
        var nll = [Double](repeating: 0, count: W - 1)
        var total = 0.0
        for w in 0..<windows {
            let ids = p.window(w, of: tokens, window: W)
            let h = engine.hiddenStates(ids)
            // Row t of the hidden states predicts token t + 1 (with BOS: row 0, the BOS, predicts the chunk's first).
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
            seconds: seconds, tokensPerSecond: Double(windows * W) / max(seconds, 1e-9),
            bos: p.bos != nil, bosTokenId: p.bos, streamTokensScored: windows * S)
    }
}
