// VTrans: structured pruning of every component (hidden channels, attention heads, MLP neurons, layers) with
// variational-information-bottleneck masks under a parameter budget, and its Fast and Faster variants.
//
// Paper: O. S. Dutta, R. Gupta, S. Agarwal, "VTrans: Accelerating Transformer Compression with Variational
// Information Bottleneck based Pruning", 2024 (arXiv 2406.05276). The VIB layer after B. Dai, C. Zhu, B. Guo,
// D. Wipf, "Compressing Neural Networks using the Variational Information Bottleneck", ICML 2018.
//
// Masks z = μ + σ·ε (ε ~ N(0, 1) in training, z = μ at evaluation) multiply the units through the forward's
// gates; the loss is the KD loss from the dense model (forward KL of the next-token distributions, the
// `distill` loop) + γ/N Σ w_m ½ Σ log(1 + μ²/σ²) + λ₁(s - t) + λ₂(s - t)², s the expected parameter fraction
// under p = sigmoid(-β log α), t warmed up from 1 to the target; λ by gradient ascent (Training/VIB.swift
// has every equation). A unit is kept when log α = log σ² - log μ² < threshold.
// Variants: `vtrans` trains weights and masks; `fast` does the same on a prefix of `data_fraction` (3 %) of the
// training tokens; `faster` trains the masks only (weights frozen).
// After training the masked units are removed physically and the kept μ folded into the weights
// (`DecoderModel.pruningUnits`, Model/Pruning.swift, which Minitron's width pruning uses too): a heterogeneous model
// (per-layer heads and MLP widths, layers dropped).
//
// Deviations from the paper:
// - Heads: masks are per query head; grouped-query attention is kept valid by keeping, in each layer, the
//   same number k of query heads in every KV group, k = the rounded mean over groups of the heads whose
//   log α is below the threshold, the k with the lowest log α per group (k = 0 removes the attention sublayer).
// - The paper's iterative pruning (thresholding during training) is one pruning at the end here, and the
//   threshold for MLP neurons and hidden channels is moved from 0 to the log α cut-off κ that makes the exact
//   parameter count the largest within the target (`exact_target`, default on), so the result meets the
//   budget within the size of one unit.
// - Layer masks are whole decoder layers (both sublayers); a layer whose heads and neurons are all removed
//   is dropped too.
// - Training is the `distill` loop with the VIB masks as a `Trainable`: AdamW on μ, log σ², λ with their own
//   learning rates under the loop's warm-up and decay.
// - Removing hidden channels rescales the norms over C, eps, the q/k rows (with q/k norms) and the embedding
//   (when the family derives its multiplier from the width) as Minitron's width pruning does (Model/Pruning.swift,
//   ChannelRemoval), so the pruned model equals the gated one for norms before a sublayer.
// - Post-sublayer norms (Gemma): the channel and sublayer masks multiply a sublayer's output after its post-norm,
//   so they fold into the post-norm's (1 + w), and physical removal changes the post-norm's mean of squares from
//   one over all C channels of the sublayer's output (in the gated model, where the removed channels are dropped
//   only after the norm) to one over the kept channels; no rescaling is exact. Each post-norm's (w + o) is
//   multiplied by ρ = sqrt((Σ_kept E[y²]/C' + eps·C/C') / (Σ_all E[y²]/C + eps)), E[y_j²] the mean squares of its
//   input in the trained student gated as the pruning keeps it (removed units at 0, `keptGates`) on the first 8
//   training windows, so it divides by the RMS the gated
//   model's had on average (Model/Pruning.swift, ChannelRemoval; Minitron.swift has the measured effect). The
//   pruned model equals the gated model with the removed channels also zeroed in o_proj's and down_proj's output
//   and each post-norm's (w + o) multiplied by ρ/sqrt(C/C'); with every hidden channel kept, the gated model itself
//   (both tested). The size model counts the post-norms.

import Diagnostics
import Foundation
import Model
import Recipes
import TensorCore
import Training

/// `vtrans`: VIB-mask training under a parameter budget, then physical removal of the masked units.
public struct VTransPass: RecipeStage {
    public static let name = "vtrans"
    public var makesHeterogeneous: Bool { true }
    public static let accepts: Set<WeightKind> = [.dense]
    public enum Variant: String, CaseIterable, Codable, Sendable { case vtrans, fast, faster }

    /// The distillation settings this stage reads (its 'kl_weight' is the VIB's); the warm-up defaults to a tenth
    /// of the steps (at least 1).
    static let distillKeys = DistillKeys(
        accepted: [.steps, .batch, .window, .accumulation, .seed, .lr, .warmup, .minLRRatio, .clip, .temperature],
        warmupDefault: { max(1, $0 / 10) })

    public var variant = Variant.vtrans
    /// Exactly one target: a parameter count, or a fraction of the input model's.
    public var params: Int?
    public var fraction: Double?
    public var vib = VIBSettings()
    /// Fraction of `steps` over which the target warms up from the full size.
    public var targetWarmup = 0.5
    public var exactTarget = true
    public var distill = DistillConfig()
    public var text = "data/wiki.train.txt"
    /// Fraction of the training tokens used (a prefix): 1, or 0.03 for `fast` unless given.
    public var dataFraction = 1.0
    public var saveEvery = 50
    public var logEvery = 10
    /// Where errors name this stage (the recipe file and stage).
    public var location = "vtrans"

    public init(config s: StrictObject) throws {
        location = s.location
        variant = try s.choice("variant", default: variant)
        params = try s.optionalInt("params", in: 1...Int.max)
        fraction = try s.optionalDouble("fraction", in: 0...1)
        guard (params == nil) != (fraction == nil) else {
            throw RecipeError("\(s.location): 'params', 'fraction': give exactly one target (a parameter count, or a " +
                              "fraction of the model's in (0, 1))")
        }
        if let f = fraction, !(f > 0 && f < 1) { throw s.fail("fraction", "\(f) is out of range (0, 1)") }
        if let list = try s.array("axes") {
            vib.axes = try list.map { v in
                guard let name = v.stringValue, let a = VIBAxis(rawValue: name) else {
                    throw s.fail("axes", "\(v.text) is not one of "
                        + "\(VIBAxis.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return a
            }
            guard !vib.axes.isEmpty, Set(vib.axes).count == vib.axes.count else {
                throw s.fail("axes", "expected a non-empty list without repeats")
            }
        }
        var d = DistillConfig()
        d.batch = 4
        d.window = 256
        d.accumulation = 1
        d.lr = 1e-4
        let c = try DistillConfig(settings: s, defaults: d, keys: Self.distillKeys)
        distill = c
        vib.seed = c.seed
        vib.maskLR = try s.double("mask_lr", default: vib.maskLR, in: 1e-9...10)
        vib.lambdaLR = try s.double("lambda_lr", default: vib.lambdaLR, in: 1e-9...10)
        vib.klWeight = try s.double("kl_weight", default: vib.klWeight, in: 0...1e6)
        vib.embeddingMultiplier = try s.double("embedding_kl_multiplier", default: vib.embeddingMultiplier, in: 0...1e6)
        vib.beta = try s.double("beta", default: vib.beta, in: 1e-3...1e3)
        vib.threshold = try s.double("threshold", default: vib.threshold, in: -50...50)
        vib.muInit = try s.double("mu_init", default: vib.muInit, in: 1e-3...100)
        vib.logVarInit = try s.double("logvar_init", default: vib.logVarInit, in: -30...5)
        targetWarmup = try s.double("target_warmup", default: targetWarmup, in: 0...1)
        exactTarget = try s.bool("exact_target", default: exactTarget)
        text = try s.string("text", default: text)
        dataFraction = try s.double("data_fraction", default: variant == .fast ? 0.03 : 1, in: 1e-6...1)
        saveEvery = try s.int("save_every", default: saveEvery, in: 0...10_000_000)
        logEvery = try s.int("log_every", default: logEvery, in: 1...10_000_000)
    }

    /// Parameters of the smallest model the masks can give: one hidden channel (when `hidden` is masked); each
    /// layer at its smallest (no attention / MLP when heads / neurons are masked); when layers can vanish (the
    /// `layers` axis, or both `heads` and `mlp`), one layer holding its cheapest non-empty content.
    public func smallestParameters(_ c: ModelConfig) throws -> Int {
        _ = try VIBSizeModel(config: c)
        let axes = Set(vib.axes)
        let C = axes.contains(.hidden) ? 1 : c.hiddenSize, D = c.headDim,
            V = c.vocabSize * (c.tieWordEmbeddings ? 1 : 2)
        let droppable = axes.contains(.layers) || (axes.contains(.heads) && axes.contains(.mlp))
        var total = V * C + C, content = Int.max
        for b in c.blocks {
            let G = b.numKeyValueHeads
            // Each sublayer's norms of C: its pre-norm, and its post-norm when the spec has them.
            let n = c.postNorms ? 2 : 1
            let attnFull = C * (n + 2 * D * b.numAttentionHeads + 2 * G * D), mlpFull = C * (n + 3 * b.intermediateSize)
            let attnMin = axes.contains(.heads) ? 0 : attnFull, mlpMin = axes.contains(.mlp) ? 0 : mlpFull
            let attnOne = axes.contains(.heads) ? C * (n + 4 * G * D) : attnFull,
                mlpOne = axes.contains(.mlp) ? C * (n + 3) : mlpFull
            if droppable {
                content = min(content, attnOne + mlpMin, attnMin + mlpOne)
            } else {
                total += attnMin + mlpMin
            }
        }
        return droppable ? total + content : total
    }

    /// The target parameter count for `c`, checked against what the masks can reach.
    public func resolveTarget(_ c: ModelConfig) throws -> Int {
        let size: VIBSizeModel
        do { size = try VIBSizeModel(config: c) } catch { throw error.adding(place: location) }
        let full = Int(size.full)
        let t = params ?? Int((Double(full) * fraction!).rounded(.down))
        let key = params != nil ? "params" : "fraction"
        guard t < full else {
            throw RecipeError("\(location): '\(key)': target \(t) parameters is not below the model's \(full)")
        }
        let floor = try smallestParameters(c)
        guard t >= floor else {
            throw RecipeError("\(location): '\(key)': target \(t) parameters is below \(floor), the smallest model " +
                              "the masks along \(vib.axes.map(\.rawValue)) can give")
        }
        return t
    }

    /// Windows (of the training window, from the start of the training tokens) on which the trained, gated
    /// student's post-norm inputs are measured before hidden channels are removed (post-sublayer norms only).
    public static let postNormWindows = 8

    /// The training tokens this variant uses: a prefix of `dataFraction` of `tokens`.
    public func trainingTokens(_ tokens: [Int32]) -> [Int32] {
        dataFraction >= 1 ? tokens : Array(tokens.prefix(max(distill.window + 1,
                                                             Int(Double(tokens.count) * dataFraction))))
    }

    /// A training run of this stage on `model` (the dense teacher and the initial student).
    public func makeRun(model: DecoderModel, trainTokens: [Int32]) throws -> VTransRun {
        let t = try resolveTarget(model.config)
        var v = vib
        v.targetParameters = t
        v.targetWarmup = Int((Double(distill.steps) * targetWarmup).rounded())
        do {
            let masks = try VIBTrainable(config: model.config, settings: v)
            let tokens = trainingTokens(trainTokens)
            let d = try Distiller(teacher: model, student: model, config: distill, trainTokens: tokens,
                                  trainables: [masks], trainWeights: variant != .faster)
            // Post-norm statistics for the pruning: the first windows of the training tokens.
            let W = distill.window
            let windows = (0..<min(Self.postNormWindows, (tokens.count - 1) / W)).map {
                Array(tokens[($0 * W)..<(($0 + 1) * W)])
            }
            return VTransRun(pass: self, distiller: d, masks: masks, statisticsWindows: windows)
        } catch { throw error.adding(place: location) }
    }
}

/// One `vtrans` training run: the distillation loop with VIB masks, then the pruning.
public final class VTransRun {
    public let pass: VTransPass
    public let distiller: Distiller
    public let masks: VIBTrainable
    /// Where the post-norm inputs are measured (`VTransPass.postNormWindows`).
    let statisticsWindows: [[Int32]]

    init(pass: VTransPass, distiller: Distiller, masks: VIBTrainable, statisticsWindows: [[Int32]]) {
        self.pass = pass; self.distiller = distiller; self.masks = masks; self.statisticsWindows = statisticsWindows
    }

    /// "expected 101.20M / target 95.00M params" for progress lines.
    public var status: String {
        String(format: "expected %.2fM / target %.2fM params", masks.lastExpected / 1e6, masks.lastTarget / 1e6)
    }

    /// Runs the remaining steps with progress (no state saving; the CLI's loop saves and resumes).
    public func train(progress: (String) -> Void = { _ in }) {
        let steps = distiller.config.steps
        while distiller.step < steps {
            let s = distiller.trainStep()
            if s.step % pass.logEvery == 0 || s.step == steps {
                progress(String(format: "step %d/%d  loss %.4f  kl %.4f  ", s.step, steps, s.loss, s.kl) + status)
            }
        }
    }

    /// The units kept by the trained masks: layers and heads by the threshold (heads equalised over KV groups),
    /// MLP neurons and hidden channels by the threshold or, with `exactTarget`, by the log α cut-off whose
    /// exact parameter count is the largest within the target.
    public func selection() throws -> (selection: DecoderModel.UnitSelection, cutoff: Double) {
        let c = distiller.student.config, L = c.blocks.count, thr = masks.settings.threshold
        let la = masks.logAlphas
        var channelLA: [Double]? = nil, layerLA: [Double]? = nil
        var headLA = [[Double]?](repeating: nil, count: L), neuronLA = headLA
        for (m, a) in zip(masks.masks, la) {
            switch m.axis {
            case .hidden: channelLA = a
            case .layers: layerLA = a
            case .heads: headLA[m.layer!] = a
            case .mlp: neuronLA[m.layer!] = a
            }
        }
        func order(_ a: [Double]) -> [Int] { a.indices.sorted { a[$0] != a[$1] ? a[$0] < a[$1] : $0 < $1 } }
        let layers = (0..<L).filter { l in layerLA.map { $0[l] < thr } ?? true }
        let heads: [[Int]] = (0..<L).map { l in
            let b = c.blocks[l], H = b.numAttentionHeads, G = b.numKeyValueHeads, per = H / G
            guard let a = headLA[l] else { return Array(0..<H) }
            let kept = a.filter { $0 < thr }.count
            let k = Int((Double(kept) / Double(G)).rounded())
            return (0..<G).flatMap { g in
                order(Array(a[(g * per)..<((g + 1) * per)])).prefix(k).map { g * per + $0 }
            }.sorted()
        }
        let model = distiller.student
        func select(_ kappa: Double) -> DecoderModel.UnitSelection {
            var channels = channelLA.map { a in a.indices.filter { a[$0] < kappa } } ?? Array(0..<c.hiddenSize)
            if channels.isEmpty, let a = channelLA { channels = [order(a)[0]] }
            let neurons: [[Int]] = (0..<L).map { l in
                neuronLA[l].map { a in a.indices.filter { a[$0] < kappa } } ?? Array(0..<c.blocks[l].intermediateSize)
            }
            let kept = layers.filter { !heads[$0].isEmpty || !neurons[$0].isEmpty }
            return DecoderModel.UnitSelection(channels: channels, layers: kept, heads: heads, neurons: neurons)
        }
        func count(_ s: DecoderModel.UnitSelection) -> Int? {
            guard !s.layers.isEmpty, let cfg = try? model.prunedConfig(s) else { return nil }
            return DecoderModel.parameterCount(cfg)
        }
        guard pass.exactTarget, channelLA != nil || neuronLA.contains(where: { $0 != nil }) else {
            let s = select(thr)
            guard count(s) != nil else { throw RecipeError("\(pass.location): the trained masks keep no layer") }
            return (s, thr)
        }
        // Candidate cut-offs: every neuron's and channel's log α (count grows with κ).
        var cuts = Set<Double>()
        channelLA.map { cuts.formUnion($0) }
        for a in neuronLA { a.map { cuts.formUnion($0) } }
        let sorted = cuts.sorted()
        // κ just above a candidate keeps every unit up to and including it.
        func above(_ i: Int) -> Double { i < 0 ? -Double.infinity : sorted[i].nextUp }
        let target = masks.settings.targetParameters
        func fits(_ i: Int) -> Bool { count(select(above(i))).map { $0 <= target } ?? false }
        guard fits(-1) || fits(0) else {
            throw RecipeError("\(pass.location): the heads and layers the masks keep already exceed the " +
                              "target \(target) parameters with the fewest channels and neurons; train longer or " +
                              "raise lambda_lr")
        }
        var lo = fits(-1) ? -1 : 0, hi = sorted.count - 1
        if fits(hi) { lo = hi }
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if fits(mid) { lo = mid } else { hi = mid }
        }
        return (select(above(lo)), above(lo))
    }

    /// Prunes the trained student: the selection's units kept with their μ folded into the weights.
    public func finish() throws -> (model: DecoderModel, diagnostics: JSONValue) {
        masks.sampling = false
        masks.willForward(step: distiller.step, micro: 0)
        let (sel, cutoff) = try selection()
        let student = distiller.student
        var postNormInputs: [[Double]]? = nil
        if student.config.postNorms && sel.channels.count < student.config.hiddenSize && !statisticsWindows.isEmpty {
            postNormInputs = PostNormInputs.compute(model: student, windows: statisticsWindows,
                                                    gates: student.keptGates(sel, from: masks.gates))
        }
        let pruned: DecoderModel
        do { pruned = try student.pruningUnits(sel, folding: masks.gates, postNormInputs: postNormInputs) } catch {
            throw error.adding(place: pass.location)
        }
        let c = distiller.student.config
        let log = distiller.log
        let diag = VTransReport(
            variant: pass.variant.rawValue, targetParameters: masks.settings.targetParameters,
            parameters: pruned.parameterCount, expectedParametersAtEnd: masks.lastExpected,
            lambda: [masks.lambda[0], masks.lambda[1]], logAlphaCutoff: cutoff,
            trainTokensUsed: distiller.config.steps * distiller.config.batch * distiller.config.window
                * distiller.config.accumulation,
            hidden: sel.channels.count, layersKept: sel.layers,
            perLayer: sel.layers.map { l in
                .init(layer: l, heads: sel.heads[l].count, kvHeads: c.blocks[l].numKeyValueHeads,
                      mlp: sel.neurons[l].count)
            },
            keptHeads: sel.layers.map { sel.heads[$0] }, firstLoss: log.first?.loss ?? .nan,
            finalLoss: log.last?.loss ?? .nan, finalKl: log.last?.kl ?? .nan)
        return (pruned, try JSONValue(encoding: diag))
    }
}

/// The report of a `vtrans` stage: the target and what the trained masks kept (layers, heads, neurons, hidden
/// channels), with the training's first and final losses (NaN when it ran no step).
public struct VTransReport: Codable, Equatable {
    /// One kept layer's sizes.
    public struct Layer: Codable, Equatable {
        public var layer: Int
        public var heads: Int
        public var kvHeads: Int
        public var mlp: Int
    }
    /// "vtrans", "fast" or "faster".
    public var variant: String
    public var targetParameters: Int
    public var parameters: Int
    /// The masks' expected parameter count at the last step.
    public var expectedParametersAtEnd: Double
    /// The two Lagrange multipliers of the parameter constraint.
    public var lambda: [Float]
    /// The log α threshold the selection kept units above.
    public var logAlphaCutoff: Double
    public var trainTokensUsed: Int
    /// Hidden channels kept, and the kept layers (original indices).
    public var hidden: Int
    public var layersKept: [Int]
    public var perLayer: [Layer]
    /// Per kept layer, its kept heads (original indices).
    public var keptHeads: [[Int]]
    public var firstLoss: Double
    public var finalLoss: Double
    public var finalKl: Double
}

/// Run by `apply` like every training stage: state saved every `save_every` steps, resumed with `--resume`,
/// then pruned by `finish`. The teacher is the model entering the stage (the dense model VTrans distils from).
extension VTransPass: TrainingPass {
    public var trainText: String { text }
    public var trainingWindow: Int { distill.window }

    /// An impossible target is refused before any stage runs.
    public func preflight(_ model: DecoderModel) throws { _ = try resolveTarget(model.config) }

    public func prepare(model: DecoderModel, teacher: DecoderModel, trainTokens: [Int32],
                        context: PassContext) throws -> TrainingRun {
        let run = try makeRun(model: model, trainTokens: trainTokens)
        context.progress("\(variant.rawValue), target \(run.masks.settings.targetParameters) " +
                         "parameters, \(run.distiller.config.steps) steps")
        return TrainingRun(distiller: run.distiller, finish: run.finish)
    }
}
