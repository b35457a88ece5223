// FinerCut sublayer pruning.
//
// Paper: Y. Zhang, Y. Li, X. Wang, Q. Shen, B. Plank, B. Bischl, M. Rezaei, K. Kawaguchi, "FinerCut:
// Finer-grained Interpretable Layer Pruning for Large Language Models", 2024.
//
// Every attention sublayer and every MLP sublayer (with its pre-norm, its post-norm when the family has them, and
// the attention's q/k norms) is a pruning candidate; a removed sublayer's norms go with it, and a layer left empty
// is dropped, the others keeping their attention type (full or sliding window). With f the
// model and f_{-R} the model without the sublayers R, greedy FinerCut removes, one at a time,
//   c* = argmin_{c ∉ R}  mean over calibration positions t of  d(f(x)_t, f_{-(R ∪ {c})}(x)_t),   R ← R ∪ {c*}
// where d compares the next-token outputs of the original model (not of the previous step's model):
//   Jensen-Shannon (default):  JS(P ‖ Q) = ½ KL(P ‖ M) + ½ KL(Q ‖ M),  M = ½(P + Q),  P, Q = softmax(logits)
//   angular distance:          arccos(cos(logits_f, logits_{-R})) / π
// The one-shot option scores every candidate once against the full model and removes the lowest.
// The removal order, with each step's distance, is the report; it is also the basis for a sweep, since
// greedy removal of k sublayers is the first k steps of greedy removal of more.
//
// Cost: a trial resumes from the saved residual stream entering the candidate (the sublayers before it are
// the same in every trial of a step) and computes only the sublayers after it and the LM head.
//
// Deviations: none in the criterion. The calibration windows are the recipe's (the paper uses 128 samples).

import Foundation
import Model
import Recipes
import TensorCore

public struct FinerCutPass: CompressionPass {
    public static let name = "finercut"
    public var makesHeterogeneous: Bool { true }
    public static let accepts: Set<WeightKind> = Set(WeightKind.allCases)
    public var needs: PassNeeds { [.calibration] }

    public enum Metric: String, CaseIterable, Sendable { case js, angular }
    public enum Mode: String, CaseIterable, Sendable { case greedy, oneShot = "one-shot" }
    public enum Candidates: String, CaseIterable, Sendable { case all, attention, mlp }

    public var count: Int?
    public var fraction: Double?
    public var metric = Metric.js
    public var mode = Mode.greedy
    public var candidates = Candidates.all

    public init(config s: StrictObject) throws {
        count = try s.optionalInt("remove", in: 1...1_000_000)
        fraction = try s.optionalDouble("fraction", in: 0...1)
        guard (count == nil) != (fraction == nil) else {
            throw RecipeError("\(s.location): give exactly one of 'remove' (a number of sublayers) and 'fraction' " +
                              "(of the candidates)")
        }
        if let fraction, !(fraction > 0 && fraction < 1) {
            throw s.fail("fraction", "\(fraction) must lie strictly between 0 and 1")
        }
        metric = try s.choice("metric", default: metric)
        mode = try s.choice("mode", default: mode)
        candidates = try s.choice("candidates", default: candidates)
    }

    /// One removal: the sublayer (2·layer, +1 for the MLP) and the distance of the model without it (and
    /// without every earlier removal, in greedy mode) from the original.
    public struct Removal: Codable, Equatable, Sendable {
        public var sublayer: Int
        public var layer: Int
        public var kind: String
        public var distance: Double
    }

    /// The candidates of `model`: present sublayers of the chosen kinds.
    public static func candidateSublayers(_ model: DecoderModel, _ kind: Candidates) -> [Int] {
        model.config.blocks.enumerated().flatMap { l, b -> [Int] in
            var s: [Int] = []
            if b.attention && kind != .mlp { s.append(2 * l) }
            if b.mlp && kind != .attention { s.append(2 * l + 1) }
            return s
        }
    }

    /// Mean distance from the original over the calibration windows, for each candidate removed on top of
    /// `removed`. Reference outputs are log-probabilities (JS) or logits (angular) of the original model.
    final class Trials {
        let model: DecoderModel
        let windows: [[Int32]]
        let metric: Metric
        let fwd: ResumableForward
        let refs: [Tensor]
        let V: Int, T: Int
        var dist: [Double]

        /// Throws when the original model's outputs on a window are not finite.
        init(model: DecoderModel, windows: [[Int32]], metric: Metric) throws {
            self.model = model; self.windows = windows; self.metric = metric
            T = windows[0].count
            V = model.config.vocabSize
            fwd = ResumableForward(model: model, window: T)
            dist = [Double](repeating: 0, count: T)
            refs = try windows.enumerated().map { [fwd, V, T] w, ids in
                let r = Tensor(shape: [T, V])
                let logits = fwd.run(ids)
                try requireFiniteOutputs(logits, rows: T, columns: V, stage: FinerCutPass.name,
                                         "the original model's output on calibration window \(w + 1)")
                if metric == .js {
                    logSoftmaxForward(out: r.data, logits: logits, rows: T, columns: V)
                } else {
                    r.data.update(from: logits, count: T * V)
                }
                return r
            }
        }

        /// Throws when a trial's outputs are not finite (the distance kernels would not show it).
        func distances(removed: Set<Int>, candidates: [Int], progress: (Int, Int) -> Void) throws -> [Double] {
            var sums = [Double](repeating: 0, count: candidates.count)
            for (w, ids) in windows.enumerated() {
                fwd.run(ids, skip: removed)
                for (i, c) in candidates.enumerated() {
                    let logits = fwd.resume(at: c, skip: removed.union([c]))
                    try requireFiniteOutputs(
                        logits, rows: T, columns: V, stage: FinerCutPass.name,
                        "the output of the model without layer \(c / 2)'s \(c % 2 == 0 ? "attention" : "mlp") "
                            + "(and \(removed.count) earlier removals) on calibration window \(w + 1)")
                    dist.withUnsafeMutableBufferPointer { out in
                        switch metric {
                        case .js: jensenShannonForward(out: out.baseAddress!, logProbs: refs[w].data, logits: logits,
                                                       rows: T, columns: V)
                        case .angular: angularDistanceForward(out: out.baseAddress!, a: refs[w].data, b: logits,
                                                              rows: T, columns: V)
                        }
                    }
                    for d in dist { sums[i] += d }
                }
                progress(w + 1, windows.count)
            }
            return sums.map { $0 / Double(windows.count * T) }
        }
    }

    /// The removal order of `count` sublayers (greedy), or the one-shot ranking of every candidate.
    /// A cached greedy prefix is extended rather than recomputed. A distance that is not finite throws (naming the
    /// candidate and the step): a removal chosen by NaN distances would be arbitrary.
    public static func order(model: DecoderModel, windows: [[Int32]], metric: Metric, mode: Mode,
                             candidates kind: Candidates,
                             count: Int, prefix: [Removal] = [],
                             progress: (String) -> Void = { _ in }) throws -> [Removal] {
        let all = candidateSublayers(model, kind)
        let trials = try Trials(model: model, windows: windows, metric: metric)
        func removal(_ s: Int, _ d: Double) -> Removal {
            Removal(sublayer: s, layer: s / 2, kind: s % 2 == 0 ? "attention" : "mlp", distance: d)
        }
        func check(_ d: [Double], _ candidates: [Int], _ step: String) throws {
            try requireFinite(d, stage: name) { i in
                let r = removal(candidates[i], d[i])
                return "\(step): the \(metric.rawValue) distance of the model without layer \(r.layer)'s \(r.kind) "
                    + "from the original"
            }
        }
        switch mode {
        case .oneShot:
            let d = try trials.distances(removed: [], candidates: all) { w, n in
                progress("finercut one-shot: window \(w)/\(n)")
            }
            try check(d, all, "one-shot ranking")
            return all.indices.sorted { d[$0] != d[$1] ? d[$0] < d[$1] : all[$0] < all[$1] }.map {
                removal(all[$0], d[$0])
            }
        case .greedy:
            var order = prefix
            let start = Date()
            while order.count < count {
                let removed = Set(order.map(\.sublayer))
                let left = all.filter { !removed.contains($0) }
                let step = order.count + 1
                let d = try trials.distances(removed: removed, candidates: left) { w, n in
                    progress("finercut step \(step)/\(count): window \(w)/\(n), \(left.count) candidates")
                }
                try check(d, left, "greedy step \(step)")
                let best = left.indices.min { d[$0] != d[$1] ? d[$0] < d[$1] : left[$0] < left[$1] }!
                order.append(removal(left[best], d[best]))
                let r = order.last!, el = Date().timeIntervalSince(start)
                progress(String(format: "finercut step %d/%d: removed layer %d %@ (distance %.5f)  %.0fs elapsed", step,
                                count, r.layer, r.kind,
                                r.distance, el))
            }
            return order
        }
    }

    /// The settings the removal order depends on: its cache key.
    struct OrderSettings: Encodable {
        var metric, mode, candidates: String
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let all = Self.candidateSublayers(model, candidates)
        let k = count ?? Int((fraction! * Double(all.count)).rounded())
        guard k >= 1 else {
            throw RecipeError("finercut: a fraction of \(fraction ?? 0) of \(all.count) candidates removes nothing")
        }
        guard k < Self.candidateSublayers(model, .all).count, k <= all.count else {
            throw RecipeError("finercut: cannot remove \(k) of \(all.count) candidate sublayers (at least one " +
                              "sublayer must stay)")
        }
        let windows = context.calibration
        guard let T = windows.first?.count, T >= 2, windows.allSatisfy({ $0.count == T }) else {
            throw RecipeError("finercut: calibration windows must share one length of at least 2 tokens")
        }
        let settings = try JSONValue(encoding: OrderSettings(metric: metric.rawValue, mode: mode.rawValue,
                                                             candidates: candidates.rawValue))
        let name = "finercut-order"
        var order = context.cache?.load(name, settings: settings, as: [Removal].self) ?? []
        if order.count < k || (mode == .oneShot && order.isEmpty) {
            order = try Self.order(model: model, windows: windows, metric: metric, mode: mode, candidates: candidates,
                                   count: k, prefix: mode == .greedy ? order : [], progress: context.progress)
            try context.cache?.store(name, settings: settings, value: order)
        }
        let removed = Array(order.prefix(k))
        let pruned = try model.removingSublayers(Set(removed.map(\.sublayer)))
        let report = FinerCutReport(
            metric: metric.rawValue, mode: mode.rawValue, candidates: candidates.rawValue, candidateCount: all.count,
            removedCount: k, removedAttention: removed.filter { $0.kind == "attention" }.count,
            removedMlp: removed.filter { $0.kind == "mlp" }.count,
            layersDroppedEmpty: model.layers.count - pruned.layers.count, order: removed, rankingComputed: order.count,
            why: mode == .greedy
                ? "each step removes the candidate whose removal (on top of the earlier ones) moves the output least "
                    + "from the original's"
                : "the candidates whose removal alone moves the output least from the original's")
        let diag = try JSONValue(encoding: report)
        return (pruned, diag)
    }
}

/// The report of a `finercut` stage: the settings, what was removed (attention and MLP sublayers, layers left
/// empty) and the removal order with each candidate's distance from the original.
public struct FinerCutReport: Codable, Equatable {
    public var metric: String
    public var mode: String
    public var candidates: String
    /// Candidate sublayers of the model, and how many were removed.
    public var candidateCount: Int
    public var removedCount: Int
    public var removedAttention: Int
    public var removedMlp: Int
    /// Layers dropped because both their sublayers went.
    public var layersDroppedEmpty: Int
    /// The removed sublayers, in removal order.
    public var order: [FinerCutPass.Removal]
    /// Removals the cached order holds (≥ removed_count: a longer greedy order is reused).
    public var rankingComputed: Int
    public var why: String
}
