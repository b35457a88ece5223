import Diagnostics
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
    /// Stream tokens from the start to the end of the last window (pinned: windows × W without BOS, windows × (W − 1)
    /// with it).
    public var streamTokensScored: Int
    /// The protocol's name (`PerplexityProtocol.Kind`: "pinned" or "llamacpp") and the first scored position.
    public var protocolName: String
    public var firstScored: Int
}

extension PerplexityResult {
    /// The result of `windows` windows of W under `protocol` whose predicted tokens' NLL sum to `total`.
    init(totalNll total: Double, windows: Int, window W: Int, protocol p: PerplexityProtocol, seconds: Double) {
        let predicted = windows * p.predictedPerWindow(W)
        self.init(
            ppl: Foundation.exp(total / Double(predicted)), nll: total / Double(predicted), totalNll: total,
            predictedTokens: predicted, tokens: windows * W, windows: windows, window: W,
            seconds: seconds, tokensPerSecond: Double(windows * W) / max(seconds, 1e-9),
            bos: p.bos != nil, bosTokenId: p.bos,
            streamTokensScored: p.streamTokensCovered(windows: windows, window: W),
            protocolName: p.kind.rawValue, firstScored: p.firstScored(W))
    }
}

extension PerplexityResult {
    /// The result itself when its perplexity and NLL are finite; otherwise an error saying which (the model's
    /// logits held NaN or infinite values, or the mean NLL overflows exp).
    func checkedFinite() throws -> PerplexityResult {
        guard totalNll.isFinite else {
            throw EvaluationError("the total negative log-likelihood is \(totalNll) (expected a finite value): "
                + "the model's logits hold NaN or infinite values")
        }
        guard ppl.isFinite else {
            throw EvaluationError("the perplexity exp(\(nll)) is \(ppl) (expected a finite value): the mean negative "
                + "log-likelihood overflows")
        }
        return self
    }
}

/// Why an evaluation cannot run.
public struct EvaluationError: ContextualError, Sendable {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}

/// How a token stream becomes scored windows of W tokens: a named scoring rule (`Kind`) and the BOS the checkpoint's
/// tokenizer asks for (`init(addBosToken:bosTokenID:)` with the tokenizer spec's `add_bos_token` and `bos_token_id`,
/// never by hand).
///
/// `pinned` (the default; shared/ASSETS.md):
/// - no BOS (`add_bos_token` false: SmolLM2, Qwen): the stream is cut into consecutive non-overlapping windows of W
///   tokens from the start (the last partial window dropped); each window predicts its tokens 2..W from the ones
///   before them. Windows = ⌊usable / W⌋.
/// - BOS (`add_bos_token` true: Gemma): the stream is cut into consecutive non-overlapping chunks of W − 1 tokens
///   from the start (the last partial chunk dropped); each window is [BOS] + chunk (W tokens) and predicts all
///   W − 1 chunk tokens (each from the BOS and the chunk tokens before it); the BOS itself is never predicted, so
///   every stream token of a whole chunk is predicted exactly once. Windows = ⌊usable / (W − 1)⌋.
///
/// `llamacpp` (llama.cpp's `llama-perplexity`, tools/perplexity/perplexity.cpp, `perplexity()`; W is its context,
/// 512 by default): the stream, with a BOS in front when the tokenizer adds one, is cut into chunks of W; with BOS,
/// each chunk's first token is replaced by the BOS, so window w is [BOS] + stream[w·W ..< w·W + W − 1] (the stream
/// token at w·W + W − 1 is never seen) and windows = ⌊(usable + 1) / W⌋; without, window w is stream[w·W ..< (w+1)·W]
/// and windows = ⌊usable / W⌋. Only the second half is scored: positions t = W/2 … W − 2 predict token t + 1, so
/// each window predicts W − 1 − W/2 tokens (255 of 512), each from at least W/2 tokens of context.
///
/// Either way each window is scored on its own and `usable` = min(stream tokens, maxTokens) counts stream tokens
/// only (an added BOS never counts).
public struct PerplexityProtocol: Equatable, Sendable, Codable {
    /// The named scoring rules.
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// Whole windows of W, every position after the first scored.
        case pinned
        /// llama.cpp's: chunks of W (its context), the second half scored.
        case llamacpp
    }
    public let kind: Kind
    /// The token every window starts with, or nil (no BOS).
    public let bos: Int32?

    /// No BOS: windows of W stream tokens.
    public static let noBOS = PerplexityProtocol(bos: nil)
    /// BOS: windows of [bos] + W − 1 stream tokens.
    public static func withBOS(_ id: Int32) -> PerplexityProtocol { PerplexityProtocol(bos: id) }

    public init(kind: Kind = .pinned, bos: Int32?) { self.kind = kind; self.bos = bos }

    /// The protocol a tokenizer asks for: BOS when it adds one (`add_bos_token`), which needs its `bos_token_id`.
    public init(kind: Kind = .pinned, addBosToken: Bool, bosTokenID: Int32?) throws {
        guard addBosToken else { self.init(kind: kind, bos: nil); return }
        guard let bosTokenID else {
            throw EvaluationError(
                "tokenizer: add_bos_token is true but bos_token_id is missing (the BOS protocol starts every window "
                    + "with the BOS token)")
        }
        self.init(kind: kind, bos: bosTokenID)
    }

    /// Stream tokens a window of W tokens holds (with BOS, W − 1).
    public func streamTokensPerWindow(_ W: Int) -> Int { bos == nil ? W : W - 1 }

    /// Whole windows of W in `usable` stream tokens.
    public func windows(usable: Int, window W: Int) -> Int {
        switch kind {
        case .pinned: return usable / streamTokensPerWindow(W)
        case .llamacpp: return (bos == nil ? usable : usable + 1) / W
        }
    }

    /// The first position whose prediction (of the token after it) is scored: 0, or W/2 for llama.cpp's protocol.
    public func firstScored(_ W: Int) -> Int { kind == .pinned ? 0 : W / 2 }

    /// Tokens each window predicts: positions firstScored(W) … W − 2.
    public func predictedPerWindow(_ W: Int) -> Int { W - 1 - firstScored(W) }

    /// Stream tokens from the start up to the end of the last of `windows` windows.
    public func streamTokensCovered(windows n: Int, window W: Int) -> Int {
        switch kind {
        case .pinned: return n * streamTokensPerWindow(W)
        case .llamacpp: return n == 0 ? 0 : (bos == nil ? n * W : n * W - 1)
        }
    }

    /// The ids of window `w` (W tokens) of `tokens`.
    public func window(_ w: Int, of tokens: [Int32], window W: Int) -> [Int32] {
        let start = kind == .pinned ? w * streamTokensPerWindow(W) : w * W
        let chunk = tokens[start..<(start + streamTokensPerWindow(W))]
        if let bos { return [bos] + chunk }
        return Array(chunk)
    }

    /// "bos" or "no-bos" (pinned), "llamacpp-bos" or "llamacpp-no-bos", for reports and cache keys.
    public var name: String {
        let b = bos == nil ? "no-bos" : "bos"
        return kind == .pinned ? b : "\(kind.rawValue)-\(b)"
    }
}

/// Perplexity under a `PerplexityProtocol` (by default the pinned one of shared/ASSETS.md: without BOS, consecutive
/// non-overlapping windows of W stream tokens, each predicting its tokens 2..W; with BOS, for tokenizers that add one,
/// windows of [BOS] + W − 1 stream tokens, each predicting its W − 1 stream tokens; or llama.cpp's); each window is
/// scored on its own; PPL = exp(Σ NLL / Σ predicted), accumulated in Float64 in a fixed order.
public enum Perplexity {
    /// LM-head rows computed at once for a vocabulary of V: as many as a 128 MiB logits buffer holds, at most 512
    /// (SmolLM2: 512, Qwen2: 220, Gemma 3: 128). Larger products amortize the packing of the LM head's weight (bf16
    /// eval of SmolLM2: 945-980 tok/s at 512 rows against 920-961 at 256, alternating runs); each logit is the
    /// same float whatever the chunk (float32 PPL bitwise equal at 220, 256 and 512 rows).
    public static func rowsPerChunk(vocab V: Int) -> Int { max(1, min(512, (128 << 20) / (4 * max(V, 1)))) }

    /// The windows `protocol` makes of the first `maxTokens` stream tokens (all when nil), after checking them.
    public static func plan(
        tokens: [Int32], window W: Int, protocol p: PerplexityProtocol, maxTokens: Int?, vocab V: Int
    ) throws -> Int {
        guard W >= 2 else { throw EvaluationError("window must be at least 2 tokens, got \(W)") }
        if p.kind == .llamacpp && W < 4 {
            throw EvaluationError("llama.cpp's protocol needs a context of at least 4 tokens, got \(W)")
        }
        let usable = min(tokens.count, maxTokens ?? tokens.count)
        let windows = p.windows(usable: usable, window: W)
        guard windows > 0 else {
            let what =
                p.kind == .llamacpp
                ? "one chunk of \(W) tokens (llama.cpp's protocol\(p.bos == nil ? "" : ", BOS first"))"
                : p.bos == nil
                    ? "one whole window of \(W) tokens" : "one whole window of BOS + \(W - 1) tokens (window \(W))"
            throw EvaluationError("need at least \(what), have \(usable) token(s)")
        }
        if let bos = p.bos, bos < 0 || Int(bos) >= V {
            throw EvaluationError("bos_token_id \(bos) is outside the vocabulary (0..<\(V))")
        }
        if let bad = tokens.prefix(p.streamTokensCovered(windows: windows, window: W)).first(where: {
            $0 < 0 || Int($0) >= V
        }) {
            throw EvaluationError("token id \(bad) is outside the vocabulary (0..<\(V))")
        }
        return windows
    }

    /// Runs `model` over the windows and hands over the logits of the scored positions in chunks of at most
    /// `rowsPerChunk` rows: `body(w, ids, t0, rows, hidden, logits)` gets window w's ids, the final hidden states
    /// (rows × C, what the LM head multiplies) and the logits (rows × V) of positions t0 ..< t0 + rows, which predict
    /// ids[t0 + 1 ..< t0 + rows + 1]. Windows and chunks come in order.
    public static func forEachScoredChunk(
        model: DecoderModel, tokens: [Int32], window W: Int, protocol p: PerplexityProtocol, windows: Int,
        progress: ((Int, Int) -> Void)? = nil,
        _ body: (
            _ w: Int, _ ids: [Int32], _ t0: Int, _ rows: Int, _ hidden: UnsafePointer<Float>,
            _ logits: UnsafePointer<Float>
        ) throws -> Void
    ) rethrows {
        let engine = TransformerDecoder(model: model, window: W)
        let C = model.config.hiddenSize, V = model.config.vocabSize
        let first = p.firstScored(W), R = min(rowsPerChunk(vocab: V), W - 1 - first)
        let logits = Tensor(shape: [R, V])
        // The weights stay fixed: in bf16, each is converted to oneDNN's layout once for all windows.
        try MatrixProduct.withWeightCache {
            for w in 0..<windows {
                let ids = p.window(w, of: tokens, window: W)
                let h = engine.hiddenStates(ids)
                var t0 = first
                while t0 < W - 1 {
                    let rows = min(R, W - 1 - t0)
                    engine.head(h + t0 * C, rows: rows, into: logits.data)
                    try body(w, ids, t0, rows, h + t0 * C, logits.data)
                    t0 += rows
                }
                progress?(w + 1, windows)
            }
        }
    }

    /// Evaluates `model` on the first `maxTokens` stream tokens of `tokens` (all when nil) under `protocol`
    /// (the checkpoint's tokenizer's: `PerplexityProtocol(addBosToken:bosTokenID:)`); `tokens` never holds the BOS.
    /// `progress` is called after each window with (windows done, windows total). A non-finite NLL (at the first
    /// window holding one) or perplexity throws: the result is always a number.
    public static func evaluate(
        model: DecoderModel, tokens: [Int32], window W: Int, protocol p: PerplexityProtocol, maxTokens: Int? = nil,
        progress: ((Int, Int) -> Void)? = nil
    ) throws -> PerplexityResult {
        let V = model.config.vocabSize
        let windows = try plan(tokens: tokens, window: W, protocol: p, maxTokens: maxTokens, vocab: V)
        let start = Date()
        var nll = [Double](repeating: 0, count: W)
        var total = 0.0
        try forEachScoredChunk(model: model, tokens: tokens, window: W, protocol: p, windows: windows,
                               progress: progress) { w, ids, t0, rows, _, logits in
            // Row t predicts token t + 1 (with BOS: row 0, the BOS, predicts the chunk's first).
            ids.withUnsafeBufferPointer { idp in
                nll.withUnsafeMutableBufferPointer { out in
                    crossEntropyForward(
                        nll: out.baseAddress!, logits: logits, targets: idp.baseAddress! + t0 + 1, rows: rows,
                        columns: V)
                }
            }
            for x in nll.prefix(rows) { total += x }  // fixed order: deterministic
            // Stop at the first window whose NLL is not finite: the rest cannot make the result a number again.
            if let t = nll.prefix(rows).firstIndex(where: { !$0.isFinite }) {
                throw EvaluationError("window \(w + 1) of \(windows), position \(t0 + t): the negative "
                        + "log-likelihood is \(nll[t]) (expected a finite value): the model's logits hold NaN or "
                        + "infinite values")
            }
        }
        let seconds = Date().timeIntervalSince(start)
        return try PerplexityResult(totalNll: total, windows: windows, window: W, protocol: p, seconds: seconds)
            .checkedFinite()
    }
}
