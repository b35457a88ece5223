import Foundation
import RealModule

/// Causal self-attention with grouped-query heads.
///   S = Q_h K_gᵀ / sqrt(D),  P = softmax(S with j > i masked),  O_h = P V_g,   g = h / (H / G)
/// q (T, H, D), k (T, G, D), v (T, G, D) -> out (T, H, D). Query rows are processed in blocks of
/// `AttentionForward.blockRows`; a block only multiplies against the keys it can see (0 ..< block end), so
/// the masked upper triangle is mostly never computed. Each product is one GEMM on strided views (no copies).
///
/// Threading: the (head, block) tasks are spread over `Parallel.threads` workers, each calling BLAS
/// single-threaded with its own score scratch. OpenBLAS's own threads are switched off for the duration
/// (they would otherwise spin against our workers during the softmax).
public enum AttentionForward {
    /// Query rows per block; each worker's scratch holds blockRows × T scores.
    public static let blockRows = 128

    /// Scratch floats needed for a window of T tokens (all workers).
    public static func scratchCount(tokens T: Int) -> Int { Parallel.threads * min(blockRows, T) * T }
}

/// Fast causal GQA attention; `scores` must hold `AttentionForward.scratchCount(tokens: T)` floats.
public func attentionForward(
    out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int, scores: UnsafeMutablePointer<Float>
) {
    precondition(H % G == 0, "query heads \(H) not a multiple of KV heads \(G)")
    let group = H / G, scale = 1 / Float(D).squareRoot()
    let B = AttentionForward.blockRows, blocks = (T + B - 1) / B
    let blasThreads = BLAS.threads
    BLAS.threads = 1
    defer { BLAS.threads = blasThreads }
    // Tasks in head-major order: every worker gets whole heads' worth of mixed short and long blocks.
    Parallel.forEachChunkIndexed(H * blocks) { worker, tasks in
        let p = scores + worker * min(B, T) * T
        withUnsafeTemporaryAllocation(of: Float.self, capacity: B) { invBuf in
            let inv = invBuf.baseAddress!
            for task in tasks {
                let h = task / blocks, g = h / group
                let i0 = (task % blocks) * B, i1 = min(i0 + B, T), rows = i1 - i0
                // p (rows, i1) = Q[i0..<i1, h] · K[0..<i1, g]ᵀ · scale
                BLAS.gemm(transB: true, m: rows, n: i1, k: D, alpha: scale,
                          a: q + i0 * H * D + h * D, lda: H * D, b: k + g * D, ldb: G * D, c: p, ldc: i1)
                causalExpRows(p, rows: rows, columns: i1, firstRow: i0, inverseSums: inv)
                // O[i0..<i1, h] = diag(inv) · E (rows, i1) · V[0..<i1, g]: the softmax's row scaling is applied to
                // the D outputs of a row instead of its i1 probabilities.
                let o = out + i0 * H * D + h * D
                BLAS.gemm(m: rows, n: D, k: i1, a: p, lda: i1, b: v + g * D, ldb: G * D, c: o, ldc: H * D)
                for r in 0..<rows {
                    let orow = o + r * H * D, s = inv[r]
                    for d in 0..<D { orow[d] *= s }
                }
            }
        }
    }
}

/// Row r of p (rows, columns) belongs to query i = firstRow + r: p[r, j] = exp(p[r, j] - max_j p[r, j]) for
/// j ≤ i, zero after; inverseSums[r] = 1 / Σ_j p[r, j] (the softmax is p[r] · inverseSums[r]).
@inline(__always)
func causalExpRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, firstRow: Int, inverseSums: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
        let row = p + r * columns, n = firstRow + r + 1
        let m = rowMax(row, count: n)
        var s: Float = 0
        for j in 0..<n { let e = fastExp(row[j] - m); row[j] = e; s = Relaxed.sum(s, e) }
        inverseSums[r] = 1 / s
        if n < columns { (row + n).update(repeating: 0, count: columns - n) }
    }
}

/// Row r of p (rows, columns) belongs to query i = firstRow + r: softmax over columns 0...i, zero after.
@inline(__always)
func causalSoftmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, firstRow: Int) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: rows) { invBuf in
        let inv = invBuf.baseAddress!
        causalExpRows(p, rows: rows, columns: columns, firstRow: firstRow, inverseSums: inv)
        for r in 0..<rows {
            let row = p + r * columns, s = inv[r]
            for j in 0..<(firstRow + r + 1) { row[j] *= s }
        }
    }
}

/// Reference of `attentionForward`: naive loops, Double, libm exp, full T × T scores.
public func attentionForwardReference(
    out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int
) {
    let group = H / G, scale = 1 / Double(D).squareRoot()
    var w = [Double](repeating: 0, count: T)
    for h in 0..<H {
        let g = h / group
        for i in 0..<T {
            var m = -Double.infinity
            for j in 0...i {
                var dot = 0.0
                for d in 0..<D { dot += Double(q[(i * H + h) * D + d]) * Double(k[(j * G + g) * D + d]) }
                w[j] = dot * scale
                m = max(m, w[j])
            }
            var s = 0.0
            for j in 0...i { w[j] = Foundation.exp(w[j] - m); s += w[j] }
            for d in 0..<D {
                var acc = 0.0
                for j in 0...i { acc += w[j] * Double(v[(j * G + g) * D + d]) }
                out[(i * H + h) * D + d] = Float(acc / s)
            }
        }
    }
}

/// Backward of causal GQA attention. The probabilities are recomputed block by block from q and k (as
/// FlashAttention does) instead of being stored, so memory stays O(T) per head. For a block of query rows:
///   P = causal softmax(Q Kᵀ · s),  dP = dO Vᵀ,  dS = P ⊙ (dP - rowsum(P ⊙ dP))
///   dQ += dS K · s,   dK += dSᵀ Q · s,   dV += Pᵀ dO          (s = 1/√D; rowsum(P ⊙ dP) = rowsum(dO ⊙ O))
/// Accumulates into dq (T, H, D), dk and dv (T, G, D). Query heads of one KV group write the same dk/dv
/// rows, so each worker accumulates into its own dk/dv partials, summed in worker order at the end
/// (deterministic).
public enum AttentionBackward {
    /// Scratch floats needed for a window of T tokens (all workers).
    public static func scratchCount(tokens T: Int, kvHeads G: Int, headDim D: Int) -> Int {
        Parallel.threads * (2 * min(AttentionForward.blockRows, T) * T + 2 * T * G * D)
    }
}

public func attentionBackward(
    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
    dout: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int, scratch: UnsafeMutablePointer<Float>
) {
    precondition(H % G == 0, "query heads \(H) not a multiple of KV heads \(G)")
    let group = H / G, scale = 1 / Float(D).squareRoot()
    let B = AttentionForward.blockRows, blocks = (T + B - 1) / B, R = min(B, T)
    let perWorker = 2 * R * T + 2 * T * G * D, kv = T * G * D
    let blasThreads = BLAS.threads
    BLAS.threads = 1
    defer { BLAS.threads = blasThreads }
    let workers = Parallel.chunkCount(H * blocks)
    Parallel.forEachChunkIndexed(H * blocks) { worker, tasks in
        let p = scratch + worker * perWorker, dp = p + R * T, dkw = dp + R * T, dvw = dkw + kv
        dkw.update(repeating: 0, count: 2 * kv)
        for task in tasks {
            let h = task / blocks, g = h / group
            let i0 = (task % blocks) * B, i1 = min(i0 + B, T), rows = i1 - i0
            let qb = q + i0 * H * D + h * D, dob = dout + i0 * H * D + h * D
            BLAS.gemm(transB: true, m: rows, n: i1, k: D, alpha: scale, a: qb, lda: H * D, b: k + g * D, ldb: G * D, c: p, ldc: i1)
            causalSoftmaxRows(p, rows: rows, columns: i1, firstRow: i0)
            // dP (rows, i1) = dO_blk (rows, D) · V[0..<i1]ᵀ
            BLAS.gemm(transB: true, m: rows, n: i1, k: D, a: dob, lda: H * D, b: v + g * D, ldb: G * D, c: dp, ldc: i1)
            // dV[0..<i1] += Pᵀ (i1, rows) · dO_blk (rows, D)
            BLAS.gemm(transA: true, m: i1, n: D, k: rows, a: p, lda: i1, b: dob, ldb: H * D, beta: 1, c: dvw + g * D, ldc: G * D)
            for r in 0..<rows {
                let pr = p + r * i1, dpr = dp + r * i1, n = i0 + r + 1
                var dot: Float = 0
                for j in 0..<n { dot = Relaxed.multiplyAdd(pr[j], dpr[j], dot) }
                for j in 0..<n { dpr[j] = pr[j] * (dpr[j] - dot) }
                for j in n..<i1 { dpr[j] = 0 }
            }
            // dQ_blk += dS (rows, i1) · K[0..<i1] (i1, D) · s;  dK[0..<i1] += dSᵀ (i1, rows) · Q_blk (rows, D) · s
            BLAS.gemm(m: rows, n: D, k: i1, alpha: scale, a: dp, lda: i1, b: k + g * D, ldb: G * D, beta: 1,
                      c: dq + i0 * H * D + h * D, ldc: H * D)
            BLAS.gemm(transA: true, m: i1, n: D, k: rows, alpha: scale, a: dp, lda: i1, b: qb, ldb: H * D, beta: 1,
                      c: dkw + g * D, ldc: G * D)
        }
    }
    for w in 0..<workers {
        let dkw = scratch + w * perWorker + 2 * R * T, dvw = dkw + kv
        Parallel.forEachChunk(kv, minChunk: 65536) { r in
            for i in r { dk[i] += dkw[i]; dv[i] += dvw[i] }
        }
    }
}
