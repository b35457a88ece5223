import XCTest
@testable import TensorCore

/// The LAPACK wrappers against plain products: every factorization multiplied back equals its input.
final class LAPACKTests: XCTestCase {
    /// A deterministic pseudo-random matrix (rows × columns) in [-1, 1).
    func matrix(_ rows: Int, _ columns: Int, seed: UInt64) -> [Double] {
        var s = seed &* 6364136223846793005 &+ 1442695040888963407
        return (0..<(rows * columns)).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Double(s >> 11) / Double(1 << 53) * 2 - 1
        }
    }

    func product(_ a: [Double], _ b: [Double], _ m: Int, _ k: Int, _ n: Int, transposeA: Bool = false) -> [Double] {
        var c = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for p in 0..<k { c[i * n + j] += (transposeA ? a[p * m + i] : a[i * k + p]) * b[p * n + j] } } }
        return c
    }

    /// A symmetric positive-definite n × n matrix: XᵀX + n·I.
    func spd(_ n: Int) -> [Double] {
        let x = matrix(2 * n, n, seed: 7)
        var a = product(x, x, n, 2 * n, n, transposeA: true)
        for i in 0..<n { a[i * n + i] += Double(n) }
        return a
    }

    func assertClose(_ a: [Double], _ b: [Double], _ tol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(worst, tol, what, file: file, line: line)
    }

    func testCholeskyUpperAndLowerMultiplyBack() throws {
        let n = 9, a = spd(n)
        var u = a
        try LAPACK.choleskyUpper(&u, n: n)
        for i in 0..<n { for j in 0..<i { XCTAssertEqual(u[i * n + j], 0) } }
        assertClose(product(u, u, n, n, n, transposeA: true), a, 1e-10, "UᵀU = A")
        var l = a
        try LAPACK.choleskyLower(&l, n: n)
        for i in 0..<n { for j in (i + 1)..<n { XCTAssertEqual(l[i * n + j], 0) } }
        var lt = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0..<n { lt[j * n + i] = l[i * n + j] } }
        assertClose(product(l, lt, n, n, n), a, 1e-10, "LLᵀ = A")
    }

    func testInverseSPD() throws {
        let n = 7, a = spd(n)
        var inv = a
        try LAPACK.inverseSPD(&inv, n: n)
        var identity = [Double](repeating: 0, count: n * n)
        for i in 0..<n { identity[i * n + i] = 1 }
        assertClose(product(a, inv, n, n, n), identity, 1e-12, "A·A⁻¹ = I")
    }

    func testNotPositiveDefiniteThrows() {
        var a: [Double] = [1, 2, 2, 1]
        XCTAssertThrowsError(try LAPACK.choleskyUpper(&a, n: 2)) { XCTAssertTrue("\($0)".contains("not positive definite"), "\($0)") }
    }

    func testSVDOfWideAndTallMatrices() throws {
        for (m, n) in [(5, 8), (8, 5), (6, 6)] {
            let a = matrix(m, n, seed: UInt64(m * 31 + n))
            let (u, s, vt) = try LAPACK.svd(a, rows: m, columns: n)
            let r = min(m, n)
            XCTAssertEqual(s, s.sorted(by: >), "descending")
            var us = u
            for i in 0..<m { for j in 0..<r { us[i * r + j] *= s[j] } }
            assertClose(product(us, vt, m, r, n), a, 1e-12, "U·S·Vᵀ = A (\(m)×\(n))")
            var identity = [Double](repeating: 0, count: r * r)
            for i in 0..<r { identity[i * r + i] = 1 }
            assertClose(product(u, u, r, m, r, transposeA: true), identity, 1e-12, "UᵀU = I")
        }
    }

    func testSymmetricEigen() throws {
        let n = 6, a = spd(n)
        let (values, vectors) = try LAPACK.symmetricEigen(a, n: n)
        XCTAssertEqual(values, values.sorted())
        for i in 0..<n {
            let v = Array(vectors[(i * n)..<((i + 1) * n)])
            let av = product(a, v, n, n, 1)
            assertClose(av, v.map { $0 * values[i] }, 1e-10, "A·v = λ·v for eigenvalue \(i)")
        }
    }
}
