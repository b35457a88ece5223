// `maskllm`: learnable N:M semi-structured sparsity.
//
// Paper: G. Fang, H. Yin, S. Muralidharan, G. Heinrich, J. Pool, J. Kautz, P. Molchanov, X. Wang, "MaskLLM:
// Learnable Semi-Structured Sparsity for Large Language Models", NeurIPS 2024 (arXiv 2409.17481).
//
// For every group of M consecutive input weights of each targeted linear weight, logits over the C(M, N)
// candidate masks are learned end to end: each micro-batch samples a differentiable soft mask by
// Gumbel-softmax of the scaled logits (temperature τ annealed 4 → 0.05, scale κ 1e2 → 5e2, linearly), the
// student computes with W ⊙ M̃, and the loss is KD from the dense base model (forward KL on logits, our
// distillation loss) or LM cross-entropy. Logits start from a prior mask (magnitude, Wanda or SparseGPT) with
// the paper's prior strength α = 3; the sparse weight regulariser (paper Eq. 7) keeps the kept weights large:
//   L_step = (1/A) Σ_micro [ L_task − λ_t Σ_targets Σ_ij (sg(W_ij) M̃_ij)² ],  λ_t = λ (1 − t/T),  λ = 1e-5,
// an unnormalised sum over every targeted weight (W not differentiated), averaged over the A micro-batches of
// a step, exactly as the reference code NVlabs/MaskLLM computes it (`pretrain_maskllm.py` `loss_func`,
// `differentiable_mask.py` `sparse_weight_norm`, `--weight-reg 1e-5` in its scripts; details and measurements
// in Sources/Training/MaskLLM.swift and recipes/README.md). AdamW trains the logits with the reference's settings:
// learning rate 5e-4 (10 ×
// 5e-5), cosine decay to 10 %, β = (0.9, 0.95), ε = 1e-5, decoupled weight decay 0.1, clipping at norm 1. Weights are
// frozen by default (mask-only, as in the paper), or trained too (`train_weights`). The result: every target a sparse
// weight under the hard (argmax) mask, exactly N nonzeros in every M, holding the original (or trained) weights.
// Equations and deviations: Sources/Training/MaskLLM.swift.
//
// Priors: the registered one-shot passes `magnitude`, `wanda` and `sparsegpt` (Passes/Sparsity.swift) run on
// the dense model with the same pattern and targets; their masks are read, their updated weights are not
// (MaskLLM learns masks over the original weights, as the paper's code does with SparseGPT's weight update
// disabled). Default prior: SparseGPT, as in the paper.

import Diagnostics
import Foundation
import Model
import Recipes
import TensorCore
import Training

public struct MaskLLMPass: TrainingPass {
    public static let name = "maskllm"
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.sparse]) }
    public var needs: PassNeeds { prior == .wanda || prior == .sparsegpt ? [.calibration] : [] }

    public enum Prior: String, CaseIterable, Sendable { case magnitude, wanda, sparsegpt, none }
    public enum Loss: String, CaseIterable, Sendable { case kd, ce }

    /// The distillation settings this stage reads, as the `distill` stage names them but for the KD temperature
    /// (`kd_temperature`); steps may be 0 (the prior's masks, untrained).
    static let distillKeys = DistillKeys(
        accepted: [.steps, .batch, .window, .accumulation, .seed, .minLRRatio, .warmup, .decay, .beta1, .beta2, .clip,
                   .eps, .temperature],
        renamed: [.temperature: "kd_temperature"], steps: 0...10_000_000)

    public var settings = MaskLLMSettings()
    public var distill = DistillConfig()
    public var targets = LinearKind.allCases
    public var excludeLayers: [Int] = []
    public var prior = Prior.sparsegpt
    public var loss = Loss.kd
    public var trainText = "data/wiki.train.txt"
    public var saveEvery = 50
    public var logEvery = 10
    public var trainingWindow: Int { distill.window }
    let location: String

    public init(config s: StrictObject) throws {
        location = s.location
        let patternText = try s.string("pattern", default: "2:4")
        let parts = patternText.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let n = Int(parts[0]), let m = Int(parts[1]) else {
            throw s.fail("pattern", "\"\(patternText)\" is not N:M (e.g. \"2:4\")")
        }
        guard n >= 1, n < m else { throw s.fail("pattern", "\(n):\(m) needs 1 ≤ N < M") }
        guard m <= NMCandidates.maxM else {
            throw s.fail("pattern", "M = \(m) is above \(NMCandidates.maxM) (MaskLLM learns C(M, N) logits per group "
                + "of M)")
        }
        settings.n = n; settings.m = m
        targets = try s.linearKinds()
        if let e = try s.array("exclude_layers") {
            excludeLayers = try e.map { v in
                guard let l = v.intValue, l >= 0 else {
                    throw s.fail("exclude_layers", "\(v.text) is not a layer index (an integer ≥ 0)")
                }
                return l
            }
        }
        prior = try s.choice("prior", default: prior)
        settings.priorStrength = try s.double("prior_strength", default: settings.priorStrength, in: 0...1e3)
        settings.initStd = try s.double("init_std", default: settings.initStd, in: 1e-6...10)
        func range(_ key: String, _ d: (Double, Double), _ r: ClosedRange<Double>) throws -> (Double, Double) {
            guard let a = try s.array(key) else { return d }
            guard a.count == 2, let x = a[0].doubleValue, let y = a[1].doubleValue, r.contains(x), r.contains(y) else {
                throw RecipeError("\(s.location): '\(key)': expected [start, end], both " +
                                  "in \(r.lowerBound)...\(r.upperBound), found \(JSONValue.array(a).text)")
            }
            return (x, y)
        }
        (settings.temperatureStart, settings.temperatureEnd) =
            try range("temperature", (settings.temperatureStart, settings.temperatureEnd), 1e-3...1e3)
        (settings.scaleStart, settings.scaleEnd) =
            try range("scale", (settings.scaleStart, settings.scaleEnd), 1e-3...1e6)
        settings.weightReg = try s.double("weight_reg", default: settings.weightReg, in: 0...1e3)
        settings.lr = try s.double("lr", default: settings.lr, in: 1e-12...10)
        settings.logitWeightDecay = try s.double("logit_weight_decay", default: settings.logitWeightDecay, in: 0...1)
        settings.trainWeights = try s.bool("train_weights", default: false)
        settings.weightLR = try s.double("weight_lr", default: settings.weightLR, in: 1e-12...1)
        settings.weightDecay = try s.double("weight_decay", default: settings.weightDecay, in: 0...1)
        if !settings.trainWeights {
            for k in ["weight_lr", "weight_decay"] where s.has(k) {
                throw RecipeError("\(s.location): '\(k)': only with \"train_weights\": true (the weights are frozen)")
            }
        }
        loss = try s.choice("loss", default: loss)

        // The loop's settings: the logits' learning rate, the reference's schedule and ε, the KD temperature
        // under its own key ('temperature' is the Gumbel-softmax range), the loss weights from 'loss'.
        var d = DistillConfig()
        d.lr = settings.lr
        d.minLRRatio = 0.1
        d.warmup = 0
        d.eps = 1e-5
        d.temperature = 1
        d.klWeight = loss == .kd ? 1 : 0
        d.ceWeight = loss == .ce ? 1 : 0
        let c = try DistillConfig(settings: s, defaults: d, keys: Self.distillKeys)
        if s.has("kd_temperature") && loss != .kd { throw s.fail("kd_temperature", "only with \"loss\": \"kd\"") }
        distill = c
        settings.seed = c.seed
        settings.steps = max(c.steps, 1)
        settings.accumulation = c.accumulation
        trainText = try s.string("text", default: trainText)
        saveEvery = try s.int("save_every", default: saveEvery, in: 0...10_000_000)
        logEvery = try s.int("log_every", default: logEvery, in: 1...10_000_000)
    }

    /// The targeted weights of `model`, checked: present, dense, input size a multiple of M.
    func resolveTargets(_ model: DecoderModel) throws -> [(id: LinearID, weight: Tensor)] {
        let L = model.layers.count
        if let bad = excludeLayers.first(where: { $0 >= L }) {
            throw RecipeError("'exclude_layers': layer \(bad) outside 0..<\(L)")
        }
        var out: [(LinearID, Tensor)] = []
        for l in 0..<L where !excludeLayers.contains(l) {
            for k in targets {
                let id = LinearID(layer: l, kind: k)
                guard let w = model.linear(id) else { continue }
                guard case .dense(let t) = w else {
                    throw RecipeError("'targets': \(id) is \(w.kind.rawValue); MaskLLM learns masks over dense " +
                                      "weights (put it before quantization or other sparsification)")
                }
                guard t.shape[1] % settings.m == 0 else {
                    throw RecipeError("'pattern': M = \(settings.m) does not divide the input size \(t.shape[1]) " +
                                      "of \(id)")
                }
                out.append((id, t))
            }
        }
        guard !out.isEmpty else {
            throw RecipeError("'targets': no weight of the model matches outside 'exclude_layers'")
        }
        return out
    }

    /// Checks the pattern, 'targets' and 'exclude_layers' against the model the stage will receive, before
    /// any stage runs: every targeted weight present and dense, M dividing its input size, at least one target.
    /// Errors name the recipe, the stage and the key.
    public func preflight(_ model: DecoderModel) throws {
        do { _ = try resolveTargets(model) } catch { throw error.adding(place: location) }
    }

    /// Prior masks by target (empty for `none`).
    func priorMasks(_ model: DecoderModel, _ targets: [(id: LinearID, weight: Tensor)],
                    context: PassContext) throws -> (masks: [LinearID: SparsityMask], diagnostics: JSONValue) {
        switch prior {
        case .none: return ([:], .null)
        case .magnitude, .wanda, .sparsegpt:
            let registry = StageRegistry.passes()
            guard registry.type(named: prior.rawValue) != nil else {
                throw RecipeError("'prior': \"\(prior.rawValue)\" needs the '\(prior.rawValue)' pass, which this " +
                                  "build does not have")
            }
            // The one-shot passes prune every layer (they have no 'exclude_layers'); only the masks of this
            // stage's targets are read.
            struct PriorStage: Encodable { var pattern: String; var targets: [String] }
            struct PriorKey: Encodable { var prior: String; var pass: JSONValue }
            let json = try JSONValue(encoding: PriorStage(pattern: "\(settings.n):\(settings.m)",
                                                          targets: self.targets.map(\.shortName)))
            let cfg = try StrictObject(json, at: "\(location) prior (\(prior.rawValue))")
            guard let pass = try registry.make(prior.rawValue, config: cfg) as? any CompressionPass else {
                throw RecipeError("'prior': '\(prior.rawValue)' is not a one-shot pass")
            }
            // The masks (packed bits by weight name) are a calibration statistic: cached under the prior's settings.
            struct Masks: Codable { var bits: [String: Data]; var diagnostics: String }
            let key = try JSONValue(encoding: PriorKey(prior: prior.rawValue, pass: json))
            let cached: Masks = try context.cached("maskllm-prior", settings: key) {
                context.progress("prior: running \(prior.rawValue) on the dense model")
                let (pruned, diag) = try pass.run(on: model, context: context)
                var bits: [String: Data] = [:]
                for (id, w) in pruned.linearWeights {
                    if case .sparse(let s) = w { bits[WeightID.linear(id).hfName] = Data(s.mask.bits) }
                }
                return Masks(bits: bits, diagnostics: diag.text)
            }
            var out: [LinearID: SparsityMask] = [:]
            for t in targets {
                guard let b = cached.bits[WeightID.linear(t.id).hfName] else {
                    throw RecipeError("'prior': \(prior.rawValue) " +
                                      "left \(t.id) \(model.linear(t.id)?.kind.rawValue ?? "absent"), not sparse")
                }
                out[t.id] = try SparsityMask(pattern: .nm(n: settings.n, m: settings.m), rows: t.weight.shape[0],
                                             cols: t.weight.shape[1], bits: [UInt8](b))
            }
            return (out, (try? JSONValue.parse(cached.diagnostics)) ?? .null)
        }
    }

    public func prepare(model: DecoderModel, teacher: DecoderModel, trainTokens: [Int32],
                        context: PassContext) throws -> TrainingRun {
        let found = try resolveTargets(model)
        let t0 = Date()
        let (priors, priorDiagnostics) = try priorMasks(model, found, context: context)
        let priorSeconds = Date().timeIntervalSince(t0)
        let pattern = SparsityMask.Pattern.nm(n: settings.n, m: settings.m)
        if distill.steps == 0 {
            // No training: the prior's hard mask over the original weights (its baseline in this protocol).
            guard prior != .none else { throw RecipeError("'steps': 0 keeps the prior's masks; it needs a 'prior'") }
            return TrainingRun(distiller: nil) {
                var out = model
                for t in found {
                    out = try out.replacing(.linear(t.id),
                                            with: .sparse(SparseWeight(masking: t.weight, mask: priors[t.id]!)))
                }
                let report = MaskLLMReport(pattern: pattern.description, prior: prior.rawValue,
                                           priorSeconds: priorSeconds, weights: found.count, steps: 0,
                                           priorDiagnostics: priorDiagnostics)
                return (out, try JSONValue(encoding: report))
            }
        }
        let trainable = try MaskLLMTrainable(
            targets: found.map { .init(id: $0.id, weight: $0.weight, prior: priors[$0.id]) }, settings: settings)
        context.progress("\(found.count) weights, \(trainable.logits.reduce(0) { $0 + $1.count }) logits " +
                         "(\(trainable.candidates.count) candidates per group of \(settings.m)), " +
                         "prior \(prior.rawValue)")
        let distiller = try Distiller(teacher: teacher, student: model, config: distill, trainTokens: trainTokens,
                                      trainables: [trainable], trainWeights: false)
        return TrainingRun(distiller: distiller) {
            let masks = try trainable.hardMasks()
            var out = model
            var priorAgreement: [String: Double] = [:]
            for (i, id) in trainable.targets.enumerated() {
                let mask = masks[id]!
                out = try out.replacing(.linear(id),
                                        with: .sparse(SparseWeight(masking: trainable.weights[i], mask: mask)))
                if let p = priors[id] {
                    var same = 0
                    for b in 0..<mask.bits.count { same += (~(mask.bits[b] ^ p.bits[b])).nonzeroBitCount }
                    priorAgreement[WeightID.linear(id).hfName] =
                        Double(same - (mask.bits.count * 8 - mask.count)) / Double(mask.count)
                }
            }
            let report = MaskLLMReport(
                pattern: pattern.description, prior: prior.rawValue, priorSeconds: priorSeconds, weights: found.count,
                logits: trainable.logits.reduce(0) { $0 + $1.count },
                groupsChangedFromPrior: Nullable(trainable.distanceFromPrior()), trainWeights: settings.trainWeights,
                loss: loss.rawValue, priorDiagnostics: priorDiagnostics)
            return (out, try JSONValue(encoding: report))
        }
    }
}

/// The report of a `maskllm` stage: the pattern, the prior and its own pass's report, and (when it trained) the
/// mask logits and how far the learnt masks moved from the prior's.
public struct MaskLLMReport: Codable, Equatable {
    /// "2:4", ...
    public var pattern: String
    /// "none", "magnitude", "wanda" or "sparsegpt", and the wall time of its masks.
    public var prior: String
    public var priorSeconds: Double
    /// Targeted weights.
    public var weights: Int
    /// Only with "steps": 0 (the prior's masks kept): 0.
    public var steps: Int?
    /// When trained: the mask logits, the share of groups whose mask differs from the prior's (null without a
    /// prior), whether the weights trained too, and the loss.
    public var logits: Int?
    public var groupsChangedFromPrior: Nullable<Double>?
    public var trainWeights: Bool?
    public var loss: String?
    /// The prior pass's own report (null without a prior).
    public var priorDiagnostics: JSONValue
}
