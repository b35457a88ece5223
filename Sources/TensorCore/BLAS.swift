import CBLAS
import Foundation

/// The single door to matrix products: every GEMM in the workbench goes through `BLAS.gemm`.
public enum BLAS {
    /// The kernel family OpenBLAS runs and who chose it, as every report shows it: e.g. "Cooperlake (automatic)",
    /// "Haswell (OPENBLAS_CORETYPE)" when the user set the variable (BLASKernels).
    public static var coreName: String { "\(openBLASCore) (\(BLASKernels.choice.rawValue))" }

    /// Name of the kernel family OpenBLAS runs (e.g. "Haswell", "Cooperlake", "Prescott").
    public static var openBLASCore: String {
        guard let p = openblas_get_corename() else { return "unknown" }
        return String(cString: p)
    }

    /// Number of threads OpenBLAS uses.
    public static var threads: Int {
        get { Int(openblas_get_num_threads()) }
        set { openblas_set_num_threads(Int32(newValue)) }
    }

    /// Optional timing of GEMM calls, for benchmarks (off by default). Time is counted in core-seconds:
    /// a call's duration times the BLAS threads it ran on, so calls from parallel workers add up correctly.
    nonisolated(unsafe) public static var profiling = false
    nonisolated(unsafe) public static private(set) var gemmCoreSeconds: Double = 0
    nonisolated(unsafe) public static private(set) var gemmFlops: Double = 0
    /// The part of `gemmCoreSeconds` and `gemmFlops` spent in attention's QKᵀ and PV (and their backward): the
    /// attention kernels set `inAttention` while their products run.
    nonisolated(unsafe) public static private(set) var attentionCoreSeconds: Double = 0
    nonisolated(unsafe) public static private(set) var attentionFlops: Double = 0
    nonisolated(unsafe) public static var inAttention = false
    /// Core-seconds, flops and calls per product shape while `profiling` (key: "m×k·k×n", with "ᵀ" on a transposed
    /// operand and " (attention)" inside the attention kernels): where the products' time goes.
    nonisolated(unsafe) public static private(set) var shapeProfile: [String: ShapeTiming] = [:]
    public struct ShapeTiming: Sendable { public var coreSeconds = 0.0, flops = 0.0, calls = 0 }
    private static let profileLock = NSLock()
    public static func resetProfile() {
        gemmCoreSeconds = 0; gemmFlops = 0; attentionCoreSeconds = 0; attentionFlops = 0; shapeProfile = [:]
    }

    /// C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C, row-major, with leading dimensions.
    @inlinable
    public static func gemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        if splitting && threads > 1 && Double(m) * Double(n) * Double(k) >= splitMinimumMultiplyAdds {
            splitGemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
            return
        }
        let start = profiling ? DispatchTime.now().uptimeNanoseconds : 0
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
        if profiling {
            recordGemm(start: start, flops: 2.0 * Double(m) * Double(n) * Double(k),
                       shape: shapeName(m: m, n: n, k: k, transA: transA, transB: transB))
        }
    }

    /// Whether `gemm` runs a large product as `Parallel.threads` single-threaded OpenBLAS calls on our own workers
    /// (slices of C's rows, or of its columns when n > m) instead of on OpenBLAS's threads. OpenBLAS's idle threads
    /// spin (sched_yield) for about 0.1 s after every threaded call, taking a core from the softmax, norms and
    /// activations that follow; with the split they never wake (`compress bench`: 490-515 → 520-585 tokens/s on
    /// SmolLM2's shape, 2 cores). Every element of C is the float one single-threaded call gives (BLASSplitTests);
    /// OpenBLAS's own threaded path differs from that in the last bits for some shapes.
    /// `COMPRESS_BLAS_SPLIT=0` turns the split off (OpenBLAS's threads run the products again).
    nonisolated(unsafe) public static var splitting = ProcessInfo.processInfo.environment["COMPRESS_BLAS_SPLIT"] != "0"
    /// Products smaller than this (m·n·k) run as one call.
    public static let splitMinimumMultiplyAdds = 1_048_576.0

    @usableFromInline
    static func splitGemm(
        transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        forEachSlice(m: m, n: n, columnAlign: 64) { byRows, lo, hi in
            if byRows {
                gemm(transA: transA, transB: transB, m: hi - lo, n: n, k: k, alpha: alpha,
                     a: transA ? a + lo : a + lo * lda, lda: lda, b: b, ldb: ldb, beta: beta, c: c + lo * ldc, ldc: ldc)
            } else {
                gemm(transA: transA, transB: transB, m: m, n: hi - lo, k: k, alpha: alpha, a: a, lda: lda,
                     b: transB ? b + lo * ldb : b + lo, ldb: ldb, beta: beta, c: c + lo, ldc: ldc)
            }
        }
    }

    /// The split both product doors use (`splitGemm`, `MatrixProduct`'s bf16 split): `body(byRows, lo, hi)` on
    /// `Parallel.threads` workers for slices [lo, hi) of C's rows, or of its columns when n > m, each a multiple
    /// of 16 rows or `columnAlign` columns but the last; OpenBLAS runs single-threaded meanwhile.
    @usableFromInline
    static func forEachSlice(m: Int, n: Int, columnAlign: Int, _ body: (_ byRows: Bool, _ lo: Int, _ hi: Int) -> Void) {
        let saved = threads
        threads = 1
        defer { threads = saved }
        let byRows = m >= n, extent = byRows ? m : n, align = byRows ? 16 : columnAlign
        let parts = max(1, min(Parallel.threads, extent / align))
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let lo = extent * p / parts / align * align
            let hi = p == parts - 1 ? extent : extent * (p + 1) / parts / align * align
            if lo < hi { body(byRows, lo, hi) }
        }
    }

    /// Float64 C (m, n) = alpha * op(A) (m, k) * op(B) (k, n) + beta * C, row-major, with leading dimensions
    /// (for factorizations computed in double precision, e.g. the DSFormer initialisation).
    public static func gemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Double = 1, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
        beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        cblas_dgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    @usableFromInline
    static func recordGemm(start: UInt64, flops: Double, shape: String? = nil) {
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        let cores = Double(threads)
        profileLock.lock()
        gemmCoreSeconds += seconds * cores
        gemmFlops += flops
        if inAttention { attentionCoreSeconds += seconds * cores; attentionFlops += flops }
        if let shape {
            let key = inAttention ? shape + " (attention)" : shape
            shapeProfile[key, default: ShapeTiming()].coreSeconds += seconds * cores
            shapeProfile[key, default: ShapeTiming()].flops += flops
            shapeProfile[key, default: ShapeTiming()].calls += 1
        }
        profileLock.unlock()
    }

    /// "m×k·k×n" with "ᵀ" on a transposed operand: a product's key in `shapeProfile`.
    @usableFromInline
    static func shapeName(m: Int, n: Int, k: Int, transA: Bool, transB: Bool) -> String {
        "\(m)×\(k)\(transA ? "ᵀ" : "")·\(k)×\(n)\(transB ? "ᵀ" : "")"
    }
}

extension BLAS {
    /// C (n, n) = alpha · Aᵀ A + beta · C for A (k, n) row-major, upper triangle only (the lower is not
    /// touched): the Gram matrix of A's rows, e.g. Σ_t x_t x_tᵀ of k activation rows.
    /// With `splitting`, a large one runs on our workers like `gemm`'s split (no OpenBLAS thread wakes to spin
    /// afterwards): the columns of C in two or more blocks of about equal work, block [c0, c1) as the product
    /// C[0..<c0, c0..<c1] = A[:, 0..<c0]ᵀ A[:, c0..<c1] and the triangle C[c0..<c1, c0..<c1], each one
    /// single-threaded OpenBLAS call.
    public static func gramUpper(n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, beta: Float = 0,
                                 c: UnsafeMutablePointer<Float>, ldc: Int) {
        if n == 0 { return }
        let parts = min(Parallel.threads, n / 64)
        if splitting && threads > 1 && parts > 1 && Double(n) * Double(n) * Double(k) / 2 >= splitMinimumMultiplyAdds {
            let saved = threads
            threads = 1
            defer { threads = saved }
            // Column block p ends at n·√((p+1)/parts) (the upper triangle's work grows with the column's square).
            let ends = (0..<parts).map { p in
                p == parts - 1 ? n : Int((Double(n) * (Double(p + 1) / Double(parts)).squareRoot()) / 16) * 16
            }
            DispatchQueue.concurrentPerform(iterations: parts) { p in
                let c0 = p == 0 ? 0 : ends[p - 1], c1 = ends[p]
                if c1 <= c0 { return }
                if c0 > 0 {
                    gemm(transA: true, m: c0, n: c1 - c0, k: k, alpha: alpha, a: a, lda: lda, b: a + c0, ldb: lda,
                         beta: beta, c: c + c0, ldc: ldc)
                }
                gramUpper(n: c1 - c0, k: k, alpha: alpha, a: a + c0, lda: lda, beta: beta, c: c + c0 * ldc + c0,
                          ldc: ldc)
            }
            return
        }
        let start = profiling ? DispatchTime.now().uptimeNanoseconds : 0
        cblas_ssyrk(
            CblasRowMajor, CblasUpper, CblasTrans, Int32(n), Int32(k), alpha, a, Int32(lda), beta, c, Int32(ldc))
        if profiling { recordGemm(start: start, flops: Double(n) * Double(n + 1) * Double(k)) }
    }

    /// The Gram matrices C_i (n, n) = A_iᵀ A_i (upper triangle; the lower is not touched) of several matrices A_i
    /// (k, n) row-major, each one single-threaded ssyrk on one of our workers, `Parallel.threads` at a time: for a
    /// batch this beats splitting each product over the workers (`gramUpper`), whose column blocks run the gemm
    /// and syrk kernels on thinner shapes (Zen 4, 2 cores, k = 2048: 173 against 157 GFLOP/s at n = 576, 198
    /// against 182 at n = 1536, counting the triangle's n²k). Each C_i is the float one single-threaded
    /// `gramUpper` call gives (BLASSplitTests). One matrix, one worker or `splitting` off: `gramUpper` on each.
    public static func gramUpperEach(n: Int, k: Int, a: [UnsafePointer<Float>], lda: Int,
                                     c: [UnsafeMutablePointer<Float>], ldc: Int) {
        precondition(a.count == c.count, "\(a.count) inputs for \(c.count) Gram matrices")
        guard splitting && threads > 1 && Parallel.threads > 1 && a.count > 1 else {
            for i in a.indices { gramUpper(n: n, k: k, a: a[i], lda: lda, c: c[i], ldc: ldc) }
            return
        }
        let saved = threads
        threads = 1
        defer { threads = saved }
        DispatchQueue.concurrentPerform(iterations: a.count) { i in
            gramUpper(n: n, k: k, a: a[i], lda: lda, c: c[i], ldc: ldc)
        }
    }
}
