import Quantization
import TensorCore
import XCTest

final class AllocationTests: XCTestCase {
    func randomUnits(_ n: Int, seed: UInt64) -> [AllocationUnit] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { u in
            let size = 64 * (1 + Int(rng.next() % 8)), s = Double(rng.nextFloat()) + 0.01
            return AllocationUnit(name: "u\(u)", options: [2, 3, 4, 8].map { b in
                (b, size * b / 8 + size / 16, s * pow(4, -Double(b)) * (1 + 0.1 * Double(rng.nextFloat())))
            })
        }
    }

    /// The knapsack's choice never exceeds the budget and equals the exhaustive optimum.
    func testBudgetAllocationMeetsTheBudgetAndIsOptimal() throws {
        for seed in 0..<12 as Range<UInt64> {
            let units = randomUnits(5, seed: seed)
            let floor = units.reduce(0) { $0 + $1.options.map(\.bytes).min()! }
            let ceiling = units.reduce(0) { $0 + $1.options.map(\.bytes).max()! }
            let budget = floor + (ceiling - floor) * Int(seed % 5 + 1) / 6
            let a = try allocateToBudget(units, budgetBytes: budget)
            XCTAssertLessThanOrEqual(a.bytes, budget)
            XCTAssertTrue(a.optimal)
            var best = Double.infinity
            func search(_ u: Int, _ bytes: Int, _ damage: Double) {
                if bytes > budget { return }
                if u == units.count { best = min(best, damage); return }
                for o in units[u].options { search(u + 1, bytes + o.bytes, damage + o.damage) }
            }
            search(0, 0, 0)
            XCTAssertEqual(a.damage, best, accuracy: 1e-12 * max(best, 1e-300), "seed \(seed)")
            // Bits per weight budgets reach the exact byte count when the widths allow it.
            let sum = zip(units, a.bits).reduce(0) { t, p in t + p.0.options.first { $0.bits == p.1 }!.bytes }
            XCTAssertEqual(sum, a.bytes)
        }
    }

    func testBudgetBelowTheFloorIsAnError() {
        let units = randomUnits(3, seed: 1)
        let floor = units.reduce(0) { $0 + $1.options.map(\.bytes).min()! }
        XCTAssertThrowsError(try allocateToBudget(units, budgetBytes: floor - 1)) { XCTAssertTrue("\($0)".contains("below the smallest possible size, \(floor) bytes"), "\($0)") }
        XCTAssertNoThrow(try allocateToBudget(units, budgetBytes: floor))
    }

    /// Coarsened costs (a tiny cell limit) still never exceed the budget.
    func testCoarsenedAllocationStaysWithinBudget() throws {
        let units = randomUnits(20, seed: 3)
        let floor = units.reduce(0) { $0 + $1.options.map(\.bytes).min()! }
        let a = try allocateToBudget(units, budgetBytes: floor + 1234, maxCells: 50)
        XCTAssertFalse(a.optimal)
        XCTAssertLessThanOrEqual(a.bytes, floor + 1234)
    }

    func testUniformTakesTheWidestWidthThatFits() throws {
        let units = randomUnits(4, seed: 2)
        let at4 = units.reduce(0) { $0 + $1.options.first { $0.bits == 4 }!.bytes }
        XCTAssertEqual(try allocateUniform(units, budgetBytes: at4).bits, [4, 4, 4, 4])
        XCTAssertEqual(try allocateUniform(units, budgetBytes: at4 - 1).bits, [3, 3, 3, 3])
    }

    /// Exact 1-D k-means: the partition into contiguous runs of the sorted values with least within-cluster
    /// sum of squares (checked exhaustively), labelled in ascending order.
    func testClusteringIsTheOptimalContiguousPartition() {
        var rng = SplitMix64(seed: 6)
        let values = (0..<9).map { _ in Double(rng.nextFloat()) }
        let labels = clusterSensitivities(values, k: 3)
        let sorted = values.indices.sorted { values[$0] < values[$1] }
        XCTAssertEqual(sorted.map { labels[$0] }, sorted.map { labels[$0] }.sorted(), "labels ascend with the values")
        func sse(_ xs: [Double]) -> Double { let m = xs.reduce(0, +) / Double(xs.count); return xs.reduce(0) { $0 + ($1 - m) * ($1 - m) } }
        let xs = sorted.map { values[$0] }
        var best = Double.infinity
        for i in 1..<(xs.count - 1) { for j in (i + 1)..<xs.count { best = min(best, sse(Array(xs[..<i])) + sse(Array(xs[i..<j])) + sse(Array(xs[j...]))) } }
        let got = (0..<3).reduce(0.0) { c, k in c + sse(values.indices.filter { labels[$0] == k }.map { values[$0] }) }
        XCTAssertEqual(got, best, accuracy: 1e-12)
        // Fewer distinct values than clusters: one cluster per value, at the top of the ladder.
        let units = (0..<3).map { AllocationUnit(name: "\($0)", options: [2, 4, 8].map { ($0, $0, 0) }) }
        XCTAssertEqual(allocateByClusters(units, sensitivities: [0.5, 0.1, 0.5], ladder: [8, 2, 4]).bits, [8, 4, 8])
    }
}
