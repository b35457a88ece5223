import XCTest
@testable import TensorCore

/// `BLAS.gemm` runs large products as slices on our own workers (`BLAS.splitting`): every element must be the same
/// float as one single-threaded OpenBLAS call computes, for every transpose, alpha, beta, leading dimension and odd
/// size. (OpenBLAS's own threads do not always give that float: for some shapes its threaded path differs from its
/// single-threaded one in the last bits.)
final class BLASSplitTests: XCTestCase {
    override func tearDown() { BLAS.splitting = true }

    func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float, beta: Float, pad: Int,
                 split: Bool, blasThreads: Int) -> [Float] {
        var rng = SplitMix64(seed: UInt64(m * 131 + n * 17 + k + pad))
        let (ar, ac) = transA ? (k, m) : (m, k), (br, bc) = transB ? (n, k) : (k, n)
        let lda = ac + pad, ldb = bc + pad, ldc = n + pad
        let a = (0..<(ar * lda)).map { _ in Float.random(in: -1..<1, using: &rng) }
        let b = (0..<(br * ldb)).map { _ in Float.random(in: -1..<1, using: &rng) }
        var c = (0..<(m * ldc)).map { _ in Float.random(in: -1..<1, using: &rng) }
        BLAS.splitting = split
        let saved = BLAS.threads
        BLAS.threads = blasThreads
        defer { BLAS.threads = saved }
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    BLAS.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ap.baseAddress!,
                              lda: lda, b: bp.baseAddress!, ldb: ldb, beta: beta, c: cp.baseAddress!, ldc: ldc)
                }
            }
        }
        return c
    }

    func testSlicesEqualOneCallBitwise() throws {
        guard Parallel.threads > 1 else { throw XCTSkip("one worker thread: products are never split") }
        let shapes = [(300, 200, 130), (1025, 96, 64), (70, 1100, 33), (520, 192, 576), (64, 2049, 40)]
        for (m, n, k) in shapes {
            for transA in [false, true] {
                for transB in [false, true] {
                    for (alpha, beta, pad) in [(Float(1), Float(0), 0), (0.5, 1, 3), (-2, 0.25, 1)] {
                        XCTAssertGreaterThanOrEqual(Double(m * n * k), BLAS.splitMinimumMultiplyAdds)
                        let split = product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                            beta: beta, pad: pad, split: true, blasThreads: Parallel.threads)
                        let single = product(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                             beta: beta, pad: pad, split: false, blasThreads: 1)
                        let what = "\(m)×\(k)·\(k)×\(n) transA \(transA) transB \(transB) alpha \(alpha) beta \(beta)"
                        XCTAssertEqual(split.map(\.bitPattern), single.map(\.bitPattern), what)
                    }
                }
            }
        }
    }

    /// `gramUpper` split into column blocks (a product above the diagonal block, a triangle on it) against the
    /// Float64 Gram matrix: every upper element within the dot product's rounding bound, γ_k Σ_t |a_ti a_tj| with
    /// γ_k = k·u/(1 − k·u) (u = 2⁻²⁴), plus the beta term's rounding; the strict lower triangle untouched. (Not
    /// bitwise one ssyrk call: OpenBLAS's syrk and gemm kernels sum some k in other orders; on SmolLM2's shapes,
    /// k = 2048, they agreed bitwise here.)
    func testGramBlocksMatchTheFloat64Gram() throws {
        guard Parallel.threads > 1 else { throw XCTSkip("one worker thread: Gram matrices are never split") }
        for (n, k, pad, alpha, beta) in [(320, 2048, 0, Float(1), Float(0)), (700, 300, 5, 0.5, 1), (250, 1537, 2, -1, 0.25)] {
            var rng = SplitMix64(seed: UInt64(n * 7 + k))
            let lda = n + pad, ldc = n + pad
            let a = (0..<(k * lda)).map { _ in Float.random(in: -1..<1, using: &rng) }
            var c = (0..<(n * ldc)).map { _ in Float.random(in: -1..<1, using: &rng) }
            let c0 = c
            XCTAssertGreaterThanOrEqual(Double(n * n * k) / 2, BLAS.splitMinimumMultiplyAdds)
            BLAS.splitting = true
            a.withUnsafeBufferPointer { ap in
                c.withUnsafeMutableBufferPointer {
                    BLAS.gramUpper(n: n, k: k, alpha: alpha, a: ap.baseAddress!, lda: lda, beta: beta,
                                   c: $0.baseAddress!, ldc: ldc)
                }
            }
            let u = 0x1p-24, gamma = Double(k + 2) * u / (1 - Double(k + 2) * u)
            var bad = 0
            for i in 0..<n {
                for j in 0..<i where c[i * ldc + j] != c0[i * ldc + j] { bad += 1 }
                for j in i..<n {
                    var dot = 0.0, abs = 0.0
                    for t in 0..<k {
                        let p = Double(a[t * lda + i]) * Double(a[t * lda + j]); dot += p; abs += Swift.abs(p)
                    }
                    let want = Double(alpha) * dot + Double(beta) * Double(c0[i * ldc + j])
                    let bound = gamma * (Swift.abs(Double(alpha)) * abs + Swift.abs(Double(beta) * Double(c0[i * ldc + j])))
                    if Swift.abs(Double(c[i * ldc + j]) - want) > bound { bad += 1 }
                }
            }
            XCTAssertEqual(bad, 0, "n \(n) k \(k) alpha \(alpha) beta \(beta)")
        }
    }

    /// `gramUpperEach`: the Gram matrices of a batch side by side on the workers, each the float a single-threaded
    /// `gramUpper` (one ssyrk) gives, the strict lower triangles untouched; batches larger and smaller than the
    /// worker count, odd shapes, a leading dimension with padding.
    func testGramMatricesSideBySideEqualOneThreadEach() throws {
        guard Parallel.threads > 1 else { throw XCTSkip("one worker thread: Gram matrices run one at a time") }
        for (n, k, pad, count) in [(200, 300, 0, 2), (130, 2049, 3, 3), (576, 64, 1, 2 * Parallel.threads + 1)] {
            var rng = SplitMix64(seed: UInt64(n * 3 + k + count))
            let lda = n + pad
            let a = (0..<count).map { _ in (0..<(k * lda)).map { _ in Float.random(in: -1..<1, using: &rng) } }
            let sentinel = Float(-7.25)
            var batch = (0..<count).map { _ in [Float](repeating: sentinel, count: n * lda) }
            var single = batch
            BLAS.splitting = true
            withPointers(a, &batch) { ap, cp in BLAS.gramUpperEach(n: n, k: k, a: ap, lda: lda, c: cp, ldc: lda) }
            let saved = BLAS.threads
            BLAS.threads = 1
            withPointers(a, &single) { ap, cp in
                for i in 0..<count { BLAS.gramUpper(n: n, k: k, a: ap[i], lda: lda, c: cp[i], ldc: lda) }
            }
            BLAS.threads = saved
            for i in 0..<count {
                XCTAssertEqual(batch[i].map(\.bitPattern), single[i].map(\.bitPattern), "n \(n) k \(k) matrix \(i)")
                let lower = (0..<n).flatMap { r in (0..<r).map { batch[i][r * lda + $0] } }
                XCTAssertTrue(lower.allSatisfy { $0 == sentinel }, "n \(n) k \(k) matrix \(i): lower triangle written")
            }
        }
    }

    private func withPointers(_ a: [[Float]], _ c: inout [[Float]],
                              _ body: ([UnsafePointer<Float>], [UnsafeMutablePointer<Float>]) -> Void) {
        let ap = a.map { x in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: x.count); p.initialize(from: x, count: x.count); return p
        }
        let cp = c.map { x in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: x.count); p.initialize(from: x, count: x.count); return p
        }
        body(ap.map { UnsafePointer($0) }, cp)
        for i in c.indices { c[i] = Array(UnsafeBufferPointer(start: cp[i], count: c[i].count)); cp[i].deallocate() }
        for p in ap { p.deallocate() }
    }
}
