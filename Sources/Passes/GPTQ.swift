// GPTQ: CPTQuant's `method: gptq` (issue 19).
//
// Paper: E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", ICLR 2023.
//
// Per linear weight W (OC, C) with calibration inputs X of the already-quantized layers before it
// (Passes/Layerwise.swift): H = 2XXᵀ/n, dead inputs (H_jj = 0) zeroed, relative damping H += λI with
// λ = damp · mean diag H (CPTQuant's default 0.1; the reference's 0.01), activation order (columns by
// decreasing H_jj; CPTQuant's default, optional in the paper), U = chol(H⁻¹) upper. Columns are quantized one at a
// time, in blocks of B (128) with lazy batch updates
// (Passes/OptimalBrainSurgeon.swift):
//   q_j = Q(w_j),   e_j = (w_j − q_j) / U_jj,   w_F −= e_j · U_{j,F}   (F: the later columns).
// Q is the stored format's own grid (Quantization/ColumnQuantization.swift → Quantizer.swift): a group's
// float16 scale (and minimum) is fixed when the first of its columns is reached (with activation order: the
// first in processing order), from the group's current values (every update so far included), by the
// quantizer itself on that one group: round-to-nearest's min-max grid, or (`clip_search`, the default in
// CPTQuant) its clipping search weighted by E[x_k²] = H_kk / 2 (the GPTQ reference's `mse` grid option plays
// the same role); each weight then gets its nearest code on that grid. Float16 is the same loop with
// Q = rounding to float16.
// A sparse weight (`keep`: its mask) is quantized with its pruned weights fixed to the grid's value of 0
// (exactly 0 on symmetric grids) and their error spread like any other, SparseGPT's joint sparsification and
// quantization.
// `static_groups` (AutoGPTQ's option of that name): every group's grid is fixed up front from W's original
// values (the same quantizer, the same search) instead of from its current values; only the codes then follow
// GPTQ's updates.
// Deviation: groups stay runs of G consecutive input columns (the stored format's); with activation order the
// paper's reference groups along the processing order and stores a column → group index instead.
//
// Factorized weights (issue 16; ours): the dense factor D (OC, k) of W = D · S has input t = S·x, so its Hessian
// is H_D = 2·(S X)(S X)ᵀ/n = S·H·Sᵀ (k, k), computed from the layer input's H and S's kept entries. D's codes
// are those of Dᵀ, grouped along the output (G consecutive rows of one column of D), so a group's grid needs
// the current values of G rows at one column: D is solved in blocks of one column (every earlier update has then
// reached that column in every row; the lazy batching of blocks is a speed device, the updates are the same),
// and the grids of column j are fixed, from those values, just before it is quantized (round-to-nearest's
// min-max, or with `clip_search` the clipping search on the group's plain squared error: E[x²] weighting would
// be constant over a group of one input column).

import Foundation
import Model
import Quantization
import Recipes
import TensorCore

enum GPTQ {
    /// The solver's result: fixed values in the original column order, the codes and per-group grids (integer
    /// formats), and the OBS loss.
    struct Result {
        var values: Tensor
        var codes: [UInt8]
        var scales: [Float16]
        var mins: [Float16]
        var loss: Double
    }

    /// A copy of W (OC, C) with its columns in `factor`'s processing order and its dead inputs zeroed, each
    /// original column's position in that order, and whether the order is the natural one.
    static func processingCopy(_ weight: Tensor,
                               _ factor: HessianFactorization) -> (w: Tensor, position: [Int], natural: Bool) {
        let OC = weight.shape[0], C = weight.shape[1]
        let natural = factor.order == Array(0..<C)
        var position = [Int](repeating: 0, count: C)
        for (j, c) in factor.order.enumerated() { position[c] = j }
        let w = natural ? weight.copy() : OptimalBrainSurgeon.permuteColumns(weight, factor.order)
        for c in factor.dead { for r in 0..<OC { w[r * C + position[c]] = 0 } }
        return (w, position, natural)
    }

    /// GPTQ on W (OC, C) in `format`; `limit`: process only the first columns in processing order (tests).
    /// `importance` (per input column, E[x²]): the groups' grids come from the clipping search weighted by it;
    /// nil: round-to-nearest grids.
    /// `staticGroups`: each group's grid from W's own values before any update (AutoGPTQ's `static_groups`),
    /// instead of the group's current values when its first column is reached.
    static func solve(_ weight: Tensor, factor: HessianFactorization, format f: QuantFormat, blockSize: Int,
                      importance: [Float]? = nil,
                      keep: SparsityMask? = nil, staticGroups: Bool = false, limit: Int? = nil) throws -> Result {
        let OC = weight.shape[0], C = weight.shape[1]
        let order = factor.order
        let (w, position, natural) = processingCopy(weight, factor)
        let G = f.isFloat16 ? 1 : f.groupSize
        guard C % G == 0 else { throw QuantizationError("\(C) input columns are not a whole number of groups of \(G)") }
        let groups = C / G
        var codes = [UInt8](repeating: 0, count: f.isFloat16 ? 0 : OC * C)
        var scales = [Float16](repeating: 0, count: f.isFloat16 ? 0 : OC * groups)
        var mins = [Float16](repeating: 0, count: f.isFloat16 || f.symmetric ? 0 : OC * groups)
        var fixed = [Bool](repeating: false, count: f.isFloat16 ? 0 : OC * groups)
        // Each fixed group's scale and minimum widened to Float once, for its weights' codes (written when the group
        // is fixed, before any read: a row runs on one worker within a block, and blocks run one after another).
        let wp = UnsafeMutableBufferPointer<Float>.allocate(capacity: f.isFloat16 ? 0 : 2 * OC * groups)
        defer { wp.deallocate() }
        var failure: String?
        let lock = NSLock()
        // E[x²] of every input column, read by the groups' searches on the workers.
        let groupImportance = importance.map { h in
            let p = UnsafeMutableBufferPointer<Float>.allocate(capacity: h.count)
            _ = p.initialize(from: h)
            return p
        }
        defer { groupImportance?.deallocate() }
        let loss = codes.withUnsafeMutableBufferPointer { cp in
            scales.withUnsafeMutableBufferPointer { sp in
                mins.withUnsafeMutableBufferPointer { mp in
                    fixed.withUnsafeMutableBufferPointer { fp in
                        OptimalBrainSurgeon.solve(w: w.data, rows: OC, cols: C, u: factor.u, blockSize: blockSize,
                                                  limit: limit) { r, j, row, current in
                            let pruned = keep.map { !$0[r * C + order[j]] } ?? false
                            let x = pruned ? 0 : row[j]
                            if f.isFloat16 {
                                let h = Float16(x)
                                if !h.isFinite {
                                    lock.lock()
                                    failure = "weight (\(r), \(order[j])) = \(x) overflows float16"
                                    lock.unlock()
                                    return x
                                }
                                return Float(h)
                            }
                            let c = order[j], g = c / G, gi = r * groups + g
                            if !fp[gi] {
                                // The quantizer's own choice of grid for this one group (1 × G).
                                let grid = withUnsafeTemporaryAllocation(of: Float.self, capacity: G) { values in
                                    for k in 0..<G {
                                        values[k] = keep.map { $0[r * C + g * G + k] } ?? true
                                            ? (staticGroups ? weight[r * C + g * G + k] : current(position[g * G + k]))
                                            : 0
                                    }
                                    return Swift.Result {
                                        try QuantizedTensor.groupGrid(
                                            UnsafeBufferPointer(values), format: f,
                                            importance: groupImportance.map {
                                                UnsafeBufferPointer(rebasing: $0[(g * G)..<((g + 1) * G)])
                                            },
                                            search: importance != nil)
                                    }
                                }
                                switch grid {
                                case .success(let (scale, min)):
                                    sp[gi] = scale
                                    if !f.symmetric { mp[gi] = min }
                                case .failure(let error):
                                    lock.lock(); failure = "group \(gi) (row \(r)): \(error)"; lock.unlock()
                                    return x
                                }
                                wp[2 * gi] = Float(sp[gi])
                                wp[2 * gi + 1] = f.symmetric ? 0 : Float(mp[gi])
                                fp[gi] = true
                            }
                            let scale = wp[2 * gi], lo = wp[2 * gi + 1]
                            let q = QuantizedTensor.storedCode(x, scale: scale, min: lo, format: f)
                            cp[r * C + c] = q
                            return QuantizedTensor.value(ofCode: q, scale: scale, min: lo, format: f)
                        }
                    }
                }
            }
        }
        if let failure { throw UnrepresentableWeights(failure) }
        let values = natural ? w : OptimalBrainSurgeon.permuteColumns(w, order, inverse: true)
        return Result(values: values, codes: codes, scales: scales, mins: mins, loss: loss)
    }

    /// GPTQ on a factorized weight's D (OC, k) with `factor` from H_D = S·H·Sᵀ (`factorHessian`), in `format`
    /// with groups along the output: the stored tensor holds Dᵀ (k, OC) (see the top of this file). `clipSearch`:
    /// each group's grid by the clipping search (plain squared error); false: min-max. Checks that the codes
    /// dequantize to exactly the values the solver fixed.
    static func quantizeOutputGroups(_ weight: Tensor, factor: HessianFactorization, format f: QuantFormat,
                                     clipSearch: Bool,
                                     limit: Int? = nil) throws -> (QuantizedTensor, loss: Double, values: Tensor) {
        let OC = weight.shape[0], k = weight.shape[1]
        let order = factor.order
        let (w, position, natural) = processingCopy(weight, factor)
        let G = f.isFloat16 ? 1 : f.groupSize
        guard OC % G == 0 else { throw QuantizationError("\(OC) output rows are not a whole number of groups of \(G)") }
        let groups = OC / G
        var codes = [UInt8](repeating: 0, count: f.isFloat16 ? 0 : OC * k)
        var scales = [Float16](repeating: 0, count: f.isFloat16 ? 0 : k * groups)
        var mins = [Float16](repeating: 0, count: f.isFloat16 || f.symmetric ? 0 : k * groups)
        var failure: String?
        let lock = NSLock()
        let loss = codes.withUnsafeMutableBufferPointer { cp in
            scales.withUnsafeMutableBufferPointer { sp in
                mins.withUnsafeMutableBufferPointer { mp in
                    OptimalBrainSurgeon.solve(w: w.data, rows: OC, cols: k, u: factor.u, blockSize: 1, limit: limit,
                                              beginBlock: { range, W in
                        // Column j's grids, one per group of G rows, from every row's current value.
                        guard !f.isFloat16 else { return }
                        let j = range.lowerBound, c = order[j]
                        for g in 0..<groups {
                            let values = (0..<G).map { W[(g * G + $0) * k + j] }
                            do {
                                let one = try QuantizedTensor(weights: values, shape: [1, G], format: f,
                                                              search: clipSearch)
                                sp[c * groups + g] = one.scales[0]
                                if !f.symmetric { mp[c * groups + g] = one.mins[0] }
                            } catch {
                                lock.lock()
                                failure = "column \(c), rows \(g * G)..<\((g + 1) * G): \(error)"
                                lock.unlock()
                            }
                        }
                    }) { r, j, row, _ in
                        let x = row[j], c = order[j]
                        if f.isFloat16 {
                            let h = Float16(x)
                            if !h.isFinite {
                                lock.lock()
                                failure = "weight (\(r), \(c)) = \(x) overflows float16"
                                lock.unlock()
                                return x
                            }
                            return Float(h)
                        }
                        let gi = c * groups + r / G, lo = f.symmetric ? Float16(0) : mp[gi]
                        let q = QuantizedTensor.storedCode(x, scale: sp[gi], min: lo, format: f)
                        cp[c * OC + r] = q
                        return QuantizedTensor.value(ofCode: q, scale: sp[gi], min: lo, format: f)
                    }
                }
            }
        }
        if let failure { throw UnrepresentableWeights(failure) }
        let values = natural ? w : OptimalBrainSurgeon.permuteColumns(w, order, inverse: true)
        let transposed = FactorizedWeight.transpose(values.array, rows: OC, cols: k)
        let q = f.isFloat16 ? try QuantizedTensor(weights: transposed, shape: [k, OC], format: f)
            : try QuantizedTensor(format: f, shape: [k, OC], codes: packCodes(codes, bits: f.bits), scales: scales,
                                  mins: mins)
        guard limit != nil || q.dequantized() == transposed else {
            throw QuantizationError("GPTQ: the stored \(f) tensor does not dequantize to the values GPTQ fixed")
        }
        return (q, loss, values)
    }

    /// H_D = S·H·Sᵀ (k, k), row-major Float64: the Hessian of a factorized weight's dense factor, whose input is
    /// S·x, from the Hessian H (C, C) of x and S's kept entries.
    static func factorHessian(_ h: [Double], sparse s: SparseWeight) -> [Double] {
        let k = s.mask.rows, C = s.mask.cols
        // Each row of S as (column, value) pairs.
        let rows: [[(Int, Double)]] = (0..<k).map { r in
            (0..<C).compactMap { c in s.mask[r * C + c] ? (c, Double(s.values[r * C + c])) : nil }
        }
        var tmp = [Double](repeating: 0, count: k * C)  // S·H
        var out = [Double](repeating: 0, count: k * k)
        tmp.withUnsafeMutableBufferPointer { t in
            h.withUnsafeBufferPointer { hp in
                Parallel.forEachChunk(k, minChunk: 4) { range in
                    for r in range { for (c, v) in rows[r] { for j in 0..<C { t[r * C + j] += v * hp[c * C + j] } } }
                }
            }
        }
        out.withUnsafeMutableBufferPointer { o in
            tmp.withUnsafeBufferPointer { t in
                Parallel.forEachChunk(k, minChunk: 4) { range in
                    for r in range {
                        for r2 in 0..<k {
                            var acc = 0.0
                            for (c, v) in rows[r2] { acc += t[r * C + c] * v }
                            o[r * k + r2] = acc
                        }
                    }
                }
            }
        }
        return out
    }

    /// The stored tensor of a full solve; checks that it dequantizes to exactly the values the solver used.
    static func quantize(_ weight: Tensor, factor: HessianFactorization, format f: QuantFormat, blockSize: Int,
                         importance: [Float]? = nil, keep: SparsityMask? = nil,
                         staticGroups: Bool = false) throws -> (QuantizedTensor, loss: Double) {
        let r = try solve(weight, factor: factor, format: f, blockSize: blockSize, importance: importance, keep: keep,
                          staticGroups: staticGroups)
        let q: QuantizedTensor
        if f.isFloat16 {
            q = try QuantizedTensor(weights: r.values.array, shape: weight.shape, format: f)
        } else {
            q = try QuantizedTensor(format: f, shape: weight.shape, codes: packCodes(r.codes, bits: f.bits),
                                    scales: r.scales, mins: r.mins)
        }
        guard q.dequantized() == r.values.array else {
            throw QuantizationError("GPTQ: the stored \(f) tensor does not dequantize to the values GPTQ fixed " +
                                    "(ColumnQuantization.swift is out of step with Quantizer.swift)")
        }
        return (q, r.loss)
    }
}
