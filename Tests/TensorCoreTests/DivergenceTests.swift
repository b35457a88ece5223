import Foundation
import TensorCore
import XCTest

/// The divergence kernels (Divergences.swift, TopK.swift) against Float64 computations written here.
final class DivergenceTests: XCTestCase {
    /// Logits rows with a spread like an LM head's (a few large, a long tail), seeded.
    static func logits(rows T: Int, columns V: Int, seed: UInt64, scale: Float = 4) -> [Float] {
        var rng = SplitMix(seed)
        return (0..<(T * V)).map { _ in scale * Float(rng.normal()) }
    }

    static func logSoftmax(_ z: ArraySlice<Float>) -> [Double] {
        let m = Double(z.max()!)
        let s = z.reduce(0.0) { $0 + Foundation.exp(Double($1) - m) }
        return z.map { Double($0) - m - Foundation.log(s) }
    }

    static func kl(_ lp: [Double], _ lq: [Double]) -> Double {
        zip(lp, lq).reduce(0) { $0 + Foundation.exp($1.0) * ($1.0 - $1.1) }
    }

    func testFastExpDoubleAgainstLibm() {
        var worst = 0.0
        var x = -708.0
        while x < 709 {
            let e = Foundation.exp(x)
            worst = max(worst, abs(fastExpDouble(x) - e) / e)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 1e-15)
        XCTAssertEqual(fastExpDouble(-800), 0)
        XCTAssertEqual(fastExpDouble(-.infinity), 0)
        XCTAssertEqual(fastExpDouble(0), 1)
    }

    func testKLDivergenceForwardMatchesReference() {
        let T = 5, V = 300
        let p = Self.logits(rows: T, columns: V, seed: 1), q = Self.logits(rows: T, columns: V, seed: 2)
        var lp = [Double](repeating: 0, count: T * V), kl = [Double](repeating: 0, count: T), rkl = kl
        logSoftmaxDouble(out: &lp, logits: p, rows: T, columns: V)
        klDivergenceForward(kl: &kl, reverse: &rkl, reference: p, logits: q, rows: T, columns: V)
        for t in 0..<T {
            let a = Self.logSoftmax(p[(t * V)..<((t + 1) * V)]), b = Self.logSoftmax(q[(t * V)..<((t + 1) * V)])
            for j in 0..<V { XCTAssertEqual(lp[t * V + j], a[j], accuracy: 1e-12) }
            XCTAssertEqual(kl[t], Self.kl(a, b), accuracy: 1e-12 * max(1, Self.kl(a, b)))
            XCTAssertEqual(rkl[t], Self.kl(b, a), accuracy: 1e-12 * max(1, Self.kl(b, a)))
            // The distillation loss's reference at τ = 1 is the same divergence.
            let ref = klDivergenceReference(student: q[(t * V)..<((t + 1) * V)].map(Double.init),
                                            teacher: p[(t * V)..<((t + 1) * V)].map(Double.init), temperature: 1)
            XCTAssertEqual(kl[t], ref, accuracy: 1e-6 * max(1, ref))
        }
    }

    /// Distillation's fused KL (forward value and gradient in Float, `klDivergenceBackward` at τ = 1) measures the same
    /// divergence as the evaluator's and CPTQuant's kernel.
    func testDistillationKLAgreesWithTheEvaluatorsKL() {
        let T = 6, V = 500
        let teacher = Self.logits(rows: T, columns: V, seed: 8), student = zip(teacher, Self.logits(rows: T, columns: V, seed: 9, scale: 0.5)).map { $0 + $1 }
        var kl = [Double](repeating: 0, count: T), fused = kl, grad = [Float](repeating: 0, count: T * V)
        klDivergenceForward(kl: &kl, reverse: nil, reference: teacher, logits: student, rows: T, columns: V)
        klDivergenceBackward(dlogits: &grad, kl: &fused, student: student, teacher: teacher, temperature: 1, scale: 1, rows: T, columns: V)
        // Observed: 3.2e-5 relative (the fused kernel sums 500 Float terms per row).
        for t in 0..<T { XCTAssertEqual(fused[t], kl[t], accuracy: 2e-4 * kl[t], "row \(t)") }
    }

    func testTopKLogSoftmaxMatchesSortedReference() {
        let T = 4, V = 200, k = 7
        var z = Self.logits(rows: T, columns: V, seed: 3)
        z[5] = z[9]  // a tie: the lower id ranks first
        z[9] = 50; z[5] = 50
        let targets: [Int32] = [3, 9, 150, 199]
        var ids = [Int32](repeating: 0, count: T * k), lp = [Float](repeating: 0, count: T * k)
        var rest = [Float](repeating: 0, count: T), target = rest
        topKLogSoftmax(ids: &ids, logProbs: &lp, logRest: &rest, targetLogProbs: &target, targets: targets, logits: z,
                       rows: T, columns: V, k: k)
        for t in 0..<T {
            let row = z[(t * V)..<((t + 1) * V)]
            let l = Self.logSoftmax(row)
            let order = (0..<V).sorted { l[$0] > l[$1] || (l[$0] == l[$1] && $0 < $1) }
            XCTAssertEqual(ids[(t * k)..<((t + 1) * k)].map(Int.init), Array(order.prefix(k)), "row \(t)")
            for i in 0..<k { XCTAssertEqual(Double(lp[t * k + i]), l[order[i]], accuracy: 1e-5) }
            let tail = order.dropFirst(k).reduce(0.0) { $0 + Foundation.exp(l[$1]) }
            XCTAssertEqual(Double(rest[t]), Foundation.log(tail), accuracy: 1e-4)
            XCTAssertEqual(Double(target[t]), l[Int(targets[t])], accuracy: 1e-5)
        }
        XCTAssertEqual(Array(ids.prefix(2)), [5, 9])
    }

    /// KL_k ≤ KL ≤ KL_k + B for every k; k = V is exact; the reverse KL_k is a lower bound.
    func testTopKDivergenceBracketsTheFullDivergence() {
        let T = 6, V = 120
        let p = Self.logits(rows: T, columns: V, seed: 4), q = zip(p, Self.logits(rows: T, columns: V, seed: 5, scale: 0.7)).map { $0 + $1 }
        for k in [1, 3, 10, 60, V - 1, V] {
            var ids = [Int32](repeating: 0, count: T * k), lp = [Float](repeating: 0, count: T * k)
            var rest = [Float](repeating: 0, count: T)
            topKLogSoftmax(ids: &ids, logProbs: &lp, logRest: &rest, targetLogProbs: nil, targets: nil, logits: p, rows: T, columns: V, k: k)
            var kl = [Double](repeating: 0, count: T), bound = kl, rkl = kl
            topKDivergenceForward(kl: &kl, bound: &bound, reverse: &rkl, ids: ids, logProbs: lp, logRest: rest, logits: q,
                                  rows: T, columns: V, k: k)
            for t in 0..<T {
                let a = Self.logSoftmax(p[(t * V)..<((t + 1) * V)]), b = Self.logSoftmax(q[(t * V)..<((t + 1) * V)])
                let full = Self.kl(a, b), reverse = Self.kl(b, a)
                let label = "k \(k), row \(t): KL \(full), KL_k \(kl[t]), B \(bound[t])"
                XCTAssertLessThanOrEqual(kl[t], full + 1e-5, label)
                XCTAssertLessThanOrEqual(full, kl[t] + bound[t] + 1e-5, label)
                XCTAssertLessThanOrEqual(rkl[t], reverse + 1e-5, label)
                XCTAssertGreaterThanOrEqual(bound[t], 0, label)
                if k == V {
                    XCTAssertEqual(kl[t], full, accuracy: 1e-5, label)
                    XCTAssertEqual(rkl[t], reverse, accuracy: 1e-5, label)
                    XCTAssertEqual(bound[t], 0, label)
                }
            }
        }
    }

    /// The bound is attained: a base whose tail mass sits, c at a time, on the model's least likely tokens.
    func testTopKBoundIsAttainedByTheWorstTail() {
        let V = 10, k = 3
        // p: 0.4, 0.3, 0.1 kept (c = 0.1); the rest, 0.2, as 0.1 on tokens 7 and 8, ~0 elsewhere.
        var p = [Float](repeating: -60, count: V)
        for (j, pr) in [(0, 0.4), (1, 0.3), (2, 0.1), (7, 0.1), (8, 0.1)] { p[j] = Float(Foundation.log(pr)) }
        // q: tokens 7 and 8 the least likely of the tail.
        let q: [Float] = [1, 0.5, 0.2, 0.1, 0.0, -0.2, -0.4, -3, -2.5, -0.3]
        var ids = [Int32](repeating: 0, count: k), lp = [Float](repeating: 0, count: k), rest: [Float] = [0]
        topKLogSoftmax(ids: &ids, logProbs: &lp, logRest: &rest, targetLogProbs: nil, targets: nil, logits: p, rows: 1, columns: V, k: k)
        XCTAssertEqual(ids, [0, 1, 2])
        var kl: [Double] = [0], bound: [Double] = [0]
        topKDivergenceForward(kl: &kl, bound: &bound, reverse: nil, ids: ids, logProbs: lp, logRest: rest, logits: q, rows: 1, columns: V, k: k)
        let full = Self.kl(Self.logSoftmax(p[...]), Self.logSoftmax(q[...]))
        XCTAssertGreaterThan(full - kl[0], 0.01, "the coarsening loses something here")
        XCTAssertEqual(kl[0] + bound[0], full, accuracy: 1e-5)
    }

    func testSelectSmallestAgainstSort() {
        var rng = SplitMix(6)
        for n in [1, 2, 3, 10, 101, 1000] {
            let values = (0..<n).map { _ in Float(Int(rng.next() % 17)) }  // many ties
            for rank in Set([0, n / 3, n / 2, n - 1]) {
                var x = values
                x.withUnsafeMutableBufferPointer { selectSmallest($0.baseAddress!, count: n, rank: rank) }
                let sorted = values.sorted()
                XCTAssertEqual(x[rank], sorted[rank], "n \(n), rank \(rank)")
                XCTAssertTrue(x[..<rank].allSatisfy { $0 <= x[rank] } && x[(rank + 1)...].allSatisfy { $0 >= x[rank] })
                XCTAssertEqual(x.sorted(), sorted)
            }
        }
    }
}

/// SplitMix64 with a Box–Muller normal, for seeded test data.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }
    mutating func normal() -> Double {
        let u = max(uniform(), 1e-300), v = uniform()
        return (-2 * Foundation.log(u)).squareRoot() * Foundation.cos(2 * .pi * v)
    }
}
