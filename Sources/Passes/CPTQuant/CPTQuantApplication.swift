// CPTQuant's application phase: the chosen formats written into a new model (the stored forms, or GPTQ at the
// chosen formats through Layerwise), S's values at `sparse_factor_bits`, and the fixed-width embedding / LM head.

import Diagnostics
import Foundation
import Model
import Quantization
import Recipes
import TensorCore

/// The quantized model and what applying the allocation reports.
struct CPTQuantApplication {
    var model: DecoderModel
    /// With `method: gptq`: its settings and per-tensor losses.
    var gptq: CPTQuantReport.GPTQ?
    /// The format of factorized weights' S values (nil: float32).
    var sparseFormat: QuantFormat?
    /// Per fixed tensor (in `CPTQuantAllocation.fixed` order): the model's storage bytes once it was written.
    var storageBytesAfterFixed: [Int]
}

extension CPTQuantPass {
    /// The quantized model: the packed codes are its weights. GPTQ runs layer by layer at the chosen formats
    /// (on the already-quantized layers' outputs); otherwise each tensor takes its stored form at its unit's
    /// format. Then S's values at their fixed width, then the embedding / LM head.
    func apply(_ model: DecoderModel, _ targets: CPTQuantTargets, _ evaluation: CPTQuantEvaluation,
               _ allocation: CPTQuantAllocation, context: PassContext) throws -> CPTQuantApplication {
        var result = model
        var gptqReport: CPTQuantReport.GPTQ?
        let chosen = allocation.chosen
        if method == .gptq {
            (result, gptqReport) = try applyGPTQ(model, targets, evaluation, chosen, context: context)
        }
        func set(_ id: WeightID, _ q: QuantizedTensor) throws {
            do {
                if case .linear(let lid) = id, case .factorized(let f)? = result.linear(lid) {
                    result = try result.replacing(id, with: .factorized(try f.quantizingDense(q)))
                } else {
                    result = try result.replacing(id, with: .quantized(QuantizedWeight(q)))
                }
            } catch { throw error.adding(ErrorContext(tensor: id.hfName), place: "cptquant") }
        }
        for (u, unit) in targets.units.enumerated() {
            let fi = chosen.bits[u]
            for t in unit.tensors where method != .gptq { try set(t, evaluation.form(t, fi)!) }
        }
        // S's kept values of every targeted factorized weight at the fixed width (outside the allocation).
        var sparseFormat: QuantFormat?
        if let bits = sparseFactorBits {
            let f = try Self.format(bits, groupSize: groupSize, symmetric: symmetric)
            sparseFormat = f
            for t in targets.names {
                guard case .linear(let id) = t, case .factorized(let w)? = result.linear(id) else { continue }
                let q: QuantizedTensor
                do {
                    q = try QuantizedTensor(weights: w.keptValues, shape: [1, w.sparse.mask.nonzeros], format: f,
                                            search: method == .search)
                } catch {
                    throw error.adding(ErrorContext(key: "sparse_factor_bits", tensor: t.hfName),
                                       place: "cptquant: 'sparse_factor_bits': the sparse factor of '\(t)' at \(f)")
                }
                do { result = try result.replacing(t, with: .factorized(try w.quantizingSparseValues(q))) } catch {
                    throw error.adding(ErrorContext(tensor: t.hfName), place: "cptquant")
                }
            }
        }
        var storageBytes: [Int] = []
        for x in allocation.fixed {
            try set(x.id, x.q)
            storageBytes.append(result.storageBytes)
        }
        return CPTQuantApplication(model: result, gptq: gptqReport, sparseFormat: sparseFormat,
                                   storageBytesAfterFixed: storageBytes)
    }

    /// GPTQ at the allocated formats, layer by layer on the already-quantized layers' outputs (Passes/GPTQ.swift);
    /// a factorized weight's D with the Hessian of its input S·x.
    func applyGPTQ(_ model: DecoderModel, _ targets: CPTQuantTargets, _ evaluation: CPTQuantEvaluation,
                   _ chosen: Allocation, context: PassContext) throws -> (DecoderModel, CPTQuantReport.GPTQ) {
        let windows = context.calibration
        var formatOf: [LinearID: QuantFormat] = [:]
        for (u, unit) in targets.units.enumerated() {
            for t in unit.tensors { if case .linear(let id) = t { formatOf[id] = evaluation.formats[chosen.bits[u]] } }
        }
        let start = Date()
        var losses: [CPTQuantReport.GPTQ.Tensor] = []
        var timing = LayerwiseTiming()
        let result = try Layerwise.run(model: model, windows: windows, targets: Set(formatOf.keys.map(\.kind)),
                                       fullHessian: true, hessianPrecision: hessianPrecision, timing: &timing,
                                       progress: context.progress) { id, weight, input in
            guard let f = formatOf[id] else { return weight }
            do {
                if case .factorized(let fw) = weight {
                    guard !staticGroups else {
                        throw RecipeError("'static_groups' is for dense and sparse weights; a factorized weight's D "
                            + "takes its grids column by column from its current values")
                    }
                    // D's input is S·x: H_D = S·H·Sᵀ; D's groups run along the output (GPTQ.swift).
                    let hessian = GPTQ.factorHessian(input.hessian(), sparse: fw.sparse)
                    let factor = try HessianFactorization(hessian: hessian, features: fw.rank, damp: damp,
                                                          actOrder: actOrder)
                    let (q, loss, _) = try GPTQ.quantizeOutputGroups(fw.dense, factor: factor, format: f,
                                                                     clipSearch: clipSearch)
                    losses.append(.init(name: WeightID.linear(id).hfName, format: f.description, obsLoss: loss,
                                        factorized: true))
                    return .factorized(try fw.quantizingDense(q))
                }
                let factor = try input.factorization(damp: damp, actOrder: actOrder)
                let importance = clipSearch ? input.squares.map { Float($0 / Double(max(input.tokens, 1))) } : nil
                let (q, loss) = try GPTQ.quantize(weight.denseView!, factor: factor, format: f, blockSize: blockSize,
                                                  importance: importance, keep: targets.masks[id],
                                                  staticGroups: staticGroups)
                losses.append(.init(name: WeightID.linear(id).hfName, format: f.description, obsLoss: loss))
                return .quantized(QuantizedWeight(q))
            } catch {
                throw error.adding(ErrorContext(tensor: WeightID.linear(id).hfName),
                                   place: "cptquant: GPTQ of '\(id)' at \(f)")
            }
        }
        let report = CPTQuantReport.GPTQ(damp: damp, blockSize: blockSize, actOrder: actOrder, clipSearch: clipSearch,
                                         staticGroups: staticGroups, hessianPrecision: hessianPrecision.rawValue,
                                         calibrationTokens: windows.reduce(0) { $0 + $1.count },
                                         seconds: Date().timeIntervalSince(start), timing: timing, tensors: losses)
        return (result, report)
    }
}
