// CPTQuant's report: what was allocated and stored, per unit and layer, the budget, the damage (estimated,
// predicted and measured) and GPTQ's losses; encoded for the runner by `JSONValue(encoding:)` (snake-case keys).

import Foundation
import Model
import Quantization
import Recipes

/// The diagnostics of a CPTQuant run. Keys are the properties in snake case; optionals that are nil are left out,
/// except a unit's `measured_damage`, which is null without measured damage.
struct CPTQuantReport: Codable {
    /// One candidate format.
    struct Format: Codable {
        var format: String
        var bitsPerWeight: Double
    }
    /// One allocation unit at its chosen format.
    struct Unit: Codable {
        var name: String
        var layer: Int
        var sensitivity: Double
        var bits: Int
        var format: String
        /// The chosen format's bytes (codes and scales; D's for a factorized weight).
        var bytes: Int
        var weights: Int
        var bitsPerWeight: Double
        /// Σ ‖W − Q(W)‖² / Σ ‖W‖² at the chosen format.
        var relativeError: Double
        /// KL from the base per candidate format (null entries: formats that cannot store the unit); null without
        /// measured damage.
        var measuredDamage: Nullable<[Double?]>
        /// Factorized weights' S (values and row indices).
        var sparseFactorBytes: Int?
        var bytesWithSparseFactors: Int?
    }
    /// The units of one decoder layer.
    struct Layer: Codable {
        var layer: Int
        /// The mean of its units' sensitivities.
        var sensitivity: Double
        var bits: [Int]
        var formats: [String]
        var bytes: Int
        var bitsPerWeight: Double
    }
    /// The targeted weights as stored in the result.
    struct Targeted: Codable {
        var bytes: Int
        var parameters: Int
        var matrixElements: Int
        var bitsPerParameter: Double
        var bitsPerMatrixElement: Double
    }
    /// The factorized targets: D's codes and S's values and indices.
    struct Factorized: Codable {
        var tensors: Int
        var denseFactorWeights: Int
        var denseFactorBytes: Int
        var denseFactorLayout: String
        var sparseFactorValues: Int
        var sparseFactorBytes: Int
        var sparseFactorFormat: String
        var sparseFactorStorage: String
    }
    /// The fixed weights counted in the budget.
    struct FixedInBudget: Codable {
        var bytes: Int
        var weights: Int
        var budgetBytesWithFixed: Int
    }
    /// Every unit at the one format that meets the same budget.
    struct UniformBaseline: Codable {
        var bits: Int
        var format: String
        var bytes: Int
        var bitsPerWeight: Double
        var estimatedDamage: Double
        var predictedDamage: Double?
        var measuredDamage: Double?
    }
    /// The embedding or LM head at its fixed width.
    struct Fixed: Codable {
        var format: String
        var bytes: Int
        var weights: Int
        var float32Bytes: Int
        var bitsPerWeight: Double
        /// Its bytes over the model's storage bytes once it was written.
        var shareOfModelBytes: Double
        /// The embedding only: whether the LM head is this copy.
        var tiedLmHead: Bool?
        var measuredDamage: Double?
    }
    /// GPTQ's settings and losses.
    struct GPTQ: Codable {
        /// One quantized tensor: its format and the loss GPTQ reports for it (Passes/GPTQ.swift).
        struct Tensor: Codable {
            var name: String
            var format: String
            var obsLoss: Double
            var factorized: Bool?
        }
        var damp: Double
        var blockSize: Int
        var actOrder: Bool
        var clipSearch: Bool
        var staticGroups: Bool
        var hessianPrecision: String
        var calibrationTokens: Int
        var seconds: Double
        /// Where the time went: calibration forward, Hessians, solves.
        var timing: LayerwiseTiming
        var tensors: [Tensor]
    }

    var estimator: String
    var allocation: String
    var granularity: String
    var method: String
    var searchWeights: String
    var groupSize: Int
    var symmetric: Bool
    var widths: [Int]
    var formats: [Format]
    var allocatedWeights: Int
    var bytes: Int
    var bitsPerWeight: Double
    var estimatedDamage: Double
    var optimal: Bool
    var sensitivityFloor: Double
    var layers: [Layer]
    var units: [Unit]
    var targeted: Targeted
    var factorized: Factorized?
    /// "estimated" or "measured".
    var damage: String
    /// Measured damage only: Σ_u D_u(b_u), and the KL measured with every unit at its chosen format.
    var predictedDamage: Double?
    var measuredDamage: Double?
    var measuredDamageWithFixed: Double?
    var damageWindows: Int?
    var damageTokens: Int?
    var budgetBytes: Int?
    var budgetBitsPerWeight: Double?
    var fixedInBudget: FixedInBudget?
    var uniformBaseline: UniformBaseline?
    /// By weight name (dictionary keys are written as they are).
    var fixed: [String: Fixed]?
    var gptq: GPTQ?
    var cmpqSamples: Int?
}

/// Everything a CPTQuant run found and did, phase by phase, for its report.
struct CPTQuantRun {
    var model: DecoderModel
    var targets: CPTQuantTargets
    var analysis: CPTQuantAnalysis
    var evaluation: CPTQuantEvaluation
    var damage: CPTQuantMeasuredDamage?
    var allocation: CPTQuantAllocation
    var application: CPTQuantApplication
}

extension CPTQuantPass {
    /// The report of a run. Measured damage is measured here (the fixed weights' and the totals); a non-finite
    /// one throws.
    func report(_ r: CPTQuantRun) throws -> CPTQuantReport {
        let formats = r.evaluation.formats, a = r.allocation, chosen = a.chosen, result = r.application.model
        // Measured with the probe first (the fixed weights', as each was written), then the totals.
        let fixed = try fixedReports(r)
        var report = CPTQuantReport(
            estimator: estimator.rawValue, allocation: allocation.rawValue, granularity: granularity.rawValue,
            method: method.rawValue, searchWeights: searchWeights.rawValue, groupSize: groupSize, symmetric: symmetric,
            widths: formats.map(\.bits),
            formats: formats.map { .init(format: $0.description, bitsPerWeight: $0.bitsPerWeight) },
            allocatedWeights: a.weights, bytes: chosen.bytes,
            bitsPerWeight: Double(chosen.bytes * 8) / Double(a.weights), estimatedDamage: chosen.damage,
            optimal: chosen.optimal, sensitivityFloor: a.floor, layers: layerReports(r), units: unitReports(r),
            targeted: targetedReport(r.targets, result), factorized: factorizedReport(r.targets, r.application),
            damage: damage.rawValue)
        if let m = try measuredTotal(r, chosen) {
            report.predictedDamage = chosen.damage
            report.measuredDamage = m
            if !a.fixed.isEmpty { report.measuredDamageWithFixed = try measuredTotal(r, chosen, withFixed: true)! }
            report.damageWindows = r.damage!.probe.windows.count; report.damageTokens = r.damage!.probe.T
        }
        if let budget = a.budget {
            report.budgetBytes = budget
            report.budgetBitsPerWeight = bitsPerWeight
            if fixedInBudget {
                report.fixedInBudget = .init(bytes: a.fixedBytes, weights: a.fixedWeights,
                                             budgetBytesWithFixed: budget + a.fixedBytes)
            }
            if let uniform = try? allocateUniform(a.units, budgetBytes: budget) {
                var entry = CPTQuantReport.UniformBaseline(
                    bits: uniform.bits.first.map { formats[$0].bits } ?? 0,
                    format: uniform.bits.first.map { formats[$0].description } ?? "", bytes: uniform.bytes,
                    bitsPerWeight: Double(uniform.bytes * 8) / Double(a.weights), estimatedDamage: uniform.damage)
                if let m = try measuredTotal(r, uniform, fromResult: false) {
                    entry.predictedDamage = uniform.damage; entry.measuredDamage = m
                }
                report.uniformBaseline = entry
            }
        }
        if !fixed.isEmpty { report.fixed = fixed }
        report.gptq = r.application.gptq
        if let m = r.analysis.moments, estimator == .cmpq { report.cmpqSamples = m.pooledSamples }
        return report
    }

    /// Each unit at its chosen format.
    private func unitReports(_ r: CPTQuantRun) -> [CPTQuantReport.Unit] {
        let formats = r.evaluation.formats, a = r.allocation
        // A factorized weight's S (values, float32 or at `sparse_factor_bits`, and row indices) is stored beside its D.
        func sparseFactorBytes(_ t: WeightID) -> Int {
            if case .linear(let id) = t, case .factorized(let f)? = r.application.model.linear(id) {
                return f.sparseBytes
            }
            return 0
        }
        return r.targets.units.enumerated().map { u, unit in
            let fi = a.chosen.bits[u], bytes = a.chosenBytes(u)
            let n = unit.tensors.reduce(0) { $0 + r.targets.tensors[$1]!.count }
            let sparseBytes = unit.tensors.reduce(0) { $0 + sparseFactorBytes($1) }
            return CPTQuantReport.Unit(
                name: unit.name, layer: unit.layer, sensitivity: r.analysis.sensitivity[u], bits: formats[fi].bits,
                format: formats[fi].description, bytes: bytes, weights: n, bitsPerWeight: Double(bytes * 8) / Double(n),
                relativeError: r.evaluation.unitError[u][fi], measuredDamage: Nullable(r.damage?.measured[u]),
                sparseFactorBytes: sparseBytes > 0 ? sparseBytes : nil,
                bytesWithSparseFactors: sparseBytes > 0 ? bytes + sparseBytes : nil)
        }
    }

    /// Each decoder layer's units.
    private func layerReports(_ r: CPTQuantRun) -> [CPTQuantReport.Layer] {
        let units = r.targets.units, formats = r.evaluation.formats, a = r.allocation
        return Set(units.map(\.layer)).sorted().map { l in
            let members = units.indices.filter { units[$0].layer == l }
            let bytes = members.reduce(0) { sum, u in sum + a.chosenBytes(u) }
            let n = members.reduce(0) { acc, u in
                acc + units[u].tensors.reduce(0) { $0 + r.targets.tensors[$1]!.count }
            }
            return CPTQuantReport.Layer(
                layer: l, sensitivity: members.map { r.analysis.sensitivity[$0] }.reduce(0, +) / Double(members.count),
                bits: members.map { formats[a.chosen.bits[$0]].bits },
                formats: members.map { formats[a.chosen.bits[$0]].description }, bytes: bytes,
                bitsPerWeight: Double(bytes * 8) / Double(n))
        }
    }

    /// The targeted weights as stored in the result: the allocated codes and scales, and for factorized weights
    /// their S's values and row indices, outside the allocation.
    private func targetedReport(_ targets: CPTQuantTargets, _ result: DecoderModel) -> CPTQuantReport.Targeted {
        var bytes = 0, parameters = 0, elements = 0
        for t in targets.names {
            guard case .linear(let id) = t, let w = result.linear(id) else { continue }
            bytes += w.storageBytes; parameters += w.parameterCount; elements += w.outFeatures * w.inFeatures
        }
        return CPTQuantReport.Targeted(bytes: bytes, parameters: parameters, matrixElements: elements,
                                       bitsPerParameter: Double(8 * bytes) / Double(parameters),
                                       bitsPerMatrixElement: Double(8 * bytes) / Double(elements))
    }

    /// The factorized targets (nil when there are none).
    private func factorizedReport(_ targets: CPTQuantTargets,
                                  _ application: CPTQuantApplication) -> CPTQuantReport.Factorized? {
        var tensors = 0, values = 0, bytes = 0, denseBytes = 0, denseWeights = 0
        for t in targets.names {
            guard case .linear(let id) = t, case .factorized(let f)? = application.model.linear(id) else { continue }
            tensors += 1; values += f.sparse.mask.nonzeros; bytes += f.sparseBytes
            denseBytes += f.denseBytes; denseWeights += f.dense.count
        }
        guard tensors > 0 else { return nil }
        let format = application.sparseFormat
        let storage = format.map { "\($0) codes and scales in groups of consecutive kept values" } ?? "float32 values"
        return CPTQuantReport.Factorized(
            tensors: tensors, denseFactorWeights: denseWeights, denseFactorBytes: denseBytes,
            denseFactorLayout: "Dᵀ (rank × out), groups of group_size output rows of one atom",
            sparseFactorValues: values, sparseFactorBytes: bytes, sparseFactorFormat: format?.description ?? "float32",
            sparseFactorStorage: "\(storage) + row indices (1 byte when rank ≤ 256, else 2)")
    }

    /// The embedding / LM head at their fixed widths, with their measured damage when there is a probe.
    private func fixedReports(_ r: CPTQuantRun) throws -> [String: CPTQuantReport.Fixed] {
        var out: [String: CPTQuantReport.Fixed] = [:]
        for (x, storageBytes) in zip(r.allocation.fixed, r.application.storageBytesAfterFixed) {
            let q = x.q
            var entry = CPTQuantReport.Fixed(format: x.format.description, bytes: q.bytes, weights: q.count,
                                             float32Bytes: 4 * q.count,
                                             bitsPerWeight: Double(8 * q.bytes) / Double(q.count),
                                             shareOfModelBytes: Double(q.bytes) / Double(storageBytes))
            if x.id == .embedTokens { entry.tiedLmHead = r.model.untiedLMHead == nil }
            if let probe = r.damage?.probe {
                entry.measuredDamage = try probe.divergence([x.id: q.dequantized()], resumeAt: nil)
            }
            out[x.id.hfName] = entry
        }
        return out
    }

    /// The KL measured with every unit at allocation `a`'s format (nil without measured damage). The chosen
    /// allocation is measured on the result's own weights (GPTQ's, with method gptq); the uniform baseline on
    /// the stored forms the allocation saw (round to nearest or the search).
    private func measuredTotal(_ r: CPTQuantRun, _ a: Allocation, withFixed: Bool = false,
                               fromResult: Bool = true) throws -> Double? {
        guard let probe = r.damage?.probe else { return nil }
        var values: [WeightID: [Float]] = [:]
        for (u, unit) in r.targets.units.enumerated() {
            let fi = a.bits[u]
            for t in unit.tensors {
                if fromResult, case .linear(let id) = t, let w = r.application.model.linear(id) {
                    if case .factorized(let f) = w {
                        values[t] = f.dense.array
                    } else {
                        values[t] = w.dequantized().array
                    }
                } else {
                    values[t] = Self.storageValues(r.evaluation.form(t, fi)!,
                                                   factorized: r.targets.factorized.contains(t))
                }
            }
        }
        let fixed = r.allocation.fixed
        if withFixed { for x in fixed { values[x.id] = x.q.dequantized() } }
        return try probe.divergence(values, resumeAt: withFixed && !fixed.isEmpty ? nil : 0)
    }
}
