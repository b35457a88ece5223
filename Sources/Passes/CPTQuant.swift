// CPTQuant: mixed-precision post-training quantization guided by layer sensitivity.
//
// Paper: A. Nanda, S. B. Balija, D. Sahoo, "CPTQuant - A Novel Mixed Precision Post-Training Quantization
// Techniques for Large Language Models", 2024.
//
// Three sensitivity estimators, one per CPTQuant strategy, computed on calibration windows:
//   CMPQ (correlation): h_ℓ = the output of decoder layer ℓ, mean-pooled over segments of `pool_tokens`
//     positions (one vector per segment); ρ̄(ℓ, m) = mean canonical correlation between h_ℓ and h_m after the
//     SVCCA reduction to `cca_dims` principal directions (Quantization/CCA.swift);
//       s_ℓ = 1 − mean_{m ≠ ℓ} ρ̄(ℓ, m)          (a layer unlike the others is sensitive)
//   PMPQ (pruning): zero the `prune_fraction` (default 0.3) smallest-magnitude weights of each of the unit's
//     tensors; s_u = PPL_calib(pruned) − PPL_calib(original).
//   TDMPQ (Taylor): s_u = mean over calibration tokens t of |x_t · ∂L/∂x_t|, with x the unit's input (the
//     residual stream entering the layer; per tensor, the linear layer's own input) and L the next-token
//     cross-entropy. First-order estimate of the loss change when the input is removed (perturbed by −x).
// Bit allocation (Quantization/Allocation.swift): the paper's clusters of sensitivity onto a ladder of widths;
// a budget (average bits per weight or bytes) met exactly by a multiple-choice knapsack that minimizes
// Σ_u s̃_u · e_u(b_u), e_u(b) = ‖W_u − Q_b(W_u)‖² / ‖W_u‖², s̃_u = max(s_u, 0.01 · max_v s_v); or one uniform
// width (the baseline). The floor keeps a unit whose measured sensitivity is ~0 or negative (PMPQ on noisy
// calibration) from being quantized for free. The damage model is linear in the weight error: a layer's
// width moves only when sensitivities differ by more than the error ratio between widths (about 4× per bit).
// The quantizer is Quantization/Quantizer.swift (round-to-nearest, or the clipping search weighted by the
// calibration inputs' E[x²] per column), or GPTQ (`method: gptq`, Passes/GPTQ.swift) with keys `damp`
// (relative, 0.1), `block_size` (128), `act_order` (true), `clip_search` (true: each group's grid by the
// clipping search on its current values, weighted by E[x²]; false: round-to-nearest's min-max grid) and
// `static_groups` (false; true: the grids from the original weights, before GPTQ's updates). With `method:
// search`, `search_weights: "activation_magnitude"` weights the search's error by E[x_k²]·√(σ² + w_k²) (σ² the
// row's mean w²), the rule of llama.cpp's imatrix quantizers, instead of E[x_k²] alone. The
// defaults of damp and act_order are not the paper's reference (0.01, off): on SmolLM2 at 3 and 4 bits, group
// 32, they were measured best of {0.01, 0.1} × {off, on} (recipes/README.md, issue 19).
//
// Candidate formats (issue 19; ours): `widths` at one `group_size` and `symmetric` (the paper's ladder), or
// `formats`, any mix of widths, group sizes and symmetric / asymmetric codes (llama.cpp's mixes choose among
// Q4_0 / Q4_1 / Q5_K … per tensor the same way); the allocation chooses one per unit, finer steps of bits per
// weight than whole bits (e.g. q4_g64_sym at 4.25 between q3_g32_asym at 4.0 and q4_g32_sym at 4.5).
//
// Measured damage (`damage: "measured"`, issue 19; ours, not the paper's): instead of s̃_u · e_u(b), each
// unit's damage at each width is measured directly: with that unit's tensors at width b (dequantized) and every
// other weight unchanged,
//   D_u(b) = mean over positions t of the damage windows of KL(p_base(·|t) ‖ p_u,b(·|t))
//          = mean_t Σ_v p_base,v (log p_base,v − log p_u,b,v)          (nats per token),
// the next-token distributions of the base model and of the variant (computed by `klDivergenceForward`,
// TensorCore/Ops/Divergences.swift, the kernel of `compress eval --reference`); the knapsack minimizes Σ_u D_u(b_u)
// (an additive model of damage, the assumption the report checks: it gives the predicted total Σ_u D_u(b_u)
// beside the KL measured with every unit at its chosen width, for the allocation and the uniform baseline).
// `damage_windows` of the calibration windows, cut to their first `damage_tokens` tokens, are used; the base
// run keeps every window's residual stream, so a variant resumes at its unit's first sublayer
// (ResumableForward) and only the layers from there on are recomputed.
// Embedding and LM head (issue 19): `embedding` (and, untied, `lm_head`) store them at a fixed width; a tied
// LM head is the embedding (one copy, set by `embedding`); `fixed_in_budget: true` counts their weights and
// bytes in the budget (the allocation gets what is left). With measured damage, the report gives their
// measured KL as well (the tied copy: embedding and head quantized together, as stored).
//
// Deviations from the paper:
// - CMPQ pools over segments of `pool_tokens` rather than whole sequences, and applies SVCCA's reduction,
//   so that the correlations are estimated from more samples than dimensions (with 32 pooled vectors of
//   576 channels, plain CCA finds correlation 1 everywhere).
// - The paper sets bits per cluster and reports the size that results; the budget allocation and the
//   uniform baseline at the same budget are ours, so estimators can be compared at equal size.
// - Sensitivity is per decoder layer as in the paper, per sublayer (`granularity: "sublayer"`: a layer's
//   attention projections and its MLP projections are two units; TDMPQ sums its tensors' input scores), or per
//   tensor (`granularity: "tensor"`); CMPQ has no per-sublayer or per-tensor form, so each unit takes its
//   layer's score.
// - Embedding and LM head are outside the allocation: left in float32 or stored at a fixed width when asked
//   (counted in the budget with `fixed_in_budget`). Norms (1-D) stay float32.
// - With `method: gptq` the allocation's error e_u(b) is the clipping search's (round-to-nearest's with
//   `clip_search: false`): GPTQ minimises the layer-output error, not ‖W − Q(W)‖, and runs layer after layer on
//   the already-quantized model, so it runs once, after the allocation, at the chosen widths; the search, whose
//   grids GPTQ's groups use, is the closest per-tensor stand-in. The bytes are the same for every method at a
//   given format. So is the measured damage per unit (KL with the unit at the search's weights), while the
//   reported measured total is that of the result (GPTQ's weights).
//
// Factorized weights (ours; issue 16: DSFormer, or low rank, followed by quantization, to check DSFormer's claim
// that the factorization stacks with quantization): for W = D · S (Model/LinearWeight.swift) the unit's tensor
// is the dense factor D (OC, k), stored quantized as the codes of Dᵀ (k, OC) in groups of G consecutive output
// rows of one atom (one column of D). Grouping along k, the input of D, would need k to be a multiple of G, and
// DSFormer's and low rank's k (263, ...) rarely are; OC (576, 1536, ...) always is, and one atom's entries share
// a scale. S's values stay float32 with their row indices (in the 2× DSFormer recipe on SmolLM2 they are 9 % of
// gate/up's factor parameters but 40 % of down_proj's, and at 4 + 2 bytes each they hold most of the bytes once
// D is at 4.5 bits), or, with `sparse_factor_bits`, are stored at that fixed width: round to nearest (the plain
// clipping search with `method: search`) in groups of `group_size` consecutive kept values in storage order
// (column by column; a group may span columns, as s is rarely a multiple of G), quantized after D, each
// independently. Either way S is outside the allocation and its budget (like the norms), and the report counts
// it: the targeted weights' bytes with D's codes and scales, S's values and indices, in bits per stored parameter and
// per element of the (OC, C) matrix each weight stands for. e_u(b) is ‖D − Q_b(D)‖² / ‖D‖². With `method:
// search` the weighting by E[x²] does not apply to D (a group of Dᵀ lies in one input column of D, so a
// weight would be the same for the whole group): its search minimizes the group's plain squared error.
// PMPQ prunes D's smallest-magnitude entries and the measured damage puts Q_b(D) in place of D, as they do with
// a dense weight's W (`sparse_factor_bits` with measured damage is refused: the probe does not vary S); CMPQ and
// TDMPQ work on layer outputs and inputs and do not see the representation.
// `method: gptq` quantizes D with the Hessian of its input S·x, H_D = S·H·Sᵀ (k × k), one column at a time
// with the grids of D's output groups fixed as each column is reached (Passes/GPTQ.swift); S's values, with
// `sparse_factor_bits`, are quantized afterwards by round to nearest / the search, not by GPTQ.

import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import Training

public struct CPTQuantPass: CompressionPass {
    public static let name = "cptquant"
    /// Quantizes dense weights, sparse ones (pruned weights stay exactly 0: symmetric formats only; the
    /// result is a quantized weight whose codes hold the zeros, the mask is not stored apart) and the dense
    /// factor D of factorized ones (the result stays factorized, with D quantized); its result holds quantized
    /// weights, which no training or pass may follow.
    public static let accepts: Set<WeightKind> = [.dense, .sparse, .factorized]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.quantized]) }
    /// Calibration windows unless neither the estimator nor the quantizer uses them (estimator none, rtn).
    public var needs: PassNeeds { estimator == .none && method == .rtn && damage == .estimated ? [] : [.calibration] }

    public enum Estimator: String, CaseIterable, Sendable { case cmpq, pmpq, tdmpq, none }
    public enum AllocationMode: String, CaseIterable, Sendable { case budget, clusters, uniform }
    public enum Granularity: String, CaseIterable, Sendable { case layer, sublayer, tensor }
    public enum Method: String, CaseIterable, Sendable { case rtn, search, gptq }
    /// What the budget allocation minimizes: Σ s̃_u · e_u(b) (`estimated`) or Σ measured KL (`measured`).
    public enum Damage: String, CaseIterable, Sendable { case estimated, measured }

    /// The decoder linear weights, by their short names.
    public static let linearKinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public var estimator = Estimator.cmpq
    public var allocation = AllocationMode.budget
    public var granularity = Granularity.layer
    public var method = Method.search
    public var bitsPerWeight: Double?
    public var budgetBytes: Int?
    public var widths = [2, 3, 4, 5, 6, 8]
    /// The allocation's candidate formats, narrowest first: `widths` at `group_size` and `symmetric`, or the
    /// recipe's `formats` (any mix of widths, group sizes, symmetric and asymmetric), sorted by bits per weight.
    /// An allocation's `bits` entries are indices into this list.
    public private(set) var candidates: [QuantFormat] = []
    /// Whether the candidates came from `formats` (reports and cache keys name them) rather than `widths`.
    public private(set) var explicitFormats = false
    public var groupSize = 64
    public var symmetric = false
    public var targets = linearKinds
    public var excludeLayers: [Int] = []
    public var embeddingBits: Int?
    public var lmHeadBits: Int?
    /// Symmetric codes for the embedding / LM head (nil: as `symmetric`), e.g. an asymmetric decoder with a
    /// symmetric 8-bit embedding (GGUF Q5_1 and Q8_0, as llama.cpp's mixes).
    public var embeddingSymmetric: Bool?
    /// A fixed width for the kept values of factorized weights' S (nil: float32).
    public var sparseFactorBits: Int?
    public var pruneFraction = 0.3
    public var poolTokens = 64
    public var ccaDims = 16
    public var ridge = 1e-3
    public var damage = Damage.estimated
    public var damageWindows = 4
    /// PMPQ and TDMPQ: the first N calibration windows (nil: all of them).
    public var estimatorWindows: Int?
    public var damageTokens = 128
    public var fixedInBudget = false
    /// GPTQ: relative damping, columns per lazy-update block, activation order.
    public var damp = 0.1
    public var blockSize = 128
    public var actOrder = true
    public var clipSearch = true
    public var staticGroups = false
    /// The search's error weights: E[x_k²] (`activation`), or E[x_k²]·√(σ² + w_k²) (`activation_magnitude`,
    /// llama.cpp's imatrix rule; σ² the row's mean w²).
    public enum SearchWeights: String, CaseIterable, Sendable { case activation, activationMagnitude = "activation_magnitude" }
    public var searchWeights = SearchWeights.activation

    public init(config s: StrictObject) throws {
        estimator = try s.choice("estimator", default: estimator)
        allocation = try s.choice("allocation", default: allocation)
        granularity = try s.choice("granularity", default: granularity)
        method = try s.choice("method", default: method)
        bitsPerWeight = try s.optionalDouble("bits_per_weight", in: 1...32)
        budgetBytes = try s.optionalInt("bytes", in: 1...Int.max)
        symmetric = try s.bool("symmetric", default: symmetric)
        if let a = try s.array("formats") {
            guard !s.has("widths") else { throw RecipeError("\(s.location): give 'widths' (with 'symmetric' and 'group_size') or 'formats', not both") }
            let named = try a.map { v -> QuantFormat in
                guard let name = v.stringValue else { throw RecipeError("\(s.location): 'formats': expected format names such as \"q4_g32_sym\", found \(v.text)") }
                do { return try QuantFormat(name: name) } catch let e as QuantizationError { throw RecipeError("\(s.location): 'formats': \(e.description)") }
            }
            guard !named.isEmpty, Set(named).count == named.count else {
                throw RecipeError("\(s.location): 'formats': give distinct formats, found \(named.map(\.description))")
            }
            candidates = named.sorted { ($0.bitsPerWeight, $0.bits, $0.description) < ($1.bitsPerWeight, $1.bits, $1.description) }
            explicitFormats = true
            // `group_size` (for the embedding, LM head and S's values) defaults to the candidates' when they share one.
            let sizes = Set(candidates.filter { !$0.isFloat16 }.map(\.groupSize))
            if sizes.count == 1 { groupSize = sizes.first! }
        }
        groupSize = try s.int("group_size", default: groupSize, in: 1...1 << 20)
        func ints(_ key: String) throws -> [Int]? {
            guard let a = try s.array(key) else { return nil }
            return try a.map { v in
                guard let i = v.intValue else { throw RecipeError("\(s.location): '\(key)': expected integers, found \(v.text)") }
                return i
            }
        }
        func width(_ key: String, _ b: Int) throws -> Int {
            guard b == 16 || QuantFormat.supportedBits.contains(b) else {
                throw RecipeError("\(s.location): '\(key)': \(b) bits is not a width (choose from \((QuantFormat.supportedBits + [16]).map(String.init).joined(separator: ", ")))")
            }
            return b
        }
        if let w = try ints("widths") {
            guard !w.isEmpty, Set(w).count == w.count else { throw RecipeError("\(s.location): 'widths': give distinct widths, found \(w)") }
            widths = try w.map { try width("widths", $0) }.sorted()
        }
        if let t = try s.array("targets") {
            targets = try t.map { v in
                guard let k = v.stringValue, Self.linearKinds.contains(k) else {
                    throw RecipeError("\(s.location): 'targets': \(v.text) is not a decoder linear weight (choose from \(Self.linearKinds.joined(separator: ", ")); the embedding and LM head have their own keys 'embedding' and 'lm_head')")
                }
                return k
            }
            guard !targets.isEmpty else { throw RecipeError("\(s.location): 'targets' is empty") }
        }
        excludeLayers = try ints("exclude_layers") ?? []
        if let bad = excludeLayers.first(where: { $0 < 0 }) { throw RecipeError("\(s.location): 'exclude_layers': \(bad) is negative") }
        embeddingBits = try s.optionalInt("embedding").map { try width("embedding", $0) }
        lmHeadBits = try s.optionalInt("lm_head").map { try width("lm_head", $0) }
        if s.has("embedding_symmetric") {
            guard embeddingBits != nil || lmHeadBits != nil else {
                throw RecipeError("\(s.location): 'embedding_symmetric' needs 'embedding' or 'lm_head' (a fixed width to apply to)")
            }
            embeddingSymmetric = try s.bool("embedding_symmetric")
        }
        sparseFactorBits = try s.optionalInt("sparse_factor_bits").map { try width("sparse_factor_bits", $0) }
        pruneFraction = try s.double("prune_fraction", default: pruneFraction, in: 0...1)
        guard pruneFraction > 0 && pruneFraction < 1 else { throw RecipeError("\(s.location): 'prune_fraction': \(pruneFraction) must lie strictly between 0 and 1") }
        poolTokens = try s.int("pool_tokens", default: poolTokens, in: 1...1 << 20)
        ccaDims = try s.int("cca_dims", default: ccaDims, in: 1...4096)
        ridge = try s.double("ridge", default: ridge, in: 0...1e6)
        damage = try s.choice("damage", default: damage)
        damageWindows = try s.int("damage_windows", default: damageWindows, in: 1...1 << 16)
        damageTokens = try s.int("damage_tokens", default: damageTokens, in: 2...1 << 20)
        estimatorWindows = try s.optionalInt("estimator_windows", in: 1...1 << 16)
        if estimatorWindows != nil && estimator != .pmpq && estimator != .tdmpq {
            throw RecipeError("\(s.location): 'estimator_windows' applies to the estimators 'pmpq' and 'tdmpq' (estimator is '\(estimator.rawValue)')")
        }
        fixedInBudget = try s.bool("fixed_in_budget", default: fixedInBudget)
        if fixedInBudget && embeddingBits == nil && lmHeadBits == nil {
            throw RecipeError("\(s.location): 'fixed_in_budget' counts the fixed-width 'embedding' / 'lm_head' in the budget; set at least one of them")
        }
        if damage == .measured && sparseFactorBits != nil {
            throw RecipeError("\(s.location): 'sparse_factor_bits' with 'damage': 'measured' is not supported (the damage probe varies D only, so its totals would leave out S's quantization)")
        }
        if damage == .measured && allocation == .clusters {
            throw RecipeError("\(s.location): 'damage': 'measured' is for allocation 'budget' (or 'uniform', to report it); 'clusters' uses the sensitivities")
        }
        if fixedInBudget && allocation == .clusters {
            throw RecipeError("\(s.location): 'fixed_in_budget' needs a budget (allocation 'budget' or 'uniform')")
        }
        for key in ["damp", "block_size", "act_order", "clip_search", "static_groups"] where s.has(key) && method != .gptq {
            throw RecipeError("\(s.location): '\(key)' applies to method 'gptq' only (method is '\(method.rawValue)')")
        }
        damp = try s.double("damp", default: damp, in: 0...1e6)
        guard damp > 0 else { throw RecipeError("\(s.location): 'damp': must be positive (relative damping, e.g. 0.01)") }
        blockSize = try s.int("block_size", default: blockSize, in: 1...1 << 20)
        actOrder = try s.bool("act_order", default: actOrder)
        clipSearch = try s.bool("clip_search", default: clipSearch)
        staticGroups = try s.bool("static_groups", default: staticGroups)
        if s.has("search_weights") && method != .search {
            throw RecipeError("\(s.location): 'search_weights' applies to method 'search' only (method is '\(method.rawValue)')")
        }
        searchWeights = try s.choice("search_weights", default: searchWeights)

        switch allocation {
        case .budget, .uniform:
            guard (bitsPerWeight == nil) != (budgetBytes == nil) else {
                throw RecipeError("\(s.location): allocation '\(allocation.rawValue)' needs exactly one of 'bits_per_weight' (average storage bits per weight, scales included) and 'bytes' (storage of the allocated tensors)")
            }
        case .clusters:
            guard bitsPerWeight == nil, budgetBytes == nil else {
                throw RecipeError("\(s.location): allocation 'clusters' sets widths by sensitivity cluster and takes no budget; use allocation 'budget' to meet 'bits_per_weight' or 'bytes'")
            }
        }
        guard estimator != .none || allocation == .uniform || damage == .measured else {
            throw RecipeError("\(s.location): estimator 'none' is only for allocation 'uniform' or 'damage': 'measured'")
        }
        // Formats must be valid for the group size (checked now, not after the calibration work).
        if !explicitFormats { candidates = try widths.map { try Self.format($0, groupSize: groupSize, symmetric: symmetric, at: s.location) } }
        if allocation == .clusters && explicitFormats && Set(candidates.map(\.bits)).count != candidates.count {
            throw RecipeError("\(s.location): allocation 'clusters' maps sensitivity clusters onto a ladder of widths; 'formats' \(candidates.map(\.description)) has two formats of one width")
        }
        if let b = sparseFactorBits { _ = try Self.format(b, groupSize: groupSize, symmetric: symmetric, at: s.location + ": 'sparse_factor_bits'") }
    }

    /// The distinct group sizes of the candidate integer formats (each must divide every targeted tensor's groups' axis).
    var candidateGroupSizes: [Int] { Set(candidates.filter { !$0.isFloat16 }.map(\.groupSize)).sorted() }

    static func format(_ bits: Int, groupSize: Int, symmetric: Bool, at location: String = "cptquant") throws -> QuantFormat {
        do { return try QuantFormat.width(bits, groupSize: groupSize, symmetric: symmetric) } catch let e as QuantizationError {
            throw RecipeError("\(location): \(e.description)")
        }
    }

    /// The float32 tensor the pass quantizes for every matrix weight, by id: the model's own storage (PMPQ and
    /// the damage probe write into a private copy's): W of a dense or sparse weight (a quantized one's cache),
    /// D (OC, k) of a factorized one whose D is float32.
    static func denseWeights(_ model: DecoderModel) -> [WeightID: Tensor] {
        Dictionary(uniqueKeysWithValues: model.weights.compactMap { w -> (WeightID, Tensor)? in
            guard let m = w.weight.matrix else { return nil }
            if case .factorized(let f) = m { return f.quantizedDense == nil ? (w.id, f.dense) : nil }
            return m.denseView.map { (w.id, $0) }
        })
    }

    /// The weights whose unit tensor is a factorized weight's D (quantized as Dᵀ, (k, OC), grouped along OC).
    static func factorizedIDs(_ model: DecoderModel) -> Set<WeightID> {
        Set(model.weights.compactMap { w in if case .matrix(.factorized) = w.weight { return w.id }; return nil })
    }

    /// The values and shape the quantizer takes for a unit tensor `w`: W itself, or Dᵀ (k, OC) for a factor D.
    static func quantizerInput(_ w: Tensor, factorized: Bool) -> (values: [Float], shape: [Int]) {
        factorized ? (FactorizedWeight.transpose(w.array, rows: w.shape[0], cols: w.shape[1]), [w.shape[1], w.shape[0]]) : (w.array, w.shape)
    }

    /// A stored form's values in the unit tensor's layout (D's, (OC, k), for the codes of Dᵀ).
    static func storageValues(_ q: QuantizedTensor, factorized: Bool) -> [Float] {
        factorized ? FactorizedWeight.transpose(q.dequantized(), rows: q.shape[0], cols: q.shape[1]) : q.dequantized()
    }


    /// One allocation unit: a decoder layer's targeted tensors, or one tensor.
    struct Unit {
        var name: String
        var layer: Int
        var tensors: [WeightID]
        /// The first sublayer the unit's tensors act in (where a resumed forward starts).
        var firstSublayer: Int
    }

    func units(_ model: DecoderModel) throws -> [Unit] {
        let L = model.layers.count
        if let bad = excludeLayers.first(where: { $0 >= L }) { throw RecipeError("cptquant: 'exclude_layers': layer \(bad) outside 0..<\(L)") }
        var out: [Unit] = []
        for l in 0..<L where !excludeLayers.contains(l) {
            let layer = model.layers[l]
            var names: [(WeightID, Int)] = []
            for k in targets.compactMap(LinearKind.init(shortName:)) {
                if k.isAttention ? layer.attention == nil : layer.mlp == nil { continue }
                names.append((.linear(LinearID(layer: l, kind: k)), k.isAttention ? 2 * l : 2 * l + 1))
            }
            guard !names.isEmpty else { continue }
            switch granularity {
            case .layer:
                out.append(Unit(name: "layer \(l)", layer: l, tensors: names.map(\.0), firstSublayer: names.map(\.1).min()!))
            case .sublayer:
                for sub in [2 * l, 2 * l + 1] {
                    let members = names.filter { $0.1 == sub }.map(\.0)
                    if !members.isEmpty { out.append(Unit(name: "layer \(l) \(sub % 2 == 0 ? "attention" : "mlp")", layer: l, tensors: members, firstSublayer: sub)) }
                }
            case .tensor:
                out += names.map { Unit(name: $0.0.hfName, layer: l, tensors: [$0.0], firstSublayer: $0.1) }
            }
        }
        guard !out.isEmpty else { throw RecipeError("cptquant: no tensor of the model matches 'targets' outside 'exclude_layers'") }
        return out
    }

    public func run(on model: DecoderModel, context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let units = try units(model)
        let tensors = Self.denseWeights(model)
        let factorized = Self.factorizedIDs(model)
        for u in units { for t in u.tensors {
            if case .linear(let id) = t, case .factorized(let f)? = model.linear(id) {
                guard !f.isQuantized else { throw RecipeError("cptquant: '\(t)' is factorized with a factor already quantized; it cannot be quantized again") }
                for G in candidateGroupSizes where f.dense.shape[0] % G != 0 {
                    throw RecipeError("cptquant: '\(t)' is factorized (D · S, rank \(f.rank)); its dense factor D is quantized in groups of 'group_size' consecutive output rows of one atom (Dᵀ grouped along the output), and its \(f.dense.shape[0]) output rows are not a whole number of groups of \(G)")
                }
                guard sparseFactorBits == nil || sparseFactorBits == 16 || f.sparse.mask.nonzeros % groupSize == 0 else {
                    throw RecipeError("cptquant: 'sparse_factor_bits': the \(f.sparse.mask.nonzeros) kept values of the sparse factor of '\(t)' are not a whole number of groups of \(groupSize)")
                }
                continue
            }
            for G in candidateGroupSizes where tensors[t]!.shape[1] % G != 0 {
                throw RecipeError("cptquant: tensor '\(t)' has \(tensors[t]!.shape[1]) input columns, not a whole number of groups of \(G)")
            }
        } }
        if sparseFactorBits != nil, !units.contains(where: { $0.tensors.contains { factorized.contains($0) } }) {
            throw RecipeError("cptquant: 'sparse_factor_bits' quantizes factorized weights' S, but no targeted weight is factorized")
        }
        var masks: [LinearID: SparsityMask] = [:]
        for u in units { for t in u.tensors {
            guard case .linear(let id) = t, case .sparse(let s)? = model.linear(id) else { continue }
            guard candidates.allSatisfy(\.symmetric) else {
                throw RecipeError("cptquant: '\(t)' is sparse (\(s.mask.pattern)); its pruned weights stay exactly 0 only on a symmetric grid: set 'symmetric': true\(explicitFormats ? " (every one of 'formats' must be _sym or f16)" : "")")
            }
            masks[id] = s.mask
        } }
        let windows = context.calibration
        guard !windows.isEmpty || (estimator == .none && method == .rtn) else { throw RecipeError("cptquant: needs calibration windows") }
        if method == .gptq, let T = windows.first?.count, !windows.allSatisfy({ $0.count == T }) {
            throw RecipeError("cptquant: GPTQ needs calibration windows of one length")
        }

        // Calibration statistics: per input column E[x²] (for the search) and CMPQ's scores.
        var moments: CalibrationMoments?
        // The per-tensor table (every width) uses the clipping search for `search`, and for `gptq` with searched grids.
        let searchTable = method == .search || (method == .gptq && clipSearch)
        if searchTable || estimator == .cmpq {
            let correlations = estimator == .cmpq
            let settings: JSONValue = correlations ? .object(["pool_tokens": .int(poolTokens), "cca_dims": .int(ccaDims), "ridge": .double(ridge)])
                                                   : .object(["cmpq": .bool(false)])
            moments = try context.cached("cptquant-moments", settings: settings) {
                try CalibrationMoments.compute(model: model, windows: windows, correlations: correlations, poolTokens: poolTokens,
                                               ccaDims: ccaDims, ridge: ridge) { i, n in
                    context.progress("cptquant calibration statistics: window \(i)/\(n)")
                }
            }
        }

        // Sensitivity per unit.
        var sensitivity: [Double]
        let unitSettings: JSONValue = .object(["granularity": .string(granularity.rawValue), "targets": .array(targets.map { .string($0) }),
                                               "exclude_layers": .array(excludeLayers.map { .int($0) })])
        var estimatorSettings: [String: JSONValue] = ["units": unitSettings]
        var estimatorInput = windows
        if let n = estimatorWindows {
            guard windows.count >= n else {
                throw RecipeError("cptquant: 'estimator_windows' is \(n), but the recipe draws \(windows.count) calibration windows (raise calibration.samples or lower estimator_windows)")
            }
            estimatorInput = Array(windows.prefix(n)); estimatorSettings["windows"] = .int(n)
        }
        switch estimator {
        case .none: sensitivity = units.map { _ in 0 }
        case .cmpq: sensitivity = units.map { moments!.cmpq[$0.layer] }
        case .pmpq:
            sensitivity = try context.cached("cptquant-pmpq", settings: .object(estimatorSettings.merging(["fraction": .double(pruneFraction)]) { a, _ in a })) {
                Self.pruningSensitivity(model: model, units: units, fraction: pruneFraction, windows: estimatorInput) { i, n in
                    context.progress("cptquant PMPQ: window \(i)/\(n)")
                }
            }
        case .tdmpq:
            sensitivity = try context.cached("cptquant-tdmpq", settings: .object(estimatorSettings)) {
                Self.taylorSensitivity(model: model, units: units, windows: estimatorInput, perTensor: granularity != .layer) { i, n in context.progress("cptquant TDMPQ: window \(i)/\(n)") }
            }
        }

        try requireFinite(sensitivity, stage: "cptquant") {
            "the \(estimator.rawValue) sensitivity of unit \(units[$0].name)"
        }

        // Every tensor at every width: stored form and ‖W − Q(W)‖²; and ‖W‖² once per tensor.
        let formats = candidates
        let names = units.flatMap(\.tensors)
        var stored = [[QuantizedTensor?]](repeating: [QuantizedTensor?](repeating: nil, count: formats.count), count: names.count)
        var squaredErrors = [[Double]](repeating: [Double](repeating: 0, count: formats.count), count: names.count)
        let squaredNorms = names.map { n in tensors[n]!.array.reduce(0.0) { $0 + Double($1) * Double($1) } }
        var failure: Error?
        var unrepresentable: [String] = []  // widths that cannot store a tensor are dropped from its unit's options
        let lock = NSLock()
        for (fi, f) in formats.enumerated() {
            Parallel.forEachChunk(names.count) { r in
                for i in r {
                    let w = tensors[names[i]]!, isFactor = factorized.contains(names[i])
                    do {
                        // A factor D is quantized as Dᵀ (k, OC); the E[x²] weighting is the weight's own input's (none for D).
                        let (values, shape) = Self.quantizerInput(w, factorized: isFactor)
                        let q = try QuantizedTensor(weights: values, shape: shape, format: f,
                                                    importance: searchTable && !isFactor ? moments?.columns[names[i].hfName] : nil, search: searchTable,
                                                    magnitudeWeighted: searchWeights == .activationMagnitude && !isFactor)
                        let back = q.dequantized()
                        var e = 0.0
                        for k in 0..<w.count { let d = Double(values[k] - back[k]); e += d * d }
                        lock.lock(); stored[i][fi] = q; squaredErrors[i][fi] = e; lock.unlock()
                    } catch let e as UnrepresentableWeights {
                        lock.lock(); unrepresentable.append("'\(names[i])' at \(f): \(e)"); lock.unlock()
                    } catch {
                        lock.lock(); failure = RecipeError("cptquant: tensor '\(names[i])' at \(f): \(error)"); lock.unlock()
                    }
                }
            }
            context.progress("cptquant: quantized \(names.count) tensors at \(f)")
        }
        if let failure { throw failure }
        let index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        // A unit's relative error: Σ ‖ΔW‖² over Σ ‖W‖² of its tensors.
        let unitError: [[Double]] = units.map { unit in
            let idx = unit.tensors.map { index[$0]! }
            let norm = idx.reduce(0.0) { $0 + squaredNorms[$1] }
            return formats.indices.map { fi in norm > 0 ? idx.reduce(0.0) { $0 + squaredErrors[$1][fi] } / norm : 0 }
        }
        // Damage weights: sensitivities below 1 % of the largest (PMPQ's can be negative: pruning noise) are
        // raised to that floor, so that no unit's error is free or rewarded.
        let top = sensitivity.max() ?? 0
        let floor = top > 0 ? 0.01 * top : 1
        let weightOf = sensitivity.map { top > 0 ? Swift.max($0, floor) : 1 }
        // Measured damage: KL(base ‖ model with the unit at width b) per unit and width (nil: width unusable).
        var probe: DamageProbe?
        var measured: [[Double?]]?
        if damage == .measured {
            let cut = try Self.damageWindows(windows, count: damageWindows, tokens: damageTokens)
            let p = try DamageProbe(model: model, windows: cut)
            probe = p
            var settings: [String: JSONValue] = [
                "units": unitSettings, "method": .string(searchTable ? (searchWeights == .activation ? "search" : "search \(searchWeights.rawValue)") : "rtn"), "damage_windows": .int(damageWindows), "damage_tokens": .int(damageTokens),
            ]
            func divergence(_ u: Int, _ fi: Int) throws -> Double? {
                let unit = units[u]
                guard unit.tensors.allSatisfy({ stored[index[$0]!][fi] != nil }) else { return nil }
                let values = Dictionary(uniqueKeysWithValues: unit.tensors.map {
                    ($0, Self.storageValues(stored[index[$0]!][fi]!, factorized: factorized.contains($0)))
                })
                // A format that stores the unit exactly (a dequantized model re-quantized on its own grid) changes
                // nothing: its KL is 0 without a forward.
                if values.allSatisfy({ $0.value == tensors[$0.key]!.array }) { return 0 }
                return try p.divergence(values, resumeAt: unit.firstSublayer)
            }
            if explicitFormats {
                // One cached column per format, so that a recipe adding a format measures only that one.
                var columns: [[Double?]] = []
                for (fi, f) in formats.enumerated() {
                    settings["format"] = .string(f.description)
                    settings["quantizer"] = .string(QuantizedTensor.revision(of: f))
                    columns.append(try context.cached("cptquant-damage-format", settings: .object(settings)) {
                        try units.indices.map { u -> Double? in
                            defer { if (u + 1) % 10 == 0 || u + 1 == units.count { context.progress("cptquant measured damage at \(f): unit \(u + 1)/\(units.count) (\(units[u].name))") } }
                            return try divergence(u, fi)
                        }
                    })
                }
                measured = units.indices.map { u in columns.map { $0[u] } }
            } else {
                settings["widths"] = .array(widths.map { .int($0) }); settings["group_size"] = .int(groupSize); settings["symmetric"] = .bool(symmetric)
                settings["quantizer"] = .string(QuantizedTensor.revision)
                measured = try context.cached("cptquant-damage", settings: .object(settings)) {
                    try units.enumerated().map { u, unit -> [Double?] in
                        let row = try formats.indices.map { fi in try divergence(u, fi) }
                        context.progress("cptquant measured damage: unit \(u + 1)/\(units.count) (\(unit.name))")
                        return row
                    }
                }
            }
        }
        let allocationUnits = try units.enumerated().map { u, unit in
            do {
                return try AllocationUnit(name: unit.name, candidates: formats.indices.map { fi in
                    (fi, unit.tensors.allSatisfy { stored[index[$0]!][fi] != nil }
                        ? (unit.tensors.reduce(0) { $0 + stored[index[$1]!][fi]!.bytes }, measured.map { $0[u][fi] ?? .infinity } ?? weightOf[u] * unitError[u][fi]) : nil)
                }, why: unrepresentable.filter { r in unit.tensors.contains { r.hasPrefix("'\($0)'") } })
            } catch let e as QuantizationError { throw RecipeError("cptquant: \(e.description)") }
        }
        let weights = names.reduce(0) { $0 + tensors[$1]!.count }

        // Embedding and LM head at a fixed width (a tied head is the embedding: one copy).
        if lmHeadBits != nil && model.untiedLMHead == nil {
            throw RecipeError("cptquant: 'lm_head': this model's LM head is tied to the embedding (one copy); set its width with 'embedding'")
        }
        var fixed: [(id: WeightID, format: QuantFormat, q: QuantizedTensor)] = []
        for (id, bits) in [(WeightID.embedTokens, embeddingBits), (.lmHead, lmHeadBits)] {
            guard let bits, let w = tensors[id] else { continue }
            let f = try Self.format(bits, groupSize: groupSize, symmetric: embeddingSymmetric ?? symmetric)
            guard w.shape[1] % f.groupSize == 0 else { throw RecipeError("cptquant: '\(id.hfName)' has \(w.shape[1]) columns, not a whole number of groups of \(groupSize)") }
            do { fixed.append((id, f, try QuantizedTensor(weights: w.array, shape: w.shape, format: f))) } catch {
                throw RecipeError("cptquant: '\(id.hfName)' at \(f): \(error)")
            }
        }
        let fixedWeights = fixed.reduce(0) { $0 + $1.q.count }, fixedBytes = fixed.reduce(0) { $0 + $1.q.bytes }
        let budget: Int?
        if fixedInBudget {
            // The budget covers the allocated and the fixed weights; the allocation gets what is left.
            let total = budgetBytes ?? bitsPerWeight.map { Int(($0 * Double(weights + fixedWeights) / 8).rounded(.down)) }!
            guard total > fixedBytes else {
                throw RecipeError("cptquant: the budget of \(total) bytes does not cover the fixed-width embedding / LM head (\(fixedBytes) bytes)")
            }
            budget = total - fixedBytes
        } else {
            budget = budgetBytes ?? bitsPerWeight.map { Int(($0 * Double(weights) / 8).rounded(.down)) }
        }
        let chosen: Allocation
        do {
            switch allocation {
            case .budget: chosen = try allocateToBudget(allocationUnits, budgetBytes: budget!)
            case .uniform: chosen = try allocateUniform(allocationUnits, budgetBytes: budget!)
            case .clusters: chosen = allocateByClusters(allocationUnits, sensitivities: sensitivity, ladder: Array(formats.indices))
            }
        } catch let e as QuantizationError { throw RecipeError("cptquant: \(e.description)") }

        // The quantized model: the packed codes are its weights.
        var result = model
        var gptqReport: JSONValue?
        if method == .gptq {
            // GPTQ at the allocated widths, layer by layer on the already-quantized layers' outputs.
            var formatOf: [LinearID: QuantFormat] = [:]
            for (u, unit) in units.enumerated() {
                for t in unit.tensors { if case .linear(let id) = t { formatOf[id] = formats[chosen.bits[u]] } }
            }
            let start = Date()
            var losses: [JSONValue] = []
            result = try Layerwise.run(model: model, windows: windows, targets: Set(formatOf.keys.map(\.kind)), fullHessian: true,
                                       progress: context.progress) { id, weight, input in
                guard let f = formatOf[id] else { return weight }
                do {
                    if case .factorized(let fw) = weight {
                        guard !staticGroups else {
                            throw RecipeError("'static_groups' is for dense and sparse weights; a factorized weight's D takes its grids column by column from its current values")
                        }
                        // D's input is S·x: H_D = S·H·Sᵀ; D's groups run along the output (GPTQ.swift).
                        let factor = try HessianFactorization(hessian: GPTQ.factorHessian(input.hessian(), sparse: fw.sparse), features: fw.rank,
                                                              damp: damp, actOrder: actOrder)
                        let (q, loss, _) = try GPTQ.quantizeOutputGroups(fw.dense, factor: factor, format: f, clipSearch: clipSearch)
                        losses.append(.object(["name": .string(WeightID.linear(id).hfName), "format": .string(f.description), "obs_loss": .double(loss),
                                               "factorized": .bool(true)]))
                        return .factorized(try fw.quantizingDense(q))
                    }
                    let factor = try input.factorization(damp: damp, actOrder: actOrder)
                    let importance = clipSearch ? input.squares.map { Float($0 / Double(max(input.tokens, 1))) } : nil
                    let (q, loss) = try GPTQ.quantize(weight.denseView!, factor: factor, format: f, blockSize: blockSize, importance: importance,
                                                      keep: masks[id], staticGroups: staticGroups)
                    losses.append(.object(["name": .string(WeightID.linear(id).hfName), "format": .string(f.description), "obs_loss": .double(loss)]))
                    return .quantized(QuantizedWeight(q))
                } catch let e as RecipeError { throw RecipeError("cptquant: GPTQ of '\(id)': \(e.description)") } catch {
                    throw RecipeError("cptquant: GPTQ of '\(id)' at \(f): \(error)")
                }
            }
            gptqReport = .object(["damp": .double(damp), "block_size": .int(blockSize), "act_order": .bool(actOrder), "clip_search": .bool(clipSearch), "static_groups": .bool(staticGroups),
                                  "calibration_tokens": .int(windows.reduce(0) { $0 + $1.count }),
                                  "seconds": .double(Date().timeIntervalSince(start)), "tensors": .array(losses)])
        }
        func set(_ id: WeightID, _ q: QuantizedTensor) throws {
            do {
                if case .linear(let lid) = id, case .factorized(let f)? = result.linear(lid) {
                    result = try result.replacing(id, with: .factorized(try f.quantizingDense(q)))
                } else {
                    result = try result.replacing(id, with: .quantized(QuantizedWeight(q)))
                }
            } catch let e as ConfigError {
                throw RecipeError("cptquant: \(e.description)")
            }
        }
        for (u, unit) in units.enumerated() {
            let fi = chosen.bits[u]
            for t in unit.tensors where method != .gptq { try set(t, stored[index[t]!][fi]!) }
        }
        // S's kept values of every targeted factorized weight at the fixed width (outside the allocation).
        var sparseFormat: QuantFormat?
        if let bits = sparseFactorBits {
            let f = try Self.format(bits, groupSize: groupSize, symmetric: symmetric)
            sparseFormat = f
            for t in names {
                guard case .linear(let id) = t, case .factorized(let w)? = result.linear(id) else { continue }
                do {
                    let q = try QuantizedTensor(weights: w.keptValues, shape: [1, w.sparse.mask.nonzeros], format: f, search: method == .search)
                    result = try result.replacing(t, with: .factorized(try w.quantizingSparseValues(q)))
                } catch let e as ConfigError { throw RecipeError("cptquant: \(e.description)") } catch {
                    throw RecipeError("cptquant: 'sparse_factor_bits': the sparse factor of '\(t)' at \(f): \(error)")
                }
            }
        }
        var extras: [String: JSONValue] = [:]
        for (id, f, q) in fixed {
            try set(id, q)
            var entry: [String: JSONValue] = ["format": .string(f.description), "bytes": .int(q.bytes), "weights": .int(q.count),
                                              "float32_bytes": .int(4 * q.count), "bits_per_weight": .double(Double(8 * q.bytes) / Double(q.count)),
                                              "share_of_model_bytes": .double(Double(q.bytes) / Double(result.storageBytes))]
            if id == .embedTokens { entry["tied_lm_head"] = .bool(model.untiedLMHead == nil) }
            if let probe { entry["measured_damage"] = .double(try probe.divergence([id: q.dequantized()], resumeAt: nil)) }
            extras[id.hfName] = .object(entry)
        }

        // Report.
        // A factorized weight's S (values, float32 or at `sparse_factor_bits`, and row indices) is stored beside its D.
        func sparseFactorBytes(_ t: WeightID) -> Int {
            if case .linear(let id) = t, case .factorized(let f)? = result.linear(id) { return f.sparseBytes }
            return 0
        }
        let unitReports: [JSONValue] = units.enumerated().map { u, unit in
            let fi = chosen.bits[u]
            let opt = allocationUnits[u].options.first { $0.bits == chosen.bits[u] }!
            let n = unit.tensors.reduce(0) { $0 + tensors[$1]!.count }
            let sparseBytes = unit.tensors.reduce(0) { $0 + sparseFactorBytes($1) }
            var entry: [String: JSONValue] = [:]
            if sparseBytes > 0 {
                entry["sparse_factor_bytes"] = .int(sparseBytes)
                entry["bytes_with_sparse_factors"] = .int(opt.bytes + sparseBytes)
            }
            return .object(entry.merging(["name": .string(unit.name), "layer": .int(unit.layer), "sensitivity": .double(sensitivity[u]),
                            "bits": .int(formats[fi].bits), "format": .string(formats[fi].description), "bytes": .int(opt.bytes),
                            "weights": .int(n), "bits_per_weight": .double(Double(opt.bytes * 8) / Double(n)),
                            "relative_error": .double(unitError[u][fi]),
                            "measured_damage": measured.map { m in .array(m[u].map { $0.map(JSONValue.double) ?? .null }) } ?? .null]) { a, _ in a })
        }
        var layerSummary: [JSONValue] = []
        for l in Set(units.map(\.layer)).sorted() {
            let members = units.indices.filter { units[$0].layer == l }
            let bytes = members.reduce(0) { sum, u in sum + allocationUnits[u].options.first { $0.bits == chosen.bits[u] }!.bytes }
            let n = members.reduce(0) { a, u in a + units[u].tensors.reduce(0) { $0 + tensors[$1]!.count } }
            layerSummary.append(.object(["layer": .int(l), "sensitivity": .double(members.map { sensitivity[$0] }.reduce(0, +) / Double(members.count)),
                                         "bits": .array(members.map { .int(formats[chosen.bits[$0]].bits) }), "formats": .array(members.map { .string(formats[chosen.bits[$0]].description) }), "bytes": .int(bytes),
                                         "bits_per_weight": .double(Double(bytes * 8) / Double(n))]))
        }
        var diag: [String: JSONValue] = [
            "estimator": .string(estimator.rawValue), "allocation": .string(allocation.rawValue),
            "granularity": .string(granularity.rawValue), "method": .string(method.rawValue), "search_weights": .string(searchWeights.rawValue),
            "group_size": .int(groupSize), "symmetric": .bool(symmetric), "widths": .array(formats.map { .int($0.bits) }),
            "formats": .array(formats.map { .object(["format": .string($0.description), "bits_per_weight": .double($0.bitsPerWeight)]) }),
            "allocated_weights": .int(weights), "bytes": .int(chosen.bytes),
            "bits_per_weight": .double(Double(chosen.bytes * 8) / Double(weights)),
            "estimated_damage": .double(chosen.damage), "optimal": .bool(chosen.optimal), "sensitivity_floor": .double(floor),
            "layers": .array(layerSummary), "units": .array(unitReports),
        ]
        // The targeted weights as stored in the result: the allocated codes and scales (`bytes`), and for
        // factorized weights their S's values and row indices, outside the allocation.
        var storage = (bytes: 0, parameters: 0, elements: 0), sparse = (tensors: 0, values: 0, bytes: 0, denseBytes: 0, denseWeights: 0)
        for t in names {
            guard case .linear(let id) = t, let w = result.linear(id) else { continue }
            storage.bytes += w.storageBytes; storage.parameters += w.parameterCount; storage.elements += w.outFeatures * w.inFeatures
            if case .factorized(let f) = w {
                sparse.tensors += 1; sparse.values += f.sparse.mask.nonzeros; sparse.bytes += f.sparseBytes
                sparse.denseBytes += f.denseBytes; sparse.denseWeights += f.dense.count
            }
        }
        diag["targeted"] = .object([
            "bytes": .int(storage.bytes), "parameters": .int(storage.parameters), "matrix_elements": .int(storage.elements),
            "bits_per_parameter": .double(Double(8 * storage.bytes) / Double(storage.parameters)),
            "bits_per_matrix_element": .double(Double(8 * storage.bytes) / Double(storage.elements)),
        ])
        if sparse.tensors > 0 {
            diag["factorized"] = .object([
                "tensors": .int(sparse.tensors), "dense_factor_weights": .int(sparse.denseWeights), "dense_factor_bytes": .int(sparse.denseBytes),
                "dense_factor_layout": .string("Dᵀ (rank × out), groups of group_size output rows of one atom"),
                "sparse_factor_values": .int(sparse.values), "sparse_factor_bytes": .int(sparse.bytes),
                "sparse_factor_format": .string(sparseFormat?.description ?? "float32"),
                "sparse_factor_storage": .string("\(sparseFormat.map { "\($0) codes and scales in groups of consecutive kept values" } ?? "float32 values") + row indices (1 byte when rank ≤ 256, else 2)"),
            ])
        }
        // Predicted (additive) against measured total damage, with every unit at its chosen width.
        // The chosen allocation is measured on the result's own weights (GPTQ's, with method gptq); the uniform
        // baseline on the stored forms the allocation saw (round to nearest or the search).
        func measuredTotal(_ a: Allocation, withFixed: Bool = false, fromResult: Bool = true) throws -> Double? {
            guard let probe else { return nil }
            var values: [WeightID: [Float]] = [:]
            for (u, unit) in units.enumerated() {
                let fi = a.bits[u]
                for t in unit.tensors {
                    if fromResult, case .linear(let id) = t, let w = result.linear(id) {
                        if case .factorized(let f) = w { values[t] = f.dense.array } else { values[t] = w.dequantized().array }
                    } else {
                        values[t] = Self.storageValues(stored[index[t]!][fi]!, factorized: factorized.contains(t))
                    }
                }
            }
            if withFixed { for x in fixed { values[x.id] = x.q.dequantized() } }
            return try probe.divergence(values, resumeAt: withFixed && !fixed.isEmpty ? nil : 0)
        }
        diag["damage"] = .string(damage.rawValue)
        if let m = try measuredTotal(chosen) {
            diag["predicted_damage"] = .double(chosen.damage)
            diag["measured_damage"] = .double(m)
            if !fixed.isEmpty { diag["measured_damage_with_fixed"] = .double(try measuredTotal(chosen, withFixed: true)!) }
            diag["damage_windows"] = .int(probe!.windows.count); diag["damage_tokens"] = .int(probe!.T)
        }
        if let budget {
            diag["budget_bytes"] = .int(budget)
            if let bitsPerWeight { diag["budget_bits_per_weight"] = .double(bitsPerWeight) }
            if fixedInBudget { diag["fixed_in_budget"] = .object(["bytes": .int(fixedBytes), "weights": .int(fixedWeights), "budget_bytes_with_fixed": .int(budget + fixedBytes)]) }
            if let uniform = try? allocateUniform(allocationUnits, budgetBytes: budget) {
                var entry: [String: JSONValue] = ["bits": .int(uniform.bits.first.map { formats[$0].bits } ?? 0), "format": .string(uniform.bits.first.map { formats[$0].description } ?? ""), "bytes": .int(uniform.bytes),
                                                  "bits_per_weight": .double(Double(uniform.bytes * 8) / Double(weights)),
                                                  "estimated_damage": .double(uniform.damage)]
                if let m = try measuredTotal(uniform, fromResult: false) { entry["predicted_damage"] = .double(uniform.damage); entry["measured_damage"] = .double(m) }
                diag["uniform_baseline"] = .object(entry)
            }
        }
        if !extras.isEmpty { diag["fixed"] = .object(extras) }
        if let gptqReport { diag["gptq"] = gptqReport }
        if let m = moments, estimator == .cmpq { diag["cmpq_samples"] = .int(m.pooledSamples) }
        return (result, .object(diag))
    }
}

// MARK: - Measured damage

extension CPTQuantPass {
    /// The first `count` calibration windows cut to their first `tokens` tokens (all windows share a length).
    static func damageWindows(_ windows: [[Int32]], count: Int, tokens: Int) throws -> [[Int32]] {
        guard windows.count >= count else {
            throw RecipeError("cptquant: 'damage_windows' is \(count), but the recipe draws \(windows.count) calibration windows (raise calibration.samples or lower damage_windows)")
        }
        guard let T = windows.first?.count, T >= 2 else { throw RecipeError("cptquant: measured damage needs calibration windows of at least 2 tokens") }
        return windows.prefix(count).map { Array($0.prefix(Swift.min(tokens, T))) }
    }
}

/// KL(base ‖ variant) of next-token distributions on fixed windows, for variants of a model that differ in a
/// few weights. The base run keeps every window's residual stream entering every sublayer and its log-
/// probabilities; a variant writes its values into a private copy's dense tensors, resumes at a sublayer
/// (or runs from the embedding), and restores the base values bit for bit.
final class DamageProbe {
    let windows: [[Int32]]
    let T: Int, C: Int, V: Int, S: Int
    private let model: DecoderModel
    private let tensors: [WeightID: Tensor]
    private let fwd: ResumableForward
    /// Per window: the saved residuals, (S + 1) × T × C.
    private var saved: [[Float]] = []
    /// Per window: the base's logits, T × V (the KL kernel takes both distributions as logits, in Double inside).
    private var baseLogits: [[Float]] = []

    /// Runs the base over `windows`; throws when its outputs are not finite (the KL kernel would hide a NaN).
    init(model given: DecoderModel, windows: [[Int32]]) throws {
        model = given.copy()  // written into and restored; never the model given
        tensors = CPTQuantPass.denseWeights(model)
        self.windows = windows
        T = windows[0].count; C = model.config.hiddenSize; V = model.config.vocabSize; S = 2 * model.layers.count
        fwd = ResumableForward(model: model, window: T)
        for (w, ids) in windows.enumerated() {
            let logits = fwd.run(ids)
            try requireFiniteOutputs(logits, rows: T, columns: V, stage: "cptquant",
                                     "the base's output on damage window \(w + 1)")
            saved.append(Array(UnsafeBufferPointer(start: fwd.states.data, count: (S + 1) * T * C)))
            baseLogits.append(Array(UnsafeBufferPointer(start: logits, count: T * V)))
        }
    }

    /// Mean over the windows' positions of KL(p_base ‖ p) in nats, p the model with `values` (dense weights by
    /// id, row-major) in place of the base's; resumed at sublayer `s`, or from the embedding when nil (needed
    /// when the embedding changes). Valid for s when no changed weight acts before sublayer s. A damage that is not
    /// finite throws, naming the tensors.
    func divergence(_ values: [WeightID: [Float]], resumeAt s: Int?) throws -> Double {
        var originals: [WeightID: [Float]] = [:]
        for (id, v) in values {
            guard let t = tensors[id], t.count == v.count else { throw RecipeError("cptquant: no dense weight '\(id.hfName)' of \(v.count) values to measure") }
            originals[id] = t.array
            v.withUnsafeBufferPointer { t.data.update(from: $0.baseAddress!, count: $0.count) }
        }
        defer { for (id, v) in originals { v.withUnsafeBufferPointer { tensors[id]!.data.update(from: $0.baseAddress!, count: $0.count) } } }
        let what = values.keys.map { "'\($0.hfName)'" }.sorted().joined(separator: ", ")
        var total = 0.0
        var kl = [Double](repeating: 0, count: T)
        for (w, ids) in windows.enumerated() {
            let logits: UnsafePointer<Float>
            if let s {
                saved[w].withUnsafeBufferPointer { (fwd.states.data + s * T * C).update(from: $0.baseAddress! + s * T * C, count: T * C) }
                logits = fwd.resume(at: s, skip: [])
            } else {
                logits = fwd.run(ids)
            }
            try requireFiniteOutputs(logits, rows: T, columns: V, stage: "cptquant",
                                     "the output with \(what) quantized")
            // The evaluator's kernel (`compress eval --reference`): KL per position, summed in order.
            baseLogits[w].withUnsafeBufferPointer { zp in
                klDivergenceForward(kl: &kl, reverse: nil, reference: zp.baseAddress!, logits: logits, rows: T, columns: V)
            }
            for x in kl { total += x }
        }
        let damage = total / Double(windows.count * T)
        try requireFinite([damage], stage: "cptquant") { _ in
            "the measured damage (mean KL from the base) with \(what) quantized"
        }
        return damage
    }
}

// MARK: - Estimators

/// Calibration statistics for CPTQuant: per linear input column, E[x²]; CMPQ's per-layer scores.
public struct CalibrationMoments: Codable, Sendable {
    /// Tensor name → E[x_k²] over calibration tokens, per input column k.
    public var columns: [String: [Float]]
    /// CMPQ sensitivity per decoder layer: 1 − mean canonical correlation with the other layers' outputs
    /// (empty when not asked for).
    public var cmpq: [Double]
    /// Pooled vectors per layer the correlations were estimated from.
    public var pooledSamples: Int

    public static func compute(model: DecoderModel, windows: [[Int32]], correlations: Bool = true, poolTokens: Int, ccaDims: Int,
                               ridge: Double, progress: (Int, Int) -> Void = { _, _ in }) throws -> CalibrationMoments {
        let obs = MomentsObserver(model: model, pool: correlations ? poolTokens : nil)
        let engine = TransformerDecoder(model: model, window: windows.map(\.count).max() ?? 1)
        for (i, ids) in windows.enumerated() {
            _ = engine.hiddenStates(ids, observer: obs)
            progress(i + 1, windows.count)
        }
        let tokens = Float(windows.reduce(0) { $0 + $1.count })
        var columns: [String: [Float]] = [:]
        for l in model.layers.indices {
            for (kind, sums) in [(LinearKind.q, obs.attnIn[l]), (.k, obs.attnIn[l]), (.v, obs.attnIn[l]), (.o, obs.attnOut[l]),
                                 (.gate, obs.mlpIn[l]), (.up, obs.mlpIn[l]), (.down, obs.mlpAct[l])] where !sums.isEmpty {
                columns[WeightID.linear(LinearID(layer: l, kind: kind)).hfName] = sums.map { Float($0) / tokens }
            }
        }
        guard correlations else { return CalibrationMoments(columns: columns, cmpq: [], pooledSamples: 0) }
        let rows = (obs.pooled.first?.count ?? 0) / model.config.hiddenSize
        guard rows > ccaDims else {
            throw RecipeError("cptquant: CMPQ has \(rows) pooled vectors per layer; it needs more than cca_dims = \(ccaDims) (more calibration samples, or smaller pool_tokens or cca_dims)")
        }
        let reduced = obs.pooled.map { principalScores($0, rows: rows, dimensions: ccaDims) }
        let L = reduced.count
        var corr = [[Double]](repeating: [Double](repeating: 0, count: L), count: L)
        for a in 0..<L {
            for b in (a + 1)..<L {
                let rho = canonicalCorrelations(reduced[a], reduced[b], rows: rows, ridge: ridge)
                corr[a][b] = rho.reduce(0, +) / Double(rho.count)
                corr[b][a] = corr[a][b]
            }
        }
        let cmpq: [Double] = (0..<L).map { a -> Double in
            let others: Double = corr[a].reduce(0, +) - corr[a][a]
            return 1 - others / Double(max(L - 1, 1))
        }
        return CalibrationMoments(columns: columns, cmpq: cmpq, pooledSamples: rows)
    }
}

/// Accumulates Σx² per input column of every linear layer and the pooled outputs of every decoder layer.
final class MomentsObserver: ForwardObserver {
    let L: Int, C: Int
    /// Tokens per pooled vector; nil: no pooling.
    let pool: Int?
    var attnIn: [[Double]], attnOut: [[Double]], mlpIn: [[Double]], mlpAct: [[Double]]
    /// [layer]: pooled output vectors (row-major, samples × C), in Double.
    var pooled: [[Double]]

    init(model: DecoderModel, pool: Int?) {
        let c = model.config
        L = model.layers.count; C = c.hiddenSize; self.pool = pool
        attnIn = model.layers.map { $0.attention == nil ? [] : [Double](repeating: 0, count: c.hiddenSize) }
        attnOut = zip(model.layers, c.blocks).map { $0.attention == nil ? [] : [Double](repeating: 0, count: $1.numAttentionHeads * c.headDim) }
        mlpIn = model.layers.map { $0.mlp == nil ? [] : [Double](repeating: 0, count: c.hiddenSize) }
        mlpAct = zip(model.layers, c.blocks).map { $0.mlp == nil ? [] : [Double](repeating: 0, count: $1.intermediateSize) }
        pooled = [[Double]](repeating: [], count: L)
    }

    static func addSquares(_ acc: inout [Double], _ x: UnsafePointer<Float>, rows: Int) {
        let n = acc.count
        acc.withUnsafeMutableBufferPointer { a in
            for t in 0..<rows { for k in 0..<n { let v = Double(x[t * n + k]); a[k] += v * v } }
        }
    }

    func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int) {
        guard s < 2 * L else { return }
        if s % 2 == 0 { Self.addSquares(&attnIn[s / 2], n, rows: rows) } else { Self.addSquares(&mlpIn[s / 2], n, rows: rows) }
    }
    func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) { Self.addSquares(&attnOut[layer], att, rows: rows) }
    func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) { Self.addSquares(&mlpAct[layer], act, rows: rows) }

    func sublayerInput(_ s: Int, x: UnsafePointer<Float>, rows: Int) {
        // The stream entering sublayer 2(ℓ+1) is the output of layer ℓ.
        guard let pool, s >= 2, s % 2 == 0 else { return }
        let l = s / 2 - 1
        var t0 = 0
        while t0 + pool <= rows {
            var v = [Double](repeating: 0, count: C)
            for t in t0..<(t0 + pool) { for c in 0..<C { v[c] += Double(x[t * C + c]) } }
            pooled[l] += v.map { $0 / Double(pool) }
            t0 += pool
        }
    }
}

extension CPTQuantPass {
    /// PMPQ: calibration perplexity rise when each unit loses `fraction` of every tensor's weights (smallest
    /// magnitudes). The unit's tensors are pruned in place, evaluated from the saved residual stream entering
    /// the unit, and restored bit for bit.
    static func pruningSensitivity(model given: DecoderModel, units: [Unit], fraction: Double, windows: [[Int32]],
                                   progress: (Int, Int) -> Void) -> [Double] {
        // A private copy is pruned and restored, never the model given (models are values).
        let model = given.copy()
        let tensors = denseWeights(model)
        // Indices to zero per tensor: the ⌊fraction · n⌋ smallest |w| (ties by index).
        var prune: [WeightID: [Int32]] = [:]
        for name in Set(units.flatMap(\.tensors)) {
            let w = tensors[name]!
            let k = Int(fraction * Double(w.count))
            let order = (0..<Int32(w.count)).sorted { abs(w[Int($0)]) != abs(w[Int($1)]) ? abs(w[Int($0)]) < abs(w[Int($1)]) : $0 < $1 }
            prune[name] = Array(order.prefix(k))
        }
        let T = windows[0].count, V = model.config.vocabSize
        let fwd = ResumableForward(model: model, window: T)
        var base = 0.0, nll = [Double](repeating: 0, count: units.count)
        for (i, ids) in windows.enumerated() {
            base += windowNLL(fwd.run(ids), ids, vocab: V)
            for (u, unit) in units.enumerated() {
                var saved: [[Float]] = []
                for name in unit.tensors {
                    let w = tensors[name]!
                    saved.append(w.array)
                    for j in prune[name]! { w[Int(j)] = 0 }
                }
                nll[u] += windowNLL(fwd.resume(at: unit.firstSublayer, skip: []), ids, vocab: V)
                for (name, values) in zip(unit.tensors, saved) {
                    values.withUnsafeBufferPointer { tensors[name]!.data.update(from: $0.baseAddress!, count: $0.count) }
                }
            }
            progress(i + 1, windows.count)
        }
        let predicted = Double(windows.count * (T - 1))
        let basePPL = Foundation.exp(base / predicted)
        return nll.map { Foundation.exp($0 / predicted) - basePPL }
    }

    /// TDMPQ: mean over calibration tokens of |x · ∂L/∂x| at each unit's input.
    /// `perTensor`: each unit's score is the sum over its tensors of their own inputs' (sublayer and tensor
    /// granularity); otherwise the residual stream entering the unit's layer (layer granularity).
    static func taylorSensitivity(model: DecoderModel, units: [Unit], windows: [[Int32]], perTensor: Bool, progress: (Int, Int) -> Void) -> [Double] {
        let T = windows[0].count, C = model.config.hiddenSize
        let trainer = Trainer(model: model, batch: 1, window: T, frozen: Set(model.weights.map(\.id)))
        let obs = TaylorObserver(units: units, perTensor: perTensor)
        trainer.backwardObserver = obs
        let loss = LogitLoss(vocab: model.config.vocabSize)
        let dHidden = Tensor(shape: [T, C])
        for (i, ids) in windows.enumerated() {
            trainer.forward(ids)
            dHidden.zero()
            _ = loss.compute(student: trainer, teacher: nil, weights: LogitLossWeights(kl: 0, ce: 1), scale: 1, dHidden: dHidden)
            trainer.backward(dHidden: dHidden.data)
            progress(i + 1, windows.count)
        }
        let tokens = Double(windows.count * T)
        return obs.sums.map { $0 / tokens }
    }
}

/// Σ_t |x_t · dx_t| per unit, from the trainer's backward.
final class TaylorObserver: BackwardObserver {
    let byLayer: [Int: Int], byTensor: [LinearID: Int]
    var sums: [Double]

    init(units: [CPTQuantPass.Unit], perTensor: Bool) {
        byLayer = perTensor ? [:] : Dictionary(uniqueKeysWithValues: units.enumerated().map { ($1.layer, $0) })
        byTensor = perTensor ? Dictionary(uniqueKeysWithValues: units.enumerated().flatMap { u, unit in
            unit.tensors.compactMap { t -> (LinearID, Int)? in if case .linear(let id) = t { return (id, u) }; return nil }
        }) : [:]
        sums = [Double](repeating: 0, count: units.count)
    }

    static func sumAbsDot(_ x: UnsafePointer<Float>, _ dx: UnsafePointer<Float>, rows: Int, width: Int) -> Double {
        var total = 0.0
        for t in 0..<rows {
            var d = 0.0
            for k in 0..<width { d += Double(x[t * width + k]) * Double(dx[t * width + k]) }
            total += abs(d)
        }
        return total
    }

    func linearInput(_ id: LinearID, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, features: Int) {
        if let u = byTensor[id] { sums[u] += Self.sumAbsDot(x, dx, rows: rows, width: features) }
    }
    func layerInput(_ layer: Int, x: UnsafePointer<Float>, dx: UnsafePointer<Float>, rows: Int, channels: Int) {
        if let u = byLayer[layer] { sums[u] += Self.sumAbsDot(x, dx, rows: rows, width: channels) }
    }
}
