// CPTQuant's allocation phase: each unit's options (bytes and damage per format), the fixed-width embedding and
// LM head, the budget, and the chosen format per unit (Quantization/Allocation.swift).

import Diagnostics
import Foundation
import Model
import Quantization
import Recipes
import TensorCore

/// A weight stored at a fixed width outside the allocation (the embedding, an untied LM head).
struct CPTQuantFixedTensor {
    var id: WeightID
    var format: QuantFormat
    var q: QuantizedTensor
}

/// The allocation: the units' options, the budget and the chosen format per unit.
struct CPTQuantAllocation {
    /// Per unit: its options (format index, bytes, damage).
    var units: [AllocationUnit]
    /// The allocated (targeted) weights.
    var weights: Int
    /// Damage weights below 1 % of the largest sensitivity are raised to it (1 when no sensitivity is positive).
    var floor: Double
    var fixed: [CPTQuantFixedTensor]
    var fixedWeights: Int
    var fixedBytes: Int
    /// The bytes the allocation may use (nil: `clusters`, no budget).
    var budget: Int?
    var chosen: Allocation

    /// The bytes of unit `u` at its chosen format.
    func chosenBytes(_ u: Int) -> Int { units[u].options.first { $0.bits == chosen.bits[u] }!.bytes }
}

extension CPTQuantPass {
    /// The units' options (damage Σ s̃_u · e_u(b), or measured KL), the fixed-width embedding / LM head, the
    /// budget (less the fixed weights with `fixed_in_budget`) and the allocation. Errors name the tensor or budget.
    func allocate(_ model: DecoderModel, _ targets: CPTQuantTargets, _ analysis: CPTQuantAnalysis,
                  _ evaluation: CPTQuantEvaluation, fixed: [CPTQuantFixedTensor], budget: Int?,
                  measured: [[Double?]]?) throws -> CPTQuantAllocation {
        let sensitivity = analysis.sensitivity, formats = evaluation.formats
        // Damage weights: sensitivities below 1 % of the largest (PMPQ's can be negative: pruning noise) are
        // raised to that floor, so that no unit's error is free or rewarded.
        let top = sensitivity.max() ?? 0
        let floor = top > 0 ? 0.01 * top : 1
        let weightOf = sensitivity.map { top > 0 ? Swift.max($0, floor) : 1 }
        let allocationUnits = try targets.units.enumerated().map { u, unit in
            do {
                let options = formats.indices.map { fi -> (bits: Int, option: (bytes: Int, damage: Double)?) in
                    guard unit.tensors.allSatisfy({ evaluation.form($0, fi) != nil }) else { return (fi, nil) }
                    let bytes = unit.tensors.reduce(0) { $0 + evaluation.form($1, fi)!.bytes }
                    let damage = measured.map { $0[u][fi] ?? .infinity } ?? weightOf[u] * evaluation.unitError[u][fi]
                    return (fi, (bytes, damage))
                }
                let why = evaluation.unrepresentable.filter { r in unit.tensors.contains { r.hasPrefix("'\($0)'") } }
                return try AllocationUnit(name: unit.name, candidates: options, why: why)
            } catch { throw error.adding(place: "cptquant") }
        }
        let weights = targets.weights
        let fixedWeights = fixed.reduce(0) { $0 + $1.q.count }, fixedBytes = fixed.reduce(0) { $0 + $1.q.bytes }
        let chosen: Allocation
        do {
            switch allocation {
            case .budget: chosen = try allocateToBudget(allocationUnits, budgetBytes: budget!)
            case .uniform: chosen = try allocateUniform(allocationUnits, budgetBytes: budget!)
            case .clusters:
                chosen = allocateByClusters(allocationUnits, sensitivities: sensitivity, ladder: Array(formats.indices))
            }
        } catch { throw error.adding(place: "cptquant") }
        return CPTQuantAllocation(units: allocationUnits, weights: weights, floor: floor, fixed: fixed,
                                  fixedWeights: fixedWeights, fixedBytes: fixedBytes, budget: budget, chosen: chosen)
    }

    /// The bytes the allocation may use: the recipe's budget, less the fixed weights' bytes with
    /// `fixed_in_budget`; nil for `clusters` (no budget). Throws when the fixed weights alone exceed the budget.
    func allocationBudget(_ targets: CPTQuantTargets, fixed: [CPTQuantFixedTensor]) throws -> Int? {
        let weights = targets.weights
        let fixedWeights = fixed.reduce(0) { $0 + $1.q.count }, fixedBytes = fixed.reduce(0) { $0 + $1.q.bytes }
        guard fixedInBudget else {
            return budgetBytes ?? bitsPerWeight.map { Int(($0 * Double(weights) / 8).rounded(.down)) }
        }
        // The budget covers the allocated and the fixed weights; the allocation gets what is left.
        let total = budgetBytes ?? bitsPerWeight.map { Int(($0 * Double(weights + fixedWeights) / 8).rounded(.down)) }!
        guard total > fixedBytes else {
            throw RecipeError("cptquant: the budget of \(total) bytes does not cover the fixed-width embedding / "
                + "LM head (\(fixedBytes) bytes)")
        }
        return total - fixedBytes
    }

    /// The embedding and LM head at their fixed widths (a tied head is the embedding: one copy).
    func fixedTensors(_ model: DecoderModel, _ tensors: [WeightID: Tensor]) throws -> [CPTQuantFixedTensor] {
        if lmHeadBits != nil && model.untiedLMHead == nil {
            throw RecipeError("cptquant: 'lm_head': this model's LM head is tied to the embedding (one copy); set its "
                + "width with 'embedding'")
        }
        var fixed: [CPTQuantFixedTensor] = []
        for (id, bits) in [(WeightID.embedTokens, embeddingBits), (.lmHead, lmHeadBits)] {
            guard let bits, let w = tensors[id] else { continue }
            let f = try Self.format(bits, groupSize: groupSize, symmetric: embeddingSymmetric ?? symmetric)
            guard w.shape[1] % f.groupSize == 0 else {
                throw RecipeError("cptquant: '\(id.hfName)' has \(w.shape[1]) columns, not a whole number of groups "
                    + "of \(groupSize)")
            }
            do {
                fixed.append(CPTQuantFixedTensor(id: id, format: f,
                                                 q: try QuantizedTensor(weights: w.array, shape: w.shape, format: f)))
            } catch {
                throw RecipeError("cptquant: '\(id.hfName)' at \(f): \(error)")
            }
        }
        return fixed
    }
}
