// The optimal-brain-surgeon (OBS) column solver shared by SparseGPT (pruning) and GPTQ (quantization).
//
// Papers: E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
// ICML 2023 (Algorithm 1); E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers", ICLR 2023; B. Hassibi, D. Stork, "Second order
// derivatives for network pruning: Optimal Brain Surgeon", 1993.
//
// For one row w of W (all rows share H = 2XXᵀ/n), fixing column j to a value q_j (0 when pruned, the nearest
// grid point when quantized) and letting the not-yet-fixed columns F = {j+1, …} absorb the error is the OBS
// update
//   δ_F = −(w_j − q_j) / [H_F'⁻¹]_jj · [H_F'⁻¹]_{j,F},   F' = {j} ∪ F,
// with loss (w_j − q_j)² / (2 [H_F'⁻¹]_jj). With U the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), row j of U is
// [H_F'⁻¹]_{j,·} / sqrt([H_F'⁻¹]_jj), so the update is
//   e_j = (w_j − q_j) / U_jj,   w_F −= e_j · U_{j,F}.
// Columns are processed in blocks of B: inside a block the update runs column by column on the block's
// columns only, the errors e (OC, B) are kept, and the columns after the block get them all at once,
//   W_{:, after} −= E · U_{block, after}   (GPTQ's lazy batch update, one GEMM per block).
// Rows are independent given U, so each block runs its rows in parallel.
// Where a decision needs a later column's current value (a group scale or an N:M choice reaching past the
// block), the pending updates of the block are added to it first, so decisions see the exact current W.

import Foundation
import Model
import TensorCore

enum OptimalBrainSurgeon {
    /// Reads the current value of a column of the row being processed (pending block updates included).
    typealias Current = (_ column: Int) -> Float

    /// Runs the solver over columns 0..<limit (all: nil) of W (rows, cols) row-major, in place, in the
    /// order of `u`'s columns (the caller permutes W to that order). `beginBlock(range, W)` runs once per
    /// block before its rows (for choices over the whole block); `column(r, j, row, current)` returns the
    /// value column j of row r is fixed to. Afterwards column j of every row holds its fixed value and the
    /// columns not processed hold their updated values. Returns Σ over rows and columns of the OBS losses
    /// (w_j − q_j)² / (2 U_jj²) (in the units of H).
    static func solve(w: UnsafeMutablePointer<Float>, rows OC: Int, cols C: Int, u: [Float], blockSize: Int,
                      limit: Int? = nil,
                      beginBlock: (Range<Int>, UnsafeMutablePointer<Float>) -> Void = { _, _ in },
                      column: (_ r: Int, _ j: Int, _ row: UnsafeMutablePointer<Float>,
                               _ current: Current) -> Float) -> Double {
        precondition(u.count == C * C && blockSize >= 1)
        let end = min(limit ?? C, C)
        var losses = [Double](repeating: 0, count: OC)
        let err = Tensor(shape: [OC, blockSize])
        u.withUnsafeBufferPointer { up in
            let U = up.baseAddress!
            var i1 = 0
            while i1 < end {
                let i2 = min(i1 + blockSize, end), B = i2 - i1
                beginBlock(i1..<i2, w)
                losses.withUnsafeMutableBufferPointer { lossp in
                    Parallel.forEachChunk(OC, minChunk: 8) { rows in
                        for r in rows {
                            let row = w + r * C, e = err.data + r * blockSize
                            var j = i1
                            // Later columns outside the block have not received this block's updates yet.
                            let current: Current = { c in
                                if c < i2 { return row[c] }
                                var v = row[c]
                                for k in i1..<j { v -= e[k - i1] * U[k * C + c] }
                                return v
                            }
                            var loss = 0.0
                            while j < i2 {
                                let d = U[j * C + j], x = row[j]
                                let q = column(r, j, row, current)
                                let ej = (x - q) / d
                                row[j] = q
                                e[j - i1] = ej
                                loss += Double(ej) * Double(ej) / 2
                                if ej != 0 {
                                    let uj = U + j * C
                                    for c in (j + 1)..<i2 { row[c] -= ej * uj[c] }
                                }
                                j += 1
                            }
                            lossp[r] += loss
                        }
                    }
                }
                // Lazy batch update of every later column: W[:, i2...] −= E (OC, B) · U[i1..<i2, i2...].
                if i2 < C {
                    BLAS.gemm(m: OC, n: C - i2, k: B, alpha: -1, a: err.data, lda: blockSize, b: U + i1 * C + i2,
                              ldb: C,
                              beta: 1, c: w + i2, ldc: C)
                }
                i1 = i2
            }
        }
        return losses.reduce(0, +)
    }

    /// Columns of W (rows, cols) reordered: out[:, j] = W[:, order[j]] (inverse: `inverse: true`).
    static func permuteColumns(_ w: Tensor, _ order: [Int], inverse: Bool = false) -> Tensor {
        let OC = w.shape[0], C = w.shape[1], out = Tensor(shape: w.shape)
        for r in 0..<OC {
            for j in 0..<C {
                if inverse { out[r * C + order[j]] = w[r * C + j] } else { out[r * C + j] = w[r * C + order[j]] }
            }
        }
        return out
    }
}
