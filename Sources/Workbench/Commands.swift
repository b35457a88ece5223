import Checkpoint
import Evaluation
import Foundation
import Model
import TensorCore

/// What `compress eval` reports.
public struct EvalReport: Codable {
    public var checkpoint: String
    public var source: String
    public var ppl: Double
    public var nll: Double
    public var totalNll: Double
    public var predictedTokens: Int
    public var tokens: Int
    public var streamTokens: Int
    public var windows: Int
    public var window: Int
    public var seconds: Double
    public var tokensPerSecond: Double
}

/// Where the evaluation text comes from.
public enum TokenSource {
    case text(String)
    case tokens(String)
}

/// The workbench's operations, callable from the CLI, recipes and tests.
public enum Workbench {
    /// Loads a checkpoint and measures its perplexity on a token stream.
    public static func evaluate(checkpoint path: String, source: TokenSource, window: Int, maxTokens: Int?,
                                progress: Bool = false) throws -> EvalReport {
        let ckpt = try Checkpoint.read(path)
        let tokens: [Int32]
        let sourceName: String
        switch source {
        case .tokens(let file):
            tokens = try TokenFile.read(file)
            sourceName = file
        case .text(let file):
            tokens = try tokenize(checkpoint: ckpt, path: path, textFile: file)
            sourceName = file
        }
        let start = Date()
        let r = try Perplexity.evaluate(model: ckpt.model, tokens: tokens, window: window, maxTokens: maxTokens) { done, total in
            guard progress else { return }
            let elapsed = Date().timeIntervalSince(start)
            let eta = elapsed / Double(done) * Double(total - done)
            progressLine(String(format: "eval: window %d/%d  %.0f tok/s  elapsed %.1fs  ETA %.1fs",
                                done, total, Double(done * window) / elapsed, elapsed, eta))
        }
        return EvalReport(checkpoint: path, source: sourceName, ppl: r.ppl, nll: r.nll, totalNll: r.totalNll,
                          predictedTokens: r.predictedTokens, tokens: r.tokens, streamTokens: tokens.count,
                          windows: r.windows, window: r.window, seconds: r.seconds, tokensPerSecond: r.tokensPerSecond)
    }

    /// Turns a text file into ids with the checkpoint's own tokenizer.
    static func tokenize(checkpoint: Checkpoint, path: String, textFile: String) throws -> [Int32] {
        guard checkpoint.tokenizer != nil else {
            throw WorkbenchError("\(path): this checkpoint carries no tokenizer; use --tokens FILE")
        }
        throw WorkbenchError("--text: the byte-level BPE tokenizer is not in this build yet; use --tokens FILE")
    }
}
