// CPTQuant's analysis phase: calibration moments (E[x²] per input column, CMPQ's correlations) and the
// sensitivity of every unit, computed through the statistics cache under Codable keys made of analysis settings.

import Foundation
import Model
import Recipes

/// The cache key of `cptquant-moments`: CMPQ's settings, or `cmpq: false` for E[x²] alone.
struct CPTQuantMomentsKey: Codable {
    var poolTokens: Int?
    var ccaDims: Int?
    var ridge: Double?
    var cmpq: Bool?
}

/// The units' part of a cache key: granularity, targets and excluded layers.
struct CPTQuantUnitsKey: Codable {
    var granularity: String
    var targets: [String]
    var excludeLayers: [Int]
}

/// The cache key of `cptquant-pmpq` (with `fraction`) and `cptquant-tdmpq` (without).
struct CPTQuantEstimatorKey: Codable {
    var units: CPTQuantUnitsKey
    /// `estimator_windows` when set.
    var windows: Int?
    /// PMPQ's `prune_fraction`.
    var fraction: Double?
}

/// The cache key of `cptquant-damage` (the `widths` ladder: `widths`, `group_size`, `symmetric`) and of
/// `cptquant-damage-format` (one of `formats`: `format`).
struct CPTQuantDamageKey: Codable {
    var units: CPTQuantUnitsKey
    /// The quantizer the stored forms come from: "rtn", "search" or "search activation_magnitude".
    var method: String
    var damageWindows: Int
    var damageTokens: Int
    var format: String?
    var widths: [Int]?
    var groupSize: Int?
    var symmetric: Bool?
    /// `QuantizedTensor.revision` (of the format, for `format`).
    var quantizer: String
}

extension PassContext {
    /// `compute()`'s value through the cache, under `key` encoded as a JSON object (snake-case keys, nil
    /// optionals left out: the same text as the hand-built objects this replaced, so older entries still hit).
    func cached<T: Codable, Key: Encodable>(_ name: String, key: Key, _ compute: () throws -> T) throws -> T {
        try cached(name, settings: try JSONValue(encoding: key), compute)
    }
}

/// What the analysis phase found: the calibration moments (when used) and one sensitivity per unit.
struct CPTQuantAnalysis {
    var moments: CalibrationMoments?
    var sensitivity: [Double]
}

extension CPTQuantPass {
    /// Whether the per-tensor table uses the clipping search (weighted by E[x²]): for `search`, and for `gptq`
    /// with searched grids.
    var searchTable: Bool { method == .search || (method == .gptq && clipSearch) }

    /// Whether the table is quantized at the uniform allocation's format only (`allocation: "uniform"` with
    /// estimated damage: the choice depends on bytes alone).
    var uniformTable: Bool { allocation == .uniform && damage == .estimated }

    /// Whether the table's forms come from the search (weighted by the calibration E[x²]). Not for GPTQ with a
    /// uniform table, which only gives bytes and the report's errors (round to nearest's there): GPTQ's grids take
    /// E[x²] from its own layer-wise pass.
    var tableSearches: Bool { searchTable && !(method == .gptq && uniformTable) }

    /// Whether the calibration moments are computed: for a searched table, and for CMPQ.
    var needsMoments: Bool { estimator == .cmpq || tableSearches }

    /// The units' part of the cache keys.
    var unitsKey: CPTQuantUnitsKey {
        CPTQuantUnitsKey(granularity: granularity.rawValue, targets: targets.map(\.shortName),
                         excludeLayers: excludeLayers)
    }

    /// Calibration moments (for the search and CMPQ) and the estimator's sensitivity per unit, through the cache.
    /// Throws when a sensitivity is not finite, naming the unit.
    func analyse(_ model: DecoderModel, _ targets: CPTQuantTargets, context: PassContext) throws -> CPTQuantAnalysis {
        let windows = context.calibration, units = targets.units
        // Calibration statistics: per input column E[x²] (for the search) and CMPQ's scores.
        var moments: CalibrationMoments?
        if needsMoments {
            let correlations = estimator == .cmpq
            let key = correlations ? CPTQuantMomentsKey(poolTokens: poolTokens, ccaDims: ccaDims, ridge: ridge)
                                   : CPTQuantMomentsKey(cmpq: false)
            moments = try context.cached("cptquant-moments", key: key) {
                try CalibrationMoments.compute(model: model, windows: windows, correlations: correlations,
                                               poolTokens: poolTokens, ccaDims: ccaDims, ridge: ridge) { i, n in
                    context.progress("cptquant calibration statistics: window \(i)/\(n)")
                }
            }
        }
        // Sensitivity per unit.
        var key = CPTQuantEstimatorKey(units: unitsKey)
        var estimatorInput = windows
        if let n = estimatorWindows {
            guard windows.count >= n else {
                throw RecipeError("cptquant: 'estimator_windows' is \(n), but the recipe draws \(windows.count) "
                    + "calibration windows (raise calibration.samples or lower estimator_windows)")
            }
            estimatorInput = Array(windows.prefix(n)); key.windows = n
        }
        let sensitivity: [Double]
        switch estimator {
        case .none: sensitivity = units.map { _ in 0 }
        case .cmpq: sensitivity = units.map { moments!.cmpq[$0.layer] }
        case .pmpq:
            key.fraction = pruneFraction
            sensitivity = try context.cached("cptquant-pmpq", key: key) {
                Self.pruningSensitivity(model: model, units: units, fraction: pruneFraction,
                                        windows: estimatorInput) { i, n in
                    context.progress("cptquant PMPQ: window \(i)/\(n)")
                }
            }
        case .tdmpq:
            sensitivity = try context.cached("cptquant-tdmpq", key: key) {
                Self.taylorSensitivity(model: model, units: units, windows: estimatorInput,
                                       perTensor: granularity != .layer) { i, n in
                    context.progress("cptquant TDMPQ: window \(i)/\(n)")
                }
            }
        }
        try requireFinite(sensitivity, stage: "cptquant") {
            "the \(estimator.rawValue) sensitivity of unit \(units[$0].name)"
        }
        return CPTQuantAnalysis(moments: moments, sensitivity: sensitivity)
    }
}
