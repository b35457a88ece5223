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
        for task in tasks {
            let h = task / blocks, g = h / group
            let i0 = (task % blocks) * B, i1 = min(i0 + B, T), rows = i1 - i0
            // p (rows, i1) = Q[i0..<i1, h] · K[0..<i1, g]ᵀ · scale
            BLAS.gemm(transB: true, m: rows, n: i1, k: D, alpha: scale,
                      a: q + i0 * H * D + h * D, lda: H * D, b: k + g * D, ldb: G * D, c: p, ldc: i1)
            causalSoftmaxRows(p, rows: rows, columns: i1, firstRow: i0)
            // O[i0..<i1, h] = P (rows, i1) · V[0..<i1, g]
            BLAS.gemm(m: rows, n: D, k: i1, a: p, lda: i1, b: v + g * D, ldb: G * D,
                      c: out + i0 * H * D + h * D, ldc: H * D)
        }
    }
}

/// Row r of p (rows, columns) belongs to query i = firstRow + r: softmax over columns 0...i, zero after.
@inline(__always)
func causalSoftmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, firstRow: Int) {
    for r in 0..<rows {
        let row = p + r * columns, n = firstRow + r + 1
        var m = -Float.infinity
        for j in 0..<n { m = max(m, row[j]) }
        var s: Float = 0
        for j in 0..<n { let e = fastExp(row[j] - m); row[j] = e; s = Relaxed.sum(s, e) }
        let inv = 1 / s
        for j in 0..<n { row[j] *= inv }
        for j in n..<columns { row[j] = 0 }
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
