import Foundation
import XCTest
@testable import TensorCore

/// Every fast kernel against its plain reference version.
final class OpsTests: XCTestCase {
    func random(_ shape: [Int], seed: UInt64, scale: Float = 1) -> Tensor {
        var rng = SplitMix64(seed: seed)
        let t = Tensor(shape: shape)
        t.fillUniform(scale: scale, rng: &rng)
        return t
    }

    func maxAbsDiff(_ a: Tensor, _ b: Tensor) -> Float {
        precondition(a.count == b.count)
        return (0..<a.count).reduce(0) { max($0, abs(a[$1] - b[$1])) }
    }

    func testFastExpAgainstLibm() {
        var worst: Double = 0
        var x: Float = -87
        while x < 88 {
            let rel = abs(Double(fastExp(x)) - Foundation.exp(Double(x))) / Foundation.exp(Double(x))
            worst = max(worst, rel)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 4e-7)  // observed 2.3e-7
        XCTAssertEqual(fastExp(-200), 0)
        XCTAssertEqual(fastExp(0), 1)
    }

    func testRowMaxMatchesReference() {
        for n in [1, 2, 15, 16, 17, 31, 33, 100, 2048] {
            for seed in 0..<4 {
                let x = random([n], seed: UInt64(100 + seed), scale: 30)
                // The maximum at each position in turn (first, middle, tail after the last 16-lane block).
                x[seed * (n - 1) / 3] = 31
                XCTAssertEqual(rowMax(x.data, count: n), rowMaxReference(x.data, count: n), "n \(n) seed \(seed)")
            }
        }
        let negatives: [Float] = (0..<40).map { -1000 - Float($0) }
        XCTAssertEqual(negatives.withUnsafeBufferPointer { rowMax($0.baseAddress!, count: 40) }, -1000)
    }

    func testLinearMatchesReference() {
        for (T, C, OC) in [(1, 1, 1), (7, 13, 5), (33, 64, 96)] {
            let x = random([T, C], seed: 1), w = random([OC, C], seed: 2), b = random([OC], seed: 3)
            let fast = Tensor(shape: [T, OC]), ref = Tensor(shape: [T, OC])
            linearForward(out: fast.data, inp: x.data, weight: w.data, bias: b.data, rows: T, inFeatures: C, outFeatures: OC)
            linearForwardReference(out: ref.data, inp: x.data, weight: w.data, bias: b.data, rows: T, inFeatures: C, outFeatures: OC)
            XCTAssertLessThan(maxAbsDiff(fast, ref), 1e-5)  // observed 2.9e-6 (C = 64, Float32 sums)
        }
    }

    func testEmbeddingMatchesReference() {
        let table = random([50, 8], seed: 4)
        let ids: [Int32] = [0, 49, 3, 3, 17]
        let fast = Tensor(shape: [5, 8]), ref = Tensor(shape: [5, 8])
        ids.withUnsafeBufferPointer {
            embeddingForward(out: fast.data, ids: $0.baseAddress!, table: table.data, rows: 5, channels: 8)
            embeddingForwardReference(out: ref.data, ids: $0.baseAddress!, table: table.data, rows: 5, channels: 8)
        }
        XCTAssertEqual(fast.array, ref.array)
        XCTAssertEqual(Array(fast.array[8..<16]), Array(table.array[49 * 8..<50 * 8]))
    }

    func testNormsMatchReference() {
        let T = 37, C = 576
        let x = random([T, C], seed: 5, scale: 3), w = random([C], seed: 6), b = random([C], seed: 7)
        let fast = Tensor(shape: [T, C]), ref = Tensor(shape: [T, C])
        rmsnormForward(out: fast.data, inp: x.data, weight: w.data, eps: 1e-5, rows: T, channels: C)
        rmsnormForwardReference(out: ref.data, inp: x.data, weight: w.data, eps: 1e-5, rows: T, channels: C)
        XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-6)  // observed 4.8e-7
        layernormForward(out: fast.data, inp: x.data, weight: w.data, bias: b.data, eps: 1e-5, rows: T, channels: C)
        layernormForwardReference(out: ref.data, inp: x.data, weight: w.data, bias: b.data, eps: 1e-5, rows: T, channels: C)
        XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-6)  // observed 7.2e-7
    }

    func testRotaryMatchesReference() {
        for (theta, D) in [(10000.0, 16), (100000.0, 64)] {
            let T = 300, H = 3
            let x = random([T, H, D], seed: 8)
            let ref = x.copy()
            rotaryForward(x.data, rows: T, heads: H, table: RotaryTable(headDim: D, theta: theta, positions: T))
            rotaryForwardReference(ref.data, rows: T, heads: H, headDim: D, theta: theta)
            // Positions up to 300 with Float32 angles (as transformers computes them): observed 1.7e-5.
            XCTAssertLessThan(maxAbsDiff(x, ref), 1e-4)
        }
        // Position 0 is the identity.
        let y = random([1, 2, 8], seed: 9), y0 = y.copy()
        rotaryForward(y.data, rows: 1, heads: 2, table: RotaryTable(headDim: 8, theta: 10000, positions: 1))
        XCTAssertEqual(y.array, y0.array)
    }

    func testAttentionMatchesReference() {
        // T crosses the 128-row block boundary twice; GQA, MHA and MQA.
        for (T, H, G, D) in [(300, 6, 2, 16), (129, 4, 4, 8), (5, 3, 1, 32)] {
            let q = random([T, H, D], seed: 10), k = random([T, G, D], seed: 11), v = random([T, G, D], seed: 12)
            let fast = Tensor(shape: [T, H, D]), ref = Tensor(shape: [T, H, D])
            let scratch = Tensor(shape: [AttentionForward.scratchCount(tokens: T)])
            attentionForward(out: fast.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D, scores: scratch.data)
            attentionForwardReference(out: ref.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D)
            XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-6, "T=\(T) H=\(H) G=\(G)")  // observed 1.2e-7
        }
    }

    func testAttentionIsCausal() {
        // Changing a later key/value must not change earlier outputs.
        let T = 140, H = 2, G = 1, D = 8
        let q = random([T, H, D], seed: 13), k = random([T, G, D], seed: 14), v = random([T, G, D], seed: 15)
        let a = Tensor(shape: [T, H, D]), b = Tensor(shape: [T, H, D])
        let scratch = Tensor(shape: [AttentionForward.scratchCount(tokens: T)])
        attentionForward(out: a.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D, scores: scratch.data)
        for d in 0..<D { k[(T - 1) * D + d] += 5; v[(T - 1) * D + d] -= 5 }
        attentionForward(out: b.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D, scores: scratch.data)
        XCTAssertEqual(Array(a.array[0..<(T - 1) * H * D]), Array(b.array[0..<(T - 1) * H * D]))
        XCTAssertNotEqual(Array(a.array[(T - 1) * H * D..<T * H * D]), Array(b.array[(T - 1) * H * D..<T * H * D]))
    }

    func testActivationsMatchReference() {
        let N = 40000
        let g = random([N], seed: 16, scale: 8), u = random([N], seed: 17)
        let fast = Tensor(shape: [N]), ref = Tensor(shape: [N])
        swigluForward(out: fast.data, gate: g.data, up: u.data, count: N)
        swigluForwardReference(out: ref.data, gate: g.data, up: u.data, count: N)
        XCTAssertLessThan(maxAbsDiff(fast, ref), 2e-6)  // observed 9.5e-7
        for kind in [GELUKind.exact, .tanh] {
            geluForward(out: fast.data, inp: g.data, count: N, kind: kind)
            geluForwardReference(out: ref.data, inp: g.data, count: N, kind: kind)
            XCTAssertLessThan(maxAbsDiff(fast, ref), 4e-6, "\(kind)")  // observed 4.8e-7
        }
        let acc = g.copy()
        residualAdd(acc.data, u.data, count: N)
        XCTAssertEqual(acc[123], g[123] + u[123])
    }

    func testCrossEntropyAndLogSoftmaxMatchReference() {
        let T = 9, V = 1000
        let logits = random([T, V], seed: 18, scale: 10)
        let targets: [Int32] = (0..<T).map { Int32($0 * 97 % V) }
        var fast = [Double](repeating: 0, count: T), ref = fast
        targets.withUnsafeBufferPointer { tp in
            fast.withUnsafeMutableBufferPointer { crossEntropyForward(nll: $0.baseAddress!, logits: logits.data, targets: tp.baseAddress!, rows: T, columns: V) }
            ref.withUnsafeMutableBufferPointer { crossEntropyForwardReference(nll: $0.baseAddress!, logits: logits.data, targets: tp.baseAddress!, rows: T, columns: V) }
        }
        for t in 0..<T { XCTAssertEqual(fast[t], ref[t], accuracy: 5e-6) }  // observed 1.2e-6
        let ls = Tensor(shape: [T, V])
        logSoftmaxForward(out: ls.data, logits: logits.data, rows: T, columns: V)
        for t in 0..<T {
            let total = (0..<V).reduce(0.0) { $0 + Foundation.exp(Double(ls[t * V + $1])) }
            XCTAssertEqual(total, 1, accuracy: 1e-5)
            XCTAssertEqual(Double(-ls[t * V + Int(targets[t])]), ref[t], accuracy: 2e-5)
        }
    }

    func testJensenShannonAndAngularDistanceMatchReference() {
        let T = 6, V = 3000
        let p = random([T, V], seed: 31, scale: 4), q = random([T, V], seed: 32, scale: 4)
        for t in 0..<3 { for j in 0..<V { q[t * V + j] = p[t * V + j] + 0.05 * q[t * V + j] } }  // rows 0-2 near, 3-5 far
        let lp = Tensor(shape: [T, V])
        logSoftmaxForward(out: lp.data, logits: p.data, rows: T, columns: V)
        var fast = [Double](repeating: 0, count: T), ref = fast, same = fast
        fast.withUnsafeMutableBufferPointer { jensenShannonForward(out: $0.baseAddress!, logProbs: lp.data, logits: q.data, rows: T, columns: V) }
        ref.withUnsafeMutableBufferPointer { jensenShannonForwardReference(out: $0.baseAddress!, logProbs: lp.data, logits: q.data, rows: T, columns: V) }
        same.withUnsafeMutableBufferPointer { jensenShannonForward(out: $0.baseAddress!, logProbs: lp.data, logits: p.data, rows: T, columns: V) }
        for t in 0..<T {
            XCTAssertEqual(fast[t], ref[t], accuracy: 1e-4 * ref[t] + 1e-7, "row \(t)")  // observed 2.2e-6 relative
            XCTAssertLessThan(ref[t], Foundation.log(2.0))
            XCTAssertEqual(same[t], 0, accuracy: 1e-6)
        }
        XCTAssertLessThan(ref[0], ref[3] / 10, "near rows are closer than far rows")
        var ang = [Double](repeating: 0, count: T)
        ang.withUnsafeMutableBufferPointer { angularDistanceForward(out: $0.baseAddress!, a: p.data, b: q.data, rows: T, columns: V) }
        for t in 0..<T {
            var ab = 0.0, aa = 0.0, bb = 0.0
            for j in 0..<V { let x = Double(p[t * V + j]), y = Double(q[t * V + j]); ab += x * y; aa += x * x; bb += y * y }
            XCTAssertEqual(ang[t], Foundation.acos(ab / (aa * bb).squareRoot()) / Double.pi, accuracy: 1e-12)
        }
    }

    func testParallelChunksCoverRangeOnce() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let hits = Tensor(shape: [max(n, 1)])
            Parallel.forEachChunk(n, minChunk: 1) { r in for i in r { hits[i] += 1 } }
            XCTAssertEqual(hits.array.prefix(n).filter { $0 != 1 }.count, 0, "n=\(n)")
        }
    }
}
