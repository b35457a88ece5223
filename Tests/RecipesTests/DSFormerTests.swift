import Foundation
import Model
@testable import Passes
import Recipes
import TensorCore
import Training
import XCTest

/// DSFormer's dense × sparse factorization (Passes/DSFormer.swift), the low-rank baseline
/// (Passes/LowRank.swift) and the Straight-Through Factorizer (Training/StraightThroughFactorizer.swift).
final class DSFormerTests: XCTestCase {
    var rng = SplitMix64(seed: 2023)
    func values(_ n: Int) -> [Double] { (0..<n).map { _ in Double(2 * rng.nextFloat() - 1) } }

    /// Plain Float64 ‖W − D S‖_F / ‖W‖_F with loops (no BLAS).
    func plainRelativeError(_ w: [Double], _ d: [Double], _ s: [Double], m: Int, n: Int, k: Int) -> Double {
        var e = 0.0, w2 = 0.0
        for i in 0..<m {
            for j in 0..<n {
                var p = 0.0
                for r in 0..<k { p += d[i * k + r] * s[r * n + j] }
                e += (w[i * n + j] - p) * (w[i * n + j] - p); w2 += w[i * n + j] * w[i * n + j]
            }
        }
        return (e / w2).squareRoot()
    }

    /// A known answer: W = D₀ S₀ with S₀ having exactly s nonzeros per column (k = 12 atoms, s = 3) is a
    /// dense-sparse factorization of zero error; W has rank 12, so the truncated SVD with the same parameter
    /// count (rank ⌊(m k + s n) / (m + n)⌋ = 6) cannot fit it. The initialisation's error (recomputed here with
    /// plain loops) must not exceed the SVD's, and must not exceed its own SVD start.
    func testInitialisationBeatsTruncatedSVDOnAKnownDenseSparseMatrix() throws {
        let m = 24, n = 40, k = 12, s = 3
        let d0 = values(m * k)
        var s0 = [Double](repeating: 0, count: k * n)
        for c in 0..<n {
            var rows = Set<Int>()
            while rows.count < s { rows.insert(Int(rng.next() % UInt64(k))) }
            for r in rows { s0[r * n + c] = Double(1 + rng.nextFloat()) * (rng.next() % 2 == 0 ? 1 : -1) }
        }
        var w = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for r in 0..<k { w[i * n + j] += d0[i * k + r] * s0[r * n + j] } } }
        let r = try DenseSparseFactorizer.factorize(w, rows: m, columns: n, rank: k, nonzeros: s, iterations: 50)
        let params = m * k + s * n, svdRank = params / (m + n)
        XCTAssertEqual(svdRank, 6)
        let svdRel = (r.svdError2(rank: svdRank) / r.norm2).squareRoot()
        let ours = plainRelativeError(w, r.d, r.s, m: m, n: n, k: k)
        XCTAssertEqual(ours, (r.error2 / r.norm2).squareRoot(), accuracy: 1e-9, "reported error")
        XCTAssertLessThanOrEqual(ours, svdRel)
        XCTAssertLessThanOrEqual(r.error2, r.startError2 * (1 + 1e-12))
        // Independent check of the SVD side: Σ_{i>r} σ_i² from the eigenvalues of WᵀW.
        var wtw = [Double](repeating: 0, count: n * n)
        for a in 0..<n { for b in 0..<n { for i in 0..<m { wtw[a * n + b] += w[i * n + a] * w[i * n + b] } } }
        let eig = try LAPACK.symmetricEigen(wtw, n: n).values.sorted(by: >)
        let tail = eig.dropFirst(svdRank).reduce(0) { $0 + max($1, 0) }
        XCTAssertEqual(r.svdError2(rank: svdRank), tail, accuracy: 1e-8 * r.norm2)
        print(String(format: "known dense-sparse W (24×40, k 12, s 3): DSFormer init %.2e (SVD start %.2e), truncated SVD rank %d %.3f, %d alternations",
                     ours, (r.startError2 / r.norm2).squareRoot(), svdRank, svdRel, r.iterations))
        // Exactly s nonzeros per column in the support.
        for c in 0..<n { XCTAssertEqual((0..<k).filter { r.support[$0 * n + c] }.count, s) }
    }

    /// A known answer the initialisation must find exactly: s = 1 with every atom used by some column makes
    /// the rows of S₀ orthogonal, so W's left singular vectors are D₀'s normalised atoms and the SVD start is
    /// already the exact factorization (error ~0), while the truncated SVD at equal parameters has rank
    /// ⌊(m k + n) / (m + n)⌋ < k and a large error.
    func testInitialisationFindsAnExactOneSparseFactorization() throws {
        let m = 16, n = 48, k = 8
        let d0 = values(m * k)
        var s0 = [Double](repeating: 0, count: k * n)
        for c in 0..<n { s0[(c % k) * n + c] = Double(0.5 + rng.nextFloat()) * Double(1 + c % k) }
        var w = [Double](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n { for r in 0..<k { w[i * n + j] += d0[i * k + r] * s0[r * n + j] } } }
        let r = try DenseSparseFactorizer.factorize(w, rows: m, columns: n, rank: k, nonzeros: 1, iterations: 3)
        let svdRank = (m * k + n) / (m + n)
        let svdRel = (r.svdError2(rank: svdRank) / r.norm2).squareRoot(), ours = plainRelativeError(w, r.d, r.s, m: m, n: n, k: k)
        XCTAssertEqual(svdRank, 2)
        XCTAssertLessThan(ours, 1e-9)
        XCTAssertGreaterThan(svdRel, 0.1)
    }

    /// On random matrices (no structure) the alternation never ends worse than its start, the reported error is
    /// the plain one, and with s = k (a dense S) it is as good as the truncated SVD of rank k.
    func testInitialisationIsMonotoneAndMatchesSVDWhenSIsDense() throws {
        let m = 20, n = 30
        let w = values(m * n)
        for (k, s) in [(8, 2), (10, 5), (6, 6)] {
            let r = try DenseSparseFactorizer.factorize(w, rows: m, columns: n, rank: k, nonzeros: s, iterations: 10)
            XCTAssertLessThanOrEqual(r.error2, r.startError2 * (1 + 1e-12))
            XCTAssertEqual(plainRelativeError(w, r.d, r.s, m: m, n: n, k: k), (r.error2 / r.norm2).squareRoot(), accuracy: 1e-9)
            if s == k { XCTAssertEqual(r.error2, r.svdError2(rank: k), accuracy: 1e-9 * r.norm2) }
        }
    }

    /// The low-rank factorization's error is Σ_{i>k} σ_i² (σ from LAPACK's SVD) and
    /// its product, computed plainly, has that error.
    func testLowRankIsTheTruncatedSVD() throws {
        for (m, n, k) in [(18, 26, 5), (26, 18, 5), (20, 20, 7)] { try lowRankCase(m: m, n: n, k: k) }
    }

    func lowRankCase(m: Int, n: Int, k: Int) throws {
        let w = values(m * n)
        let f = try LowRankFactorizer.factorize(w, rows: m, columns: n, rank: k)
        // Reference: LAPACK's SVD (dgesdd), independent of the Gram-matrix route the factorizer takes.
        let sv = try LAPACK.svd(w, rows: m, columns: n).s
        let tail = sv.dropFirst(k).reduce(0) { $0 + $1 * $1 }
        for (a, b) in zip(f.singularValues, sv) { XCTAssertEqual(a, b, accuracy: 1e-9 * sv[0]) }
        let w2 = w.reduce(0) { $0 + $1 * $1 }
        XCTAssertEqual(f.error2, tail, accuracy: 1e-9 * w2)
        XCTAssertEqual(plainRelativeError(w, f.d, f.s, m: m, n: n, k: k), (tail / w2).squareRoot(), accuracy: 1e-9)
    }

    func pass<P: CompressionPass>(_ type: P.Type, _ json: String) throws -> P { try P(config: try Tiny.stage(json)) }

    /// The passes on a small model: every target becomes factorized with exactly s nonzeros per column of S
    /// (mask and values), parameters and bytes follow the exact accounting, the forward equals D·S·x computed
    /// plainly, and untargeted weights are unchanged.
    func testPassesFactorizeTheTargetsWithExactCounts() throws {
        let model = Tiny.model()
        let ds = try pass(DSFormerPass.self, #"{"targets": ["mlp"], "parameter_ratio": 0.6, "density": 0.5, "iterations": 4}"#)
        let (out, diag) = try ds.run(on: model, context: PassContext())
        var expectParams = model.parameterCount
        for (id, w) in out.linearWeights {
            let before = try XCTUnwrap(model.linear(id))
            guard id.kind == .gate || id.kind == .up || id.kind == .down else {
                XCTAssertEqual(w.denseView?.array, before.denseView?.array, "\(id) changed"); continue
            }
            guard case .factorized(let f) = w else { return XCTFail("\(id) is \(w.kind)") }
            let k = f.rank, C = f.sparse.mask.cols, OC = f.dense.shape[0], s = f.nonzerosPerColumn
            XCTAssertEqual([OC, C], before.shape)
            let expected = try XCTUnwrap(DenseSparseFactorizer.sizes(ratio: 0.6, density: 0.5, rows: OC, columns: C))
            XCTAssertEqual([k, s], [expected.rank, expected.nonzeros])
            XCTAssertLessThanOrEqual(OC * k + s * C, Int(0.6 * Double(OC * C)))
            for c in 0..<C {
                XCTAssertEqual((0..<k).filter { f.sparse.mask[$0 * C + c] }.count, s, "\(id) column \(c)")
                XCTAssertLessThanOrEqual((0..<k).filter { f.sparse.values[$0 * C + c] != 0 }.count, s)
            }
            XCTAssertEqual(w.parameterCount, OC * k + s * C)
            XCTAssertEqual(w.storageBytes, 4 * OC * k + (4 + 1) * s * C)
            expectParams += OC * k + s * C - OC * C
            // Forward = D · (S · x), plainly in Float64.
            let T = 3, x = Tensor(shape: [T, C], values: values(T * C).map(Float.init)), y = Tensor(shape: [T, OC])
            w.forward(out: y.data, inp: x.data, rows: T)
            for t in 0..<T {
                for o in 0..<OC {
                    var acc = 0.0
                    for r in 0..<k {
                        var sx = 0.0
                        for c in 0..<C where f.sparse.mask[r * C + c] { sx += Double(f.sparse.values[r * C + c]) * Double(x[t * C + c]) }
                        acc += Double(f.dense[o * k + r]) * sx
                    }
                    XCTAssertEqual(Double(y[t * OC + o]), acc, accuracy: 1e-5 * max(1, abs(acc)))
                }
            }
        }
        XCTAssertEqual(out.parameterCount, expectParams)
        // Diagnostics: init error no worse than its SVD start for every weight.
        for row in try XCTUnwrap(diag.objectValue?["weights"]?.arrayValue) {
            let o = try XCTUnwrap(row.objectValue)
            XCTAssertLessThanOrEqual(try XCTUnwrap(o["relative_error"]?.doubleValue), try XCTUnwrap(o["start_relative_error"]?.doubleValue) + 1e-12)
        }

        let lr = try pass(LowRankPass.self, #"{"targets": ["q_proj", "down_proj"], "rank": 4}"#)
        let (low, _) = try lr.run(on: model, context: PassContext())
        for (id, w) in low.linearWeights where id.kind == .q || id.kind == .down {
            guard case .factorized(let f) = w else { return XCTFail("\(id) is \(w.kind)") }
            XCTAssertEqual(f.rank, 4); XCTAssertEqual(f.nonzerosPerColumn, 4)
            XCTAssertEqual(w.parameterCount, 4 * (w.outFeatures + w.inFeatures))
        }
    }

    /// Bad settings are refused with the stage and key named, before anything runs; sizes that depend on the
    /// weights are refused by `run` before any factorization, naming the weight.
    func testBadInputIsRefused() throws {
        func refuses<P: CompressionPass>(_ t: P.Type, _ json: String, _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try pass(t, json), json, line: line) { e in
                XCTAssertTrue("\(e)".contains(fragment), "\(json) -> \(e)", line: line)
                XCTAssertTrue("\(e)".contains("test, stage 1"), "\(e)", line: line)
            }
        }
        refuses(DSFormerPass.self, #"{"rank": 8}"#, "'nonzeros'")
        refuses(DSFormerPass.self, #"{"rank": 4, "nonzeros": 5}"#, "'nonzeros': 5 exceeds 'rank' 4")
        refuses(DSFormerPass.self, #"{"rank": 0, "nonzeros": 1}"#, "'rank': 0 is out of range")
        refuses(DSFormerPass.self, #"{"parameter_ratio": 1.0}"#, "'parameter_ratio'")
        refuses(DSFormerPass.self, #"{"parameter_ratio": 0.5, "density": 0}"#, "'density'")
        refuses(DSFormerPass.self, #"{"parameter_ratio": 0.5, "rank": 4, "nonzeros": 2}"#, "not both")
        refuses(DSFormerPass.self, #"{"rank": 4, "nonzeros": 2, "density": 0.5}"#, "'density'")
        refuses(DSFormerPass.self, #"{"parameter_ratio": 0.5, "targets": ["lm_head"]}"#, "'targets'")
        refuses(LowRankPass.self, #"{"rank": 4, "parameter_ratio": 0.5}"#, "exactly one of 'rank'")
        refuses(LowRankPass.self, #"{"parameter_ratio": 1.5}"#, "'parameter_ratio'")
        refuses(LowRankPass.self, #"{}"#, "exactly one of 'rank'")
        XCTAssertThrowsError(try StageRegistry.passes().make("dsformer", config: try Tiny.stage(#"{"parameter_ratio": 0.5, "ratio": 2}"#))) {
            XCTAssertTrue("\($0)".contains("unknown key 'ratio'"), "\($0)")
        }

        let model = Tiny.model()  // hidden 32, MLP 48, q (48 × 32), k/v (16 × 32)
        func runRefuses<P: CompressionPass>(_ t: P.Type, _ json: String, _ fragment: String, line: UInt = #line) throws {
            let p = try pass(t, json)
            XCTAssertThrowsError(try p.run(on: model, context: PassContext()), line: line) { XCTAssertTrue("\($0)".contains(fragment), "\($0)", line: line) }
        }
        try runRefuses(DSFormerPass.self, #"{"rank": 20, "nonzeros": 2}"#, "exceeds min(out, in) = 16 of layer 0 k_proj")
        try runRefuses(DSFormerPass.self, #"{"targets": ["mlp"], "rank": 30, "nonzeros": 30}"#, "no fewer than its 1536 dense ones")
        try runRefuses(LowRankPass.self, #"{"targets": ["q_proj"], "rank": 20}"#, "no fewer than its 1536 dense ones")
        try runRefuses(LowRankPass.self, #"{"targets": ["k_proj"], "parameter_ratio": 0.01}"#, "leaves layer 0 k_proj (16 × 32) no rank")
        // A factorized weight given to a pass that takes dense weights only.
        let (factored, _) = try pass(LowRankPass.self, #"{"targets": ["down_proj"], "rank": 4}"#).run(on: model, context: PassContext())
        try XCTAssertThrowsError(pass(DSFormerPass.self, #"{"targets": ["down_proj"], "rank": 8, "nonzeros": 2}"#).run(on: factored, context: PassContext())) {
            XCTAssertTrue("\($0)".contains("layer 0 down_proj is factorized; 'dsformer' factorizes dense weights only"), "\($0)")
        }
        // In a recipe the order is refused when the recipe is read.
        func decode(_ stages: String) throws -> Recipe {
            try Recipe(json: try JSONValue.parse(#"{"format": 1, "stages": \#(stages)}"#), path: "r.json", registry: .passes())
        }
        for (stages, fragment) in [
            (#"[{"stage": "lowrank", "rank": 4}, {"stage": "dsformer", "rank": 8, "nonzeros": 2}]"#, "stage 2 (dsformer): cannot take factorized weights"),
            (#"[{"stage": "dsformer", "parameter_ratio": 0.5}, {"stage": "cptquant", "allocation": "uniform", "estimator": "none", "method": "rtn", "bits_per_weight": 4}, {"stage": "distill", "steps": 2}]"#, "stage 3 (distill): cannot take quantized weights"),
            (#"[{"stage": "distill", "steps": 2, "stf": true}]"#, "stage 1 (distill): 'stf': true trains factorized weights, but the base checkpoint leaves none"),
        ] {
            XCTAssertThrowsError(try decode(stages), stages) { XCTAssertTrue("\($0)".contains(fragment), "\($0)") }
        }
        XCTAssertNoThrow(try decode(#"[{"stage": "dsformer", "parameter_ratio": 0.5}, {"stage": "distill", "steps": 2, "stf": true}, {"stage": "eval"}]"#))
    }

    /// The straight-through path: with S's mask opened (as STF prepares it), the factorized weight's backward
    /// gives ∂L/∂S at every entry, kept or not, and ∂L/∂D; checked against central differences of the Float64
    /// product L = Σ (x · (D P_s(S̃))ᵀ) ⊙ R, perturbing S's entries directly (h = 1e-6).
    func testStraightThroughGradientAgainstCentralDifferences() throws {
        let T = 4, C = 10, OC = 7, k = 6, s = 2
        let latent = Tensor(shape: [k, C], values: values(k * C).map(Float.init))
        let S = Tensor(shape: [k, C])
        StraightThroughFactorizer.project(latent, into: S, nonzeros: s)
        // P_s keeps the s largest magnitudes of every column.
        for c in 0..<C {
            let mags = (0..<k).map { abs(latent[$0 * C + c]) }.sorted(by: >)
            let kept = (0..<k).filter { S[$0 * C + c] != 0 }
            XCTAssertEqual(kept.count, s)
            for r in kept { XCTAssertGreaterThanOrEqual(abs(S[r * C + c]), mags[s - 1]); XCTAssertEqual(S[r * C + c], latent[r * C + c]) }
        }
        let D = Tensor(shape: [OC, k], values: values(OC * k).map(Float.init))
        let open = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { _ in true }
        let w = LinearWeight.factorized(try FactorizedWeight(dense: D, sparse: SparseWeight(values: S, mask: open)))
        let x = values(T * C), R = values(T * OC)
        let xt = Tensor(shape: [T, C], values: x.map(Float.init)), dout = Tensor(shape: [T, OC], values: R.map(Float.init))
        let dD = Tensor(shape: [OC, k]), dS = Tensor(shape: [k, C]), dx = Tensor(shape: [T, C])
        w.backward(dinp: dx.data, grads: [dD.data, dS.data], dout: dout.data, inp: xt.data, rows: T)
        func loss(_ d: [Double], _ sv: [Double]) -> Double {
            var l = 0.0
            for t in 0..<T {
                for o in 0..<OC {
                    var y = 0.0
                    for r in 0..<k { var sx = 0.0; for c in 0..<C { sx += sv[r * C + c] * x[t * C + c] }; y += d[o * k + r] * sx }
                    l += y * R[t * OC + o]
                }
            }
            return l
        }
        let d0 = D.array.map(Double.init), s0 = S.array.map(Double.init), h = 1e-6
        let numS = (0..<(k * C)).map { i -> Double in
            var p = s0, q = s0; p[i] += h; q[i] -= h
            return (loss(d0, p) - loss(d0, q)) / (2 * h)
        }
        let numD = (0..<(OC * k)).map { i -> Double in
            var p = d0, q = d0; p[i] += h; q[i] -= h
            return (loss(p, s0) - loss(q, s0)) / (2 * h)
        }
        func rel(_ a: Tensor, _ n: [Double]) -> Double {
            let scale = max(n.map(abs).max()!, 1e-12)
            return zip(a.array, n).map { abs(Double($0) - $1) }.max()! / scale
        }
        XCTAssertLessThan(rel(dS, numS), 1e-4, "∂L/∂S (straight through to S̃)")
        XCTAssertLessThan(rel(dD, numD), 1e-4, "∂L/∂D")
        XCTAssertTrue((0..<(k * C)).contains { S[$0] == 0 && abs(dS[$0]) > 1e-3 }, "no gradient reaches dropped entries")
    }

    var stream: [Int32] {
        var rng = SplitMix64(seed: 5)
        return (0..<600).map { _ in Int32(rng.next() % UInt64(Tiny.config.vocabSize)) }
    }

    /// STF inside the distillation loop: the latent replaces S's values in the optimizer and gets their dense
    /// gradient; the support can move; the result has exactly s nonzeros per column, equal to P_s of the
    /// latent. Training the fixed pattern instead keeps every support. Both lower the KD loss.
    func testSTFTrainsThroughTheDistiller() throws {
        let teacher = Tiny.model()
        let (student, _) = try pass(DSFormerPass.self, #"{"targets": ["mlp"], "rank": 16, "nonzeros": 4, "iterations": 3}"#).run(on: teacher, context: PassContext())
        var c = DistillConfig()
        c.steps = 8; c.batch = 2; c.window = 16; c.lr = 3e-4; c.warmup = 0; c.seed = 4
        let (prepared, stf) = try StraightThroughFactorizer.prepare(student, lr: c.lr, weightDecay: 0)
        let d = try Distiller(teacher: teacher, student: prepared, config: c, trainTokens: stream, trainables: [stf])
        let names = Set(d.optimizer.parameters.map(\.name))
        XCTAssertEqual(stf.parameters.count, 12)
        for p in stf.parameters {
            XCTAssertTrue(names.contains(p.name))
            XCTAssertFalse(names.contains(String(p.name.dropFirst(4))), "S values still updated directly: \(p.name)")
        }
        let probe = d.batchIds(step: 0, micro: 0)
        let before = d.evaluateLoss(probe).kl
        for _ in 0..<c.steps { d.trainStep() }
        XCTAssertLessThan(d.evaluateLoss(probe).kl, before)
        let trained = try stf.finalize(d.student)
        var moved = 0
        for (id, w) in trained.linearWeights where id.kind == .gate || id.kind == .up || id.kind == .down {
            guard case .factorized(let f) = w, case .factorized(let f0)? = student.linear(id) else { return XCTFail("\(id) not factorized") }
            let k = f.rank, C = f.sparse.mask.cols
            XCTAssertEqual(f.nonzerosPerColumn, 4)
            for cc in 0..<C { XCTAssertEqual((0..<k).filter { f.sparse.mask[$0 * C + cc] }.count, 4) }
            moved += (0..<(k * C)).filter { f.sparse.mask[$0] != f0.sparse.mask[$0] }.count
            XCTAssertEqual(w.parameterCount, student.linear(id)!.parameterCount)
        }
        XCTAssertGreaterThan(moved, 0, "STF never changed a support")

        // The fixed sparse pattern (no STF): supports stay.
        let fixed = try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream)
        let fixedBefore = fixed.evaluateLoss(probe).kl
        for _ in 0..<c.steps { fixed.trainStep() }
        XCTAssertLessThan(fixed.evaluateLoss(probe).kl, fixedBefore)
        for (id, w) in fixed.student.linearWeights where id.kind == .down {
            guard case .factorized(let f) = w, case .factorized(let f0)? = student.linear(id) else { return XCTFail() }
            XCTAssertEqual(f.sparse.mask, f0.sparse.mask)
            for i in 0..<f.sparse.values.count where !f.sparse.mask[i] { XCTAssertEqual(f.sparse.values[i], 0) }
        }
    }

    /// STF state resumes bit for bit: the latent is saved, S is re-projected from it before the next forward.
    func testSTFResumes() throws {
        let teacher = Tiny.model()
        let (student, _) = try pass(DSFormerPass.self, #"{"targets": ["down_proj"], "rank": 12, "nonzeros": 3, "iterations": 2}"#).run(on: teacher, context: PassContext())
        var c = DistillConfig()
        c.steps = 4; c.batch = 1; c.window = 12; c.lr = 1e-2; c.warmup = 0
        func make() throws -> (Distiller, StraightThroughFactorizer) {
            let (p, stf) = try StraightThroughFactorizer.prepare(student, lr: c.lr, weightDecay: 0)
            return (try Distiller(teacher: teacher, student: p, config: c, trainTokens: stream, trainables: [stf]), stf)
        }
        let (full, fullSTF) = try make()
        for _ in 0..<4 { full.trainStep() }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stf-\(UUID()).h5").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (first, _) = try make()
        for _ in 0..<2 { first.trainStep() }
        try first.saveState(to: path)
        let (second, secondSTF) = try make()
        try second.loadState(from: path)
        for _ in 0..<2 { second.trainStep() }
        let a = try fullSTF.finalize(full.student), b = try secondSTF.finalize(second.student)
        for (x, y) in zip(a.namedTensors, b.namedTensors) { XCTAssertEqual(x.tensor.array, y.tensor.array, x.name) }
    }
}

/// Measurement (runs only with DSFORMER_BENCH=1): the first product of a factorized forward, tmp (T × k) =
/// x (T × C) · Sᵀ, as the dense GEMM over S with zeros (what `LinearWeight.forward` does) against a
/// column-sparse kernel touching only the s kept entries of every column (T·C·s multiply-adds). Both results
/// must agree; the times are printed.
final class DSFormerKernelMeasurement: XCTestCase {
    func testDenseWithZerosAgainstSparseKernel() throws {
        guard ProcessInfo.processInfo.environment["DSFORMER_BENCH"] == "1" else { throw XCTSkip("set DSFORMER_BENCH=1") }
        var rng = SplitMix64(seed: 1)
        for (T, C, k, s) in [(1024, 1536, 460, 115), (1024, 576, 263, 66), (1024, 1536, 329, 41)] {
            let x = Tensor(shape: [T, C]); x.fillUniform(scale: 1, rng: &rng)
            let S = Tensor(shape: [k, C])
            var rows = [[Int32]](repeating: [], count: C), vals = [[Float]](repeating: [], count: C)
            for c in 0..<C {
                var picked = Set<Int>()
                while picked.count < s { picked.insert(Int(rng.next() % UInt64(k))) }
                for r in picked.sorted() { let v = 2 * rng.nextFloat() - 1; S[r * C + c] = v; rows[c].append(Int32(r)); vals[c].append(v) }
            }
            let dense = Tensor(shape: [T, k]), sparse = Tensor(shape: [T, k])
            func time(_ f: () -> Void) -> Double {
                var best = Double.infinity
                for _ in 0..<3 { let t0 = Date(); f(); best = min(best, Date().timeIntervalSince(t0)) }
                return best
            }
            let td = time { BLAS.gemm(transB: true, m: T, n: k, k: C, a: x.data, lda: C, b: S.data, ldb: C, c: dense.data, ldc: k) }
            let ts = time {
                sparse.zero()
                for t in 0..<T {
                    let out = sparse.data + t * k, inp = x.data + t * C
                    for c in 0..<C {
                        let xv = inp[c]
                        rows[c].withUnsafeBufferPointer { rp in vals[c].withUnsafeBufferPointer { vp in
                            for j in 0..<s { out[Int(rp[j])] += xv * vp[j] }
                        } }
                    }
                }
            }
            for i in 0..<(T * k) { XCTAssertEqual(sparse[i], dense[i], accuracy: 1e-3 * max(1, abs(dense[i]))) }
            print(String(format: "x (%d × %d) · Sᵀ, k %d, s %d: dense with zeros %.2f ms, sparse kernel %.2f ms (%.1f×), BLAS threads %d",
                         T, C, k, s, td * 1e3, ts * 1e3, ts / td, BLAS.threads))
        }
    }
}
