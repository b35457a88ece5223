// One-shot pruning of the decoder's linear weights to N:M semi-structured or unstructured sparsity:
// `magnitude`, `wanda` and `sparsegpt` (issue 14; also MaskLLM's priors).
//
// Papers:
//   magnitude: keep the largest |W_ij| (the baseline of the papers below).
//   Wanda: M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective Pruning Approach for Large Language
//     Models", 2023. Score S_ij = |W_ij| · ‖X_j‖₂, ‖X_j‖₂ the norm of input feature j over the calibration
//     tokens; weights compared per output row (unstructured) or per group of M (N:M); no weight update.
//   SparseGPT: E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
//     One-Shot", ICML 2023. Layer-wise OBS reconstruction with H = 2XXᵀ/n + λI (λ = damp · mean diag, damp
//     relative, default 0.01), U = chol(H⁻¹) upper, columns in blocks of B (128) with lazy batch updates
//     (Passes/OptimalBrainSurgeon.swift). Mask selection by the OBS saliency w_j² / U_jj²: for unstructured
//     sparsity p, at the start of each block of B columns the fraction p of the block's (rows × B) weights
//     with the smallest saliency is pruned (adaptive mask selection); for N:M, when column j ≡ 0 (mod M) is
//     reached, each row prunes the M − N columns of j..<j+M with the smallest saliency (current values).
//     Pruned weights are fixed to 0 and their error is spread over the later columns.
// Every pass runs the layers in order on the outputs of the already-pruned layers (Passes/Layerwise.swift);
// magnitude needs no calibration. The result is a `.sparse` weight: the values (zero where pruned) and the mask.
// Deviations: magnitude's unstructured sparsity is per matrix (as in the SparseGPT paper's baseline), Wanda's
// per output row (its paper's choice); ties are broken by column index; the number pruned is round(p · group).
// SparseGPT's unstructured block threshold prunes exactly round(p · rows · B) weights per block (the reference
// procedure prunes those at or below the threshold value).

import Diagnostics
import Foundation
import Model
import Recipes
import TensorCore
import Training

/// What a one-shot sparsity pass prunes to, decoded from its recipe stage.
public struct SparsityTarget: Equatable, Sendable {
    public var pattern: SparsityMask.Pattern
    /// Fraction pruned (1 − N/M for N:M).
    public var sparsity: Double
    /// The decoder projections pruned.
    public var targets: [LinearKind]

    /// Keys `pattern` ("N:M" or "unstructured"), `sparsity` (unstructured: required, in (0, 1); N:M: optional,
    /// must equal 1 − N/M), `targets` (short names, default all seven).
    public init(config s: StrictObject) throws {
        let patternText = try s.optionalString("pattern")
        let p = try s.optionalDouble("sparsity")
        if let t = patternText {
            guard let pat = SparsityMask.Pattern(t) else {
                throw s.fail("pattern", "\"\(t)\" is not a sparsity pattern (expected \"N:M\" with 1 ≤ N < M ≤ 64, "
                    + "e.g. \"2:4\", or \"unstructured\")")
            }
            pattern = pat
        } else {
            pattern = .unstructured
        }
        switch pattern {
        case .nm(let n, let m):
            let implied = 1 - Double(n) / Double(m)
            if let p, abs(p - implied) > 1e-9 {
                throw s.fail("sparsity", "\(p) contradicts 'pattern' \(n):\(m), which prunes \(implied); give one of "
                    + "them")
            }
            sparsity = implied
        case .unstructured:
            guard let p else {
                throw RecipeError("\(s.location): 'sparsity' (fraction of weights pruned, in (0, 1)) or an N:M " +
                                  "'pattern' (e.g. \"2:4\") is required")
            }
            guard p > 0 && p < 1 else { throw s.fail("sparsity", "\(p) must lie strictly between 0 and 1") }
            sparsity = p
        }
        targets = try s.linearKinds()
    }

    /// The targeted linears of `model`, checked before any work: dense, and with an input size that is a
    /// multiple of M for N:M.
    func linears(_ model: DecoderModel, stage: String) throws -> [LinearID] {
        let ids = model.linearWeights.map(\.id).filter { targets.contains($0.kind) }
        guard !ids.isEmpty else { throw RecipeError("\(stage): no linear weight of the model matches 'targets'") }
        for id in ids {
            let w = model.linear(id)!
            guard w.kind == .dense else {
                throw RecipeError("\(stage): '\(id)' is \(w.kind.rawValue); one-shot pruning takes dense weights only")
            }
            if case .nm(let n, let m) = pattern, w.inFeatures % m != 0 {
                throw RecipeError("\(stage): 'pattern': \(n):\(m) needs every input size to be a multiple of \(m); " +
                                  "'\(id)' has \(w.inFeatures)")
            }
        }
        return ids
    }

    /// The kept set from scores (higher is kept) of a (rows, cols) weight, without weight update: N:M per
    /// group of M along a row; unstructured per row (`perRow`) or per matrix. Ties: the lower index is pruned.
    func keepByScore(_ score: [Double], rows: Int, cols: Int, perRow: Bool) -> [Bool] {
        var keep = [Bool](repeating: true, count: rows * cols)
        switch pattern {
        case .nm(let n, let m):
            // Per group: prune the M − N smallest (stable: among equal scores the lower index first).
            var order = [Int](repeating: 0, count: m)
            for g in stride(from: 0, to: rows * cols, by: m) {
                for i in 0..<m {
                    var k = i
                    while k > 0 && score[g + order[k - 1]] > score[g + i] { order[k] = order[k - 1]; k -= 1 }
                    order[k] = i
                }
                for i in 0..<(m - n) { keep[g + order[i]] = false }
            }
        case .unstructured:
            if perRow {
                for r in 0..<rows {
                    Self.pruneSmallest(score, (r * cols)..<((r + 1) * cols),
                                       count: Int((sparsity * Double(cols)).rounded()), keep: &keep)
                }
            } else {
                Self.pruneSmallest(score, 0..<(rows * cols), count: Int((sparsity * Double(rows * cols)).rounded()),
                                   keep: &keep)
            }
        }
        return keep
    }

    /// Marks the `k` smallest scores of `range` as pruned (ties: the lower index first).
    static func pruneSmallest(_ score: [Double], _ range: Range<Int>, count k: Int, keep: inout [Bool]) {
        guard k > 0 else { return }
        let threshold = score[range].sorted()[k - 1]
        var left = k
        for i in range where score[i] < threshold { keep[i] = false; left -= 1 }
        for i in range where left > 0 && score[i] == threshold { keep[i] = false; left -= 1 }
    }

    /// The sparse weight keeping `keep` of `values` (the others set to 0).
    func sparse(_ values: Tensor, keep: [Bool], id: LinearID) throws -> LinearWeight {
        do {
            let mask = try SparsityMask(pattern: pattern, rows: values.shape[0], cols: values.shape[1]) { keep[$0] }
            return .sparse(SparseWeight(masking: values, mask: mask))
        } catch { throw error.adding(ErrorContext(tensor: WeightID.linear(id).hfName), place: "\(id)") }
    }
}

/// The report of a one-shot pruning pass (magnitude, wanda, sparsegpt): the target, the density kept over the
/// pruned weights, and each weight's storage.
public struct OneShotPruningReport: Codable, Equatable {
    /// One targeted weight as stored after the pass.
    public struct Weight: Codable, Equatable {
        /// Its Hugging Face name ("model.layers.0.mlp.down_proj.weight").
        public var name: String
        public var bytes: Int
        /// A sparse weight's share of kept values and its pattern ("2:4", "unstructured").
        public var density: Double?
        public var pattern: String?
        /// SparseGPT: the OBS reconstruction loss.
        public var obsLoss: Double?
    }
    public var pattern: String
    /// The target's share of pruned values.
    public var sparsity: Double
    /// Kept values over all values of the sparse weights (0 when none is sparse).
    public var density: Double
    public var seconds: Double
    /// SparseGPT's relative damping, columns per block, and its Hessian's Gram products' precision.
    public var damp: Double?
    public var blockSize: Int?
    public var hessianPrecision: String?
    /// Wanda and SparseGPT: the calibration tokens their input statistics saw, and where the time went.
    public var calibrationTokens: Int?
    public var timing: LayerwiseTiming?
    public var tensors: [Weight]
}

/// Shared run of the three passes: validation, then per-linear pruning, with diagnostics.
struct OneShotPruning {
    let stage: String
    let target: SparsityTarget

    /// The report of `model` after the pass over `ids`; `obsLoss` by weight (SparseGPT).
    func report(_ model: DecoderModel, _ ids: [LinearID], seconds: Double,
                obsLoss: [LinearID: Double] = [:]) -> OneShotPruningReport {
        var kept = 0, total = 0
        let tensors = ids.map { id in
            let w = model.linear(id)!
            var entry = OneShotPruningReport.Weight(name: WeightID.linear(id).hfName, bytes: w.storageBytes)
            if case .sparse(let s) = w {
                kept += s.mask.nonzeros; total += s.mask.count
                entry.density = s.mask.density; entry.pattern = s.mask.pattern.description
            }
            entry.obsLoss = obsLoss[id]
            return entry
        }
        return OneShotPruningReport(pattern: target.pattern.description, sparsity: target.sparsity,
                                    density: total > 0 ? Double(kept) / Double(total) : 0, seconds: seconds,
                                    tensors: tensors)
    }
}

/// `magnitude`: keep the largest |W| (N:M per group, unstructured per matrix). No calibration.
public struct MagnitudePass: CompressionPass {
    public static let name = "magnitude"
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.sparse]) }
    public var target: SparsityTarget

    public init(config s: StrictObject) throws { target = try SparsityTarget(config: s) }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let ids = try target.linears(model, stage: Self.name)
        let start = Date()
        var m = model
        for id in ids {
            let w = model.linear(id)!.denseView!
            let keep = target.keepByScore(w.array.map { Double(abs($0)) }, rows: w.shape[0], cols: w.shape[1],
                                          perRow: false)
            m = try m.replacing(.linear(id), with: try target.sparse(w, keep: keep, id: id))
        }
        let report = OneShotPruning(stage: Self.name, target: target).report(
            m, ids, seconds: Date().timeIntervalSince(start))
        return (m, try JSONValue(encoding: report))
    }
}

/// `wanda`: keep the largest |W_ij| · ‖X_j‖₂ (N:M per group, unstructured per output row), layer by layer on
/// the outputs of the already-pruned layers.
public struct WandaPass: CompressionPass {
    public static let name = "wanda"
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.sparse]) }
    public var needs: PassNeeds { [.calibration] }
    public var target: SparsityTarget

    public init(config s: StrictObject) throws { target = try SparsityTarget(config: s) }

    /// Wanda's kept set for one weight given its input's column norms; a score that is not finite throws, naming
    /// the weight `id` and the element.
    static func keep(_ w: Tensor, columnNorms: [Double], target: SparsityTarget, id: LinearID) throws -> [Bool] {
        let OC = w.shape[0], C = w.shape[1]
        var score = [Double](repeating: 0, count: OC * C)
        for r in 0..<OC { for j in 0..<C { score[r * C + j] = Double(abs(w[r * C + j])) * columnNorms[j] } }
        try requireFinite(score, stage: name) { "the score |W| · ‖X‖ of '\(id)' at row \($0 / C), column \($0 % C)" }
        return target.keepByScore(score, rows: OC, cols: C, perRow: true)
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let ids = try target.linears(model, stage: Self.name)
        let start = Date()
        var timing = LayerwiseTiming()
        let result = try Layerwise.run(model: model, windows: context.calibration, targets: Set(target.targets),
                                       fullHessian: false,
                                       timing: &timing, progress: context.progress) { id, weight, input in
            let w = weight.denseView!
            let keep = try Self.keep(w, columnNorms: input.columnNorms, target: target, id: id)
            return try target.sparse(w, keep: keep, id: id)
        }
        var report = OneShotPruning(stage: Self.name, target: target).report(
            result, ids, seconds: Date().timeIntervalSince(start))
        report.calibrationTokens = context.calibration.reduce(0) { $0 + $1.count }
        report.timing = timing
        return (result, try JSONValue(encoding: report))
    }
}

/// `sparsegpt`: layer-wise OBS reconstruction (see the top of this file). Keys besides the target's: `damp`
/// (relative damping, default 0.01), `block_size` (columns per lazy-update block, default 128; a multiple of M
/// for N:M), `hessian_precision` (`fp32`, the default, or `bf16`: the Hessian's Gram products from bf16-rounded
/// inputs, Passes/Layerwise.swift).
public struct SparseGPTPass: CompressionPass {
    public static let name = "sparsegpt"
    public static let accepts: Set<WeightKind> = [.dense]
    public func produces(from input: Set<WeightKind>) -> Set<WeightKind> { input.union([.sparse]) }
    public var needs: PassNeeds { [.calibration] }
    public var target: SparsityTarget
    public var damp = 0.01
    public var blockSize = 128
    public var hessianPrecision = Precision.fp32

    public init(config s: StrictObject) throws {
        target = try SparsityTarget(config: s)
        hessianPrecision = try s.choice("hessian_precision", default: hessianPrecision)
        damp = try s.double("damp", default: damp, in: 0...1e6)
        guard damp > 0 else { throw s.fail("damp", "must be positive (relative damping, e.g. 0.01)") }
        blockSize = try s.int("block_size", default: blockSize, in: 1...1 << 20)
        if case .nm(let n, let m) = target.pattern, blockSize % m != 0 {
            throw s.fail("block_size", "\(blockSize) is not a multiple of M = \(m) of pattern \(n):\(m)")
        }
    }

    /// SparseGPT on one weight W (OC, C): the reconstructed values (0 where pruned), the kept set and the
    /// OBS loss. `limit`: process only the first columns (tests).
    static func prune(_ weight: Tensor, factor: HessianFactorization, target: SparsityTarget, blockSize: Int,
                      limit: Int? = nil)
        -> (values: Tensor, keep: [Bool], loss: Double) {
        let OC = weight.shape[0], C = weight.shape[1]
        precondition(factor.order == Array(0..<C), "SparseGPT runs in the natural column order")
        let w = weight.copy()
        for j in factor.dead { for r in 0..<OC { w[r * C + j] = 0 } }
        var keep = [Bool](repeating: true, count: OC * C)
        let u = factor.u
        var blockKeep = [Bool](repeating: true, count: OC * blockSize)
        let loss = keep.withUnsafeMutableBufferPointer { kp in
            blockKeep.withUnsafeMutableBufferPointer { bk in
                OptimalBrainSurgeon.solve(w: w.data, rows: OC, cols: C, u: u, blockSize: blockSize, limit: limit,
                                          beginBlock: { range, wp in
                    guard case .unstructured = target.pattern else { return }
                    // Adaptive mask selection: the fraction p of the block's weights with the smallest w² / U_jj².
                    let B = range.count
                    var score = [Double](repeating: 0, count: OC * B)
                    for r in 0..<OC {
                        for (b, j) in range.enumerated() {
                            let d = Double(u[j * C + j]), x = Double(wp[r * C + j])
                            score[r * B + b] = x * x / (d * d)
                        }
                    }
                    let k = Int((target.sparsity * Double(OC * B)).rounded())
                    let order = (0..<(OC * B)).sorted { score[$0] != score[$1] ? score[$0] < score[$1] : $0 < $1 }
                    for i in 0..<(OC * blockSize) { bk[i] = true }
                    for i in order.prefix(k) { bk[(i / B) * blockSize + i % B] = false }
                }, column: { r, j, row, current in
                    switch target.pattern {
                    case .nm(let n, let m):
                        if j % m == 0 {
                            // This row's group j..<j+M: prune the M − N smallest saliencies.
                            var s = [(Double, Int)]()
                            s.reserveCapacity(m)
                            for c in j..<(j + m) {
                                let d = Double(u[c * C + c]), x = Double(current(c))
                                s.append((x * x / (d * d), c))
                            }
                            s.sort { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
                            for (i, (_, c)) in s.enumerated() { kp[r * C + c] = i >= m - n }
                        }
                    case .unstructured:
                        kp[r * C + j] = bk[r * blockSize + (j % blockSize)]
                    }
                    return kp[r * C + j] ? row[j] : 0
                })
            }
        }
        return (w, keep, loss)
    }

    public func run(on model: DecoderModel,
                    context: PassContext) throws -> (model: DecoderModel, diagnostics: JSONValue) {
        let ids = try target.linears(model, stage: Self.name)
        let start = Date()
        var losses: [LinearID: Double] = [:]
        var timing = LayerwiseTiming()
        let result = try Layerwise.run(model: model, windows: context.calibration, targets: Set(target.targets),
                                       fullHessian: true, hessianPrecision: hessianPrecision,
                                       timing: &timing, progress: context.progress) { id, weight, input in
            let factor: HessianFactorization
            do { factor = try input.factorization(damp: damp, actOrder: false) } catch {
                throw error.adding(ErrorContext(tensor: WeightID.linear(id).hfName), place: "\(Self.name): '\(id)'")
            }
            let (values, keep, loss) = Self.prune(weight.denseView!, factor: factor, target: target,
                                                  blockSize: blockSize)
            try requireFinite([loss], stage: Self.name) { _ in "the OBS loss of '\(id)'" }
            if let (i, x) = firstUnsoundValue(values) {
                throw RecipeError("\(Self.name): the reconstructed '\(id)' holds \(x) at index \(i) (expected finite "
                    + "values): the model's outputs on the calibration windows hold NaN or infinite values (check " +
                      "the input "
                    + "checkpoint's weights)")
            }
            losses[id] = loss
            return try target.sparse(values, keep: keep, id: id)
        }
        var report = OneShotPruning(stage: Self.name, target: target).report(
            result, ids, seconds: Date().timeIntervalSince(start), obsLoss: losses)
        report.damp = damp; report.blockSize = blockSize; report.hessianPrecision = hessianPrecision.rawValue
        report.calibrationTokens = context.calibration.reduce(0) { $0 + $1.count }
        report.timing = timing
        return (result, try JSONValue(encoding: report))
    }
}
