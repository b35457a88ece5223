import CKernels
import DNNLBridge
import Foundation
import RealModule

/// Causal self-attention with grouped-query heads, optionally windowed (sliding-window attention).
///   S = Q_h K_gᵀ · s,  P = softmax(S with j > i masked, and j ≤ i − window masked when windowed),
///   O_h = P V_g,   g = h / (H / G),   s = `scale` (default 1/√D; Gemma 3: 1/√query_pre_attn_scalar)
/// A window of w lets query i see keys i − w + 1 ... i (w keys, itself included), as transformers'
/// `sliding_window_overlay` (kv_idx > q_idx − sliding_window) and llama.cpp's LLAMA_SWA_TYPE_STANDARD.
/// q (T, H, D), k (T, G, D), v (T, G, D) -> out (T, H, D). Query rows are processed in blocks of
/// `AttentionForward.blockRows`; a block only multiplies against the keys it can see (from the window start of
/// its first row to its last row), so masked scores are mostly never computed. Each product is one GEMM on
/// strided views (no copies; in bf16, K and V are converted once per call and the blocks read the copies, and the
/// softmax's exponentials are written as bf16 by the exp kernel itself, `causalExpRowsBF16`).
///
/// Threading: the (head, block) tasks are spread over `Parallel.threads` workers, each calling BLAS
/// single-threaded with its own score scratch. OpenBLAS's own threads are switched off for the duration
/// (they would otherwise spin against our workers during the softmax).
public enum AttentionForward {
    /// Query rows per block; each worker's scratch holds blockRows × T scores.
    public static let blockRows = 128

    /// Scratch floats needed for a window of T tokens (all workers).
    public static func scratchCount(tokens T: Int) -> Int { Parallel.threads * min(blockRows, T) * T }

    /// The first key a block of query rows starting at i0 can see under `window` (0 when not windowed).
    @inline(__always)
    static func firstKey(_ i0: Int, window: Int?) -> Int { window.map { max(0, i0 - $0 + 1) } ?? 0 }
}

/// bf16 copies of attention's operands (`MatrixProduct.convertToBF16`), made once per call when products run in
/// bf16, so that each of a window's query blocks does not convert the same K and V (and, backward, Q and dO)
/// again; nil entries in float32. Freed by the caller (`deallocate`).
struct AttentionBF16Operands {
    let copies: [UnsafeMutablePointer<UInt16>?]
    init(_ operands: [(UnsafePointer<Float>, Int)]) {
        guard MatrixProduct.precision == .bf16 else {
            copies = operands.map { _ in nil }
            return
        }
        copies = operands.map { src, count in
            let dst = UnsafeMutablePointer<UInt16>.allocate(capacity: max(count, 1))
            MatrixProduct.convertToBF16(src, count: count, into: dst)
            return dst
        }
    }
    subscript(_ i: Int) -> UnsafeMutablePointer<UInt16>? { copies[i] }
    func deallocate() { for c in copies { c?.deallocate() } }
}

/// Fast causal GQA attention; `scores` must hold `AttentionForward.scratchCount(tokens: T)` floats.
/// `window`: sliding-window size in tokens (nil: full causal); `scale`: score multiplier (nil: 1/√D).
public func attentionForward(
    out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int, scores: UnsafeMutablePointer<Float>,
    window: Int? = nil, scale: Float? = nil
) {
    precondition(H % G == 0, "query heads \(H) not a multiple of KV heads \(G)")
    precondition(window.map { $0 >= 1 } ?? true, "attention window \(window!) < 1")
    let group = H / G, scale = scale ?? 1 / Float(D).squareRoot()
    let B = AttentionForward.blockRows, blocks = (T + B - 1) / B
    let blasThreads = BLAS.threads, profiled = BLAS.inAttention
    BLAS.threads = 1
    BLAS.inAttention = true
    defer { BLAS.threads = blasThreads; BLAS.inAttention = profiled }
    // bf16 products, where the CPU has the fused exp kernel: the exponentials go straight to a bf16 block (PV's A),
    // V is converted once into a per-head layout (G, T, D) and PV writes a dense block, which oneDNN runs with its
    // brgemm kernels (measured 217 against 178 GFLOP/s per thread for the strided V and O it otherwise gets).
    let fusedBF16 = MatrixProduct.precision == .bf16 && SIMDKernels.expRowBF16
    let bf16 = AttentionBF16Operands(fusedBF16 ? [(k, T * G * D)] : [(k, T * G * D), (v, T * G * D)])
    defer { bf16.deallocate() }
    let k16 = bf16[0], v16 = fusedBF16 ? nil : bf16[1]
    let vHeads: UnsafeMutablePointer<UInt16>? = fusedBF16 ? .allocate(capacity: G * T * D) : nil
    defer { vHeads?.deallocate() }
    if let vHeads {
        Parallel.forEachChunk(T, minChunk: 256) { r in
            for g in 0..<G {
                compress_to_bf16(v + r.lowerBound * G * D + g * D, Int64(r.count), Int64(D), Int64(G * D),
                                 vHeads + g * T * D + r.lowerBound * D)
            }
        }
    }
    // Tasks in head-major order: every worker gets whole heads' worth of mixed short and long blocks.
    Parallel.forEachChunkIndexed(H * blocks) { worker, tasks in
        let p = scores + worker * min(B, T) * T
        let p16 = fusedBF16 ? UnsafeMutablePointer<UInt16>.allocate(capacity: min(B, T) * T) : nil
        let oBlock = fusedBF16 ? UnsafeMutablePointer<Float>.allocate(capacity: min(B, T) * D) : nil
        defer { p16?.deallocate(); oBlock?.deallocate() }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: B) { invBuf in
            let inv = invBuf.baseAddress!
            for task in tasks {
                let h = task / blocks, g = h / group
                let i0 = (task % blocks) * B, i1 = min(i0 + B, T), rows = i1 - i0
                let j0 = AttentionForward.firstKey(i0, window: window), n = i1 - j0
                // p (rows, n) = Q[i0..<i1, h] · K[j0..<i1, g]ᵀ · scale
                let kv = j0 * G * D + g * D
                MatrixProduct.gemm(
                    transB: true, m: rows, n: n, k: D, alpha: scale, a: q + i0 * H * D + h * D, lda: H * D,
                    b: k + kv, ldb: G * D, c: p, ldc: n, b16: k16.map { $0 + kv })
                if let p16 {
                    causalExpRowsBF16(p, into: p16, rows: rows, columns: n, firstRow: i0 - j0, window: window,
                                      inverseSums: inv)
                } else {
                    causalExpRows(p, rows: rows, columns: n, firstRow: i0 - j0, window: window, inverseSums: inv)
                }
                // O[i0..<i1, h] = diag(inv) · E (rows, n) · V[j0..<i1, g]: the softmax's row scaling is applied to
                // the D outputs of a row instead of its n probabilities.
                let o = out + i0 * H * D + h * D
                if let p16, let vHeads, let oBlock {
                    MatrixProduct.gemm16(m: rows, n: D, k: n, a16: p16, lda: n, b16: vHeads + g * T * D + j0 * D,
                                         ldb: D, c: oBlock, ldc: D)
                    for r in 0..<rows {
                        let orow = o + r * H * D, brow = oBlock + r * D, s = inv[r]
                        for d in 0..<D { orow[d] = brow[d] * s }
                    }
                    continue
                }
                MatrixProduct.gemm(
                    m: rows, n: D, k: n, a: p, lda: n, b: v + kv, ldb: G * D, c: o, ldc: H * D,
                    b16: v16.map { $0 + kv })
                for r in 0..<rows {
                    let orow = o + r * H * D, s = inv[r]
                    for d in 0..<D { orow[d] *= s }
                }
            }
        }
    }
}

/// The columns [lo, hi) row r of a score block sees: query i = firstRow + r (columns numbered from the block's
/// first key) sees columns up to i, and, under a window w, from i − w + 1.
@inline(__always)
func visibleColumns(row r: Int, firstRow: Int, window: Int?) -> (lo: Int, hi: Int) {
    let i = firstRow + r
    return (window.map { max(0, i - $0 + 1) } ?? 0, i + 1)
}

/// Row r of p (rows, columns) belongs to query i = firstRow + r: p[r, j] = exp(p[r, j] - max_j p[r, j]) for
/// the visible j (`visibleColumns`), zero elsewhere; inverseSums[r] = 1 / Σ_j p[r, j] (the softmax is
/// p[r] · inverseSums[r]).
@inline(__always)
func causalExpRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, firstRow: Int, window: Int? = nil,
                   inverseSums: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
        let row = p + r * columns, (lo, hi) = visibleColumns(row: r, firstRow: firstRow, window: window)
        inverseSums[r] = 1 / expRow(row + lo, count: hi - lo)
        if lo > 0 { row.update(repeating: 0, count: lo) }
        if hi < columns { (row + hi).update(repeating: 0, count: columns - hi) }
    }
}

/// `causalExpRows` with the exponentials written as bf16 to p16 (rows, columns; zero bits where masked) and p left
/// as the scores: the same floats and sums (`compress_exp_row_bf16`), rounded as the bf16 product would round them.
/// Only where `SIMDKernels.expRowBF16`.
@inline(__always)
func causalExpRowsBF16(_ p: UnsafePointer<Float>, into p16: UnsafeMutablePointer<UInt16>, rows: Int, columns: Int,
                       firstRow: Int, window: Int? = nil, inverseSums: UnsafeMutablePointer<Float>) {
    for r in 0..<rows {
        let row = p + r * columns, row16 = p16 + r * columns
        let (lo, hi) = visibleColumns(row: r, firstRow: firstRow, window: window)
        inverseSums[r] = 1 / compress_exp_row_bf16(row + lo, hi - lo, row16 + lo)
        if lo > 0 { row16.update(repeating: 0, count: lo) }
        if hi < columns { (row16 + hi).update(repeating: 0, count: columns - hi) }
    }
}

/// Row r of p (rows, columns) belongs to query i = firstRow + r: softmax over its visible columns, zero elsewhere.
@inline(__always)
func causalSoftmaxRows(_ p: UnsafeMutablePointer<Float>, rows: Int, columns: Int, firstRow: Int, window: Int? = nil) {
    withUnsafeTemporaryAllocation(of: Float.self, capacity: rows) { invBuf in
        let inv = invBuf.baseAddress!
        causalExpRows(p, rows: rows, columns: columns, firstRow: firstRow, window: window, inverseSums: inv)
        for r in 0..<rows {
            let row = p + r * columns, s = inv[r], (lo, hi) = visibleColumns(row: r, firstRow: firstRow, window: window)
            for j in lo..<hi { row[j] *= s }
        }
    }
}

/// Reference of `attentionForward`: naive loops, Double, libm exp, every visible score.
public func attentionForwardReference(
    out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int, window: Int? = nil, scale: Float? = nil
) {
    let group = H / G, scale = scale.map(Double.init) ?? 1 / Double(D).squareRoot()
    var w = [Double](repeating: 0, count: T)
    for h in 0..<H {
        let g = h / group
        for i in 0..<T {
            var m = -Double.infinity
            let first = window.map { max(0, i - $0 + 1) } ?? 0
            for j in first...i {
                var dot = 0.0
                for d in 0..<D { dot += Double(q[(i * H + h) * D + d]) * Double(k[(j * G + g) * D + d]) }
                w[j] = dot * scale
                m = max(m, w[j])
            }
            var s = 0.0
            for j in first...i { w[j] = Foundation.exp(w[j] - m); s += w[j] }
            for d in 0..<D {
                var acc = 0.0
                for j in first...i { acc += w[j] * Double(v[(j * G + g) * D + d]) }
                out[(i * H + h) * D + d] = Float(acc / s)
            }
        }
    }
}

/// Backward of causal GQA attention. The probabilities are recomputed block by block from q and k (as
/// FlashAttention does) instead of being stored, so memory stays O(T) per head. For a block of query rows:
///   P = causal softmax(Q Kᵀ · s),  dP = dO Vᵀ,  dS = P ⊙ (dP - rowsum(P ⊙ dP))
///   dQ += dS K · s,   dK += dSᵀ Q · s,   dV += Pᵀ dO          (s = `scale`; rowsum(P ⊙ dP) = rowsum(dO ⊙ O))
/// with the forward's mask (`window`); a block touches only the keys it sees.
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
    rows T: Int, heads H: Int, kvHeads G: Int, headDim D: Int, scratch: UnsafeMutablePointer<Float>,
    window: Int? = nil, scale: Float? = nil
) {
    precondition(H % G == 0, "query heads \(H) not a multiple of KV heads \(G)")
    let group = H / G, scale = scale ?? 1 / Float(D).squareRoot()
    let B = AttentionForward.blockRows, blocks = (T + B - 1) / B, R = min(B, T)
    let perWorker = 2 * R * T + 2 * T * G * D, kv = T * G * D
    let blasThreads = BLAS.threads, profiled = BLAS.inAttention
    BLAS.threads = 1
    BLAS.inAttention = true
    defer { BLAS.threads = blasThreads; BLAS.inAttention = profiled }
    let bf16 = AttentionBF16Operands([(q, T * H * D), (k, kv), (v, kv), (dout, T * H * D)])
    defer { bf16.deallocate() }
    let q16 = bf16[0], k16 = bf16[1], v16 = bf16[2], dout16 = bf16[3]
    let workers = Parallel.chunkCount(H * blocks)
    Parallel.forEachChunkIndexed(H * blocks) { worker, tasks in
        let p = scratch + worker * perWorker, dp = p + R * T, dkw = dp + R * T, dvw = dkw + kv
        dkw.update(repeating: 0, count: 2 * kv)
        for task in tasks {
            let h = task / blocks, g = h / group
            let i0 = (task % blocks) * B, i1 = min(i0 + B, T), rows = i1 - i0
            let j0 = AttentionForward.firstKey(i0, window: window), n = i1 - j0
            let qo = i0 * H * D + h * D, ko = j0 * G * D + g * D
            let qb = q + qo, dob = dout + qo, kb = k + ko
            let qb16 = q16.map { $0 + qo }, dob16 = dout16.map { $0 + qo }, kb16 = k16.map { $0 + ko }
            MatrixProduct.gemm(
                transB: true, m: rows, n: n, k: D, alpha: scale, a: qb, lda: H * D, b: kb, ldb: G * D, c: p, ldc: n,
                a16: qb16, b16: kb16)
            causalSoftmaxRows(p, rows: rows, columns: n, firstRow: i0 - j0, window: window)
            // dP (rows, n) = dO_blk (rows, D) · V[j0..<i1]ᵀ
            MatrixProduct.gemm(
                transB: true, m: rows, n: n, k: D, a: dob, lda: H * D, b: v + ko, ldb: G * D, c: dp, ldc: n,
                a16: dob16, b16: v16.map { $0 + ko })
            // dV[j0..<i1] += Pᵀ (n, rows) · dO_blk (rows, D)
            MatrixProduct.gemm(
                transA: true, m: n, n: D, k: rows, a: p, lda: n, b: dob, ldb: H * D, beta: 1, c: dvw + ko, ldc: G * D,
                b16: dob16)
            for r in 0..<rows {
                let pr = p + r * n, dpr = dp + r * n,
                    (lo, hi) = visibleColumns(row: r, firstRow: i0 - j0, window: window)
                var dot: Float = 0
                for j in lo..<hi { dot = Relaxed.multiplyAdd(pr[j], dpr[j], dot) }
                for j in lo..<hi { dpr[j] = pr[j] * (dpr[j] - dot) }
                for j in 0..<lo { dpr[j] = 0 }
                for j in hi..<n { dpr[j] = 0 }
            }
            // dQ_blk += dS (rows, n) · K[j0..<i1] (n, D) · s;  dK[j0..<i1] += dSᵀ (n, rows) · Q_blk (rows, D) · s
            MatrixProduct.gemm(m: rows, n: D, k: n, alpha: scale, a: dp, lda: n, b: kb, ldb: G * D, beta: 1,
                               c: dq + qo, ldc: H * D, b16: kb16)
            MatrixProduct.gemm(
                transA: true, m: n, n: D, k: rows, alpha: scale, a: dp, lda: n, b: qb, ldb: H * D, beta: 1,
                c: dkw + ko, ldc: G * D, b16: qb16)
        }
    }
    for w in 0..<workers {
        let dkw = scratch + w * perWorker + 2 * R * T, dvw = dkw + kv
        Parallel.forEachChunk(kv, minChunk: 65536) { r in
            for i in r { dk[i] += dkw[i]; dv[i] += dvw[i] }
        }
    }
}
