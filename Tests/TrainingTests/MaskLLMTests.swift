import Checkpoint
import Foundation
import Model
import TensorCore
import XCTest
@testable import Training

/// MaskLLM's Gumbel-softmax N:M masks (Training/MaskLLM.swift) against plain Float64 references and central
/// differences, its trainable through the distiller, and the validity of every mask it produces.
final class MaskLLMTests: XCTestCase {
    /// Candidates by brute force: every M-bit pattern with N ones, ordered by its kept positions.
    func bruteForceCandidates(n: Int, m: Int) -> [[Int]] {
        (0..<(1 << m)).filter { $0.nonzeroBitCount == n }
            .map { b in (0..<m).filter { b & (1 << $0) != 0 } }
            .sorted { $0.lexicographicallyPrecedes($1) }
            .map { kept in (0..<m).map { kept.contains($0) ? 1 : 0 } }
    }

    func testCandidatesAreEveryNOfMPatternInOrder() throws {
        let c24 = try NMCandidates(n: 2, m: 4)
        XCTAssertEqual(c24.count, 6)
        XCTAssertEqual(c24.masks.map(Int.init), [1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1])
        for (n, m) in [(1, 4), (4, 8), (3, 8), (1, 2), (2, 3)] {
            let c = try NMCandidates(n: n, m: m)
            XCTAssertEqual(c.masks.map(Int.init), bruteForceCandidates(n: n, m: m).flatMap { $0 }, "\(n):\(m)")
        }
        XCTAssertEqual(try NMCandidates(n: 4, m: 8).count, 70)
        for (n, m) in [(4, 4), (5, 4), (0, 4), (2, 9)] { XCTAssertThrowsError(try NMCandidates(n: n, m: m), "\(n):\(m)") }
    }

    /// The noise is Gumbel(0, 1): mean γ (Euler–Mascheroni), variance π²/6, over 10⁶ draws.
    func testNoiseIsGumbel() {
        let key = GumbelNM.noiseKey(seed: 3, step: 1, micro: 0, tensor: 2)
        var s = 0.0, s2 = 0.0
        let n = 1_000_000
        for i in 0..<n { let g = Double(GumbelNM.noise(key: key, index: i)); s += g; s2 += g * g }
        let mean = s / Double(n), variance = s2 / Double(n) - mean * mean
        XCTAssertEqual(mean, 0.5772156649, accuracy: 0.005)
        XCTAssertEqual(variance, Double.pi * Double.pi / 6, accuracy: 0.01)
        // The extremes of the bits give finite samples (SmolLM2's 159 M draws per micro-batch reach them).
        for z: UInt64 in [0, 1, UInt64.max, UInt64.max - 1, 1 << 41, UInt64.max >> 1] {
            let g = GumbelNM.gumbel(bits: z)
            XCTAssertTrue(g.isFinite && abs(g) < 17, "\(z): \(g)")
        }
        XCTAssertNotEqual(GumbelNM.noiseKey(seed: 3, step: 1, micro: 0, tensor: 2), GumbelNM.noiseKey(seed: 3, step: 1, micro: 1, tensor: 2))
        XCTAssertNotEqual(GumbelNM.noiseKey(seed: 3, step: 1, micro: 0, tensor: 2), GumbelNM.noiseKey(seed: 3, step: 2, micro: 0, tensor: 2))
    }

    /// The branch-free log and exp of the sampler against Float64 libm: log on every binade it meets (u in
    /// (0, 1), −log u up to 17), exp on [−87, 0]; and exp's clamp and NaN propagation.
    func testFastLogAndExpMatchLibm() {
        var rng = SplitMix64(seed: 12)
        var worstLog = 0.0, worstExp = 0.0
        for i in 0..<200_000 {
            // Log-uniform over [2^-25, 32], plus the points around 1 and √2 where the range reduction switches.
            let x: Float = i < 64 ? [Float(1).nextDown, 1, Float(1).nextUp, Float(1.41421354), Float(1.41421354).nextUp, 0x1p-24, 0x1p-23, 16.6][i % 8]
                : Float(Foundation.exp2(Double(rng.nextFloat()) * 30 - 25))
            let ref = Foundation.log(Double(x))
            worstLog = max(worstLog, abs(Double(GumbelNM.log(x)) - ref) / max(abs(ref), 1e-3))
            let y = -87 * rng.nextFloat()
            let e = Foundation.exp(Double(y))
            worstExp = max(worstExp, abs(Double(GumbelNM.exp(y)) - e) / e)
        }
        XCTAssertLessThan(worstLog, 3e-7, "log: worst relative error")
        XCTAssertLessThan(worstExp, 5e-7, "exp: worst relative error")
        XCTAssertEqual(Double(GumbelNM.exp(0)), 1, accuracy: 1e-7)
        XCTAssertEqual(Double(GumbelNM.exp(-1000)), Foundation.exp(-87.0), accuracy: 1e-44)
        XCTAssertTrue(GumbelNM.exp(.nan).isNaN)
    }

    /// Plain Float64 reference of the soft mask of one group: softmax((κℓ + γ)/τ) · S.
    func referenceMask(_ logits: [Double], noise: [Double], scale: Double, temperature: Double, candidates: [[Int]]) -> (p: [Double], mask: [Double]) {
        let z = zip(logits, noise).map { (scale * $0 + $1) / temperature }
        let mx = z.max()!
        let e = z.map { Foundation.exp($0 - mx) }
        let s = e.reduce(0, +)
        let p = e.map { $0 / s }
        let m = candidates[0].count
        let mask = (0..<m).map { j in zip(p, candidates).reduce(0.0) { $0 + $1.0 * Double($1.1[j]) } }
        return (p, mask)
    }

    func testForwardEqualsReference() throws {
        for (n, m) in [(2, 4), (1, 4), (4, 8)] {
            let S = try NMCandidates(n: n, m: m), cands = bruteForceCandidates(n: n, m: m), K = S.count, G = 37
            var rng = SplitMix64(seed: UInt64(n * 10 + m))
            let logits = (0..<(G * K)).map { _ in (rng.nextFloat() - 0.5) * 0.05 }
            let key = GumbelNM.noiseKey(seed: 5, step: 2, micro: 1, tensor: 0)
            for noisy in [true, false] {
                var probs = [Float](repeating: 0, count: G * K), mask = [Float](repeating: 0, count: G * m)
                GumbelNM.forward(logits: logits, groups: G, candidates: S, scale: 150, temperature: 2.5, noiseKey: noisy ? key : nil,
                                 probs: &probs, mask: &mask)
                for g in 0..<G {
                    let noise = (0..<K).map { noisy ? Double(GumbelNM.noise(key: key, index: g * K + $0)) : 0 }
                    let ref = referenceMask((0..<K).map { Double(logits[g * K + $0]) }, noise: noise, scale: 150, temperature: 2.5, candidates: cands)
                    for i in 0..<K { XCTAssertEqual(Double(probs[g * K + i]), ref.p[i], accuracy: 2e-6) }
                    for j in 0..<m { XCTAssertEqual(Double(mask[g * m + j]), ref.mask[j], accuracy: 2e-6) }
                    // A soft mask keeps N in expectation: its entries sum to N.
                    XCTAssertEqual(Double((0..<m).reduce(Float(0)) { $0 + mask[g * m + $1] }), Double(n), accuracy: 1e-5)
                }
            }
        }
    }

    /// Blocks that start on an odd logit (odd K: 1:3, 1:5, 3:7 at an odd first group, and chunks of a range cut in
    /// two) take the second half of a pair's noise bits first; every group's probabilities still match the
    /// Float64 reference with `noise(key:index:)`.
    func testBlocksStartingOnAnOddLogitDrawTheSameNoise() throws {
        for (n, m) in [(1, 3), (1, 5), (3, 7)] {
            let S = try NMCandidates(n: n, m: m), cands = bruteForceCandidates(n: n, m: m), K = S.count
            XCTAssertEqual(K % 2, 1)
            let G = 8195
            var rng = SplitMix64(seed: UInt64(n * 10 + m))
            let logits = (0..<(G * K)).map { _ in (rng.nextFloat() - 0.5) * 0.05 }
            let key = GumbelNM.noiseKey(seed: 5, step: 2, micro: 1, tensor: 0)
            func check(_ g: Int, _ p: UnsafePointer<Float>, _ what: String) {
                let noise = (0..<K).map { Double(GumbelNM.noise(key: key, index: g * K + $0)) }
                let ref = referenceMask((0..<K).map { Double(logits[g * K + $0]) }, noise: noise, scale: 150, temperature: 2.5, candidates: cands)
                for i in 0..<K { XCTAssertEqual(Double(p[i]), ref.p[i], accuracy: 2e-6, "\(n):\(m) \(what) group \(g)") }
            }
            // One block starting at group 4097 (logit 4097·K, odd).
            let bits = UnsafeMutablePointer<UInt32>.allocate(capacity: 8 * K + 2), z = UnsafeMutablePointer<Float>.allocate(capacity: 8 * K)
            defer { bits.deallocate(); z.deallocate() }
            logits.withUnsafeBufferPointer { l in
                GumbelNM.blockProbs(l.baseAddress!, g0: 4097, g1: 4104, K: K, scale: 150, invT: 1 / 2.5, noiseKey: key, bits: bits, z: z)
            }
            for g in 4097..<4104 { check(g, z + (g - 4097) * K, "block") }
            // The whole range (with 2 or more threads its second chunk starts at group 4097).
            var probs = [Float](repeating: 0, count: G * K), mask = [Float](repeating: 0, count: G * m)
            GumbelNM.forward(logits: logits, groups: G, candidates: S, scale: 150, temperature: 2.5, noiseKey: key, probs: &probs, mask: &mask)
            probs.withUnsafeBufferPointer { p in for g in [0, 511, 512, 4096, 4097, 4098, G - 1] { check(g, p.baseAddress! + g * K, "forward") } }
        }
    }

    /// dL/dℓ of L = Σ c ⊙ M̃ against central differences of the Float64 reference.
    func testBackwardMatchesCentralDifferences() throws {
        for (n, m) in [(2, 4), (3, 8)] {
            let S = try NMCandidates(n: n, m: m), cands = bruteForceCandidates(n: n, m: m), K = S.count, G = 9
            var rng = SplitMix64(seed: 77)
            let logits = (0..<(G * K)).map { _ in (rng.nextFloat() - 0.5) * 0.02 }
            let c = (0..<(G * m)).map { _ in rng.nextFloat() * 2 - 1 }
            let key = GumbelNM.noiseKey(seed: 1, step: 0, micro: 0, tensor: 3)
            let scale = 100.0, temperature = 1.7
            var probs = [Float](repeating: 0, count: G * K), mask = [Float](repeating: 0, count: G * m)
            GumbelNM.forward(logits: logits, groups: G, candidates: S, scale: Float(scale), temperature: Float(temperature), noiseKey: key,
                             probs: &probs, mask: &mask)
            var grad = [Float](repeating: 0, count: G * K)
            GumbelNM.backward(dMask: c, probs: probs, groups: G, candidates: S, scale: Float(scale), temperature: Float(temperature), dLogits: &grad)
            func loss(_ l: [Double]) -> Double {
                var total = 0.0
                for g in 0..<G {
                    let noise = (0..<K).map { Double(GumbelNM.noise(key: key, index: g * K + $0)) }
                    let r = referenceMask(Array(l[(g * K)..<((g + 1) * K)]), noise: noise, scale: scale, temperature: temperature, candidates: cands)
                    for j in 0..<m { total += Double(c[g * m + j]) * r.mask[j] }
                }
                return total
            }
            let base = logits.map(Double.init), h = 1e-6
            var maxAbs = 0.0, maxErr = 0.0
            for i in 0..<(G * K) {
                var a = base, b = base
                a[i] += h; b[i] -= h
                let fd = (loss(a) - loss(b)) / (2 * h)
                maxAbs = max(maxAbs, abs(fd))
                maxErr = max(maxErr, abs(fd - Double(grad[i])))
            }
            XCTAssertGreaterThan(maxAbs, 1, "the gradient is not trivially small")
            XCTAssertLessThan(maxErr / maxAbs, 1e-4, "\(n):\(m): max error \(maxErr) of max |g| \(maxAbs)")
        }
    }

    var stream: [Int32] {
        var rng = SplitMix64(seed: 9)
        return (0..<400).map { _ in Int32(rng.next() % 256) }
    }

    func config(steps: Int) -> DistillConfig {
        var c = DistillConfig()
        c.steps = steps; c.batch = 2; c.window = 16; c.lr = 5e-2; c.warmup = 0; c.seed = 4; c.accumulation = 2
        return c
    }

    func targets(_ model: DecoderModel, prior: Bool, n: Int = 2, m: Int = 4) throws -> [MaskLLMTrainable.Target] {
        try model.linearWeights.map { id, w in
            guard case .dense(let t) = w else { throw ConfigError("not dense") }
            return .init(id: id, weight: t, prior: prior ? try magnitudeMask(t, n: n, m: m) : nil)
        }
    }

    /// Independent magnitude N:M mask for the tests (keep the N largest |w| of every group).
    func magnitudeMask(_ t: Tensor, n: Int, m: Int) throws -> SparsityMask {
        let C = t.shape[1]
        return try SparsityMask(pattern: .nm(n: n, m: m), rows: t.shape[0], cols: C) { e in
            let g = e / m * m
            let mine = abs(t[e])
            let larger = (g..<(g + m)).filter { abs(t[$0]) > mine || (abs(t[$0]) == mine && $0 < e) }.count
            return larger < n
        }
    }

    /// Counts kept elements per group directly from the bits.
    func assertNM(_ mask: SparsityMask, n: Int, m: Int, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(mask.cols % m, 0, file: file, line: line)
        for g in 0..<(mask.count / m) {
            let kept = (0..<m).filter { mask.bits[(g * m + $0) >> 3] & (1 << UInt8((g * m + $0) & 7)) != 0 }.count
            if kept != n { XCTFail("group \(g) keeps \(kept), not \(n)", file: file, line: line); return }
        }
    }

    /// The trainable's dL/dℓ through the whole student (forward, KL to the teacher, backward, chain through
    /// W_eff = W ⊙ M̃, plus the weight regulariser) against central differences of the same objective.
    func testLogitGradientThroughTheModelMatchesCentralDifferences() throws {
        // 2:4 runs the specialised kernels, 4:8 and 1:4 the general ones.
        for (n, m) in [(2, 4), (4, 8), (1, 4)] { try logitGradientThroughTheModel(n: n, m: m) }
    }

    func logitGradientThroughTheModel(n: Int, m: Int) throws {
        let teacher = try Fixtures.model("tiny-llama-tied")
        let student = try Fixtures.model("tiny-llama")
        var s = MaskLLMSettings()
        s.n = n; s.m = m
        s.temperatureStart = 1; s.temperatureEnd = 1; s.scaleStart = 1; s.scaleEnd = 1
        s.initStd = 1; s.weightReg = 0.05; s.steps = 4; s.accumulation = 1; s.priorStrength = 0
        var c = config(steps: 4)
        c.accumulation = 1; c.ceWeight = 0.5
        let t = try MaskLLMTrainable(targets: try targets(student, prior: false, n: n, m: m), settings: s)
        let d = try Distiller(teacher: teacher, student: student, config: c, trainTokens: stream, trainables: [t], trainWeights: false)
        XCTAssertEqual(d.optimizer.parameters.count, t.targets.count, "only the logits train")
        let ids = d.batchIds(step: 0, micro: 0)
        func objective() -> Double {
            d.studentTrainer.zeroGradients()
            t.willForward(step: 0, micro: 0)
            let v = d.accumulate(ids, scale: 1)
            t.didBackward(step: 0, micro: 0)
            return v.total + t.regValue
        }
        for l in t.logitGrads { l.zero() }
        _ = objective()
        let analytic = t.logitGrads.map(\.array)
        // Largest entries of two tensors (an attention and an MLP weight).
        for ti in [1, t.targets.count - 2] {
            let g = analytic[ti]
            let picks = g.indices.sorted { abs(g[$0]) > abs(g[$1]) }.prefix(4)
            for i in picks {
                let l = t.logits[ti], keep = l[i], h: Float = 2e-2
                l[i] = keep + h; let up = objective()
                l[i] = keep - h; let down = objective()
                l[i] = keep
                let fd = (up - down) / Double(2 * h)
                XCTAssertEqual(Double(g[i]), fd, accuracy: 0.03 * abs(fd) + 1e-5, "\(n):\(m) \(t.targets[ti]) logit \(i)")
            }
        }
    }

    /// The regulariser is the reference code's unnormalised sum: after the micro-batches of a step,
    /// regValue = −(λ_t / A) Σ_micro Σ_targets Σ_ij (W_ij M̃_ij)² with λ_t = λ (1 − t/T) and M̃ each micro-batch's
    /// soft mask (from its stored 16-bit probabilities), in Float64 here; the logits train with the reference's
    /// decoupled weight decay.
    func testRegulariserIsTheUnnormalisedSumOverEveryWeight() throws {
        let teacher = try Fixtures.model("tiny-llama")
        var s = MaskLLMSettings()
        s.steps = 4; s.accumulation = 2; s.weightReg = 1e-3
        let t = try MaskLLMTrainable(targets: try targets(teacher, prior: true), settings: s)
        let d = try Distiller(teacher: teacher, student: teacher, config: config(steps: 4), trainTokens: stream, trainables: [t], trainWeights: false)
        XCTAssertEqual(d.optimizer.parameters.map(\.weightDecay), Array(repeating: 0.1, count: t.targets.count))
        let cands = bruteForceCandidates(n: 2, m: 4), step = 1
        var sum = 0.0, count = 0
        for micro in 0..<2 {
            d.studentTrainer.zeroGradients()
            t.willForward(step: step, micro: micro)
            for i in t.targets.indices {
                let w = t.weights[i]
                for g in 0..<t.logits[i].shape[0] {
                    for j in 0..<4 {
                        var mj = 0.0
                        for k in 0..<6 { mj += Double(t.probs[i][g * 6 + k]) / 65535 * Double(cands[k][j]) }
                        let we = Double(w[g * 4 + j]) * mj
                        sum += we * we; count += 1
                    }
                }
            }
            _ = d.accumulate(d.batchIds(step: step, micro: micro), scale: 0.5)
            t.didBackward(step: step, micro: micro)
        }
        XCTAssertEqual(count, 2 * teacher.linearWeights.reduce(0) { $0 + $1.weight.shape[0] * $1.weight.shape[1] }, "every targeted weight, both micro-batches")
        let expected = -1e-3 * (1 - 1.0 / 4) * sum / 2
        XCTAssertEqual(t.regValue, expected, accuracy: 1e-5 * abs(expected))
        XCTAssertEqual(t.regularize(step: step)["maskllm.weight_reg"], t.regValue)
    }

    /// A non-finite logit (a diverged run) makes the step's regulariser NaN, which stops the training loop,
    /// instead of being sampled as a mask; finite logits never do.
    func testNonFiniteLogitsAreReported() throws {
        let teacher = try Fixtures.model("tiny-llama")
        var s = MaskLLMSettings()
        s.steps = 2; s.accumulation = 1
        for bad: Float in [.nan, .infinity] {
            let t = try MaskLLMTrainable(targets: try targets(teacher, prior: true), settings: s)
            let d = try Distiller(teacher: teacher, student: teacher, config: config(steps: 2), trainTokens: stream, trainables: [t], trainWeights: false)
            t.willForward(step: 0, micro: 0)
            XCTAssertFalse(t.regularize(step: 0)["maskllm.weight_reg"]!.isNaN)
            t.logits[3][7] = bad
            d.studentTrainer.zeroGradients()
            t.willForward(step: 0, micro: 0)
            XCTAssertTrue(t.regularize(step: 0)["maskllm.weight_reg"]!.isNaN, "\(bad)")
        }
    }

    /// Mask-only training moves the logits, never the weights; every hard mask is N:M; the loss falls; and a
    /// run resumed from a saved state ends with the same logits and masks bit for bit.
    func testTrainingKeepsValidMasksAndResumesBitForBit() throws {
        let teacher = try Fixtures.model("tiny-llama")
        for (n, m) in [(2, 4), (4, 8)] {
            var s = MaskLLMSettings()
            s.n = n; s.m = m; s.steps = 8; s.accumulation = 2; s.seed = 4; s.lr = 5e-2
            let c = config(steps: 8)
            func make() throws -> (Distiller, MaskLLMTrainable) {
                let t = try MaskLLMTrainable(targets: try targets(teacher, prior: true, n: n, m: m), settings: s)
                return (try Distiller(teacher: teacher, student: teacher, config: c, trainTokens: stream, trainables: [t], trainWeights: false), t)
            }
            let (full, t) = try make()
            // The prior is soft: α = 3 standard deviations per kept position in common. Most groups start at it;
            // with a strong prior (α = 50) every group does.
            XCTAssertLessThan(t.distanceFromPrior()!, m == 4 ? 0.1 : 0.25)
            var strong = s
            strong.priorStrength = 50
            let ts = try MaskLLMTrainable(targets: try targets(teacher, prior: true, n: n, m: m), settings: strong)
            XCTAssertEqual(ts.distanceFromPrior(), 0)
            for (id, mask) in try ts.hardMasks() {
                guard case .dense(let w) = teacher.linear(id)! else { return XCTFail() }
                XCTAssertEqual(mask, try magnitudeMask(w, n: n, m: m))
            }
            let before = t.distanceFromPrior()!
            for _ in 0..<8 { full.trainStep() }
            XCTAssertEqual(full.log.count, 8)
            XCTAssertNotNil(full.log.last?.extras?["mask_change"])
            XCTAssertNotNil(full.log.last?.extras?["maskllm.weight_reg"])
            XCTAssertGreaterThan(t.distanceFromPrior()!, before, "\(n):\(m): the masks moved from the prior")
            for (i, id) in t.targets.enumerated() {
                guard case .dense(let w) = teacher.linear(id)! else { return XCTFail() }
                XCTAssertEqual(t.weights[i].array, w.array, "weights frozen")
            }
            let masks = try t.hardMasks()
            XCTAssertEqual(masks.count, teacher.linearWeights.count)
            for (_, mask) in masks { assertNM(mask, n: n, m: m) }

            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("maskllm-resume-\(getpid())-\(n)\(m)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            let state = dir.appendingPathComponent("state.h5").path
            let (first, _) = try make()
            for _ in 0..<3 { first.trainStep() }
            try first.saveState(to: state)
            let (second, t2) = try make()
            try second.loadState(from: state)
            while second.step < 8 { second.trainStep() }
            XCTAssertEqual(t2.logits.map(\.array), t.logits.map(\.array))
            XCTAssertEqual(try t2.hardMasks(), masks)
            XCTAssertEqual(second.log, full.log)

            // Other settings of the trained part refuse the state.
            var other = s
            other.priorStrength = 1
            let t3 = try MaskLLMTrainable(targets: try targets(teacher, prior: true, n: n, m: m), settings: other)
            let third = try Distiller(teacher: teacher, student: teacher, config: c, trainTokens: stream, trainables: [t3], trainWeights: false)
            XCTAssertThrowsError(try third.loadState(from: state)) { XCTAssertTrue("\($0)".contains("trained parts had other settings"), "\($0)") }
        }
    }

    /// The step's `mask_change` and `from_prior` are the fractions of groups whose argmax moved in the step and
    /// that differ from the prior's, counted here from the logits directly.
    func testMaskChangeCountsTheArgmaxMoves() throws {
        let teacher = try Fixtures.model("tiny-llama")
        var s = MaskLLMSettings()
        s.steps = 3; s.accumulation = 1; s.lr = 0.5
        let t = try MaskLLMTrainable(targets: try targets(teacher, prior: true), settings: s)
        let d = try Distiller(teacher: teacher, student: teacher, config: config(steps: 3), trainTokens: stream, trainables: [t], trainWeights: false)
        func argmax() -> [[Int]] {
            t.logits.map { l in (0..<l.shape[0]).map { g in (0..<6).max { l[g * 6 + $0] < l[g * 6 + $1] || (l[g * 6 + $0] == l[g * 6 + $1] && $0 > $1) }! } }
        }
        let priorMasks = try targets(teacher, prior: true).map { $0.prior! }
        for _ in 0..<3 {
            let before = argmax()
            let stats = d.trainStep()
            let after = argmax()
            let total = after.reduce(0) { $0 + $1.count }
            let moved = zip(before, after).reduce(0) { a, p in a + zip(p.0, p.1).filter { $0 != $1 }.count }
            var off = 0
            for (i, choice) in after.enumerated() {
                for (g, k) in choice.enumerated() where (0..<4).contains(where: { priorMasks[i][g * 4 + $0] != t.candidates.keeps(k, $0) }) { off += 1 }
            }
            XCTAssertEqual(stats.extras?["mask_change"], Double(moved) / Double(total))
            XCTAssertEqual(stats.extras?["from_prior"], Double(off) / Double(total))
            XCTAssertGreaterThan(moved, 0, "lr 0.5 moves some argmaxes")
        }
    }

    /// Trained weights: W gets dL/dW_eff ⊙ M̃, the logits their own rate; the masks stay N:M.
    func testWeightsTrainWhenAsked() throws {
        let teacher = try Fixtures.model("tiny-llama")
        var s = MaskLLMSettings()
        s.steps = 3; s.accumulation = 2; s.trainWeights = true; s.weightLR = 1e-2
        let t = try MaskLLMTrainable(targets: try targets(teacher, prior: true), settings: s)
        let d = try Distiller(teacher: teacher, student: teacher, config: config(steps: 3), trainTokens: stream, trainables: [t], trainWeights: false)
        XCTAssertEqual(d.optimizer.parameters.count, 2 * t.targets.count)
        for _ in 0..<3 { d.trainStep() }
        guard case .dense(let w0) = teacher.linear(t.targets[0])! else { return XCTFail() }
        XCTAssertNotEqual(t.weights[0].array, w0.array, "weights trained")
        XCTAssertEqual(w0.array, try Fixtures.model("tiny-llama").linear(t.targets[0])!.dequantized().array, "the model given is untouched")
        for (_, mask) in try t.hardMasks() { assertNM(mask, n: 2, m: 4) }
    }
}
