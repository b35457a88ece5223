import Foundation
import Model
import TensorCore

/// How far a model's next-token distributions are from a base model's on the same windows (issue 30; the figures of
/// llama.cpp's `llama-perplexity --kl-divergence`, tools/perplexity/perplexity.cpp, plus the reverse divergence and
/// the per-window correlation). All in nats; p = base, q = model; positions are the protocol's scored positions.
public struct DivergenceReport: Codable, Sendable {
    /// Where the base's distributions came from: its checkpoint, and the top-k reference file (nil: computed
    /// alongside).
    public var base: String
    public var referenceFile: String?
    /// "hidden" (the base's hidden states from the reference file, full vocabulary), "alongside" (the base run
    /// alongside, full vocabulary) or "topk" (a top-k reference: KL_k and its bound).
    public var referenceKind: String
    /// k of a top-k reference, nil for the full vocabulary.
    public var topK: Int?
    public var protocolName: String
    public var window: Int
    public var firstScored: Int
    public var bos: Bool
    public var windows: Int
    public var positions: Int
    /// KL(p ‖ q) per position. With a top-k reference, the coarsened KL_k, a lower bound (TopK.swift).
    public var kld: Summary
    /// Mean over positions of the top-k error bound B: mean KL(p ‖ q) lies in [kld.mean, kld.mean + kldBoundMean]
    /// (0 for the full vocabulary).
    public var kldBoundMean: Double
    /// Mean KL(q ‖ p); with a top-k reference, a lower bound (the coarsened divergence).
    public var reverseKldMean: Double
    /// Share of positions where the model's most likely token is the base's (argmax; ties to the lower id).
    public var sameTopP: Double
    public var sameTopPStandardError: Double
    /// Δp = q(correct token) − p(correct token), per position (a probability, not percent).
    public var deltaP: Summary
    public var pplBase: Double
    public var pplModel: Double
    /// pplModel / pplBase = exp(mean ln(q/p) of the correct tokens … its negative).
    public var pplRatio: Double
    /// Mean of ln q(correct) − ln p(correct) negated: ln(PPL(model) / PPL(base)), with its standard error.
    public var meanLnPplRatio: Double
    public var meanLnPplRatioStandardError: Double
    /// Pearson correlation of the per-token NLL of model and base (llama.cpp's "Cor(ln(PPL(Q)), ln(PPL(base)))").
    public var nllCorrelation: Double
    /// Pearson correlation of the per-window ln PPL of model and base.
    public var windowLnPplCorrelation: Double
    /// With the full vocabulary and `topKStudy`: what a top-k reference would have given on the same positions.
    public var topKErrors: [TopKError]? = nil

    /// A top-k reference's error against the full-vocabulary KL on the same positions, and its size.
    public struct TopKError: Codable, Sendable {
        public var k: Int
        /// Mean KL_k (the top-k estimate) and its error relative to the full mean KL: (KL_k − KL) / KL, ≤ 0.
        public var kldMean: Double
        public var relativeError: Double
        /// Mean of the bound B: the full mean lies in [kldMean, kldMean + boundMean].
        public var boundMean: Double
        /// Same-top-1 share with the reference's top-1 (equal to the full one's but for ties).
        public var sameTopP: Double
        /// Bytes per position of the reference (`BaseReference`: 8k + 8), and that over llama.cpp's 16-bit log-probs of
        /// the whole vocabulary (2V).
        public var bytesPerPosition: Int
        public var fractionOfFull16Bit: Double
    }

    /// Mean, standard error, RMS, extremes and percentiles (linear interpolation between order statistics, as
    /// numpy's default and llama.cpp's) of one per-position quantity.
    public struct Summary: Codable, Sendable {
        public var mean: Double
        public var standardError: Double
        public var rms: Double
        public var min: Double
        public var max: Double
        /// "99.9", "99", "95", "90", "75", "50", "25", "10", "5", "1", "0.1" → value.
        public var percentiles: [String: Double]

        public static let levels: [(String, Double)] = [
            ("99.9", 0.999), ("99", 0.99), ("95", 0.95), ("90", 0.90), ("75", 0.75), ("50", 0.5), ("25", 0.25),
            ("10", 0.10),
            ("5", 0.05), ("1", 0.01), ("0.1", 0.001),
        ]

        public init(_ values: [Double]) {
            let n = values.count
            precondition(n > 0)
            var s = 0.0, s2 = 0.0
            for v in values { s += v; s2 += v * v }
            mean = s / Double(n)
            rms = (s2 / Double(n)).squareRoot()
            let variance = n > 1 ? Swift.max(0, (s2 - s * s / Double(n)) / Double(n - 1)) : 0
            standardError = (variance / Double(n)).squareRoot()
            let sorted = values.sorted()
            min = sorted[0]; max = sorted[n - 1]
            var p: [String: Double] = [:]
            for (name, f) in Self.levels { p[name] = Self.percentile(sorted, f) }
            percentiles = p
        }

        /// The f-quantile of ascending `sorted`: linear interpolation at position f · (n − 1).
        public static func percentile(_ sorted: [Double], _ f: Double) -> Double {
            let x = f * Double(sorted.count - 1)
            let i = Int(x.rounded(.down)), frac = x - Double(i)
            let j = Swift.min(i + 1, sorted.count - 1)
            return (1 - frac) * sorted[i] + frac * sorted[j]
        }
    }
}

/// Per-position figures of one comparison, accumulated window by window in order (deterministic).
struct DivergenceAccumulator {
    var kl: [Double] = [], bound: [Double] = [], reverse: [Double] = [], deltaP: [Double] = []
    var nll: [Double] = [], nllBase: [Double] = []
    var same = 0
    var windowNll: [Double] = [], windowNllBase: [Double] = []

    mutating func endWindow(positions n: Int) {
        windowNll.append(nll.suffix(n).reduce(0, +) / Double(n))
        windowNllBase.append(nllBase.suffix(n).reduce(0, +) / Double(n))
    }

    static func pearson(_ a: [Double], _ b: [Double]) -> Double {
        let n = Double(a.count)
        guard a.count > 1 else { return 1 }
        let ma = a.reduce(0, +) / n, mb = b.reduce(0, +) / n
        var sab = 0.0, saa = 0.0, sbb = 0.0
        for (x, y) in zip(a, b) { sab += (x - ma) * (y - mb); saa += (x - ma) * (x - ma); sbb += (y - mb) * (y - mb) }
        return saa > 0 && sbb > 0 ? sab / (saa * sbb).squareRoot() : 1
    }

    func report(
        base: String, referenceFile: String?, kind: String, topK: Int?, protocol p: PerplexityProtocol, window W: Int
    ) -> DivergenceReport {
        let n = kl.count
        let same = Double(self.same) / Double(n)
        let lnRatio = zip(nll, nllBase).map { $0 - $1 }
        let lnSummary = DivergenceReport.Summary(lnRatio)
        let meanNll = nll.reduce(0, +) / Double(n), meanNllBase = nllBase.reduce(0, +) / Double(n)
        return DivergenceReport(
            base: base, referenceFile: referenceFile, referenceKind: kind, topK: topK, protocolName: p.kind.rawValue,
            window: W,
            firstScored: p.firstScored(W), bos: p.bos != nil, windows: windowNll.count, positions: n,
            kld: .init(kl), kldBoundMean: bound.isEmpty ? 0 : bound.reduce(0, +) / Double(n),
            reverseKldMean: reverse.reduce(0, +) / Double(n),
            sameTopP: same, sameTopPStandardError: n > 1 ? (same * (1 - same) / Double(n - 1)).squareRoot() : 0,
            deltaP: .init(deltaP), pplBase: Foundation.exp(meanNllBase), pplModel: Foundation.exp(meanNll),
            pplRatio: Foundation.exp(meanNll - meanNllBase), meanLnPplRatio: lnSummary.mean,
            meanLnPplRatioStandardError: lnSummary.standardError,
            nllCorrelation: Self.pearson(nll, nllBase), windowLnPplCorrelation: Self.pearson(windowNll, windowNllBase))
    }
}

/// Index of the largest of x[0..<n] (the first on ties).
@inline(__always) func argmax(_ x: UnsafePointer<Float>, count n: Int) -> Int {
    var best = 0
    for j in 1..<n where x[j] > x[best] { best = j }
    return best
}

public enum Divergence {
    /// Compares `model` with `base` on the full vocabulary: both run over the same windows (`klDivergenceForward` per
    /// position in Double). `topKStudy`: also what top-k references of those k would give on the same positions.
    public static func compareExact(
        model: DecoderModel, base: DecoderModel, basePath: String, tokens: [Int32], window W: Int,
        protocol p: PerplexityProtocol, maxTokens: Int?, topKStudy: [Int] = [], progress: ((Int, Int) -> Void)? = nil
    ) throws -> (DivergenceReport, PerplexityResult) {
        let V = model.config.vocabSize
        guard base.config.vocabSize == V else {
            throw EvaluationError(
                "the base (\(basePath)) has a vocabulary of \(base.config.vocabSize), the model \(V): not comparable")
        }
        let windows = try Perplexity.plan(tokens: tokens, window: W, protocol: p, maxTokens: maxTokens, vocab: V)
        let engine = TransformerDecoder(model: base, window: W)
        let C = base.config.hiddenSize
        var current = -1
        var hidden: UnsafePointer<Float>? = nil
        return try compareFull(
            model: model, base: base, basePath: basePath, referenceFile: nil, tokens: tokens, window: W, protocol: p,
            windows: windows, topKStudy: topKStudy, progress: progress
        ) { w, ids, t in
            if w != current { hidden = engine.hiddenStates(ids); current = w }
            return hidden! + t * C
        }
    }

    /// Compares `model` with a base reference (`BaseReference`, made with the same tokens, window and protocol): a
    /// `hidden` one gives the full-vocabulary figures with `base`'s LM head (the reference's base, checked by the
    /// caller); a `topk` one, KL_k with its bound, the coarsened reverse KL, same-top-1, Δp, the PPL ratio and
    /// correlations (`base` unused).
    public static func compare(
        model: DecoderModel, reference ref: BaseReference, base: DecoderModel, tokens: [Int32], topKStudy: [Int] = [],
        progress: ((Int, Int) -> Void)? = nil
    ) throws -> (DivergenceReport, PerplexityResult) {
        let h = ref.header
        let V = model.config.vocabSize, W = h.window, p = h.scoring
        guard h.vocab == V else {
            throw EvaluationError(
                "\(ref.path): the reference's vocabulary is \(h.vocab), the model's \(V): not comparable")
        }
        let windows = try Perplexity.plan(tokens: tokens, window: W, protocol: p, maxTokens: h.maxTokens, vocab: V)
        guard windows == h.windows else {
            throw EvaluationError("\(ref.path): the reference holds \(h.windows) windows, these tokens make \(windows)")
        }
        let P = p.predictedPerWindow(W), first = p.firstScored(W)
        if h.kind == BaseReference.Kind.hidden.rawValue {
            let C = h.hidden
            guard base.config.hiddenSize == C, base.config.vocabSize == V else {
                throw EvaluationError(
                    "\(ref.path): made with a base of hidden size \(C), not this base's \(base.config.hiddenSize)")
            }
            return try compareFull(
                model: model, base: base, basePath: h.basePath, referenceFile: ref.path, tokens: tokens, window: W,
                protocol: p, windows: windows, topKStudy: topKStudy, progress: progress
            ) { w, _, t in
                ref.hiddenStates + (w * P + t - first) * C
            }
        }
        guard topKStudy.isEmpty else {
            throw EvaluationError(
                "a top-k study needs the full vocabulary (a hidden-state reference or the base alongside)")
        }
        let k = h.k
        let start = Date()
        var acc = DivergenceAccumulator()
        var kl = [Double](repeating: 0, count: Perplexity.rowsPerChunk(vocab: V)), bound = kl, rkl = kl, nll = kl
        var total = 0.0
        try Perplexity.forEachScoredChunk(
            model: model, tokens: tokens, window: W, protocol: p, windows: windows, progress: progress
        ) {
            w, ids, t0, rows, _, logits in
            let pos = w * P + (t0 - first)  // the reference's first row of this chunk
            ids.withUnsafeBufferPointer { idp in
                crossEntropyForward(
                    nll: &nll, logits: logits, targets: idp.baseAddress! + t0 + 1, rows: rows, columns: V)
            }
            topKDivergenceForward(
                kl: &kl, bound: &bound, reverse: &rkl, ids: ref.ids + pos * k, logProbs: ref.logProbs + pos * k,
                logRest: ref.logRest + pos, logits: logits, rows: rows, columns: V, k: k)
            for i in 0..<rows {
                let baseNll = -Double(ref.targetLogProbs[pos + i])
                acc.kl.append(kl[i]); acc.bound.append(bound[i]); acc.reverse.append(rkl[i])
                acc.nll.append(nll[i]); acc.nllBase.append(baseNll); total += nll[i]
                acc.deltaP.append(Foundation.exp(-nll[i]) - Foundation.exp(-baseNll))
                if Int32(argmax(logits + i * V, count: V)) == ref.ids[(pos + i) * k] { acc.same += 1 }
            }
            if t0 + rows == W - 1 { acc.endWindow(positions: P) }
        }
        guard acc.kl.allSatisfy(\.isFinite) else {
            throw EvaluationError("a KL divergence from the base is not finite (NaN or infinite logits)")
        }
        let report = acc.report(
            base: h.basePath, referenceFile: ref.path, kind: h.kind, topK: k, protocol: p, window: W)
        let seconds = Date().timeIntervalSince(start)
        return try checked(report, PerplexityResult(totalNll: total, windows: windows, window: W, protocol: p,
                                                    seconds: seconds))
    }

    /// The full-vocabulary comparison: per chunk of the model's scored rows, the base's logits from its hidden states
    /// (`baseHidden(w, ids, t)`: rows from position t of window w) through its LM head, then KL both ways in Double,
    /// same top-1, Δp and NLL per position.
    static func compareFull(
        model: DecoderModel, base: DecoderModel, basePath: String, referenceFile: String?, tokens: [Int32],
        window W: Int,
        protocol p: PerplexityProtocol, windows: Int, topKStudy: [Int], progress: ((Int, Int) -> Void)?,
        baseHidden: (_ w: Int, _ ids: [Int32], _ t: Int) -> UnsafePointer<Float>
    ) throws -> (DivergenceReport, PerplexityResult) {
        let V = model.config.vocabSize
        let start = Date()
        let baseEngine = TransformerDecoder(model: base, window: 1)
        var acc = DivergenceAccumulator()
        let R = min(Perplexity.rowsPerChunk(vocab: V), p.predictedPerWindow(W))
        let baseLogits = Tensor(shape: [R, V])
        var nll = [Double](repeating: 0, count: R), nllBase = nll, kl = nll, rkl = nll
        var total = 0.0
        if let bad = topKStudy.first(where: { $0 < 1 || $0 > V }) {
            throw EvaluationError("top-k \(bad) outside 1...\(V)")
        }
        // The top-k study: per k, Σ KL_k, Σ B and the same-top-1 count over the same positions.
        var study = [(kl: Double, bound: Double, same: Int)](repeating: (0, 0, 0), count: topKStudy.count)
        let kMax = topKStudy.max() ?? 0
        var sIds = [Int32](repeating: 0, count: R * kMax), sLp = [Float](repeating: 0, count: R * kMax),
            sRest = [Float](repeating: 0, count: R)
        var sKl = [Double](repeating: 0, count: R), sBound = sKl
        try Perplexity.forEachScoredChunk(
            model: model, tokens: tokens, window: W, protocol: p, windows: windows, progress: progress
        ) {
            w, ids, t0, rows, _, logits in
            var r0 = 0
            while r0 < rows {
                let n = min(R, rows - r0), t = t0 + r0, z = logits + r0 * V
                baseEngine.head(baseHidden(w, ids, t), rows: n, into: baseLogits.data)
                ids.withUnsafeBufferPointer { idp in
                    let target = idp.baseAddress! + t + 1
                    crossEntropyForward(nll: &nll, logits: z, targets: target, rows: n, columns: V)
                    crossEntropyForward(nll: &nllBase, logits: baseLogits.data, targets: target, rows: n, columns: V)
                    klDivergenceForward(
                        kl: &kl, reverse: &rkl, reference: baseLogits.data, logits: z, rows: n, columns: V)
                    for (si, k) in topKStudy.enumerated() {
                        topKLogSoftmax(ids: &sIds, logProbs: &sLp, logRest: &sRest, targetLogProbs: nil, targets: nil,
                                       logits: baseLogits.data, rows: n, columns: V, k: k)
                        topKDivergenceForward(
                            kl: &sKl, bound: &sBound, reverse: nil, ids: sIds, logProbs: sLp, logRest: sRest,
                            logits: z, rows: n, columns: V, k: k)
                        for i in 0..<n {
                            study[si].kl += sKl[i]; study[si].bound += sBound[i]
                            if Int32(argmax(z + i * V, count: V)) == sIds[i * k] { study[si].same += 1 }
                        }
                    }
                    for i in 0..<n {
                        acc.kl.append(kl[i]); acc.reverse.append(rkl[i])
                        acc.nll.append(nll[i]); acc.nllBase.append(nllBase[i]); total += nll[i]
                        acc.deltaP.append(Foundation.exp(-nll[i]) - Foundation.exp(-nllBase[i]))
                        if argmax(z + i * V, count: V) == argmax(baseLogits.data + i * V, count: V) { acc.same += 1 }
                    }
                }
                r0 += n
            }
            if t0 + rows == W - 1 { acc.endWindow(positions: p.predictedPerWindow(W)) }
        }
        guard acc.kl.allSatisfy(\.isFinite) else {
            throw EvaluationError("a KL divergence from the base is not finite (NaN or infinite logits)")
        }
        var report = acc.report(
            base: basePath, referenceFile: referenceFile, kind: referenceFile == nil ? "alongside" : "hidden",
            topK: nil, protocol: p, window: W)
        if !topKStudy.isEmpty {
            let n = Double(acc.kl.count), full = report.kld.mean
            report.topKErrors = zip(topKStudy, study).map { k, s in
                DivergenceReport.TopKError(
                    k: k, kldMean: s.kl / n, relativeError: full > 0 ? (s.kl / n - full) / full : 0,
                    boundMean: s.bound / n, sameTopP: Double(s.same) / n,
                    bytesPerPosition: 8 * k + 8, fractionOfFull16Bit: Double(8 * k + 8) / Double(2 * V))
            }
        }
        let seconds = Date().timeIntervalSince(start)
        return try checked(report, PerplexityResult(totalNll: total, windows: windows, window: W, protocol: p,
                                                    seconds: seconds))
    }

    /// The report and result when every figure is finite; otherwise an error naming the first that is not.
    static func checked(_ report: DivergenceReport, _ result: PerplexityResult) throws
        -> (DivergenceReport, PerplexityResult) {
        let r = try result.checkedFinite()
        if let bad = firstNonFiniteNumber(in: report) {
            throw EvaluationError("the divergence figure \(bad) is not finite: the model's or the base's logits "
                + "hold NaN or infinite values")
        }
        return (report, r)
    }
}
