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
}
