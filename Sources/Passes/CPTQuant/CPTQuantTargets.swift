// CPTQuant's allocation units and the checks of the settings against the model (before any calibration work).

import Diagnostics
import Foundation
import Model
import Quantization
import Recipes
import TensorCore

/// The tensors CPTQuant quantizes in one model, checked against the settings.
struct CPTQuantTargets {
    /// The allocation units, in layer order.
    var units: [CPTQuantPass.Unit]
    /// The float32 tensor quantized for every matrix weight (`CPTQuantPass.denseWeights`).
    var tensors: [WeightID: Tensor]
    /// The weights whose unit tensor is a factorized weight's D.
    var factorized: Set<WeightID>
    /// The masks of the sparse targets (their pruned weights stay exactly 0).
    var masks: [LinearID: SparsityMask]
    /// Every unit's tensors, unit after unit.
    var names: [WeightID] { units.flatMap(\.tensors) }
    /// The allocated weights: every unit tensor's elements.
    var weights: Int { names.reduce(0) { $0 + tensors[$1]!.count } }
}

extension CPTQuantPass {
    /// The distinct group sizes of the candidate integer formats (each must divide every targeted tensor's
    /// groups' axis).
    var candidateGroupSizes: [Int] { Set(candidates.filter { !$0.isFloat16 }.map(\.groupSize)).sorted() }

    /// The format `bits` at the group size and symmetry; an impossible one throws `RecipeError` at `location`.
    static func format(_ bits: Int, groupSize: Int, symmetric: Bool,
                       at location: String = "cptquant") throws -> QuantFormat {
        do {
            return try QuantFormat.width(bits, groupSize: groupSize, symmetric: symmetric)
        } catch { throw error.adding(place: location) }
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
        guard factorized else { return (w.array, w.shape) }
        return (FactorizedWeight.transpose(w.array, rows: w.shape[0], cols: w.shape[1]), [w.shape[1], w.shape[0]])
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

    /// The allocation units of `model` at the stage's granularity; throws when `exclude_layers` names a layer
    /// the model lacks or no tensor is targeted.
    func units(_ model: DecoderModel) throws -> [Unit] {
        let L = model.layers.count
        if let bad = excludeLayers.first(where: { $0 >= L }) {
            throw RecipeError("cptquant: 'exclude_layers': layer \(bad) outside 0..<\(L)")
        }
        var out: [Unit] = []
        for l in 0..<L where !excludeLayers.contains(l) {
            let layer = model.layers[l]
            var names: [(WeightID, Int)] = []
            for k in targets {
                if k.isAttention ? layer.attention == nil : layer.mlp == nil { continue }
                names.append((.linear(LinearID(layer: l, kind: k)), k.isAttention ? 2 * l : 2 * l + 1))
            }
            guard !names.isEmpty else { continue }
            switch granularity {
            case .layer:
                out.append(Unit(name: "layer \(l)", layer: l, tensors: names.map(\.0),
                                firstSublayer: names.map(\.1).min()!))
            case .sublayer:
                for sub in [2 * l, 2 * l + 1] {
                    let members = names.filter { $0.1 == sub }.map(\.0)
                    let name = "layer \(l) \(sub % 2 == 0 ? "attention" : "mlp")"
                    if !members.isEmpty { out.append(Unit(name: name, layer: l, tensors: members, firstSublayer: sub)) }
                }
            case .tensor:
                out += names.map { Unit(name: $0.0.hfName, layer: l, tensors: [$0.0], firstSublayer: $0.1) }
            }
        }
        guard !out.isEmpty else {
            throw RecipeError("cptquant: no tensor of the model matches 'targets' outside 'exclude_layers'")
        }
        return out
    }

    /// The targeted tensors of `model`, checked against the settings and the calibration `windows` before any
    /// work: group sizes dividing every tensor's grouped axis, factorized weights not quantized already and S's
    /// values in whole groups, sparse weights only on symmetric grids, windows present (and of one length for
    /// GPTQ). Throws `RecipeError` naming the tensor and key. Run's first step, not `preflight`: that is called
    /// only before the first stage that changes the model, and wraps its errors with the base's path.
    func check(model: DecoderModel, windows: [[Int32]]) throws -> CPTQuantTargets {
        let units = try units(model)
        let tensors = Self.denseWeights(model)
        let factorized = Self.factorizedIDs(model)
        for u in units { for t in u.tensors { try checkGroups(t, model: model, tensors: tensors) } }
        if sparseFactorBits != nil, !units.contains(where: { $0.tensors.contains { factorized.contains($0) } }) {
            throw RecipeError("cptquant: 'sparse_factor_bits' quantizes factorized weights' S, but no targeted weight "
                + "is factorized")
        }
        var masks: [LinearID: SparsityMask] = [:]
        for u in units { for t in u.tensors {
            guard case .linear(let id) = t, case .sparse(let s)? = model.linear(id) else { continue }
            guard candidates.allSatisfy(\.symmetric) else {
                throw RecipeError("cptquant: '\(t)' is sparse (\(s.mask.pattern)); its pruned weights stay exactly 0 "
                    + "only on a symmetric grid: set 'symmetric': true"
                    + "\(explicitFormats ? " (every one of 'formats' must be _sym or f16)" : "")")
            }
            masks[id] = s.mask
        } }
        guard !windows.isEmpty || (estimator == .none && method == .rtn) else {
            throw RecipeError("cptquant: needs calibration windows")
        }
        if method == .gptq, let T = windows.first?.count, !windows.allSatisfy({ $0.count == T }) {
            throw RecipeError("cptquant: GPTQ needs calibration windows of one length")
        }
        return CPTQuantTargets(units: units, tensors: tensors, factorized: factorized, masks: masks)
    }

    /// Whether every candidate group size divides tensor `t`'s grouped axis (a factor D's output rows, S's kept
    /// values with `sparse_factor_bits`, a matrix's input columns).
    private func checkGroups(_ t: WeightID, model: DecoderModel, tensors: [WeightID: Tensor]) throws {
        if case .linear(let id) = t, case .factorized(let f)? = model.linear(id) {
            guard !f.isQuantized else {
                throw RecipeError("cptquant: '\(t)' is factorized with a factor already quantized; it cannot be "
                    + "quantized again")
            }
            for G in candidateGroupSizes where f.dense.shape[0] % G != 0 {
                throw RecipeError("cptquant: '\(t)' is factorized (D · S, rank \(f.rank)); its dense factor D is "
                    + "quantized in groups of 'group_size' consecutive output rows of one atom (Dᵀ grouped along the "
                    + "output), and its \(f.dense.shape[0]) output rows are not a whole number of groups of \(G)")
            }
            guard sparseFactorBits == nil || sparseFactorBits == 16 || f.sparse.mask.nonzeros % groupSize == 0 else {
                throw RecipeError("cptquant: 'sparse_factor_bits': the \(f.sparse.mask.nonzeros) kept values of the "
                    + "sparse factor of '\(t)' are not a whole number of groups of \(groupSize)")
            }
            return
        }
        for G in candidateGroupSizes where tensors[t]!.shape[1] % G != 0 {
            throw RecipeError("cptquant: tensor '\(t)' has \(tensors[t]!.shape[1]) input columns, not a whole number "
                + "of groups of \(G)")
        }
    }
}
