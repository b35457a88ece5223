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
// - `allocation: "uniform"` (with estimated damage) quantizes the table at the chosen format only: the format is
//   the widest whose bytes fit the budget (bytes do not depend on the values; a narrower one is tried only when a
//   tensor cannot be stored at it), so the other widths' table entries would change nothing. With `method: gptq`
//   the table then only gives bytes and the reported e_u(b), by round to nearest, and the calibration moments
//   are not computed (a forward over every calibration window, which GPTQ's own layer-wise pass does again and
//   takes its E[x²] from). GPTQ's result is the same; the report's per-unit relative error is round to nearest's.
//   (ours; issue 29)
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

    /// The recipe's `estimator`: CMPQ (correlation), PMPQ (pruning), TDMPQ (Taylor), or none (uniform or measured).
    public enum Estimator: String, CaseIterable, Sendable { case cmpq, pmpq, tdmpq, none }
    /// The recipe's `allocation`: a budget met by the knapsack, the paper's clusters, or one uniform format.
    public enum AllocationMode: String, CaseIterable, Sendable { case budget, clusters, uniform }
    /// The recipe's `granularity`: one allocation unit per decoder layer, per sublayer, or per tensor.
    public enum Granularity: String, CaseIterable, Sendable { case layer, sublayer, tensor }
    /// The recipe's `method`: round to nearest, the clipping search weighted by E[x²], or GPTQ.
    public enum Method: String, CaseIterable, Sendable { case rtn, search, gptq }
    /// What the budget allocation minimizes: Σ s̃_u · e_u(b) (`estimated`) or Σ measured KL (`measured`).
    public enum Damage: String, CaseIterable, Sendable { case estimated, measured }

    /// `estimator` (default cmpq).
    public var estimator = Estimator.cmpq
    /// `allocation` (default budget).
    public var allocation = AllocationMode.budget
    /// `granularity` (default layer).
    public var granularity = Granularity.layer
    /// `method` (default search).
    public var method = Method.search
    /// `bits_per_weight`: the budget as average storage bits per allocated weight, scales included.
    public var bitsPerWeight: Double?
    /// `bytes`: the budget as the allocated tensors' storage bytes.
    public var budgetBytes: Int?
    /// `widths`: the candidate widths at `group_size` and `symmetric` (when `formats` is not given).
    public var widths = [2, 3, 4, 5, 6, 8]
    /// The allocation's candidate formats, narrowest first: `widths` at `group_size` and `symmetric`, or the
    /// recipe's `formats` (any mix of widths, group sizes, symmetric and asymmetric), sorted by bits per weight.
    /// An allocation's `bits` entries are indices into this list.
    public internal(set) var candidates: [QuantFormat] = []
    /// Whether the candidates came from `formats` (reports and cache keys name them) rather than `widths`.
    public internal(set) var explicitFormats = false
    /// `group_size`: weights per scale (default 64, or the `formats`' common group size).
    public var groupSize = 64
    /// `symmetric`: symmetric codes (no zero point) for the `widths` ladder and S's values.
    public var symmetric = false
    /// `targets`: the decoder linear weights quantized, in the order given (default all seven;
    /// `StrictObject.linearKinds`).
    public var targets = LinearKind.allCases
    /// `exclude_layers`: decoder layers left as they are.
    public var excludeLayers: [Int] = []
    /// `embedding`: a fixed width for the embedding (and a tied LM head); nil: float32.
    public var embeddingBits: Int?
    /// `lm_head`: a fixed width for an untied LM head; nil: float32.
    public var lmHeadBits: Int?
    /// Symmetric codes for the embedding / LM head (nil: as `symmetric`), e.g. an asymmetric decoder with a
    /// symmetric 8-bit embedding (GGUF Q5_1 and Q8_0, as llama.cpp's mixes).
    public var embeddingSymmetric: Bool?
    /// A fixed width for the kept values of factorized weights' S (nil: float32).
    public var sparseFactorBits: Int?
    /// `prune_fraction`: PMPQ's share of each tensor's weights zeroed (smallest magnitudes).
    public var pruneFraction = 0.3
    /// `pool_tokens`: CMPQ's positions per mean-pooled vector.
    public var poolTokens = 64
    /// `cca_dims`: CMPQ's principal directions kept before CCA (SVCCA).
    public var ccaDims = 16
    /// `ridge`: CMPQ's ridge on the CCA covariances.
    public var ridge = 1e-3
    /// `damage`: estimated (Σ s̃_u · e_u(b)) or measured (KL per unit and format).
    public var damage = Damage.estimated
    /// `damage_windows`: calibration windows the measured damage uses.
    public var damageWindows = 4
    /// PMPQ and TDMPQ: the first N calibration windows (nil: all of them).
    public var estimatorWindows: Int?
    /// `damage_tokens`: tokens of each damage window (its first ones).
    public var damageTokens = 128
    /// `fixed_in_budget`: count the fixed-width embedding / LM head in the budget.
    public var fixedInBudget = false
    /// `damp`: GPTQ's damping, a fraction of the Hessian's mean diagonal added to it.
    public var damp = 0.1
    /// `block_size`: GPTQ's columns per lazy-update block.
    public var blockSize = 128
    /// `act_order`: GPTQ's columns in order of decreasing Hessian diagonal.
    public var actOrder = true
    /// `clip_search`: GPTQ's group grids by the clipping search (false: round to nearest's min-max).
    public var clipSearch = true
    /// `static_groups`: GPTQ's grids from the original weights, before its updates.
    public var staticGroups = false
    /// `hessian_precision`: GPTQ's Hessian Gram products in `fp32` (the default) or from bf16-rounded inputs
    /// (Passes/Layerwise.swift).
    public var hessianPrecision = Precision.fp32
    /// The search's error weights: E[x_k²] (`activation`), or E[x_k²]·√(σ² + w_k²) (`activation_magnitude`,
    /// llama.cpp's imatrix rule; σ² the row's mean w²).
    public enum SearchWeights: String, CaseIterable, Sendable {
        case activation, activationMagnitude = "activation_magnitude"
    }
    /// `search_weights` (method search only; default activation).
    public var searchWeights = SearchWeights.activation

    /// Reads the stage's settings (CPTQuantSettings.swift); unknown keys, out-of-range values and settings that
    /// contradict each other throw `RecipeError` naming the key.
    public init(config s: StrictObject) throws {
        try decode(s)
    }

    /// Runs the phases in order: check the settings against the model, analyse (moments and sensitivities,
    /// cached), evaluate every tensor at every format (and measure the damage), allocate, apply, report.
    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let targets = try check(model: model, windows: context.calibration)
        let fixed = try fixedTensors(model, targets.tensors)
        let budget = try allocationBudget(targets, fixed: fixed)
        let analysis = try analyse(model, targets, context: context)
        let evaluation = try evaluate(targets, moments: analysis.moments, uniformBudget: uniformTable ? budget : nil,
                                      context: context)
        let damage = try measureDamage(model, targets, evaluation, context: context)
        let allocation = try allocate(model, targets, analysis, evaluation, fixed: fixed, budget: budget,
                                      measured: damage?.measured)
        let application = try apply(model, targets, evaluation, allocation, context: context)
        let report = try report(CPTQuantRun(model: model, targets: targets, analysis: analysis, evaluation: evaluation,
                                            damage: damage, allocation: allocation, application: application))
        return (application.model, try JSONValue(encoding: report))
    }
}
