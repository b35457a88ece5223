import DNNLBridge
import XCTest
@testable import TensorCore

/// The bf16 matrix door (issue 29) against a Float64 product of the bf16-rounded inputs: every transpose, alpha,
/// beta, leading dimensions and the packed-weight path. Skipped, with the reason, on a CPU without bf16 units; the
/// float32 path is tested everywhere (OpsTests, GradientTests).
final class MatrixProductTests: XCTestCase {
    override func setUpWithError() throws {
        if let reason = MatrixProduct.bf16Unsupported() { throw XCTSkip(reason) }
    }

    override func tearDown() { MatrixProduct.precision = .fp32 }

    /// Round to nearest even at 16 bits (bf16), written independently of oneDNN.
    static func bf16(_ x: Float) -> Double {
        let b = x.bitPattern
        let rounded = (b &+ 0x7FFF &+ ((b >> 16) & 1)) & 0xFFFF_0000
        return Double(Float(bitPattern: rounded))
    }

    /// A (rows, cols) buffer with leading dimension ld ≥ cols, filled with uniform values in [-1, 1).
    func matrix(_ rows: Int, _ cols: Int, ld: Int, rng: inout SplitMix64) -> [Float] {
        (0..<(rows * ld)).map { _ in Float.random(in: -1..<1, using: &rng) }
    }

    func check(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float, pad: Int,
               cached: Bool, file: StaticString = #filePath, line: UInt = #line) {
        var rng = SplitMix64(seed: UInt64(m * 131 + n * 17 + k + (transA ? 7 : 0) + (transB ? 3 : 0) + pad))
        let (ar, ac) = transA ? (k, m) : (m, k), (br, bc) = transB ? (n, k) : (k, n)
        let lda = ac + pad, ldb = bc + pad, ldc = n + pad
        let a = matrix(ar, ac, ld: lda, rng: &rng)
        let w = Tensor(shape: [br * ldb], values: matrix(br, bc, ld: ldb, rng: &rng))
        let c0 = matrix(m, n, ld: ldc, rng: &rng)
        var c = c0
        MatrixProduct.precision = .bf16
        let run = {
            a.withUnsafeBufferPointer { ap in
                c.withUnsafeMutableBufferPointer { cp in
                    MatrixProduct.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                       a: ap.baseAddress!, lda: lda, b: w.data, ldb: ldb, beta: beta,
                                       c: cp.baseAddress!, ldc: ldc, weight: cached ? w : nil)
                }
            }
        }
        if cached {
            MatrixProduct.withWeightCache {
                run()
                XCTAssertGreaterThan(MatrixProduct.cachedWeightBytes, 0, file: file, line: line)
                c = c0
                run()  // the second call multiplies by the packed copy
            }
            XCTAssertEqual(MatrixProduct.cachedWeightBytes, 0, "the scope's end drops the copies", file: file, line: line)
        } else {
            run()
        }
        MatrixProduct.precision = .fp32
        var worst = 0.0, scale = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var acc = 0.0
                for p in 0..<k {
                    let x = transA ? a[p * lda + i] : a[i * lda + p], y = transB ? w[j * ldb + p] : w[p * ldb + j]
                    acc += Self.bf16(x) * Self.bf16(y)
                }
                let expected = Double(alpha) * acc + Double(beta) * Double(c0[i * ldc + j])
                worst = max(worst, abs(Double(c[i * ldc + j]) - expected))
                scale = max(scale, abs(expected))
            }
            // Padding columns are never written.
            for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j], file: file, line: line) }
        }
        // Products of bf16 values are exact in float32; only the float32 accumulation of k terms rounds.
        XCTAssertLessThan(worst, 1e-5 * Double(k) * max(scale, 1), "tA \(transA) tB \(transB) \(m)×\(n)×\(k)",
                          file: file, line: line)
    }

    func testEveryTransposeAlphaBetaAndStride() {
        for transA in [false, true] {
            for transB in [false, true] {
                check(transA: transA, transB: transB, m: 37, n: 29, k: 70, alpha: 1, beta: 0, pad: 0, cached: false)
                check(transA: transA, transB: transB, m: 16, n: 48, k: 33, alpha: 0.125, beta: 1, pad: 5,
                      cached: false)
                check(transA: transA, transB: transB, m: 9, n: 64, k: 128, alpha: -2, beta: 0.5, pad: 3, cached: true)
            }
        }
    }

    /// Products of ≥ 2^20 multiply-adds run as slices on our workers (`BLAS.splitting`): rows when m ≥ n, columns
    /// (each slice of a weight packed apart) when n > m, odd sizes included; each against the Float64 reference,
    /// and every element the same float as one call on all threads gives.
    func testSplitProducts() throws {
        guard Parallel.threads > 1 else { throw XCTSkip("one worker thread: products are never split") }
        for transA in [false, true] {
            for transB in [false, true] {
                check(transA: transA, transB: transB, m: 301, n: 70, k: 64, alpha: 1, beta: 0, pad: 0, cached: true)
                check(transA: transA, transB: transB, m: 40, n: 707, k: 48, alpha: 0.5, beta: 1, pad: 3, cached: true)
                check(transA: transA, transB: transB, m: 257, n: 96, k: 50, alpha: -1, beta: 0.25, pad: 1,
                      cached: false)
            }
        }
        var rng = SplitMix64(seed: 9)
        for (m, n, k, transB) in [(301, 70, 64, true), (40, 707, 48, false)] {
            let a = matrix(m, k, ld: k, rng: &rng), b = matrix(k, n, ld: n, rng: &rng)
            func product(split: Bool) -> [Float] {
                var c = [Float](repeating: 0, count: m * n)
                BLAS.splitting = split
                defer { BLAS.splitting = true }
                MatrixProduct.precision = .bf16
                MatrixProduct.gemm(transB: transB, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: transB ? k : n, c: &c,
                                   ldc: n)
                MatrixProduct.precision = .fp32
                return c
            }
            XCTAssertEqual(product(split: true).map(\.bitPattern), product(split: false).map(\.bitPattern),
                           "\(m)×\(k)·\(k)×\(n) transB \(transB)")
        }
    }

    /// `withBF16Copy`: products whose A or B lies inside the registered activation read its bf16 copy (shown by
    /// changing the float values after the copy was made: the product still sees the old ones), bitwise what they
    /// give without the scope; an operand reaching past the range is converted from the floats; the scope ends with
    /// nothing left registered.
    func testSharedActivationCopy() {
        var rng = SplitMix64(seed: 12)
        let m = 300, k = 64, n = 80
        var x = matrix(m + 1, k, ld: k, rng: &rng)
        let w = matrix(n, k, ld: k, rng: &rng)
        func product(_ a: UnsafePointer<Float>, rows: Int) -> [Float] {
            var c = [Float](repeating: 0, count: rows * n)
            MatrixProduct.gemm(transB: true, m: rows, n: n, k: k, a: a, lda: k, b: w, ldb: k, c: &c, ldc: n)
            return c
        }
        MatrixProduct.precision = .bf16
        defer { MatrixProduct.precision = .fp32 }
        x.withUnsafeMutableBufferPointer { xb in
            let p = xb.baseAddress!
            let plain = product(p, rows: m), plainTail = product(p + k, rows: m)
            MatrixProduct.withBF16Copy(of: p, count: m * k) {
                XCTAssertEqual(product(p, rows: m).map(\.bitPattern), plain.map(\.bitPattern), "inside the copy")
                let saved = p[5]
                p[5] = saved * 1000  // row 0 changes in float; the copy keeps the old value
                XCTAssertEqual(product(p, rows: m).map(\.bitPattern), plain.map(\.bitPattern), "read from the copy")
                p[5] = saved
                // Rows 1...m reach one row past the copy: converted from the floats.
                p[m * k + 3] += 1
                XCTAssertNotEqual(product(p + k, rows: m).map(\.bitPattern), plainTail.map(\.bitPattern),
                                  "an operand past the copy reads the floats")
                p[m * k + 3] -= 1
                // B as an activation inside the copy: Xᵀ-shaped product reads the copy too.
                var c = [Float](repeating: 0, count: k * k), c0 = c
                MatrixProduct.gemm(transA: true, m: k, n: k, k: m, a: p, lda: k, b: p, ldb: k, c: &c, ldc: k)
                p[0] += 1
                MatrixProduct.gemm(transA: true, m: k, n: k, k: m, a: p, lda: k, b: p, ldb: k, c: &c0, ldc: k)
                p[0] -= 1
                XCTAssertEqual(c.map(\.bitPattern), c0.map(\.bitPattern), "A and B both read the copy")
            }
            XCTAssertTrue(BF16Matmul.operands.isEmpty, "the scope left a copy registered")
            XCTAssertEqual(product(p, rows: m).map(\.bitPattern), plain.map(\.bitPattern))
        }
    }

    /// The operands' conversion (`compress_to_bf16`) bit for bit against `vcvtneps2bf16`'s rule written here
    /// (round to nearest even, NaN made quiet, denormals to zero of their sign): random bit patterns (every class
    /// of float), exact ties both ways, the largest float (to infinity); rows of 45 (no multiple of the kernel's 16
    /// or 32 lanes) with a leading dimension of 50, whose padding never reaches the copy.
    func testConversionRoundsToNearestEven() {
        func expected(_ x: Float) -> UInt16 {
            let u = x.bitPattern
            if x.isNaN { return UInt16(u >> 16) | 0x40 }
            if x.isSubnormal { return UInt16(u >> 16) & 0x8000 }
            return UInt16((u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
        }
        var rng = SplitMix64(seed: 3)
        let rows = 7, cols = 45, ld = 50
        var src = (0..<(rows * ld)).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: rng.next())) }
        let special: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0xBF80_8000, 0x7F7F_FFFF, 0x7F80_0000, 0xFF80_0000,
                                 0x7F80_0001, 0x0000_0001, 0x8040_0000, 0x0080_0000, 0]
        for (i, bits) in special.enumerated() { src[i] = Float(bitPattern: bits) }
        var dst = [UInt16](repeating: 0xAAAA, count: rows * cols)
        compress_to_bf16(src, Int64(rows), Int64(cols), Int64(ld), &dst)
        for r in 0..<rows {
            for j in 0..<cols {
                let x = src[r * ld + j]
                XCTAssertEqual(dst[r * cols + j], expected(x),
                               "element \(r), \(j): \(x) (0x\(String(x.bitPattern, radix: 16)))")
            }
        }
        XCTAssertEqual(expected(Float(bitPattern: 0x3F80_8000)), 0x3F80, "a tie rounds to even, down")
        XCTAssertEqual(expected(Float(bitPattern: 0x3F81_8000)), 0x3F82, "a tie rounds to even, up")
    }

    /// oneDNN's float32 kernels (`float32Library = .oneDNN`: A and B read in place with their strides) against a
    /// Float64 product: every transpose, alpha, beta and padding, split and whole.
    func testFloat32KernelsAgainstFloat64() {
        MatrixProduct.float32Library = .oneDNN
        defer { MatrixProduct.float32Library = .openBLAS }
        var rng = SplitMix64(seed: 11)
        for (m, n, k, pad) in [(37, 29, 70, 0), (16, 48, 33, 5), (301, 70, 64, 2), (40, 707, 48, 1)] {
            for transA in [false, true] {
                for transB in [false, true] {
                    let (ar, ac) = transA ? (k, m) : (m, k), (br, bc) = transB ? (n, k) : (k, n)
                    let lda = ac + pad, ldb = bc + pad, ldc = n + pad
                    let a = matrix(ar, ac, ld: lda, rng: &rng), b = matrix(br, bc, ld: ldb, rng: &rng)
                    let c0 = matrix(m, n, ld: ldc, rng: &rng)
                    var c = c0
                    MatrixProduct.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda,
                                       b: b, ldb: ldb, beta: 0.25, c: &c, ldc: ldc)
                    var worst = 0.0
                    for i in 0..<m {
                        for j in 0..<n {
                            var acc = 0.0
                            for p in 0..<k {
                                acc += Double(transA ? a[p * lda + i] : a[i * lda + p])
                                    * Double(transB ? b[j * ldb + p] : b[p * ldb + j])
                            }
                            let want = 0.5 * acc + 0.25 * Double(c0[i * ldc + j])
                            worst = max(worst, abs(Double(c[i * ldc + j]) - want))
                        }
                        for j in n..<ldc { XCTAssertEqual(c[i * ldc + j], c0[i * ldc + j]) }
                    }
                    // |terms| < 1: float32 accumulation of k of them errs by at most about k · 2⁻²⁴ · k.
                    XCTAssertLessThan(worst, Double(k * k) * 0x1p-24 + 1e-6,
                                      "\(m)×\(k)·\(k)×\(n) tA \(transA) tB \(transB)")
                }
            }
        }
    }

    /// Attention in bf16 (K and V, and backward Q and dO, converted once per call and multiplied block by block
    /// at offsets into the copies) against the same attention in float32: several query blocks, GQA, with and
    /// without a sliding window. bf16 inputs carry 8 significant bits (relative error ≤ 2⁻⁹ each), so outputs
    /// and gradients stay within 2 % of their largest magnitude, and differ from float32 (bf16 really ran).
    func testAttentionInBF16AgainstFloat32() {
        let T = 300, H = 6, G = 2, D = 16
        var rng = SplitMix64(seed: 21)
        func values(_ n: Int) -> Tensor { Tensor(shape: [n], values: (0..<n).map { _ in Float.random(in: -1..<1, using: &rng) }) }
        let q = values(T * H * D), k = values(T * G * D), v = values(T * G * D), dout = values(T * H * D)
        for window in [nil, 50] as [Int?] {
            func run(_ p: Precision) -> [[Float]] {
                MatrixProduct.precision = p
                defer { MatrixProduct.precision = .fp32 }
                let out = Tensor(shape: [T * H * D]), scores = Tensor(shape: [AttentionForward.scratchCount(tokens: T)])
                attentionForward(out: out.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G,
                                 headDim: D, scores: scores.data, window: window)
                let dq = Tensor(shape: [T * H * D]), dk = Tensor(shape: [T * G * D]), dv = Tensor(shape: [T * G * D])
                let scratch = Tensor(shape: [AttentionBackward.scratchCount(tokens: T, kvHeads: G, headDim: D)])
                attentionBackward(dq: dq.data, dk: dk.data, dv: dv.data, dout: dout.data, q: q.data, k: k.data,
                                  v: v.data, rows: T, heads: H, kvHeads: G, headDim: D, scratch: scratch.data,
                                  window: window)
                return [out.array, dq.array, dk.array, dv.array]
            }
            let fp32 = run(.fp32), bf16 = run(.bf16)
            for (name, (x, y)) in zip(["out", "dq", "dk", "dv"], zip(fp32, bf16)) {
                let scale = x.map(abs).max()!, diff = zip(x, y).map { abs($0 - $1) }.max()!
                XCTAssertLessThan(diff, 0.02 * scale, "\(name), window \(String(describing: window))")
                XCTAssertGreaterThan(diff, 0, "\(name): bf16 gave float32's values")
            }
        }
    }

    /// Attention's forward in bf16 against Float64 on the operands the products see: S = bf16(Q) bf16(K)ᵀ · s,
    /// P = bf16(exp(S − max)) (the probabilities rounded as the fused exp kernel rounds them, or as the PV
    /// product rounds its float input), O = P bf16(V) / Σ exp(S − max); GQA, 3 query blocks, with and without a
    /// window. The residual is float32 rounding plus the rare probability whose rounding flips between float and
    /// double scores: far below bf16's own effect (against float32's result).
    func testAttentionForwardInBF16AgainstRoundedReference() {
        let T = 300, H = 6, G = 2, D = 16, group = H / G, scale = 1 / Double(D).squareRoot()
        var rng = SplitMix64(seed: 22)
        func values(_ n: Int) -> [Float] { (0..<n).map { _ in Float.random(in: -1..<1, using: &rng) } }
        let q = values(T * H * D), k = values(T * G * D), v = values(T * G * D)
        for window in [nil, 50] as [Int?] {
            var out = [Float](repeating: 0, count: T * H * D), exact = out
            var scores = [Float](repeating: 0, count: AttentionForward.scratchCount(tokens: T))
            MatrixProduct.precision = .bf16
            attentionForward(out: &out, q: q, k: k, v: v, rows: T, heads: H, kvHeads: G, headDim: D, scores: &scores,
                             window: window)
            MatrixProduct.precision = .fp32
            attentionForwardReference(out: &exact, q: q, k: k, v: v, rows: T, heads: H, kvHeads: G, headDim: D,
                                      window: window)
            var worst = 0.0, bf16Effect = 0.0
            for h in 0..<H {
                let g = h / group
                for i in 0..<T {
                    let first = window.map { max(0, i - $0 + 1) } ?? 0
                    let s = (first...i).map { j in
                        (0..<D).reduce(0.0) { $0 + Self.bf16(q[(i * H + h) * D + $1]) * Self.bf16(k[(j * G + g) * D + $1]) }
                            * scale
                    }
                    let m = s.max()!, e = s.map { Foundation.exp($0 - m) }, sum = e.reduce(0, +)
                    for d in 0..<D {
                        var acc = 0.0
                        for (t, j) in (first...i).enumerated() {
                            acc += Self.bf16(Float(e[t])) * Self.bf16(v[(j * G + g) * D + d])
                        }
                        let x = Double(out[(i * H + h) * D + d])
                        worst = max(worst, abs(x - acc / sum))
                        bf16Effect = max(bf16Effect, abs(x - Double(exact[(i * H + h) * D + d])))
                    }
                }
            }
            print("attention bf16, window \(String(describing: window)): max error against the rounded reference "
                  + "\(worst), against float32's \(bf16Effect)")
            XCTAssertLessThan(worst, 2e-4, "window \(String(describing: window))")
            XCTAssertGreaterThan(bf16Effect, 10 * worst, "bf16's rounding should dominate the residual")
        }
    }

    /// The result really is the product of the rounded inputs: a float32 product of the same inputs differs.
    func testRoundsInputsToBF16() {
        let k = 64
        let a = (0..<k).map { Float(1 + Double($0) * 1e-3) }, b = [Float](repeating: 1 + 1e-3, count: k)
        var c: Float = 0
        MatrixProduct.precision = .bf16
        MatrixProduct.gemm(m: 1, n: 1, k: k, a: a, lda: k, b: b, ldb: 1, c: &c, ldc: 1)
        MatrixProduct.precision = .fp32
        let rounded = (0..<k).reduce(0.0) { $0 + Self.bf16(a[$1]) * Self.bf16(b[$1]) }
        let exact = (0..<k).reduce(0.0) { $0 + Double(a[$1]) * Double(b[$1]) }
        XCTAssertEqual(Double(c), rounded, accuracy: 1e-4)
        XCTAssertGreaterThan(abs(exact - rounded), 1e-2)
    }

    /// `gramUpper` in bf16 (the Hessians' Gram matrices) against the Float64 Gram matrix of the bf16-rounded rows:
    /// every upper element within float32 accumulation's bound γ_k Σ_t |ã_ti ã_tj| (products of bf16 values are
    /// exact in float32); a size that is not a multiple of the block, one block, padded rows; deterministic; and a
    /// float32 Gram of the same rows differs by more than that bound (the inputs really are rounded).
    func testGramMatrixInBF16AgainstRoundedReference() {
        var rng = SplitMix64(seed: 29)
        for (n, k, pad) in [(250, 700, 3), (MatrixProduct.gramBlock, 64, 0), (2 * MatrixProduct.gramBlock + 1, 1, 1)] {
            let lda = n + pad
            let a = matrix(k, n, ld: lda, rng: &rng)
            func gram(_ p: Precision) -> [Float] {
                var c = [Float](repeating: 0, count: n * n)
                MatrixProduct.gramUpper(n: n, k: k, a: a, lda: lda, c: &c, ldc: n, precision: p)
                XCTAssertEqual(MatrixProduct.precision, .fp32, "the global precision is restored")
                return c
            }
            let c = gram(.bf16), f = gram(.fp32)
            XCTAssertEqual(c.map(\.bitPattern), gram(.bf16).map(\.bitPattern), "deterministic, n \(n) k \(k)")
            let u = 0x1p-24, gamma = Double(k + 1) * u / (1 - Double(k + 1) * u)
            var bad = 0, farFromFloat32 = 0
            for i in 0..<n {
                for j in i..<n {
                    var dot = 0.0, abs = 0.0
                    for t in 0..<k {
                        let p = Self.bf16(a[t * lda + i]) * Self.bf16(a[t * lda + j])
                        dot += p; abs += Swift.abs(p)
                    }
                    if Swift.abs(Double(c[i * n + j]) - dot) > gamma * abs { bad += 1 }
                    if Swift.abs(Double(f[i * n + j]) - dot) > gamma * abs { farFromFloat32 += 1 }
                }
            }
            XCTAssertEqual(bad, 0, "n \(n) k \(k)")
            XCTAssertGreaterThan(farFromFloat32, n * (n + 1) / 4, "float32's Gram is not the rounded one, n \(n)")
        }
    }

    /// A primitive for one thread (inside our parallel loops, e.g. attention) and for all of them give the same
    /// result, and repeated calls are deterministic.
    func testThreadCountsAndDeterminism() {
        var rng = SplitMix64(seed: 5)
        let m = 300, n = 200, k = 150
        let a = matrix(m, k, ld: k, rng: &rng), b = matrix(n, k, ld: k, rng: &rng)
        func product(threads: Int) -> [Float] {
            var c = [Float](repeating: 0, count: m * n)
            let saved = BLAS.threads
            BLAS.threads = threads
            defer { BLAS.threads = saved }
            MatrixProduct.precision = .bf16
            MatrixProduct.gemm(transB: true, m: m, n: n, k: k, a: a, lda: k, b: b, ldb: k, c: &c, ldc: n)
            MatrixProduct.precision = .fp32
            return c
        }
        let one = product(threads: 1), all = product(threads: max(2, Parallel.threads))
        XCTAssertEqual(one, product(threads: 1))
        let diff = zip(one, all).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(diff, 1e-4)
    }

    func testKernelsNameTheISA() {
        MatrixProduct.precision = .bf16
        XCTAssertTrue(["AMX", "AVX512-BF16"].contains(MatrixProduct.bf16ISA), MatrixProduct.bf16ISA)
        XCTAssertTrue(MatrixProduct.kernels.hasPrefix("bf16 (oneDNN 2."), MatrixProduct.kernels)
        MatrixProduct.precision = .fp32
        XCTAssertTrue(MatrixProduct.kernels.hasPrefix("float32 (OpenBLAS"), MatrixProduct.kernels)
    }
}

/// What a CPU without bf16 units is told (runs everywhere).
final class PrecisionSupportTests: XCTestCase {
    func testRefusalNamesWhatIsMissing() {
        let none = CPUFeatures(avx2: true, avx512f: true, osSavesAVX: true, osSavesAVX512: true)
        let reason = MatrixProduct.bf16Unsupported(none)
        XCTAssertNotNil(reason)
        XCTAssertTrue(reason?.contains("avx512_bf16") ?? false)
        XCTAssertNil(MatrixProduct.bf16Unsupported(CPUFeatures(avx512f: true, avx512bf16: true, osSavesAVX512: true)))
        XCTAssertNil(MatrixProduct.bf16Unsupported(CPUFeatures(amxBF16: true, osSavesAMX: true)))
        // The OS must save the state too.
        XCTAssertNotNil(MatrixProduct.bf16Unsupported(CPUFeatures(avx512f: true, avx512bf16: true)))
        XCTAssertNoThrow(try MatrixProduct.select(.fp32))
    }
}
