// Minitron width and depth pruning.
//
// Paper: S. Muralidharan, S. T. Sreenivas, R. Joshi, M. Chochowski, M. Patwary, M. Shoeybi, B. Catanzaro,
// J. Kautz, P. Molchanov, "Compact Language Models via Pruning and Knowledge Distillation", 2024 (and
// Sreenivas, Muralidharan et al., "LLM Pruning and Distillation in Practice: The Minitron Approach", 2024).
//
// Activation-based importance on calibration data (a forward pass only), for a batch of B windows of S tokens:
//   heads:              F_head(i)    = agg_B agg_S ‖Attn(X W_Q,i, X W_K,i, X W_V,i)‖₂   (head output before o_proj)
//   MLP neurons:        F_neuron(i)  = agg_B agg_S |X W_1,i|                             (input of down_proj:
//                                                                                        silu(gate)⊙up)
//   embedding channels: F_emb(i)     = agg_B agg_S Σ_norms |RMSNorm(X)_i|                (every pre-norm's and the
//                                                                                        final norm's output)
// with agg_S ∈ {mean, sum, l2, max} over a window's positions, then agg_B over the windows; the paper's best
// is (batch = L2, sequence = mean), the default here.
// Depth importance of block i: 1 - cos(block input, block output), averaged over calibration tokens (Block
// Importance), and the perplexity on the calibration windows with block i removed (the paper's LM-loss
// criterion). The blocks with the lowest importance under the chosen metric are removed in one shot.
//
// Width pruning keeps, per layer, the highest-scoring heads within each KV group (the same number in every
// group, so grouped-query attention keeps its structure), the highest-scoring neurons per layer, and the
// highest-scoring channels globally, then copies the kept rows and columns (and their biases' entries) into a smaller
// homogeneous model of the same family.
//
// Deviations:
// - Per-token magnitudes (|·|, ‖·‖₂) are aggregated, where the paper writes a signed sum for neurons and
//   channels; with signed values a mean over the sequence lets opposite activations cancel.
// - Removing hidden channels rescales each norm over C channels, (w + o) → (w + o)·sqrt(C/C') (o = 1 for
//   Gemma's x/rms·(1 + w), 0 for x/rms·w), and rms_norm_eps by C/C'; the q and k rows by sqrt(C/C') when the
//   model has per-head q/k norms (which read the same eps); the embedding table by s_e/s_e' when the family
//   derives the embedding multiplier from the width (Gemma's √hidden_size). So the pruned model computes exactly
//   what the original computes with those channels zeroed where they enter the residual stream (embedding
//   columns, o_proj / down_proj rows), every norm then seeing zeros there (Model/Pruning.swift, ChannelRemoval).
// - Post-sublayer norms (Gemma): in the pruned model a post-norm's mean of squares runs over the kept channels of
//   its sublayer's output y only, while the original's also covers the removed ones (the residual stream drops
//   them only after the norm), so no rescaling is exact. Each post-norm's (w + o) is multiplied by
//   ρ = sqrt((Σ_kept E[y²]/C' + eps·C/C') / (Σ_all E[y²]/C + eps)), the mean squares E[y_j²] measured on the
//   calibration windows (cache entry "minitron-post-norm-inputs"; the kept share per sublayer is reported as
//   `post_norm_kept_energy`), so it divides by the RMS the original's had on average. The pruned model is then
//   exactly the original with the removed channels zeroed and each post-norm's (w + o) multiplied by
//   ρ/sqrt(C/C') (tested). On Gemma 3 270M, hidden 640 → 512 without retraining (4 × 256 calibration tokens;
//   the first 4,096 test tokens at window 512), PPL 174 against 726 for the zeroed-original rule
//   (w + o)·sqrt(C/C') and 499 for (w + o) unchanged (base 25.2); the kept share of the post-norm inputs' energy
//   ranges from 19 % to 97 %.
//   Channel importance reads the pre-norms and the final norm, whose inputs already hold every post-norm output
//   added to the residual stream; the post-norms' own outputs are not observed.
// - A parameter budget is met by shrinking the chosen axes (hidden, MLP, heads) by one common fraction, the
//   largest whose architecture fits, with sizes rounded down to `round_to`; the paper instead enumerates
//   candidate architectures and ranks them after a short retraining.
// - Heads are pruned within KV groups only; KV heads themselves are kept (with one KV head, as in Gemma 3 270M,
//   heads are ranked across the whole layer and any number of them can stay).
// - Layers keep their attention type (full or sliding window, with its rotary base) through depth and width
//   pruning.

import Foundation
import Model
import Recipes

public struct MinitronPass: CompressionPass {
    public static let name = "minitron"
    public static let accepts: Set<WeightKind> = [.dense]
    public var needs: PassNeeds { [.calibration] }

    public enum Axis: String, CaseIterable, Sendable { case hidden, mlp, heads }
    public enum DepthMetric: String, CaseIterable, Sendable { case ppl, cosine }

    public var hidden: Int?
    public var mlp: Int?
    public var heads: Int?
    public var layers: Int?
    public var params: Int?
    public var axes: [Axis] = [.hidden, .mlp]
    public var roundTo = 32
    public var sequence = Aggregation.mean
    public var batch = Aggregation.l2
    public var depthMetric = DepthMetric.ppl

    public init(config s: StrictObject) throws {
        hidden = try s.optionalInt("hidden", in: 1...1_000_000)
        mlp = try s.optionalInt("mlp", in: 1...10_000_000)
        heads = try s.optionalInt("heads", in: 1...100_000)
        layers = try s.optionalInt("layers", in: 1...100_000)
        params = try s.optionalInt("params", in: 1...Int.max)
        roundTo = try s.int("round_to", default: roundTo, in: 1...4096)
        if let list = try s.array("axes") {
            guard params != nil else { throw s.fail("axes", "only meaningful with 'params'") }
            axes = try list.map { v in
                guard let name = v.stringValue, let a = Axis(rawValue: name) else {
                    throw s.fail("axes", "\(v.text) is not one of "
                        + "\(Axis.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return a
            }
            guard !axes.isEmpty, Set(axes).count == axes.count else {
                throw s.fail("axes", "expected a non-empty list without repeats")
            }
        }
        if params != nil {
            let fixed: [Axis: Int?] = [.hidden: hidden, .mlp: mlp, .heads: heads]
            if let clash = axes.first(where: { fixed[$0]! != nil }) {
                throw RecipeError("\(s.location): '\(clash.rawValue)': given explicitly and also listed in 'axes' " +
                                  "for the parameter budget")
            }
        }
        sequence = try s.choice("sequence_aggregation", default: sequence)
        batch = try s.choice("batch_aggregation", default: batch)
        depthMetric = try s.choice("depth_metric", default: depthMetric)
        guard hidden != nil || mlp != nil || heads != nil || layers != nil || params != nil else {
            throw RecipeError("\(s.location): no target: give one or more of 'hidden', 'mlp', 'heads', 'layers', " +
                              "'params'")
        }
    }

    /// The target sizes, resolved against the model (explicit sizes, then the parameter budget).
    public struct Target: Codable, Equatable, Sendable {
        public var hidden, mlp, heads, layers: Int
        public var parameters: Int
    }

    /// The spec of `c` at the given sizes (the family's biases, q/k norms and post-norms included), for counting
    /// parameters.
    func config(_ c: ModelConfig, _ t: (hidden: Int, mlp: Int, heads: Int, layers: Int)) -> ModelConfig {
        var n = c
        n.hiddenSize = t.hidden
        n.intermediateSize = t.mlp
        n.numAttentionHeads = t.heads
        n.numHiddenLayers = t.layers
        n.blocks = (0..<t.layers).map {
            BlockConfig(numAttentionHeads: t.heads, numKeyValueHeads: c.numKeyValueHeads, intermediateSize: t.mlp,
                        layerType: c.blocks[$0].layerType)
        }
        return n
    }

    public func resolveTarget(_ c: ModelConfig) throws -> Target {
        let G = c.numKeyValueHeads
        var t = (hidden: hidden ?? c.hiddenSize, mlp: mlp ?? c.intermediateSize, heads: heads ?? c.numAttentionHeads,
                 layers: layers ?? c.numHiddenLayers)
        if let budget = params {
            // Largest common fraction f whose rounded architecture fits the budget (parameters fall as f does).
            func sized(_ f: Double) -> (hidden: Int, mlp: Int, heads: Int, layers: Int) {
                var s = t
                func round(_ n: Int) -> Int { max(roundTo, Int(Double(n) * f) / roundTo * roundTo) }
                if axes.contains(.hidden) { s.hidden = min(c.hiddenSize, round(c.hiddenSize)) }
                if axes.contains(.mlp) { s.mlp = min(c.intermediateSize, round(c.intermediateSize)) }
                if axes.contains(.heads) { s.heads = max(1, Int(Double(c.numAttentionHeads / G) * f)) * G }
                return s
            }
            var lo = 0.0, hi = 1.0
            guard DecoderModel.parameterCount(config(c, sized(lo))) <= budget else {
                throw RecipeError("minitron: no architecture along \(axes.map(\.rawValue)) fits \(budget) parameters")
            }
            if DecoderModel.parameterCount(config(c, sized(hi))) <= budget { lo = hi }
            for _ in 0..<60 where hi - lo > 1e-9 {
                let mid = (lo + hi) / 2
                if DecoderModel.parameterCount(config(c, sized(mid))) <= budget { lo = mid } else { hi = mid }
            }
            t = sized(lo)
        }
        guard t.hidden <= c.hiddenSize else {
            throw RecipeError("minitron: 'hidden' \(t.hidden) exceeds the model's \(c.hiddenSize)")
        }
        guard t.mlp <= c.intermediateSize else {
            throw RecipeError("minitron: 'mlp' \(t.mlp) exceeds the model's \(c.intermediateSize)")
        }
        guard t.heads <= c.numAttentionHeads, t.heads % G == 0 else {
            throw RecipeError("minitron: 'heads' \(t.heads) must be a multiple of the \(G) KV heads, at " +
                              "most \(c.numAttentionHeads)")
        }
        guard t.layers <= c.numHiddenLayers else {
            throw RecipeError("minitron: 'layers' \(t.layers) exceeds the model's \(c.numHiddenLayers)")
        }
        return Target(hidden: t.hidden, mlp: t.mlp, heads: t.heads, layers: t.layers,
                      parameters: DecoderModel.parameterCount(config(c, t)))
    }

    /// Throws naming the first head, neuron or channel importance that is not finite.
    static func checkFinite(_ imp: ActivationImportance) throws {
        for (l, h) in imp.heads.enumerated() {
            try requireFinite(h, stage: name) { "the importance of layer \(l)'s head \($0)" }
        }
        for (l, n) in imp.neurons.enumerated() {
            try requireFinite(n, stage: name) { "the importance of layer \(l)'s MLP neuron \($0)" }
        }
        try requireFinite(imp.channels, stage: name) { "the importance of hidden channel \($0)" }
    }

    /// Indices of the `k` highest scores, ascending (ties: the lower index wins).
    static func top(_ scores: [Double], _ k: Int) -> [Int] {
        Array(scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }.prefix(k)).sorted()
    }

    /// The width selection `target` keeps under `imp`, for the layers `keep` (original indices).
    public static func selection(_ imp: ActivationImportance, config c: ModelConfig, target: Target,
                                 keep: [Int]) -> DecoderModel.WidthSelection {
        let G = c.numKeyValueHeads, per = c.numAttentionHeads / G, keepPer = target.heads / G
        let heads = keep.map { l in
            (0..<G).flatMap { g in top(Array(imp.heads[l][(g * per)..<((g + 1) * per)]), keepPer).map { g * per + $0 } }
        }
        return DecoderModel.WidthSelection(channels: top(imp.channels, target.hidden), heads: heads,
                                         neurons: keep.map { top(imp.neurons[$0], target.mlp) })
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let c = model.config
        guard c.isHomogeneous else {
            throw RecipeError("minitron: the model's layers differ (block_configs); Minitron prunes homogeneous models")
        }
        let target = try resolveTarget(c)
        let windows = context.calibration
        var diag = MinitronReport(target: target, before: .init(hidden: c.hiddenSize, mlp: c.intermediateSize,
                                                                heads: c.numAttentionHeads, layers: c.numHiddenLayers))
        if let params { diag.parameterBudget = params; diag.budgetAxes = axes.map(\.rawValue) }

        // Depth: rank blocks, remove the least important in one shot.
        var keep = Array(0..<c.numHiddenLayers)
        if target.layers < c.numHiddenLayers {
            let depth = try context.cached("minitron-depth", settings: .object([:])) {
                DepthImportance.compute(model: model, windows: windows) { i, n in
                    context.progress("minitron depth scores: window \(i)/\(n)")
                }
            }
            try requireFinite([depth.basePpl], stage: Self.name) { _ in "the calibration perplexity of the model" }
            try requireFinite(depth.ppl, stage: Self.name) { "the depth score of layer \($0) (perplexity without it)" }
            try requireFinite(depth.cosine, stage: Self.name) { "the depth score of layer \($0) (1 - cos(in, out))" }
            let score = depthMetric == .ppl ? depth.ppl : depth.cosine
            let order = score.indices.sorted { score[$0] != score[$1] ? score[$0] < score[$1] : $0 < $1 }
            let removed = Array(order.prefix(c.numHiddenLayers - target.layers)).sorted()
            keep = keep.filter { !removed.contains($0) }
            diag.depth = MinitronReport.Depth(
                metric: depthMetric.rawValue, removedLayers: removed,
                why: depthMetric == .ppl ? "lowest calibration perplexity when the block alone is removed"
                                         : "lowest 1 - cos(block input, block output)",
                pplWithoutBlock: depth.ppl, basePpl: depth.basePpl, oneMinusCosine: depth.cosine)
        }
        var result = keep.count < c.numHiddenLayers
            ? try model.removingLayers(Set(0..<c.numHiddenLayers).subtracting(keep)) : model

        // Width: keep the highest-scoring channels, heads (per KV group) and neurons.
        if target.hidden < c.hiddenSize || target.mlp < c.intermediateSize || target.heads < c.numAttentionHeads {
            let aggregation = MinitronReport.Aggregation(sequence: sequence.rawValue, batch: batch.rawValue)
            let imp = try context.cached("minitron-width", settings: try JSONValue(encoding: aggregation)) {
                ActivationImportance.compute(model: model, windows: windows, sequence: sequence, batch: batch) { i, n in
                    context.progress("minitron width scores: window \(i)/\(n)")
                }
            }
            try Self.checkFinite(imp)
            let sel = Self.selection(imp, config: c, target: target, keep: keep)
            let removedChannels = Set(0..<c.hiddenSize).subtracting(sel.channels).sorted()
            var width = MinitronReport.Width(
                aggregation: aggregation, headScores: imp.heads,
                keptHeads: zip(keep, sel.heads).map { .init(layer: $0, heads: $1) }, removedChannels: removedChannels,
                channelScoreCutoff: sel.channels.map { imp.channels[$0] }.min() ?? 0, neuronsKeptPerLayer: target.mlp,
                neuronScoreCutoffPerLayer: zip(keep, sel.neurons).map { l, n in
                    n.map { imp.neurons[l][$0] }.min() ?? 0
                },
                why: "lowest activation importance (heads ranked within their KV group)")
            // Post-sublayer norms: the mean squares of their inputs set their factor when channels go (ChannelRemoval).
            var postNormInputs: [[Double]]? = nil
            if c.postNorms && target.hidden < c.hiddenSize {
                let all = try context.cached("minitron-post-norm-inputs", settings: .object([:])) {
                    PostNormInputs.compute(model: model, windows: windows) { i, n in
                        context.progress("minitron post-norm inputs: window \(i)/\(n)")
                    }
                }
                let kept = keep.flatMap { [all[2 * $0], all[2 * $0 + 1]] }
                postNormInputs = kept
                width.postNormKeptEnergy = kept.map { e in
                    sel.channels.reduce(0.0) { $0 + e[$1] } / max(e.reduce(0, +), .leastNormalMagnitude)
                }
            }
            diag.width = width
            result = try result.pruningWidth(sel, postNormInputs: postNormInputs)
        }
        return (result, try JSONValue(encoding: diag))
    }
}

/// The report of a `minitron` stage: the target and the sizes before, the parameter budget it was resolved from,
/// and the depth and width importances behind what was removed.
public struct MinitronReport: Codable, Equatable {
    /// The model's sizes before the stage.
    public struct Sizes: Codable, Equatable {
        public var hidden, mlp, heads, layers: Int
    }
    /// How activations are pooled into importances, over the sequence and the batch: the width scores' cache key.
    public struct Aggregation: Codable, Equatable {
        public var sequence, batch: String
    }
    /// Depth pruning: the blocks removed in one shot, and every block's scores.
    public struct Depth: Codable, Equatable {
        /// "ppl" or "cosine".
        public var metric: String
        public var removedLayers: [Int]
        public var why: String
        /// Calibration perplexity with each block alone removed, and with none.
        public var pplWithoutBlock: [Double]
        public var basePpl: Double
        /// 1 − cos(block input, block output), per block.
        public var oneMinusCosine: [Double]
    }
    /// One kept layer's kept attention heads (original indices).
    public struct KeptHeads: Codable, Equatable {
        public var layer: Int
        public var heads: [Int]
    }
    /// Width pruning: the activation importances and the cutoffs of what was kept.
    public struct Width: Codable, Equatable {
        public var aggregation: Aggregation
        /// Per layer, per head.
        public var headScores: [[Double]]
        public var keptHeads: [KeptHeads]
        public var removedChannels: [Int]
        /// The lowest importance kept, among hidden channels and (per kept layer) MLP neurons.
        public var channelScoreCutoff: Double
        public var neuronsKeptPerLayer: Int
        public var neuronScoreCutoffPerLayer: [Double]
        public var why: String
        /// Models with post-sublayer norms, when channels go: per kept sublayer, the share of its input's mean
        /// square the kept channels carry.
        public var postNormKeptEnergy: [Double]?
    }
    public var target: MinitronPass.Target
    public var before: Sizes
    /// With "params": the budget and the axes pruned to meet it.
    public var parameterBudget: Int?
    public var budgetAxes: [String]?
    public var depth: Depth?
    public var width: Width?
}
