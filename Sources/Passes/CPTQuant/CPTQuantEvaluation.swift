// CPTQuant's evaluation phase: every targeted tensor at every candidate format (stored form and relative error),
// and with `damage: "measured"` each unit's KL from the base at each format (CPTQuantDamage.swift's probe).

import Foundation
import Model
import Quantization
import Recipes
import TensorCore

/// Every targeted tensor at every candidate format.
struct CPTQuantEvaluation {
    /// The candidate formats (the pass's `candidates`).
    var formats: [QuantFormat]
    /// [tensor in `CPTQuantTargets.names` order][format]: the stored form (nil: the format cannot store it).
    var stored: [[QuantizedTensor?]]
    /// A tensor's row in `stored`.
    var index: [WeightID: Int]
    /// [unit][format]: Σ ‖W − Q(W)‖² over Σ ‖W‖² of the unit's tensors.
    var unitError: [[Double]]
    /// "'tensor' at format: why" for each format that cannot store a tensor (dropped from its unit's options).
    var unrepresentable: [String]

    /// Tensor `t`'s stored form at format `fi`.
    func form(_ t: WeightID, _ fi: Int) -> QuantizedTensor? { stored[index[t]!][fi] }
}

/// The measured damage: the probe (kept for the report's totals) and KL per unit and format (nil: unusable format).
struct CPTQuantMeasuredDamage {
    var probe: DamageProbe
    var measured: [[Double?]]
}

extension CPTQuantPass {
    /// Quantizes every targeted tensor at every candidate format (threads over tensors, format after format) and
    /// sums the units' relative errors. A failure other than an unrepresentable tensor throws, naming it.
    /// `uniformBudget` (uniform allocation): only the formats whose bytes fit it, widest first, until one stores
    /// every tensor; the others stay nil (no option). When none fits, every format (the allocation then says so).
    func evaluate(_ targets: CPTQuantTargets, moments: CalibrationMoments?, uniformBudget: Int? = nil,
                  context: PassContext) throws -> CPTQuantEvaluation {
        // Every tensor at every width: stored form and ‖W − Q(W)‖²; and ‖W‖² once per tensor.
        let formats = candidates, names = targets.names, tensors = targets.tensors, searchTable = tableSearches
        var stored = [[QuantizedTensor?]](repeating: [QuantizedTensor?](repeating: nil, count: formats.count),
                                          count: names.count)
        var squaredErrors = [[Double]](repeating: [Double](repeating: 0, count: formats.count), count: names.count)
        let squaredNorms = names.map { n in tensors[n]!.array.reduce(0.0) { $0 + Double($1) * Double($1) } }
        var failure: Error?
        var unrepresentable: [String] = []  // widths that cannot store a tensor are dropped from its unit's options
        let lock = NSLock()
        var order = Array(formats.indices), widestFirst = false
        if let budget = uniformBudget {
            // A format's bytes: Σ over the tensors of QuantFormat.storageBytes (what QuantizedTensor.bytes counts).
            let fitting = formats.indices.reversed().filter { fi in
                names.reduce(0) { $0 + formats[fi].storageBytes(rows: 1, columns: tensors[$1]!.count) } <= budget
            }
            if !fitting.isEmpty { order = fitting; widestFirst = true }
        }
        for fi in order {
            let f = formats[fi]
            let before = unrepresentable.count
            Parallel.forEachChunk(names.count) { r in
                for i in r {
                    let w = tensors[names[i]]!, isFactor = targets.factorized.contains(names[i])
                    do {
                        // A factor D is quantized as Dᵀ (k, OC); the E[x²] weighting is the weight's own input's
                        // (none for D).
                        let (values, shape) = Self.quantizerInput(w, factorized: isFactor)
                        let importance = searchTable && !isFactor ? moments?.columns[names[i].hfName] : nil
                        let magnitude = searchWeights == .activationMagnitude && !isFactor
                        let q = try QuantizedTensor(weights: values, shape: shape, format: f, importance: importance,
                                                    search: searchTable, magnitudeWeighted: magnitude)
                        let back = q.dequantized()
                        var e = 0.0
                        for k in 0..<w.count { let d = Double(values[k] - back[k]); e += d * d }
                        lock.lock(); stored[i][fi] = q; squaredErrors[i][fi] = e; lock.unlock()
                    } catch let e as UnrepresentableWeights {
                        lock.lock(); unrepresentable.append("'\(names[i])' at \(f): \(e)"); lock.unlock()
                    } catch {
                        lock.lock()
                        failure = RecipeError("cptquant: tensor '\(names[i])' at \(f): \(error)")
                        lock.unlock()
                    }
                }
            }
            context.progress("cptquant: quantized \(names.count) tensors at \(f)")
            if failure != nil { break }
            if widestFirst && unrepresentable.count == before { break }
        }
        if let failure { throw failure }
        let index = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        // A unit's relative error: Σ ‖ΔW‖² over Σ ‖W‖² of its tensors.
        let unitError: [[Double]] = targets.units.map { unit in
            let idx = unit.tensors.map { index[$0]! }
            let norm = idx.reduce(0.0) { $0 + squaredNorms[$1] }
            return formats.indices.map { fi in norm > 0 ? idx.reduce(0.0) { $0 + squaredErrors[$1][fi] } / norm : 0 }
        }
        return CPTQuantEvaluation(formats: formats, stored: stored, index: index, unitError: unitError,
                                  unrepresentable: unrepresentable)
    }

    /// With `damage: "measured"`: KL(base ‖ model with the unit at format b) per unit and format, through the
    /// cache (one entry per format with `formats`, so that adding a format measures only that one); nil otherwise.
    func measureDamage(_ model: DecoderModel, _ targets: CPTQuantTargets, _ evaluation: CPTQuantEvaluation,
                       context: PassContext) throws -> CPTQuantMeasuredDamage? {
        guard damage == .measured else { return nil }
        let units = targets.units, formats = evaluation.formats
        let cut = try Self.damageWindows(context.calibration, count: damageWindows, tokens: damageTokens)
        let p = try DamageProbe(model: model, windows: cut)
        let search = searchWeights == .activation ? "search" : "search \(searchWeights.rawValue)"
        let method = searchTable ? search : "rtn"
        var key = CPTQuantDamageKey(units: unitsKey, method: method, damageWindows: damageWindows,
                                    damageTokens: damageTokens, quantizer: "")
        func divergence(_ u: Int, _ fi: Int) throws -> Double? {
            let unit = units[u]
            guard unit.tensors.allSatisfy({ evaluation.form($0, fi) != nil }) else { return nil }
            let values = Dictionary(uniqueKeysWithValues: unit.tensors.map {
                ($0, Self.storageValues(evaluation.form($0, fi)!, factorized: targets.factorized.contains($0)))
            })
            // A format that stores the unit exactly (a dequantized model re-quantized on its own grid) changes
            // nothing: its KL is 0 without a forward.
            if values.allSatisfy({ $0.value == targets.tensors[$0.key]!.array }) { return 0 }
            return try p.divergence(values, resumeAt: unit.firstSublayer)
        }
        if explicitFormats {
            // One cached column per format, so that a recipe adding a format measures only that one.
            var columns: [[Double?]] = []
            for (fi, f) in formats.enumerated() {
                key.format = f.description
                key.quantizer = QuantizedTensor.revision(of: f)
                columns.append(try context.cached("cptquant-damage-format", key: key) {
                    try units.indices.map { u -> Double? in
                        defer {
                            if (u + 1) % 10 == 0 || u + 1 == units.count {
                                context.progress("cptquant measured damage at \(f): unit \(u + 1)/\(units.count) "
                                    + "(\(units[u].name))")
                            }
                        }
                        return try divergence(u, fi)
                    }
                })
            }
            return CPTQuantMeasuredDamage(probe: p, measured: units.indices.map { u in columns.map { $0[u] } })
        }
        key.widths = widths; key.groupSize = groupSize; key.symmetric = symmetric
        key.quantizer = QuantizedTensor.revision
        let measured = try context.cached("cptquant-damage", key: key) {
            try units.enumerated().map { u, unit -> [Double?] in
                let row = try formats.indices.map { fi in try divergence(u, fi) }
                context.progress("cptquant measured damage: unit \(u + 1)/\(units.count) (\(unit.name))")
                return row
            }
        }
        return CPTQuantMeasuredDamage(probe: p, measured: measured)
    }
}
