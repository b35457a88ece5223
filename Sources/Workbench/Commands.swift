import Diagnostics
import Checkpoint
import Evaluation
import Foundation
import SafeFiles
import Model
import Recipes
import TensorCore
import Tokenizer

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
    public var peakResidentBytes: Int
    public var blasCore: String
    public var threads: Int
    /// The matrix products' precision ("fp32" or "bf16") and what ran them (`MatrixProduct.kernels`, e.g.
    /// "bf16 (oneDNN 2.6.3, AVX512-BF16)"). A base reference is always computed in float32.
    public var precision: String
    public var kernels: String
    /// Which protocol ran (from the checkpoint's tokenizer, `add_bos_token`): true when every window was
    /// [BOS] + W − 1 stream tokens (BOS id `bosTokenId`), false for windows of W stream tokens.
    public var bos: Bool
    public var bosTokenId: Int32?
    /// Stream tokens from the start to the end of the last window (pinned: windows × W, or windows × (W − 1) with BOS).
    public var streamTokensScored: Int
    /// The protocol (`PerplexityProtocol.Kind`: "pinned" or "llamacpp") and the first scored position of a window.
    public var protocolName: String
    public var firstScored: Int
    /// With `--reference`: the divergence from the base (`DivergenceReport`), and whether its top-k reference came
    /// from the cache.
    public var divergence: DivergenceReport?
    public var referenceCached: Bool?
}

/// The base a model is compared with (`compress eval --reference`).
public struct ReferenceOptions {
    /// How the base's distributions are had: from a `hidden` reference file (the default; exact), a `topk` one, or
    /// by running the base `alongside` (exact, no file).
    public enum Kind: String, CaseIterable, Sendable { case hidden, topk, alongside }
    /// The base checkpoint.
    public var base: String
    public var kind = Kind.hidden
    /// k of a `topk` reference.
    public var topK: Int = BaseReference.defaultTopK
    /// Where references are kept (nil: a temporary file, removed after use).
    public var cacheDirectory: String? = ".cache/compress"
    /// With a full-vocabulary kind: the k whose top-k reference errors to measure on the same positions
    /// (`DivergenceReport.topKErrors`).
    public var topKStudy: [Int] = []
    public init(base: String) { self.base = base }
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
                                preTokenizer: String? = nil, logitsOut: String? = nil, progress: Bool = false,
                                protocol kind: PerplexityProtocol.Kind = .pinned,
                                reference: ReferenceOptions? = nil) throws -> EvalReport {
        let ckpt = try Checkpoint.read(path)
        let tokens: [Int32]
        let sourceName: String
        switch source {
        case .tokens(let file):
            tokens = try TokenFile.read(file)
            sourceName = file
        case .text(let file):
            tokens = try tokenizer(ckpt.tokenizer, path: path, preTokenizer: preTokenizer).encode(readText(file))
            sourceName = file
        }
        if let logitsOut {
            do { try SafeFiles.checkOutput(logitsOut, role: "logits file") } catch {
                throw error.adding(place: "--logits-out")
            }
        }
        let scoring = try perplexityProtocol(ckpt.tokenizer, path: path, kind: kind)
        func meter(_ what: String) -> (Int, Int) -> Void {
            let start = Date()
            return { done, total in
                guard progress else { return }
                let elapsed = Date().timeIntervalSince(start)
                let eta = elapsed / Double(done) * Double(total - done)
                progressLine(String(format: "%@: window %d/%d  %.0f tok/s  elapsed %.1fs  ETA %.1fs",
                                    what, done, total, Double(done * window) / elapsed, elapsed, eta))
            }
        }
        let r: PerplexityResult
        var divergence: DivergenceReport? = nil, cachedReference: Bool? = nil
        do {
            if let reference {
                (divergence, r, cachedReference) = try compare(ckpt, path: path, tokens: tokens, window: window,
                                                               protocol: scoring,
                                                               maxTokens: maxTokens, reference: reference, meter: meter)
            } else {
                r = try Perplexity.evaluate(model: ckpt.model, tokens: tokens, window: window, protocol: scoring,
                                            maxTokens: maxTokens,
                                            progress: meter("eval"))
            }
        } catch let e as EvaluationError {
            throw e.adding(ErrorContext(file: sourceName), place: sourceName,
                           note: "checkpoint \(path), window \(window)")
        }
        if let logitsOut {
            // The first window's logits (W, V), raw little-endian float32, for parity checks (with BOS: of [BOS] + W −
            // 1 tokens).
            let logits = TransformerDecoder(model: ckpt.model,
                                            window: window).logits(scoring.window(0, of: tokens, window: window))
            let data = Data(bytes: logits.data, count: logits.bytes)
            do { try data.write(to: URL(fileURLWithPath: logitsOut), options: .atomic) } catch {
                throw WorkbenchError("\(logitsOut): cannot write logits (\(error.localizedDescription))")
            }
        }
        return EvalReport(checkpoint: path, source: sourceName, ppl: r.ppl, nll: r.nll, totalNll: r.totalNll,
                          predictedTokens: r.predictedTokens, tokens: r.tokens, streamTokens: tokens.count,
                          windows: r.windows, window: r.window, seconds: r.seconds, tokensPerSecond: r.tokensPerSecond,
                          peakResidentBytes: peakResidentBytes(), blasCore: BLAS.coreName,
                          threads: max(BLAS.threads, Parallel.threads), precision: MatrixProduct.precision.rawValue,
                          kernels: MatrixProduct.kernels,
                          bos: r.bos, bosTokenId: r.bosTokenId, streamTokensScored: r.streamTokensScored,
                          protocolName: r.protocolName, firstScored: r.firstScored, divergence: divergence,
                          referenceCached: cachedReference)
    }

    /// Measures `ckpt` against the base of `options` on the same windows: against its reference file (from the cache or
    /// built), or with the base run alongside.
    static func compare(_ ckpt: Checkpoint, path: String, tokens: [Int32], window: Int,
                        protocol scoring: PerplexityProtocol,
                        maxTokens: Int?, reference options: ReferenceOptions, meter: (String) -> (Int, Int) -> Void)
        throws -> (DivergenceReport, PerplexityResult, Bool) {
        let base = try Checkpoint.read(options.base)
        try checkComparable(model: ckpt, path: path, base: base, basePath: options.base)
        if options.kind == .alongside {
            let (d, r) = try Divergence.compareExact(model: ckpt.model, base: base.model, basePath: options.base,
                                                     tokens: tokens,
                                                     window: window, protocol: scoring, maxTokens: maxTokens,
                                                     topKStudy: options.topKStudy,
                                                     progress: meter("eval against the base (full vocabulary)"))
            return (d, r, false)
        }
        let k = options.kind == .topk ? options.topK : nil
        // The base is the float32 truth: its reference is computed (and cached) in float32 whatever --precision says.
        let ref = try MatrixProduct.withPrecision(.fp32) {
            try reference(base: base.model, basePath: options.base, tokens: tokens, window: window, protocol: scoring,
                          maxTokens: maxTokens, k: k, cacheDirectory: options.cacheDirectory,
                          progress: meter("base reference (\(k.map { "top-\($0)" } ?? "hidden states"))"))
        }
        let (d, r) = try Divergence.compare(model: ckpt.model, reference: ref.reference, base: base.model,
                                            tokens: tokens,
                                            topKStudy: options.topKStudy, progress: meter("eval"))
        return (d, r, ref.cached)
    }

    /// A model and a base are comparable when they share the vocabulary (size and, when both carry one, tokens).
    static func checkComparable(model: Checkpoint, path: String, base: Checkpoint, basePath: String) throws {
        guard model.model.config.vocabSize == base.model.config.vocabSize else {
            throw WorkbenchError("vocabulary of \(model.model.config.vocabSize) tokens, the base \(basePath) has "
                + "\(base.model.config.vocabSize): not comparable",
                ErrorContext(file: path))
        }
        if let a = model.tokenizer, let b = base.tokenizer, a.tokens != b.tokens {
            throw WorkbenchError("its tokenizer's vocabulary differs from the base's (\(basePath)): the same ids would "
                + "be other tokens",
                ErrorContext(file: path))
        }
    }

    /// The reference of a base on these windows (hidden states, or top-k when `k` is given): from `cacheDirectory`
    /// (built there on first use), or built in a temporary file when there is no cache (removed once mapped; the map
    /// keeps it readable).
    public static func reference(base: DecoderModel, basePath: String, tokens: [Int32], window: Int,
                                 protocol scoring: PerplexityProtocol,
                                 maxTokens: Int?, k: Int?, cacheDirectory: String?,
                                 warning: (String) -> Void = { progressLine("warning: \($0)") },
                                 progress: ((Int, Int) -> Void)? = nil) throws
        -> (reference: BaseReference, cached: Bool) {
        let baseHash: String
        baseHash = try fileContentHash(basePath)
        let header = try BaseReference.header(basePath: basePath, baseHash: baseHash, vocab: base.config.vocabSize,
                                              hidden: base.config.hiddenSize, tokens: tokens, window: window,
                                              protocol: scoring,
                                              maxTokens: maxTokens, k: k)
        if let cacheDirectory {
            return try BaseReference.cached(directory: cacheDirectory, header: header, base: base, tokens: tokens,
                                            warning: warning, progress: progress)
        }
        let tmp = (NSTemporaryDirectory() as NSString)
            .appendingPathComponent("compress-\(getpid())-" + BaseReference.fileName(header))
        try BaseReference.build(base: base, tokens: tokens, header: header, to: tmp, progress: progress)
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        return (try BaseReference(path: tmp, expected: header), false)
    }

    /// The perplexity protocol of a checkpoint's tokenizer (`PerplexityProtocol`): BOS when its `add_bos_token` is
    /// true (then its `bos_token_id` is required), else none; a checkpoint without a tokenizer (evaluated on a token
    /// file) gets none. Every evaluation of a checkpoint goes through here.
    public static func perplexityProtocol(_ spec: TokenizerSpec?, path: String,
                                          kind: PerplexityProtocol.Kind = .pinned) throws -> PerplexityProtocol {
        guard let spec else { return PerplexityProtocol(kind: kind, bos: nil) }
        do {
            return try PerplexityProtocol(kind: kind, addBosToken: spec.addBosToken, bosTokenID: spec.bosTokenID)
        } catch {
            throw error.adding(ErrorContext(file: path), place: path)
        }
    }

    /// The checkpoint's own tokenizer (optionally with another pre-tokenizer, e.g. "gpt2", or for a SentencePiece
    /// tokenizer another spacing rule, e.g. "prefix-first"): byte-level BPE for model "gpt2" (with its NFC normalizer,
    /// if any), SentencePiece BPE with byte fallback for "llama" (merges as listed, else derived from the scores or,
    /// for merge_order "gemma", by transformers' Gemma rule). Every error reads "PATH: tokenizer: ..." (added once,
    /// here).
    public static func tokenizer(_ spec: TokenizerSpec?, path: String,
                                 preTokenizer: String? = nil) throws -> any TextTokenizer {
        guard let spec else {
            throw WorkbenchError("this checkpoint carries no tokenizer; use --tokens FILE", ErrorContext(file: path))
        }
        do {
            switch spec.model {
            case "gpt2":
                let normalizer = try spec.normalizer.map { name in
                    guard let n = TextNormalizer(rawValue: name) else {
                        throw WorkbenchError("normalizer '\(name.prefix(40))' is not supported (expected NFC or none)")
                    }
                    return n
                }
                return try BPETokenizer(tokens: spec.tokens, merges: spec.merges,
                                        preTokenizer: PreTokenizer(ggufName: preTokenizer ?? spec.pre),
                                        tokenTypes: spec.tokenTypes, bosTokenID: spec.bosTokenID,
                                        eosTokenID: spec.eosTokenID,
                                        normalizer: normalizer)
            case "llama":
                let merges: SentencePieceMerges
                if !spec.merges.isEmpty {
                    merges = .explicit(spec.merges)
                } else if spec.mergeOrder == "gemma" {
                    merges = .gemma
                } else if let scores = spec.scores {
                    merges = .scores(scores)
                } else {
                    throw WorkbenchError("a llama (SentencePiece) tokenizer needs merges, scores or merge_order gemma")
                }
                return try SentencePieceTokenizer(tokens: spec.tokens, tokenTypes: spec.tokenTypes, merges: merges,
                                                  spacing: SentencePieceSpacing(name: preTokenizer ?? spec.pre),
                                                  bosTokenID: spec.bosTokenID, eosTokenID: spec.eosTokenID)
            default:
                throw WorkbenchError("model '\(spec.model)' is not supported (supported: gpt2, byte-level BPE; llama, "
                                     + "SentencePiece BPE)")
            }
        } catch { throw error.adding(ErrorContext(file: path), place: "\(path): tokenizer") }
    }

    /// Reads a UTF-8 text file.
    static func readText(_ file: String) throws -> String {
        let data: Data
        data = try SafeFiles.read(file, role: "text file (UTF-8)")
        guard let text = String(data: data, encoding: .utf8) else {
            throw WorkbenchError("not valid UTF-8 text", ErrorContext(file: file))
        }
        return text
    }

    /// What `compress tokenize` reports.
    public struct TokenizeReport: Codable {
        public var checkpoint: String
        public var text: String
        public var preTokenizer: String
        public var characters: Int
        public var bytes: Int
        public var tokens: Int
        public var seconds: Double
        public var ids: [Int32]
    }

    /// Encodes a text file with the checkpoint's tokenizer.
    public static func tokenize(checkpoint path: String, textFile: String,
                                preTokenizer: String? = nil) throws -> TokenizeReport {
        let spec = try Checkpoint.readTokenizer(path)
        let tok = try tokenizer(spec, path: path, preTokenizer: preTokenizer)
        let text = try readText(textFile)
        let start = Date()
        let ids = tok.encode(text)
        return TokenizeReport(checkpoint: path, text: textFile, preTokenizer: preTokenizer ?? spec?.pre ?? "",
                              characters: text.count, bytes: text.utf8.count, tokens: ids.count,
                              seconds: Date().timeIntervalSince(start), ids: ids)
    }
}
