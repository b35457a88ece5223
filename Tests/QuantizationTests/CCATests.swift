import Quantization
import TensorCore
import XCTest

final class CCATests: XCTestCase {
    /// Orthonormal, centered columns u₁…u₄ (N × 4) by Gram–Schmidt on random data.
    func orthonormal(_ n: Int, _ k: Int, seed: UInt64) -> [[Double]] {
        var rng = SplitMix64(seed: seed)
        var cols: [[Double]] = []
        for _ in 0..<(k + 1) {
            var v = (0..<n).map { _ in Double(rng.nextFloat()) - 0.5 }
            let ones = [Double](repeating: 1 / Double(n).squareRoot(), count: n)
            for u in [ones] + cols {
                let d = zip(v, u).reduce(0) { $0 + $1.0 * $1.1 }
                v = zip(v, u).map { $0 - d * $1 }
            }
            let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
            cols.append(v.map { $0 / norm })
        }
        return Array(cols.prefix(k))
    }

    /// X = [u₁, u₂]·A and Y = [ρ₁u₁ + s₁u₃, ρ₂u₂ + s₂u₄]·B with orthonormal u: the sample canonical
    /// correlations are exactly ρ₁ and ρ₂, whatever the invertible A and B.
    func testCanonicalCorrelationsOfAConstructedCase() {
        let n = 50, (r1, r2) = (0.9, 0.35)
        let u = orthonormal(n, 4, seed: 4)
        let a = [[2.0, 0.5], [-1.0, 1.5]], b = [[0.3, 1.0], [1.2, -0.7]]
        var x = [Double](), y = [Double]()
        for i in 0..<n {
            let xs = [u[0][i], u[1][i]]
            let ys = [r1 * u[0][i] + (1 - r1 * r1).squareRoot() * u[2][i], r2 * u[1][i] + (1 - r2 * r2).squareRoot() * u[3][i]]
            for j in 0..<2 { x.append(xs[0] * a[0][j] + xs[1] * a[1][j]); y.append(ys[0] * b[0][j] + ys[1] * b[1][j]) }
        }
        let rho = canonicalCorrelations(x, y, rows: n)
        XCTAssertEqual(rho.count, 2)
        XCTAssertEqual(rho[0], r1, accuracy: 1e-6)  // observed: 1e-12 (the 1e-12 relative ridge floor)
        XCTAssertEqual(rho[1], r2, accuracy: 1e-6)
        // A variable with itself: 1; with independent noise in many samples: near 0.
        XCTAssertEqual(canonicalCorrelations(x, x, rows: n)[0], 1, accuracy: 1e-6)
    }

    func testPrincipalScoresKeepTheTopDirections() {
        // Rows on a 2-D plane inside 5-D: two scores reproduce every pairwise distance.
        let n = 20
        let u = orthonormal(n, 2, seed: 8)
        let basis: [[Double]] = [[1, 2, 0, -1, 0.5], [0, 1, 3, 1, -2]]
        var x = [Double]()
        for i in 0..<n { for c in 0..<5 { x.append(3 * u[0][i] * basis[0][c] + u[1][i] * basis[1][c]) } }
        let s = principalScores(x, rows: n, dimensions: 2)
        for i in 0..<n {
            for j in 0..<n {
                let dx = (0..<5).reduce(0.0) { $0 + pow(x[i * 5 + $1] - x[j * 5 + $1], 2) }
                let ds = (0..<2).reduce(0.0) { $0 + pow(s[i * 2 + $1] - s[j * 2 + $1], 2) }
                XCTAssertEqual(ds, dx, accuracy: 1e-9 * max(1, dx))
            }
        }
    }

    func testSymmetricEigenDecomposes() {
        let a: [Double] = [4, 1, 2, 1, 3, 0, 2, 0, 5]
        let (values, vectors) = symmetricEigen(a, n: 3)
        XCTAssertEqual(values, values.sorted(by: >))
        for j in 0..<3 {
            for i in 0..<3 {
                let av = (0..<3).reduce(0.0) { $0 + a[i * 3 + $1] * vectors[$1 * 3 + j] }
                XCTAssertEqual(av, values[j] * vectors[i * 3 + j], accuracy: 1e-10)
            }
        }
    }
}
