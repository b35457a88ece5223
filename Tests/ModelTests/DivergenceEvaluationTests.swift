import Checkpoint
import Evaluation
import Foundation
import Model
import TensorCore
import XCTest

/// llama.cpp's protocol, the top-k base reference file and `compress eval --reference`'s figures (issue 30), against
/// computations written here from the plain reference forward.
final class DivergenceEvaluationTests: XCTestCase {
    static func model(_ name: String = "tiny-llama") throws -> DecoderModel { try Checkpoint.read(Fixtures.path("\(name).h5")).model }

    /// A copy of `m` with every dense linear weight scaled by (1 + ε·noise): another model of the same vocabulary.
    static func perturbed(_ m: DecoderModel, by eps: Float) -> DecoderModel {
        let c = m.copy()
        var seed: UInt32 = 7
        for l in c.layers {
            let ws = [l.attention?.q, l.attention?.k, l.attention?.v, l.attention?.o, l.mlp?.gate, l.mlp?.up, l.mlp?.down]
            for w in ws {
                guard case .dense(let t)? = w else { continue }
                for i in 0..<t.count {
                    seed = seed &* 1_664_525 &+ 1_013_904_223
                    t.data[i] *= 1 + eps * (Float(seed >> 8) / Float(1 << 24) - 0.5)
                }
            }
        }
        return c
    }

    /// Per-position log-softmax rows (Float64) of the plain reference forward.
    static func logProbs(_ m: DecoderModel, _ ids: [Int32]) -> [[Double]] {
        let logits = m.referenceLogits(ids), V = m.config.vocabSize
        return (0..<ids.count).map { t in
            let row = (0..<V).map { Double(logits[t * V + $0]) }
            let mx = row.max()!, lse = mx + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - mx) })
            return row.map { $0 - lse }
        }
    }

    func testLlamaCppProtocolWindows() {
        let tokens = (0..<40).map(Int32.init)
        let bos = PerplexityProtocol(kind: .llamacpp, bos: 99), plain = PerplexityProtocol(kind: .llamacpp, bos: nil)
        // With BOS the stream is [BOS] + tokens cut into chunks of 8, each chunk's first token replaced by the BOS.
        XCTAssertEqual(bos.windows(usable: 40, window: 8), 5)
        XCTAssertEqual(bos.window(0, of: tokens, window: 8), [99] + (0..<7).map(Int32.init))
        XCTAssertEqual(bos.window(2, of: tokens, window: 8), [99] + (16..<23).map(Int32.init))
        XCTAssertEqual(bos.streamTokensCovered(windows: 5, window: 8), 39)
        XCTAssertEqual(plain.windows(usable: 40, window: 8), 5)
        XCTAssertEqual(plain.window(1, of: tokens, window: 8), (8..<16).map(Int32.init))
        XCTAssertEqual(plain.windows(usable: 39, window: 8), 4)
        XCTAssertEqual(bos.firstScored(512), 256)
        XCTAssertEqual(bos.predictedPerWindow(512), 255)
        XCTAssertEqual(PerplexityProtocol.noBOS.firstScored(512), 0)
    }

    /// llama.cpp's protocol: only positions W/2 … W − 2 of each window scored, against the reference forward.
    func testLlamaCppPerplexityMatchesReferenceForward() throws {
        let m = try Self.model()
        let tokens = try BOSPerplexityTests.stream("tiny-llama")
        let W = 16
        for p in [PerplexityProtocol(kind: .llamacpp, bos: 1), PerplexityProtocol(kind: .llamacpp, bos: nil)] {
            let windows = p.windows(usable: tokens.count, window: W)
            var total = 0.0
            for w in 0..<windows {
                let ids = p.window(w, of: tokens, window: W), lp = Self.logProbs(m, ids)
                for t in (W / 2)..<(W - 1) { total -= lp[t][Int(ids[t + 1])] }
            }
            let r = try Perplexity.evaluate(model: m, tokens: tokens, window: W, protocol: p)
            XCTAssertEqual(r.windows, windows)
            XCTAssertEqual(r.predictedTokens, windows * (W - 1 - W / 2))
            XCTAssertEqual(r.totalNll, total, accuracy: 1e-4 * abs(total))
            XCTAssertEqual(r.firstScored, W / 2)
        }
    }

    /// Every figure of the full-vocabulary comparison, against Float64 sums over the reference forwards.
    func testExactComparisonMatchesReferenceForwards() throws {
        let base = try Self.model(), m = Self.perturbed(base, by: 0.3)
        let tokens = try BOSPerplexityTests.stream("tiny-llama")
        let W = 16, p = PerplexityProtocol.noBOS
        let (d, r) = try Divergence.compareExact(model: m, base: base, basePath: "base", tokens: tokens, window: W, protocol: p, maxTokens: nil)
        var kl: [Double] = [], rkl: [Double] = [], dp: [Double] = [], same = 0, nll = 0.0, nllBase = 0.0
        for w in 0..<r.windows {
            let ids = p.window(w, of: tokens, window: W)
            let a = Self.logProbs(base, ids), b = Self.logProbs(m, ids)
            for t in 0..<(W - 1) {
                kl.append(zip(a[t], b[t]).reduce(0) { $0 + Foundation.exp($1.0) * ($1.0 - $1.1) })
                rkl.append(zip(a[t], b[t]).reduce(0) { $0 + Foundation.exp($1.1) * ($1.1 - $1.0) })
                let y = Int(ids[t + 1])
                dp.append(Foundation.exp(b[t][y]) - Foundation.exp(a[t][y]))
                if a[t].indices.max(by: { a[t][$0] < a[t][$1] }) == b[t].indices.max(by: { b[t][$0] < b[t][$1] }) { same += 1 }
                nll -= b[t][y]; nllBase -= a[t][y]
            }
        }
        let n = Double(kl.count)
        XCTAssertEqual(d.positions, kl.count)
        XCTAssertGreaterThan(d.kld.mean, 1e-3, "the perturbation must move the distributions")
        XCTAssertEqual(d.kld.mean, kl.reduce(0, +) / n, accuracy: 1e-4 * d.kld.mean)
        XCTAssertEqual(d.kld.max, kl.max()!, accuracy: 1e-4 * d.kld.max)
        XCTAssertEqual(d.kld.percentiles["50"]!, DivergenceReport.Summary.percentile(kl.sorted(), 0.5), accuracy: 1e-4 * d.kld.mean)
        XCTAssertEqual(d.reverseKldMean, rkl.reduce(0, +) / n, accuracy: 1e-4 * d.reverseKldMean)
        XCTAssertEqual(d.deltaP.mean, dp.reduce(0, +) / n, accuracy: 1e-5)
        XCTAssertEqual(d.sameTopP, Double(same) / n, accuracy: 1e-12)
        XCTAssertEqual(d.pplRatio, Foundation.exp((nll - nllBase) / n), accuracy: 1e-4)
        XCTAssertEqual(r.ppl, Foundation.exp(nll / n), accuracy: 1e-4 * r.ppl)
        // The comparison's PPL is the evaluator's, bit for bit.
        XCTAssertEqual(r.totalNll, try Perplexity.evaluate(model: m, tokens: tokens, window: W, protocol: p).totalNll)
    }

    /// A top-k reference with k = V gives the full-vocabulary figures; smaller k brackets the mean KL with its bound;
    /// a model against its own reference has KL 0 and the same top token everywhere.
    func testTopKReferenceAgainstExact() throws {
        let base = try Self.model(), m = Self.perturbed(base, by: 0.3)
        let tokens = try BOSPerplexityTests.stream("tiny-llama")
        let V = base.config.vocabSize, C = base.config.hiddenSize, W = 16
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("divergence-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for p in [PerplexityProtocol.noBOS, PerplexityProtocol(kind: .llamacpp, bos: 1)] {
            let (exact, _) = try Divergence.compareExact(model: m, base: base, basePath: "base", tokens: tokens, window: W, protocol: p,
                                                         maxTokens: nil, topKStudy: [V, 8, 2])
            for (si, k) in [V, 8, 2].enumerated() {
                let h = try BaseReference.header(basePath: "base", baseHash: "h", vocab: V, hidden: C, tokens: tokens, window: W, protocol: p,
                                                 maxTokens: nil, k: k)
                let (ref, cached) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens)
                XCTAssertFalse(cached)
                XCTAssertEqual(ref.header.ppl!, exact.pplBase, accuracy: 1e-9 * exact.pplBase)
                let (d, _) = try Divergence.compare(model: m, reference: ref, base: base, tokens: tokens)
                let label = "\(p.name), k \(k)"
                // The study in the full-vocabulary run predicts the reference's figures.
                let study = try XCTUnwrap(exact.topKErrors?[si])
                XCTAssertEqual(study.k, k)
                XCTAssertEqual(study.kldMean, d.kld.mean, accuracy: 1e-6 * d.kld.mean, label)
                XCTAssertEqual(study.boundMean, d.kldBoundMean, accuracy: 1e-6 * max(d.kldBoundMean, 1e-3), label)
                XCTAssertEqual(study.relativeError, (d.kld.mean - exact.kld.mean) / exact.kld.mean, accuracy: 1e-5, label)
                XCTAssertEqual(study.bytesPerPosition, 8 * k + 8)
                XCTAssertEqual(d.pplRatio, exact.pplRatio, accuracy: 1e-5, label)
                XCTAssertEqual(d.sameTopP, exact.sameTopP, label)
                XCTAssertEqual(d.deltaP.mean, exact.deltaP.mean, accuracy: 1e-6, label)
                if k == V {
                    XCTAssertEqual(d.kld.mean, exact.kld.mean, accuracy: 1e-5 * exact.kld.mean, label)
                    XCTAssertEqual(d.reverseKldMean, exact.reverseKldMean, accuracy: 1e-5 * exact.reverseKldMean, label)
                    XCTAssertEqual(d.kldBoundMean, 0, label)
                } else {
                    XCTAssertLessThanOrEqual(d.kld.mean, exact.kld.mean * (1 + 1e-5), label)
                    XCTAssertLessThanOrEqual(exact.kld.mean, (d.kld.mean + d.kldBoundMean) * (1 + 1e-5), label)
                }
                let (again, hit) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens)
                XCTAssertTrue(hit, label)
                XCTAssertEqual(again.path, ref.path)
                let (own, _) = try Divergence.compare(model: base, reference: ref, base: base, tokens: tokens)
                XCTAssertLessThan(own.kld.max, 1e-5, label)
                XCTAssertEqual(own.sameTopP, 1, label)
                XCTAssertEqual(own.pplRatio, 1, accuracy: 1e-6, label)
            }
            // The hidden-state reference gives the full-vocabulary figures, the same floats as the base run alongside.
            let h = try BaseReference.header(basePath: "base", baseHash: "h", vocab: V, hidden: C, tokens: tokens, window: W, protocol: p,
                                             maxTokens: nil, k: nil)
            let (ref, _) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens)
            XCTAssertEqual(ref.header.kind, "hidden")
            XCTAssertEqual(BaseReference.bytesPerPosition(ref.header), 4 * C + 4)
            let (d, r) = try Divergence.compare(model: m, reference: ref, base: base, tokens: tokens, topKStudy: [V, 8, 2])
            XCTAssertEqual(d.kld.mean, exact.kld.mean, p.name)
            XCTAssertEqual(d.kld.percentiles, exact.kld.percentiles, p.name)
            XCTAssertEqual(d.reverseKldMean, exact.reverseKldMean, p.name)
            XCTAssertEqual(d.sameTopP, exact.sameTopP, p.name)
            XCTAssertEqual(d.deltaP.mean, exact.deltaP.mean, p.name)
            XCTAssertEqual(d.pplBase, exact.pplBase, p.name)
            XCTAssertEqual(d.referenceKind, "hidden")
            XCTAssertEqual(exact.referenceKind, "alongside")
            XCTAssertEqual(d.topKErrors?.map(\.kldMean), exact.topKErrors?.map(\.kldMean))
            XCTAssertEqual(r.totalNll, try Perplexity.evaluate(model: m, tokens: tokens, window: W, protocol: p).totalNll)
            XCTAssertEqual(ref.header.ppl!, exact.pplBase, accuracy: 1e-9 * exact.pplBase)
        }
    }

    /// Windows longer than the LM head's chunk (`Perplexity.rowsPerChunk`: 512 rows for this vocabulary), so each
    /// window's logits come in several chunks, the last one short: the evaluator against the plain reference forward,
    /// and a base reference (top-k and hidden states) against the model itself (KL 0, the same PPL).
    func testWindowsLongerThanTheLogitChunk() throws {
        let base = try Self.model(), V = base.config.vocabSize, C = base.config.hiddenSize, W = 1100
        XCTAssertLessThan(Perplexity.rowsPerChunk(vocab: V), W - 1)
        var seed: UInt32 = 11
        let tokens: [Int32] = (0..<(2 * W + 5)).map { _ in
            seed = seed &* 1_664_525 &+ 1_013_904_223
            return Int32(seed >> 8) % Int32(V)
        }
        let p = PerplexityProtocol.noBOS
        let r = try Perplexity.evaluate(model: base, tokens: tokens, window: W, protocol: p)
        var expected = 0.0
        for w in 0..<r.windows {
            let ids = p.window(w, of: tokens, window: W), lp = Self.logProbs(base, ids)
            for t in 0..<(W - 1) { expected -= lp[t][Int(ids[t + 1])] }
        }
        XCTAssertEqual(r.totalNll, expected, accuracy: 1e-4 * expected)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("long-windows-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for k in [8, nil] as [Int?] {
            let h = try BaseReference.header(basePath: "base", baseHash: "h", vocab: V, hidden: C, tokens: tokens,
                                             window: W, protocol: p, maxTokens: nil, k: k)
            let (ref, _) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens)
            XCTAssertEqual(ref.header.ppl!, r.ppl, accuracy: 1e-9 * r.ppl)
            let (own, pr) = try Divergence.compare(model: base, reference: ref, base: base, tokens: tokens)
            XCTAssertLessThan(own.kld.max, 1e-5)
            XCTAssertEqual(own.sameTopP, 1)
            XCTAssertEqual(pr.totalNll, r.totalNll)
        }
    }

    /// A damaged or foreign reference file is refused by name, and the cache rebuilds it; other settings, other file.
    func testReferenceFileIsCheckedAndKeyed() throws {
        let base = try Self.model()
        let tokens = try BOSPerplexityTests.stream("tiny-llama")
        let V = base.config.vocabSize
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("reference-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let h = try BaseReference.header(basePath: "base", baseHash: "h", vocab: V, hidden: base.config.hiddenSize, tokens: tokens, window: 16,
                                         protocol: .noBOS, maxTokens: nil, k: 4)
        let (ref, _) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens)
        let path = ref.path
        var other = h
        other.baseHash = "another base"
        XCTAssertNotEqual(BaseReference.fileName(other), BaseReference.fileName(h))
        for (change, key) in [({ (x: inout BaseReference.Header) in x.window = 8 }, "window"), ({ $0.protocolName = "llamacpp" }, "protocol"),
                              ({ $0.tokensHash = "x" }, "tokens"), ({ $0.k = 5 }, "k"),
                              ({ $0.kind = "hidden"; $0.k = 0; $0.hidden = 16 }, "kind")] as [((inout BaseReference.Header) -> Void, String)] {
            var x = h
            change(&x)
            XCTAssertNotEqual(BaseReference.fileName(x), BaseReference.fileName(h), key)
            XCTAssertThrowsError(try BaseReference(path: path, expected: x), key)
        }
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        // Truncated, a wrong magic, an id outside the vocabulary.
        var bad = [good.prefix(good.count - 4), Data("NOTAREF!".utf8) + good.dropFirst(8)]
        var outside = good
        let offset = (16 + Int(good[8]) + Int(good[9]) << 8 + 63) / 64 * 64
        outside.replaceSubrange(offset..<(offset + 4), with: withUnsafeBytes(of: Int32(V).littleEndian) { Data($0) })
        bad.append(outside)
        for (i, data) in bad.enumerated() {
            try data.write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try BaseReference(path: path, expected: h), "case \(i)") { e in
                XCTAssertTrue("\(e)".contains(path), "\(e)")
            }
            var warned = ""
            let (rebuilt, hit) = try BaseReference.cached(directory: dir, header: h, base: base, tokens: tokens, warning: { warned = $0 })
            XCTAssertFalse(hit, "case \(i)")
            XCTAssertTrue(warned.contains("not a valid base reference"), warned)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: rebuilt.path)), good, "case \(i): rebuilt bit for bit")
        }
    }
}
