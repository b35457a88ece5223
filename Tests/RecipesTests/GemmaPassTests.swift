import Checkpoint
import Foundation
import Model
import Passes
import Recipes
import TensorCore
import Training
import XCTest

/// The structural passes on the tiny Gemma 3 fixture (transformers; 3 layers [sliding, full, sliding], hidden 32,
/// 4 query heads on 1 KV head, head_dim 16, MLP 64, tied, sliding window 5, (1 + w) norms, post-sublayer norms,
/// q/k norms, embedding × √32), each against an independent check: the decoder (tested against transformers) or
/// the plain reference forward run on the original model with the removed units zeroed or gated.
final class GemmaPassTests: XCTestCase {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny-gemma3.h5").path

    /// The fixture, or (tied false) the same model with an untied LM head (the embedding plus noise).
    func gemma(tied: Bool = true) throws -> DecoderModel {
        let m = try Checkpoint.read(Self.fixture).model
        XCTAssertEqual(m.config.family, "gemma3")
        guard !tied else { return m }
        var c = m.config
        c.tieWordEmbeddings = false
        var w = Dictionary(uniqueKeysWithValues: m.copy().weights.map { ($0.id, $0.weight) })
        var rng = SplitMix64(seed: 5)
        let head = m.embedTokens.denseView!.copy()
        for i in 0..<head.count { head[i] += 0.02 * (2 * rng.nextFloat() - 1) }
        w[.lmHead] = .matrix(.dense(head))
        return try DecoderModel(config: c, weights: w)
    }

    /// Windows of `length` tokens (longer than the sliding window, so windowed and full layers differ).
    func windows(_ n: Int = 3, length: Int = 12, seed: UInt64 = 3) -> [[Int32]] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in (0..<length).map { _ in Int32(rng.next() % 256) } }
    }

    func logits(_ m: DecoderModel, _ ids: [Int32], gates: Gates? = nil) -> [Float] {
        let d = TransformerDecoder(model: m, window: ids.count)
        d.gates = gates
        return d.logits(ids).array
    }

    /// max |a − b| / max |b|.
    func relativeDifference(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
    }

    /// The original with removed channels zeroed where they enter the residual stream (embedding columns, o_proj /
    /// down_proj rows and bias entries), removed heads and neurons where they leave their sublayer (o_proj /
    /// down_proj columns). A copy: the model given is untouched.
    func zeroed(_ m: DecoderModel, channels: [Int], heads: [[Int]]? = nil, neurons: [[Int]]? = nil) -> DecoderModel {
        let z = m.copy(), c = m.config, C = c.hiddenSize, D = c.headDim
        let gone = Set(0..<C).subtracting(channels)
        let E = z.embedTokens.denseView!
        for r in 0..<c.vocabSize { for ch in gone { E[r * C + ch] = 0 } }
        for (l, layer) in z.layers.enumerated() {
            if let a = layer.attention {
                let H = c.blocks[l].numAttentionHeads, o = a.o.denseView!, HD = H * D
                for ch in gone { for j in 0..<HD { o[ch * HD + j] = 0 }; a.biases[.o]?[ch] = 0 }
                for h in Set(0..<H).subtracting(heads?[l] ?? Array(0..<H)) { for ch in 0..<C { for d in 0..<D { o[ch * HD + h * D + d] = 0 } } }
            }
            if let f = layer.mlp {
                let F = c.blocks[l].intermediateSize, down = f.down.denseView!
                for ch in gone { for j in 0..<F { down[ch * F + j] = 0 }; f.biases[.down]?[ch] = 0 }
                for n in Set(0..<F).subtracting(neurons?[l] ?? Array(0..<F)) { for ch in 0..<C { down[ch * F + n] = 0 } }
            }
        }
        return z
    }

    /// Per sublayer, the mean over `windows` of y_j², y the post-norm's input, computed from the decoder's observed
    /// output-projection inputs with the plain reference linear op (the test's own path to `PostNormInputs`).
    func postNormEnergy(_ m: DecoderModel, _ windows: [[Int32]], gates: Gates? = nil) -> [[Double]] {
        final class Inputs: ForwardObserver {
            let m: DecoderModel
            var sums: [[Double]]
            init(_ m: DecoderModel) { self.m = m; sums = Array(repeating: Array(repeating: 0, count: m.config.hiddenSize), count: 2 * m.layers.count) }
            func add(_ s: Int, _ w: Tensor, _ x: UnsafePointer<Float>, rows: Int) {
                let C = m.config.hiddenSize, K = w.shape[1], y = Tensor(shape: [rows, C])
                linearForwardReference(out: y.data, inp: x, weight: w.data, rows: rows, inFeatures: K, outFeatures: C)
                for i in 0..<(rows * C) { sums[s][i % C] += Double(y[i]) * Double(y[i]) }
            }
            func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) { add(2 * layer, m.layers[layer].attention!.o.denseView!, att, rows: rows) }
            func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) { add(2 * layer + 1, m.layers[layer].mlp!.down.denseView!, act, rows: rows) }
        }
        let obs = Inputs(m), d = TransformerDecoder(model: m, window: windows[0].count)
        d.gates = gates
        for ids in windows { d.forward(ids, observer: obs) }
        let n = Double(windows.count * windows[0].count)
        return obs.sums.map { $0.map { $0 / n } }
    }

    /// A copy of `m` with each post-norm's (1 + w) multiplied by ρ/s, ρ = sqrt((Σ_kept e/C' + eps·C/C') / (Σ e/C + eps))
    /// for the mean squares e of its input, s = sqrt(C/C').
    func postNormsScaled(_ m: DecoderModel, energy: [[Double]], kept: [Int]) -> DecoderModel {
        let z = m.copy(), C = Double(m.config.hiddenSize), Cn = Double(kept.count), eps = m.config.rmsNormEps
        for (l, layer) in z.layers.enumerated() {
            for (t, s) in [(layer.attention?.postNorm, 2 * l), (layer.mlp?.postNorm, 2 * l + 1)] {
                guard let t else { continue }
                let e = energy[s], rho = ((kept.map { e[$0] }.reduce(0, +) / Cn + eps * C / Cn) / (e.reduce(0, +) / C + eps)).squareRoot()
                let f = Float(rho / (C / Cn).squareRoot())
                for i in 0..<t.count { t[i] = (1 + t[i]) * f - 1 }
            }
        }
        return z
    }

    /// The (1 + w) norm rule and the post-norms: without post-norm statistics, the width-pruned Gemma computes exactly
    /// what the original computes with the removed channels, heads and neurons zeroed, tied and untied, and also when q
    /// and k are far below the norms' eps (the q/k rows carry √(C/C') so the per-head norms do not see the rescaled
    /// eps); Minitron's pass, with the post-norm statistics, computes that zeroed original with each post-norm's
    /// (1 + w) multiplied by ρ/s.
    func testWidthPrunedGemmaEqualsTheZeroedOriginal() throws {
        let calibration = windows()
        for (tied, tinyQK) in [(true, false), (false, false), (true, true)] {
            var m = try gemma(tied: tied)
            if tinyQK {
                m = m.copy()
                for layer in m.layers { for t in [layer.attention!.q.denseView!, layer.attention!.k.denseView!] { for i in 0..<t.count { t[i] *= 1e-3 } } }
            }
            let what = "tied \(tied), tiny q/k \(tinyQK)"
            let pass = try MinitronPass(config: try Tiny.stage(#"{"hidden": 24, "mlp": 48, "heads": 2}"#))
            let imp = ActivationImportance.compute(model: m, windows: calibration, sequence: .mean, batch: .l2)
            let sel = MinitronPass.selection(imp, config: m.config, target: try pass.resolveTarget(m.config), keep: [0, 1, 2])
            let exact = try m.pruningWidth(sel)
            let pc = exact.config
            XCTAssertEqual(pc.family, "gemma3")
            XCTAssertEqual([pc.hiddenSize, pc.intermediateSize, pc.numAttentionHeads, pc.numKeyValueHeads], [24, 48, 2, 1])
            XCTAssertEqual(pc.blocks.map(\.layerType), [.sliding, .full, .sliding])
            XCTAssertTrue(exact.layers.allSatisfy { $0.attention?.postNorm?.count == 24 && $0.mlp?.postNorm?.count == 24 })
            XCTAssertEqual(pc.embeddingScale, Double(Float(24.0.squareRoot())), "the multiplier Gemma derives from the new width")
            XCTAssertEqual(try ModelConfig(json: pc.json), pc, "the config is read back as it is")
            let reread = try DecoderModel(config: try ModelConfig(json: pc.json),
                                          weights: Dictionary(uniqueKeysWithValues: exact.weights.map { ($0.id, $0.weight) }))
            let z = zeroed(m, channels: sel.channels, heads: sel.heads, neurons: sel.neurons)
            for ids in windows(2, length: 14, seed: 11) {
                let got = logits(exact, ids)
                XCTAssertEqual(logits(reread, ids), got, "\(what): the pruned model as a checkpoint reads it back")
                // The zeroed original under the decoder and under the plain reference forward.
                XCTAssertLessThan(relativeDifference(got, logits(z, ids)), 2e-6, what)
                XCTAssertLessThan(relativeDifference(got, z.referenceLogits(ids).array), 1e-5, what)
                XCTAssertGreaterThan(relativeDifference(logits(m, ids), logits(z, ids)), 1e-2, "the zeroing changes the model")
            }

            // Each part of the rule matters: Llama's w·s in place of (1 + w)·s − 1, or q/k rows without √(C/C'), differ.
            let ids = windows(1, length: 14, seed: 11)[0], reference = logits(z, ids), s = Float(32.0 / 24.0).squareRoot()
            let llamaRule = exact.copy()
            for layer in llamaRule.layers {
                // w' = (1 + w)·s − 1 becomes w·s = w' + 1 − s.
                for t in [layer.attention!.norm, layer.mlp!.norm, layer.attention!.postNorm!, layer.mlp!.postNorm!] { for i in 0..<t.count { t[i] += 1 - s } }
            }
            XCTAssertGreaterThan(relativeDifference(logits(llamaRule, ids), reference), 1e-3, "\(what): Llama's rule")
            if tinyQK {
                let plainQK = exact.copy()
                for layer in plainQK.layers { for t in [layer.attention!.q.denseView!, layer.attention!.k.denseView!] { for i in 0..<t.count { t[i] /= s } } }
                XCTAssertGreaterThan(relativeDifference(logits(plainQK, ids), reference), 1e-3, "\(what): q/k without √(C/C')")
            }

            // The pass measures the post-norms' inputs (as this test does, by another path) and scales them by ρ.
            let energy = postNormEnergy(m, calibration)
            let measured = PostNormInputs.compute(model: m, windows: calibration)
            for (a, b) in zip(measured, energy) { assertClose(a, b, rel: 1e-5, "post-norm input mean squares") }
            let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: calibration))
            let shares = try XCTUnwrap(diag.objectValue?["width"]?.objectValue?["post_norm_kept_energy"]?.arrayValue?.compactMap(\.doubleValue))
            assertClose(shares, energy.map { e in sel.channels.map { e[$0] }.reduce(0, +) / e.reduce(0, +) }, rel: 1e-5, "kept energy")
            let zr = postNormsScaled(z, energy: energy, kept: sel.channels)
            for ids in windows(2, length: 14, seed: 11) {
                let got = logits(pruned, ids)
                XCTAssertLessThan(relativeDifference(got, logits(zr, ids)), 2e-6, what)
                XCTAssertLessThan(relativeDifference(got, zr.referenceLogits(ids).array), 1e-5, what)
                XCTAssertGreaterThan(relativeDifference(got, logits(z, ids)), 1e-4, "\(what): ρ differs from s")
            }
        }
    }

    /// Minitron's parameter budget counts the family's tensors (q/k norms, post-norms): the target's count is the
    /// pruned model's.
    func testMinitronBudgetCountsGemmasTensors() throws {
        let m = try gemma()
        let pass = try MinitronPass(config: try Tiny.stage(#"{"params": 14000, "axes": ["hidden", "mlp", "heads"], "round_to": 4}"#))
        let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: windows()))
        XCTAssertEqual(diag.objectValue?["target"]?.objectValue?["parameters"]?.intValue, pruned.parameterCount)
        XCTAssertLessThanOrEqual(pruned.parameterCount, 14000)
        XCTAssertEqual(pruned.config.numKeyValueHeads, 1)
    }

    /// Depth pruning keeps each kept layer's type (window and rotary base), and its block scores are the decoder's:
    /// the calibration perplexity without block l equals that of the model with layer l removed.
    func testMinitronDepthOnGemmaKeepsLayerTypes() throws {
        let m = try gemma(), calibration = windows(3, length: 12)
        let depth = DepthImportance.compute(model: m, windows: calibration)
        for l in 0..<3 {
            let without = try m.removingLayers([l])
            var nll = 0.0
            for ids in calibration {
                let z = logits(without, ids), V = 256
                for t in 0..<(ids.count - 1) {
                    let row = z[(t * V)..<((t + 1) * V)].map(Double.init), mx = row.max()!
                    nll += mx + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - mx) }) - row[Int(ids[t + 1])]
                }
            }
            assertClose([depth.ppl[l]], [Foundation.exp(nll / Double(3 * 11))], rel: 1e-4, "ppl without layer \(l)")
        }
        let pass = try MinitronPass(config: try Tiny.stage(#"{"layers": 2}"#))
        let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: calibration))
        let removed = try XCTUnwrap(diag.objectValue?["depth"]?.objectValue?["removed_layers"]?.arrayValue?.compactMap(\.intValue))
        let kept = (0..<3).filter { !removed.contains($0) }
        XCTAssertEqual(pruned.config.blocks.map(\.layerType), kept.map { m.config.blocks[$0].layerType })
        XCTAssertEqual(try ModelConfig(json: pruned.config.json).blocks.map(\.layerType), pruned.config.blocks.map(\.layerType))
    }

    /// FinerCut's removed sublayers take their post-norm with them, layers keep their types (after renumbering), and
    /// the pruned model equals the original with those sublayers skipped in the decoder, bit for bit.
    func testFinerCutOnGemma() throws {
        let m = try gemma(), calibration = windows()
        for remove in [Set([0, 1, 5]), Set([2, 3])] {
            let pruned = try m.removingSublayers(remove)
            let kept = (0..<3).filter { !(remove.contains(2 * $0) && remove.contains(2 * $0 + 1)) }
            XCTAssertEqual(pruned.config.blocks.map(\.layerType), kept.map { m.config.blocks[$0].layerType })
            for (i, l) in kept.enumerated() {
                XCTAssertEqual(pruned.layers[i].attention?.postNorm != nil, !remove.contains(2 * l))
                XCTAssertEqual(pruned.layers[i].mlp?.postNorm != nil, !remove.contains(2 * l + 1))
            }
            let gone = m.weights.filter { w in
                guard let l = w.id.layer else { return false }
                switch w.id {
                case .norm(_, let site): return remove.contains(2 * l + (site.isAttention ? 0 : 1))
                case .linear(let id), .bias(let id): return remove.contains(2 * l + (id.kind.isAttention ? 0 : 1))
                default: return false
                }
            }
            XCTAssertEqual(pruned.parameterCount, m.parameterCount - gone.reduce(0) { $0 + $1.weight.parameterCount })
            XCTAssertEqual(try ModelConfig(json: pruned.config.json), pruned.config)
            for ids in calibration {
                let d = TransformerDecoder(model: m, window: ids.count)
                d.embed(ids)
                d.runSublayers(0..<6, rows: ids.count, skip: remove)
                let out = Tensor(shape: [ids.count, 256])
                d.head(d.finalNorm(rows: ids.count), rows: ids.count, into: out.data)
                XCTAssertEqual(logits(pruned, ids), out.array, "removed vs skipped")
            }
        }
        let (pruned, _) = try FinerCutPass(config: try Tiny.stage(#"{"remove": 2}"#)).run(on: m, context: PassContext(calibration: calibration))
        XCTAssertEqual(pruned.config.family, "gemma3")
    }

    /// VTrans's pruning on Gemma: gates after the post-norms fold into the post-norms' (1 + w). With every channel
    /// kept the pruned model is the gated model; with channels removed it is the gated model whose removed channels
    /// are also zeroed before the post-norms, each post-norm's (1 + w) times ρ/s from its inputs' mean squares in the
    /// gated model (the documented deviation), and differs from the gated model itself.
    func testVTransPruningOnGemma() throws {
        var rng = SplitMix64(seed: 17)
        func subset(_ n: Int, keep: Int) -> [Int] {
            var idx = Array(0..<n)
            for i in stride(from: n - 1, to: 0, by: -1) { idx.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            return Array(idx.prefix(keep)).sorted()
        }
        for tied in [true, false] {
            let m = try gemma(tied: tied), c = m.config
            let g = Gates(config: c)
            func t(_ n: Int) -> Tensor { Tensor(shape: [n], values: (0..<n).map { _ in 0.5 + rng.nextFloat() }) }
            g.heads = c.blocks.map { t($0.numAttentionHeads) }
            g.neurons = c.blocks.map { t($0.intermediateSize) }
            g.channels = t(c.hiddenSize)
            g.sublayers = t(6)
            let selections = [
                // Layer 0 dropped; layer 1 (full) without attention; layer 2 (sliding) without MLP.
                DecoderModel.UnitSelection(channels: [], layers: [1, 2], heads: [[0], [], [1, 2, 3]], neurons: [[1], subset(64, keep: 40), []]),
                DecoderModel.UnitSelection(channels: [], layers: [0, 1, 2], heads: [[0, 3], [1, 2, 3], [2]],
                                           neurons: [subset(64, keep: 40), subset(64, keep: 50), subset(64, keep: 20)]),
            ]
            for base in selections {
                for channels in [Array(0..<32), subset(32, keep: 21)] {
                    var sel = base
                    sel.channels = channels
                    let what = "tied \(tied), layers \(sel.layers), \(channels.count) channels"
                    // The gates of the model the selection keeps: g on kept units, 0 on removed ones.
                    let z = Gates(config: c)
                    z.channels = Tensor(shape: [32], values: (0..<32).map { channels.contains($0) ? g.channels![$0] : 0 })
                    z.heads = (0..<3).map { l in
                        Tensor(shape: [4], values: (0..<4).map { sel.layers.contains(l) && sel.heads[l].contains($0) ? g.heads[l]![$0] : 0 })
                    }
                    z.neurons = (0..<3).map { l in
                        Tensor(shape: [64], values: (0..<64).map { sel.layers.contains(l) && sel.neurons[l].contains($0) ? g.neurons[l]![$0] : 0 })
                    }
                    z.sublayers = Tensor(shape: [6], values: (0..<6).map { sel.layers.contains($0 / 2) ? g.sublayers![$0] : 0 })
                    XCTAssertEqual(m.keptGates(sel, from: g).named.map(\.tensor.array), z.named.map(\.tensor.array), what)
                    let energy = postNormEnergy(m, windows(2, length: 16, seed: 29), gates: z)
                    let pruned = try m.pruningUnits(sel, folding: g, postNormInputs: energy)
                    XCTAssertEqual(pruned.config.family, "gemma3")
                    XCTAssertEqual(pruned.config.blocks.map(\.layerType), sel.layers.map { c.blocks[$0].layerType }, what)
                    XCTAssertEqual(pruned.parameterCount, DecoderModel.parameterCount(pruned.config))
                    XCTAssertEqual(try ModelConfig(json: pruned.config.json), pruned.config, what)
                    // The gated model with the removed channels also zeroed before the post-norms, whose (1 + w) carry ρ/s.
                    let beforePost = postNormsScaled(zeroed(m, channels: channels), energy: energy, kept: channels)
                    let exact = try m.pruningUnits(sel, folding: g), plainZeroed = zeroed(m, channels: channels)
                    for ids in windows(2, length: 14, seed: 23) {
                        let got = logits(pruned, ids)
                        XCTAssertLessThan(relativeDifference(got, logits(beforePost, ids, gates: z)), 2e-6, what)
                        XCTAssertLessThan(relativeDifference(got, beforePost.referenceLogits(ids, gates: z).array), 1e-5, what)
                        // Without statistics: the gated, zeroed model itself.
                        XCTAssertLessThan(relativeDifference(logits(exact, ids), plainZeroed.referenceLogits(ids, gates: z).array), 1e-5, what)
                        let gatedOnly = relativeDifference(got, m.referenceLogits(ids, gates: z).array)
                        if channels.count == 32 {
                            XCTAssertLessThan(gatedOnly, 1e-5, what)
                            XCTAssertEqual(logits(exact, ids), got, "\(what): ρ = 1 with every channel kept")
                        } else {
                            XCTAssertGreaterThan(gatedOnly, 1e-4, "\(what): the post-norms' mean of squares over the kept channels only")
                        }
                    }
                }
            }
        }
    }

    /// The layer-wise driver (SparseGPT, Wanda, GPTQ) advances its streams through a compressed output projection as
    /// the decoder does (post-norm included): every linear's statistics are those of its inputs in the compressed
    /// model, observed in the decoder's forward.
    func testLayerwiseStatisticsOnGemmaAreThoseOfTheCompressedModel() throws {
        let m = try gemma(), calibration = windows(3, length: 12)
        var seen: [LinearID: [Double]] = [:]
        let result = try Layerwise.run(model: m, windows: calibration, targets: Set(LinearKind.allCases), fullHessian: true) { id, weight, input in
            seen[id] = input.hessian()
            // A coarse rounding grid, so the compressed layers' outputs differ from the dense ones.
            let w = weight.denseView!.copy()
            for i in 0..<w.count { w[i] = (w[i] / 0.05).rounded() * 0.05 }
            return .dense(w)
        }
        XCTAssertEqual(seen.count, 21)
        final class Inputs: ForwardObserver {
            var normed: [Int: [Float]] = [:], heads: [Int: [Float]] = [:], acts: [Int: [Float]] = [:]
            let C: Int
            init(C: Int) { self.C = C }
            func normed(_ s: Int, n: UnsafePointer<Float>, rows: Int) { normed[s, default: []] += Array(UnsafeBufferPointer(start: n, count: rows * C)) }
            func headOutputs(layer: Int, att: UnsafePointer<Float>, rows: Int) { heads[layer, default: []] += Array(UnsafeBufferPointer(start: att, count: rows * 64)) }
            func mlpActivation(layer: Int, act: UnsafePointer<Float>, rows: Int) { acts[layer, default: []] += Array(UnsafeBufferPointer(start: act, count: rows * 64)) }
        }
        let obs = Inputs(C: 32)
        let d = TransformerDecoder(model: result, window: 12)
        for ids in calibration { d.forward(ids, observer: obs) }
        func hessian(_ x: [Float], width: Int) -> [Double] {
            let n = x.count / width
            var h = [Double](repeating: 0, count: width * width)
            for t in 0..<n { for i in 0..<width { for j in 0..<width { h[i * width + j] += 2 * Double(x[t * width + i]) * Double(x[t * width + j]) / Double(n) } } }
            return h
        }
        for l in 0..<3 {
            for (kind, x, width) in [(LinearKind.q, obs.normed[2 * l]!, 32), (.o, obs.heads[l]!, 64), (.gate, obs.normed[2 * l + 1]!, 32),
                                     (.down, obs.acts[l]!, 64)] {
                let e = hessian(x, width: width), got = try XCTUnwrap(seen[LinearID(layer: l, kind: kind)])
                let scale = e.map(abs).max()!
                for i in e.indices where abs(got[i] - e[i]) > 1e-4 * scale {
                    XCTFail("layer \(l) \(kind) [\(i)]: \(got[i]) vs \(e[i])")
                    break
                }
            }
        }
    }

    /// VTrans's size model counts Gemma's post-norms (q/k norms are left out, as documented).
    func testVIBSizeModelCountsPostNorms() throws {
        let c = try gemma().config
        let size = try VIBSizeModel(config: c)
        XCTAssertEqual(size.full + Double(3 * 2 * c.headDim), Double(DecoderModel.parameterCount(c)))
    }
}
