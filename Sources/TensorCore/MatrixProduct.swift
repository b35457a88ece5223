import DNNLBridge
import Foundation

/// The precision of the model's matrix products (issue 29).
///
/// - `fp32`: float32 inputs and accumulation, OpenBLAS's sgemm (the default; every published figure uses it).
/// - `bf16`: both inputs rounded to bfloat16 (round to nearest even), products accumulated in float32, outputs
///   float32, by oneDNN's kernels: AMX tiles where the CPU has them, else AVX512-BF16's `vdpbf16ps`.
///   Norm statistics, softmax, losses, reductions, optimizer state and master weights stay float32.
public enum Precision: String, CaseIterable, Codable, Sendable {
    case fp32, bf16
}

/// The door for the model's matrix products (linear layers of every weight representation, attention's QKᵀ and
/// PV, the LM head, and their backward): `gemm` runs them in `MatrixProduct.precision`. SparseGPT's and GPTQ's
/// Hessians stay float32 whatever the setting (`gramUpper` takes its precision explicitly: float32 unless a recipe
/// sets `hessian_precision`), and so do their factorizations and weight updates (`BLAS` directly).
///
/// bf16 products go to oneDNN's matmul (Debian libdnnl 2.6). A primitive is created once per shape, transposes,
/// leading dimensions, alpha, beta and thread count, and kept. Operands are converted to bf16 by our own
/// AVX512-BF16 loop in their storage order (oneDNN's kernels copy them into their blocked layouts per block);
/// inside `withWeightCache`, a weight (the B operand named by `weight:`) is converted once and its copy serves
/// every product reading it, forward and backward, until the scope ends or `invalidateWeights()` (after each
/// optimizer step) drops the copies; inside `withBF16Copy`, an activation several products read (q/k/v's input) is
/// converted once; `gemm16` takes operands its caller converted into a layout of its own. Products of ≥ 2^20
/// multiply-adds run as single-threaded calls on our workers (`BF16Matmul.split`), so oneDNN's OpenMP threads never
/// spin beside them.
public enum MatrixProduct {
    /// The precision `gemm` runs in. Set once by a command before any model work (the CLI's `--precision`);
    /// `bf16` must pass `checkSupport` first.
    nonisolated(unsafe) public static var precision: Precision = .fp32

    /// Who runs float32 products: OpenBLAS (the default, every published figure) or oneDNN's float32 kernels
    /// (`compress bench --products` measures both on the model's shapes). `COMPRESS_FP32_LIBRARY=onednn` selects
    /// oneDNN for a whole run.
    public enum Float32Library: String, Sendable { case openBLAS, oneDNN }
    nonisolated(unsafe) public static var float32Library =
        ProcessInfo.processInfo.environment["COMPRESS_FP32_LIBRARY"] == "onednn" ? Float32Library.oneDNN : .openBLAS

    /// Why this CPU cannot run bf16 products at hardware speed, or nil when it can (AMX or AVX512-BF16).
    public static func bf16Unsupported(_ f: CPUFeatures = .current) -> String? {
        if f.amxBF16 && f.osSavesAMX || f.avx512bf16 && f.osSavesAVX512 { return nil }
        return "bf16 matrix products need AMX (amx_bf16) or AVX512-BF16 (avx512_bf16); this CPU has neither "
            + "(cpuid), so bf16 would be emulated and slower than float32: use --precision fp32"
    }

    /// Selects `p` for all following products; throws (before any work) when the CPU cannot run it. On an AMX
    /// CPU, asks Linux for the tile-data permission first (arch_prctl), as oneDNN needs it.
    public static func select(_ p: Precision) throws {
        if p == .bf16 { try prepareBF16() }
        precision = p
    }

    /// Throws when this CPU cannot run bf16 products (`bf16Unsupported`); on an AMX CPU, asks Linux for the
    /// tile-data permission (arch_prctl). For work that runs bf16 products whatever `precision` is (`gramUpper`'s
    /// explicit precision).
    public static func prepareBF16() throws {
        if let reason = bf16Unsupported() { throw PrecisionError(reason) }
        if CPUFeatures.current.amxBF16 { _ = compress_request_amx() }
    }

    /// Runs `body` with products in `p` (already selected once, or fp32), then restores the precision: e.g. a base
    /// model's reference, which is the float32 truth a bf16 run is measured against.
    public static func withPrecision<R>(_ p: Precision, _ body: () throws -> R) rethrows -> R {
        let saved = precision
        precision = p
        defer { precision = saved }
        return try body()
    }

    /// What ran the products, as reports name it: "float32 (OpenBLAS Cooperlake (automatic))",
    /// "bf16 (oneDNN 2.6.3, AMX)" or "bf16 (oneDNN 2.6.3, AVX512-BF16)".
    public static var kernels: String {
        switch precision {
        case .fp32:
            float32Library == .openBLAS
                ? "float32 (OpenBLAS \(BLAS.coreName))"
                : "float32 (oneDNN \(String(cString: compress_dnnl_version())), "
                    + "\(String(cString: compress_dnnl_isa())))"
        case .bf16: "bf16 (oneDNN \(String(cString: compress_dnnl_version())), \(bf16ISA))"
        }
    }

    /// The ISA oneDNN's bf16 kernels use here: "AMX", "AVX512-BF16", or another name when bf16 is unsupported.
    public static var bf16ISA: String { String(cString: compress_dnnl_isa()) }

    /// C (m, n) = alpha · op(A) (m, k) · op(B) (k, n) + beta · C, row-major with leading dimensions, in
    /// `precision`. `weight`: the tensor B points into when B is a model weight (its bf16 copy is cached inside
    /// `withWeightCache`); nil for activations. `a16` / `b16`: bf16 copies of A / B in the same layout (same
    /// leading dimension, `convertToBF16`), made once by a caller that multiplies the same operand many times
    /// (attention's K, V, Q, dO); used in bf16, ignored in float32.
    @inlinable
    public static func gemm(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int, weight: Tensor? = nil,
        a16: UnsafePointer<UInt16>? = nil, b16: UnsafePointer<UInt16>? = nil
    ) {
        if precision == .fp32 && float32Library == .openBLAS || k == 0 {
            BLAS.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                      beta: beta, c: c, ldc: ldc)
            return
        }
        if m == 0 || n == 0 { return }
        if BLAS.splitting && BLAS.threads > 1 && Double(m) * Double(n) * Double(k) >= BLAS.splitMinimumMultiplyAdds {
            BF16Matmul.split(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b,
                             ldb: ldb, beta: beta, c: c, ldc: ldc, weight: weight, a16: a16, b16: b16)
            return
        }
        BF16Matmul.run(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                       beta: beta, c: c, ldc: ldc, threads: BLAS.threads, weight: weight, a16: a16, b16: b16)
    }

    /// C (m, n) = alpha · op(A) · op(B) + beta · C with both operands already bf16 (rounded as `convertToBF16`
    /// rounds), row-major with leading dimensions lda / ldb, float32 accumulation and output: for a caller that keeps
    /// an operand in a layout of its own (attention's per-head V, its probabilities). bf16 precision only; k ≥ 1.
    public static func gemm16(
        transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int, alpha: Float = 1,
        a16: UnsafePointer<UInt16>, lda: Int, b16: UnsafePointer<UInt16>, ldb: Int, beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        precondition(precision == .bf16 && k >= 1, "gemm16 runs bf16 products of k ≥ 1 only")
        if m == 0 || n == 0 { return }
        if BLAS.splitting && BLAS.threads > 1 && Double(m) * Double(n) * Double(k) >= BLAS.splitMinimumMultiplyAdds {
            BF16Matmul.split(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: nil, lda: lda, b: nil,
                             ldb: ldb, beta: beta, c: c, ldc: ldc, weight: nil, a16: a16, b16: b16)
            return
        }
        BF16Matmul.run(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: nil, lda: lda, b: nil,
                       ldb: ldb, beta: beta, c: c, ldc: ldc, threads: BLAS.threads, weight: nil, a16: a16, b16: b16)
    }

    /// C (n, n) = Aᵀ A for A (k, n) row-major with leading dimension lda: the Gram matrix of A's k rows
    /// (Σ_t a_t a_tᵀ, e.g. a calibration window's Σ_t x_t x_tᵀ for SparseGPT's and GPTQ's Hessians), in the
    /// precision `p` given (not `precision`: the Hessians stay float32 in a bf16 run unless a recipe asks).
    /// The upper triangle (diagonal included) is the result; the lower triangle is scratch (float32 leaves it
    /// untouched, bf16 overwrites part of it). bf16 needs `prepareBF16` to have succeeded.
    /// - fp32: `BLAS.gramUpper` (OpenBLAS ssyrk, split on the workers).
    /// - bf16: A rounded to bf16 once, products accumulated in float32 (the Gram matrix of the bf16-rounded rows;
    ///   what that does to SparseGPT: Passes/Layerwise.swift), in column blocks
    ///   [c0, c1) of `gramBlock` columns: C[0..<c1, c0..<c1] = A[:, 0..<c1]ᵀ A[:, c0..<c1], the blocks above and on
    ///   the diagonal only, (P + 1) / 2P of the full product's work for P blocks; one single-threaded oneDNN call
    ///   per block on the workers, the largest first. On SmolLM2's shapes (k = 2048, n = 576 and 1536) a block of
    ///   96 columns runs at 173-181 GFLOP/s of the triangle's work per thread against ssyrk's 94-98 (Zen 4,
    ///   AVX512-BF16).
    public static func gramUpper(n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, c: UnsafeMutablePointer<Float>,
                                 ldc: Int, precision p: Precision) {
        if n == 0 { return }
        guard p == .bf16, k > 0 else {
            BLAS.gramUpper(n: n, k: k, a: a, lda: lda, c: c, ldc: ldc)
            return
        }
        let a16 = UnsafeMutablePointer<UInt16>.allocate(capacity: k * n)
        defer { a16.deallocate() }
        Parallel.forEachChunk(k, minChunk: 64) { r in
            compress_to_bf16(a + r.lowerBound * lda, Int64(r.count), Int64(n), Int64(lda), a16 + r.lowerBound * n)
        }
        let blocks = (n + gramBlock - 1) / gramBlock
        let run = { (i: Int) in
            let block = blocks - 1 - i, c0 = block * gramBlock, c1 = min(n, c0 + gramBlock)
            BF16Matmul.run(transA: true, transB: false, m: c1, n: c1 - c0, k: k, alpha: 1, a: nil, lda: n, b: nil,
                           ldb: n, beta: 0, c: c + c0, ldc: ldc, threads: 1, weight: nil, a16: a16,
                           b16: a16 + c0)
        }
        // The oneDNN calls read the global precision: bf16 for their duration (no other product runs meanwhile).
        withPrecision(.bf16) {
            if Parallel.threads > 1 && blocks > 1 {
                DispatchQueue.concurrentPerform(iterations: blocks, execute: run)
            } else {
                for i in 0..<blocks { run(i) }
            }
        }
    }

    /// `gramUpper` of several matrices A_i (k, n) into C_i, in precision `p`: float32 runs them side by side, one
    /// single-threaded ssyrk per worker (`BLAS.gramUpperEach`, each C_i the float `gramUpper` gives); bf16 runs
    /// them one after another, each split over the workers.
    public static func gramUpper(n: Int, k: Int, each a: [UnsafePointer<Float>], lda: Int,
                                 into c: [UnsafeMutablePointer<Float>], ldc: Int, precision p: Precision) {
        precondition(a.count == c.count, "\(a.count) inputs for \(c.count) Gram matrices")
        if p == .bf16 {
            for i in a.indices { gramUpper(n: n, k: k, a: a[i], lda: lda, c: c[i], ldc: ldc, precision: p) }
        } else {
            BLAS.gramUpperEach(n: n, k: k, a: a, lda: lda, c: c, ldc: ldc)
        }
    }

    /// `gramUpper`'s column block in bf16 (measured: 64 is slower, 128 and 192 no faster; the issue 29 notes).
    public static let gramBlock = 96

    /// dst[0..<count] = src[0..<count] rounded to bf16 (to nearest even; denormals to zero, as AVX512-BF16 does):
    /// the copy `gemm`'s `a16` / `b16` take. Spread over the workers (call it outside parallel loops).
    public static func convertToBF16(_ src: UnsafePointer<Float>, count: Int, into dst: UnsafeMutablePointer<UInt16>) {
        Parallel.forEachChunk(count, minChunk: 1 << 16) { r in
            compress_to_bf16(src + r.lowerBound, 1, Int64(r.count), Int64(r.count), dst + r.lowerBound)
        }
    }

    /// Runs `body` with one bf16 copy of the activation x[0..<count] (`convertToBF16`) serving every bf16 product
    /// whose A or B (an activation, not a `weight:`) lies inside it: the input that q/k/v (or gate/up) share is
    /// converted once instead of once per projection, and a weight gradient's input once instead of once per
    /// worker's slice. x must not change inside. In float32, or when x is already covered, just runs `body`.
    /// Call outside parallel loops (the copy is made on the workers; products on any thread read it).
    public static func withBF16Copy<R>(of x: UnsafePointer<Float>, count: Int, _ body: () throws -> R) rethrows -> R {
        guard precision == .bf16, count > 0, BF16Matmul.operandCopy(x, rows: 1, cols: count, ld: count) == nil else {
            return try body()
        }
        let copy = UnsafeMutablePointer<UInt16>.allocate(capacity: count)
        convertToBF16(x, count: count, into: copy)
        BF16Matmul.lock.lock(); BF16Matmul.operands.append((x, count, copy)); BF16Matmul.lock.unlock()
        defer {
            BF16Matmul.lock.lock()
            BF16Matmul.operands.removeAll { $0.copy == copy }
            BF16Matmul.lock.unlock()
            copy.deallocate()
        }
        return try body()
    }

    /// Runs `body` with bf16 copies of weights kept between calls (a forward pass over many windows, a training
    /// step's forward and backward). Weights must not change inside, except through `invalidateWeights()`.
    public static func withWeightCache<R>(_ body: () throws -> R) rethrows -> R {
        BF16Matmul.lock.lock(); BF16Matmul.cacheDepth += 1; BF16Matmul.lock.unlock()
        defer {
            BF16Matmul.lock.lock()
            BF16Matmul.cacheDepth -= 1
            if BF16Matmul.cacheDepth == 0 { BF16Matmul.packed.removeAll() }
            BF16Matmul.lock.unlock()
        }
        return try body()
    }

    /// Drops every cached bf16 weight copy (call after weights change, e.g. after an optimizer step).
    public static func invalidateWeights() {
        BF16Matmul.lock.lock(); BF16Matmul.packed.removeAll(); BF16Matmul.lock.unlock()
    }

    /// Bytes held by cached bf16 weight copies.
    public static var cachedWeightBytes: Int {
        BF16Matmul.lock.lock(); defer { BF16Matmul.lock.unlock() }
        return BF16Matmul.packed.values.reduce(0) { $0 + $1.bytes }
    }
}

/// A precision the CPU cannot run (see `MatrixProduct.select`).
public struct PrecisionError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// oneDNN bf16 primitives and packed weights (behind `MatrixProduct`).
@usableFromInline
enum BF16Matmul {
    @usableFromInline
    struct Key: Hashable {
        var m, n, k: Int
        var transA, transB: Bool
        var lda, ldb, ldc: Int
        var alpha, beta: Float
        var threads: Int
        /// false: oneDNN's float32 kernels (`bench --products` compares them with OpenBLAS).
        var bf16: Bool
        /// A / B come converted by the caller, with the float32 layout's leading dimension (`gemm`'s a16 / b16).
        var aStrided, bStrided: Bool
        @usableFromInline
        init(m: Int, n: Int, k: Int, transA: Bool, transB: Bool, lda: Int, ldb: Int, ldc: Int, alpha: Float,
             beta: Float, threads: Int, bf16: Bool = true, aStrided: Bool = false, bStrided: Bool = false) {
            self.m = m; self.n = n; self.k = k; self.transA = transA; self.transB = transB
            self.lda = lda; self.ldb = ldb; self.ldc = ldc; self.alpha = alpha; self.beta = beta
            self.threads = threads; self.bf16 = bf16; self.aStrided = aStrided && bf16; self.bStrided = bStrided && bf16
        }
    }

    /// A weight's bf16 copy: the rows × cols block of its storage that B covers (row-major, B's leading dimension
    /// dropped). The same copy serves every product reading that block, transposed or not (a linear layer's
    /// forward reads W as Bᵀ, its input gradient as B: the same storage).
    struct PackedKey: Hashable {
        let tensor: ObjectIdentifier
        let offset: Int
        let rows, cols, ld: Int
    }

    final class Packed {
        let tensor: Tensor   // held so its identity cannot be reused while the copy lives
        let data: UnsafeMutableRawPointer
        let bytes: Int
        init(tensor: Tensor, bytes: Int) {
            self.tensor = tensor
            self.bytes = bytes
            data = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 64), alignment: 64)
        }
        deinit { data.deallocate() }
    }

    final class Primitive: @unchecked Sendable {
        let handle: OpaquePointer
        init(_ h: OpaquePointer) { handle = h }
        deinit { compress_bf16_matmul_destroy(handle) }
    }

    nonisolated(unsafe) static var primitives: [Key: Primitive] = [:]
    nonisolated(unsafe) static var packed: [PackedKey: Packed] = [:]
    nonisolated(unsafe) static var cacheDepth = 0
    /// Activations converted once for many products (`MatrixProduct.withBF16Copy`): float range, its bf16 copy.
    typealias OperandCopy = (base: UnsafePointer<Float>, count: Int, copy: UnsafeMutablePointer<UInt16>)
    nonisolated(unsafe) static var operands: [OperandCopy] = []
    static let lock = NSLock()

    static func primitive(_ key: Key) -> Primitive {
        lock.lock(); defer { lock.unlock() }
        if let p = primitives[key] { return p }
        var message = [CChar](repeating: 0, count: 256)
        guard let h = compress_bf16_matmul_create(
            Int64(key.m), Int64(key.n), Int64(key.k), key.transA ? 1 : 0, key.transB ? 1 : 0, Int64(key.lda),
            Int64(key.ldb), Int64(key.ldc), key.alpha, key.beta, Int32(key.threads), key.bf16 ? 1 : 0,
            key.aStrided ? 1 : 0, key.bStrided ? 1 : 0, &message, message.count)
        else {
            fatalError("bf16 matrix product (\(key.m) × \(key.k)) · (\(key.k) × \(key.n)): \(String(cString: message))")
        }
        let p = Primitive(h)
        primitives[key] = p
        return p
    }

    /// One oneDNN call. Each operand comes as float32 (`a` / `b`) or bf16 (`a16` / `b16`, which wins in bf16); a
    /// float operand may be nil only when its bf16 copy is given. In bf16, an activation operand that a
    /// `withBF16Copy` scope covers is read from that copy.
    @usableFromInline
    static func run(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>?,
                    lda: Int, b: UnsafePointer<Float>?, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                    threads: Int, weight: Tensor?, a16: UnsafePointer<UInt16>?, b16: UnsafePointer<UInt16>?) {
        let start = BLAS.profiling ? DispatchTime.now().uptimeNanoseconds : 0
        let bf16 = MatrixProduct.precision == .bf16
        var a16 = a16, b16 = b16
        if bf16, a16 == nil, let a, !operands.isEmpty {
            a16 = operandCopy(a, rows: transA ? k : m, cols: transA ? m : k, ld: lda)
        }
        if bf16, b16 == nil, weight == nil, let b, !operands.isEmpty {
            b16 = operandCopy(b, rows: transB ? n : k, cols: transB ? k : n, ld: ldb)
        }
        precondition((a16 != nil && bf16 || a != nil) && (b16 != nil && bf16 || b != nil), "a product without operand")
        let key = Key(m: m, n: n, k: k, transA: transA, transB: transB, lda: lda, ldb: ldb, ldc: ldc, alpha: alpha,
                      beta: beta, threads: threads, bf16: bf16, aStrided: a16 != nil, bStrided: b16 != nil)
        let p = primitive(key)
        let aIn = bf16 && a16 != nil ? nil : a, aIn16 = bf16 ? UnsafeRawPointer(a16) : nil
        var bIn: UnsafePointer<Float>? = bf16 && b16 != nil ? nil : b, bIn16 = bf16 ? UnsafeRawPointer(b16) : nil
        var copy: Packed?
        if let b, bIn != nil, let weight, let packed = packedWeight(weight, b: b, key: key, primitive: p) {
            copy = packed
            bIn = nil
            bIn16 = UnsafeRawPointer(packed.data)
        }
        let status = withExtendedLifetime(copy) { compress_bf16_matmul_run(p.handle, aIn, aIn16, bIn, bIn16, c) }
        if status != 0 { fatalError("oneDNN bf16 matmul failed (status \(status)) for \(key)") }
        if BLAS.profiling {
            BLAS.recordGemm(start: start, flops: 2.0 * Double(key.m) * Double(key.n) * Double(key.k),
                            shape: BLAS.shapeName(m: key.m, n: key.n, k: key.k, transA: key.transA, transB: key.transB))
        }
    }

    /// A large product as `Parallel.threads` single-threaded oneDNN calls on our own workers, on slices of C's rows
    /// (columns when n > m), like `BLAS.splitGemm`: oneDNN's OpenMP threads never run, so none spins after a
    /// product while our workers run the element-wise work that follows. Equal row slices share one primitive
    /// and one packed weight; column slices of a weight are packed apart (the cache is keyed by offset).
    @usableFromInline
    static func split(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, a: UnsafePointer<Float>?,
                      lda: Int, b: UnsafePointer<Float>?, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>,
                      ldc: Int, weight: Tensor?, a16: UnsafePointer<UInt16>?, b16: UnsafePointer<UInt16>?) {
        // Slices of 16 rows or columns (oneDNN's kernels take any size; n = 576 splits 288 + 288).
        BLAS.forEachSlice(m: m, n: n, columnAlign: 16) { byRows, lo, hi in
            if byRows {
                let offset = transA ? lo : lo * lda
                run(transA: transA, transB: transB, m: hi - lo, n: n, k: k, alpha: alpha, a: a.map { $0 + offset },
                    lda: lda, b: b, ldb: ldb, beta: beta, c: c + lo * ldc, ldc: ldc, threads: 1, weight: weight,
                    a16: a16.map { $0 + offset }, b16: b16)
            } else {
                let offset = transB ? lo * ldb : lo
                run(transA: transA, transB: transB, m: m, n: hi - lo, k: k, alpha: alpha, a: a, lda: lda,
                    b: b.map { $0 + offset }, ldb: ldb, beta: beta, c: c + lo, ldc: ldc, threads: 1, weight: weight,
                    a16: a16, b16: b16.map { $0 + offset })
            }
        }
    }

    /// The bf16 copy (same layout and leading dimension) of the rows × cols operand at p with leading dimension ld
    /// when a `withBF16Copy` scope covers it, else nil.
    static func operandCopy(_ p: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int) -> UnsafePointer<UInt16>? {
        lock.lock(); defer { lock.unlock() }
        let extent = (rows - 1) * ld + cols
        for o in operands where p >= o.base && o.base.distance(to: p) + extent <= o.count {
            return UnsafePointer(o.copy + o.base.distance(to: p))
        }
        return nil
    }

    /// The cached bf16 copy of `weight`'s block that B covers, converting it on first use; nil outside
    /// `withWeightCache` or in float32 (oneDNN reads the float32 weight itself).
    static func packedWeight(_ weight: Tensor, b: UnsafePointer<Float>, key: Key, primitive p: Primitive) -> Packed? {
        let bytes = compress_bf16_matmul_packed_b_bytes(p.handle)
        if bytes == 0 { return nil }
        let pk = PackedKey(tensor: ObjectIdentifier(weight), offset: UnsafePointer(weight.data).distance(to: b),
                           rows: key.transB ? key.n : key.k, cols: key.transB ? key.k : key.n, ld: key.ldb)
        lock.lock()
        defer { lock.unlock() }
        guard cacheDepth > 0 else { return nil }
        if let hit = packed[pk] { return hit }
        let copy = Packed(tensor: weight, bytes: bytes)
        let status = compress_bf16_matmul_pack_b(p.handle, b, copy.data)
        if status != 0 { fatalError("bf16 weight conversion failed (status \(status))") }
        packed[pk] = copy
        return copy
    }
}
