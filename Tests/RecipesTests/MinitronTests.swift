import Evaluation
import Foundation
import Model
import Passes
import Recipes
import TensorCore
import XCTest

/// A small GQA model (6 heads in 2 KV groups, untied head) and calibration windows for the pass tests.
enum Tiny {
    static let config: ModelConfig = {
        var c = ModelConfig(vocabSize: 61, hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 4, numAttentionHeads: 6,
                            numKeyValueHeads: 2, headDim: 8, rmsNormEps: 1e-5)
        c.tieWordEmbeddings = false
        return c
    }()
    static func model(seed: UInt64 = 7) -> DecoderModel { DecoderModel.random(config: config, seed: seed) }
    static func windows(_ n: Int = 3, length: Int = 12, seed: UInt64 = 3) -> [[Int32]] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in (0..<length).map { _ in Int32(rng.next() % UInt64(config.vocabSize)) } }
    }
    static func stage(_ json: String) throws -> StrictObject { try StrictObject(try JSONValue.parse(json), at: "test, stage 1") }
}

/// Intermediate values of one window, computed with the plain reference ops (independent of LlamaInference).
struct ReferenceTrace {
    var headOutputs: [[Float]] = []     // [layer] (T, H·D)
    var activations: [[Float]] = []     // [layer] (T, F)
    var normed: [[Float]] = []          // every norm output (T, C), in order
    var blockInputs: [[Float]] = []     // [layer + 1] (T, C); the last is the input of the final norm

    init(_ m: DecoderModel, _ ids: [Int32]) {
        let c = m.config, T = ids.count, C = c.hiddenSize, D = c.headDim, eps = Float(c.rmsNormEps)
        let x = Tensor(shape: [T, C]), n = Tensor(shape: [T, C]), tmp = Tensor(shape: [T, C])
        ids.withUnsafeBufferPointer { embeddingForwardReference(out: x.data, ids: $0.baseAddress!, table: m.embedTokens.denseView!.data, rows: T, channels: C) }
        for (layer, b) in zip(m.layers, c.blocks) {
            blockInputs.append(x.array)
            let a = layer.attention!, f = layer.mlp!, H = b.numAttentionHeads, G = b.numKeyValueHeads, F = b.intermediateSize
            let q = Tensor(shape: [T, H * D]), k = Tensor(shape: [T, G * D]), v = Tensor(shape: [T, G * D]), att = Tensor(shape: [T, H * D])
            rmsnormForwardReference(out: n.data, inp: x.data, weight: a.norm.data, eps: eps, rows: T, channels: C)
            normed.append(n.array)
            linearForwardReference(out: q.data, inp: n.data, weight: a.q.denseView!.data, rows: T, inFeatures: C, outFeatures: H * D)
            linearForwardReference(out: k.data, inp: n.data, weight: a.k.denseView!.data, rows: T, inFeatures: C, outFeatures: G * D)
            linearForwardReference(out: v.data, inp: n.data, weight: a.v.denseView!.data, rows: T, inFeatures: C, outFeatures: G * D)
            rotaryForwardReference(q.data, rows: T, heads: H, headDim: D, theta: c.ropeTheta)
            rotaryForwardReference(k.data, rows: T, heads: G, headDim: D, theta: c.ropeTheta)
            attentionForwardReference(out: att.data, q: q.data, k: k.data, v: v.data, rows: T, heads: H, kvHeads: G, headDim: D)
            headOutputs.append(att.array)
            linearForwardReference(out: tmp.data, inp: att.data, weight: a.o.denseView!.data, rows: T, inFeatures: H * D, outFeatures: C)
            for i in 0..<x.count { x[i] += tmp[i] }
            let g = Tensor(shape: [T, F]), u = Tensor(shape: [T, F])
            rmsnormForwardReference(out: n.data, inp: x.data, weight: f.norm.data, eps: eps, rows: T, channels: C)
            normed.append(n.array)
            linearForwardReference(out: g.data, inp: n.data, weight: f.gate.denseView!.data, rows: T, inFeatures: C, outFeatures: F)
            linearForwardReference(out: u.data, inp: n.data, weight: f.up.denseView!.data, rows: T, inFeatures: C, outFeatures: F)
            swigluForwardReference(out: g.data, gate: g.data, up: u.data, count: T * F)
            activations.append(g.array)
            linearForwardReference(out: tmp.data, inp: g.data, weight: f.down.denseView!.data, rows: T, inFeatures: F, outFeatures: C)
            for i in 0..<x.count { x[i] += tmp[i] }
        }
        blockInputs.append(x.array)
        rmsnormForwardReference(out: n.data, inp: x.data, weight: m.norm.data, eps: eps, rows: T, channels: C)
        normed.append(n.array)
    }
}

func dot(_ a: [Double], _ b: [Double]) -> Double {
    var s = 0.0
    for (x, y) in zip(a, b) { s += x * y }
    return s
}

func cosine(_ a: [Double], _ b: [Double]) -> Double { dot(a, b) / (dot(a, a) * dot(b, b)).squareRoot() }

/// Plain reduction of a list, for the references.
func reduce(_ xs: [Double], _ a: Aggregation) -> Double {
    switch a {
    case .mean: return xs.reduce(0, +) / Double(xs.count)
    case .sum: return xs.reduce(0, +)
    case .l2: return xs.map { $0 * $0 }.reduce(0, +).squareRoot()
    case .max: return xs.max()!
    }
}

func assertClose(_ a: [Double], _ b: [Double], rel: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    for (i, (x, y)) in zip(a, b).enumerated() where abs(x - y) > rel * max(abs(x), abs(y), 1e-12) {
        XCTFail("\(what)[\(i)]: \(x) vs \(y)", file: file, line: line)
        return
    }
}

final class MinitronTests: XCTestCase {
    func testActivationImportanceMatchesBruteForce() {
        let m = Tiny.model(), windows = Tiny.windows()
        let c = m.config, D = c.headDim, C = c.hiddenSize, H = c.numAttentionHeads, F = c.intermediateSize, T = windows[0].count
        let traces = windows.map { ReferenceTrace(m, $0) }
        for (seq, bat) in [(Aggregation.mean, Aggregation.l2), (.l2, .mean), (.max, .sum)] {
            let imp = ActivationImportance.compute(model: m, windows: windows, sequence: seq, batch: bat)
            for l in 0..<c.numHiddenLayers {
                func headNorm(_ tr: ReferenceTrace, _ t: Int, _ h: Int) -> Double {
                    let v: [Double] = (0..<D).map { Double(tr.headOutputs[l][t * H * D + h * D + $0]) }
                    return dot(v, v).squareRoot()
                }
                let heads: [Double] = (0..<H).map { h in
                    reduce(traces.map { tr in reduce((0..<T).map { t in headNorm(tr, t, h) }, seq) }, bat)
                }
                assertClose(imp.heads[l], heads, rel: 1e-4, "heads layer \(l) \(seq)/\(bat)")
                let neurons: [Double] = (0..<F).map { f in
                    reduce(traces.map { tr in reduce((0..<T).map { t in Double(abs(tr.activations[l][t * F + f])) }, seq) }, bat)
                }
                assertClose(imp.neurons[l], neurons, rel: 1e-4, "neurons layer \(l) \(seq)/\(bat)")
            }
            func channelSum(_ tr: ReferenceTrace, _ t: Int, _ ch: Int) -> Double {
                var s = 0.0
                for n in tr.normed { s += Double(abs(n[t * C + ch])) }
                return s
            }
            let channels: [Double] = (0..<C).map { ch in
                reduce(traces.map { tr in reduce((0..<T).map { t in channelSum(tr, t, ch) }, seq) }, bat)
            }
            assertClose(imp.channels, channels, rel: 1e-4, "channels \(seq)/\(bat)")
        }
    }

    func testDepthImportanceMatchesBruteForce() throws {
        let m = Tiny.model(), windows = Tiny.windows()
        let depth = DepthImportance.compute(model: m, windows: windows)
        let T = windows[0].count, C = m.config.hiddenSize
        let traces = windows.map { ReferenceTrace(m, $0) }
        let stream = windows.flatMap { $0 }
        for l in 0..<m.layers.count {
            // Perplexity with the block physically removed, under the evaluator's protocol on the same windows.
            let ppl = try Perplexity.evaluate(model: try m.removingLayers([l]), tokens: stream, window: T, protocol: .noBOS).ppl
            assertClose([depth.ppl[l]], [ppl], rel: 1e-4, "ppl without layer \(l)")
            var sum = 0.0
            for tr in traces {
                for t in 0..<T {
                    let a = tr.blockInputs[l][(t * C)..<((t + 1) * C)].map(Double.init), b = tr.blockInputs[l + 1][(t * C)..<((t + 1) * C)].map(Double.init)
                    sum += 1 - cosine(a, b)
                }
            }
            assertClose([depth.cosine[l]], [sum / Double(windows.count * T)], rel: 1e-3, "1 - cos of layer \(l)")
        }
        assertClose([depth.basePpl], [try Perplexity.evaluate(model: m, tokens: stream, window: T, protocol: .noBOS).ppl], rel: 1e-4, "base ppl")
    }

    /// The pruned model computes what the original computes with the pruned heads, neurons and channels zeroed.
    func testWidthPrunedModelEqualsZeroedOriginal() throws {
        let m = Tiny.model(), windows = Tiny.windows()
        let pass = try MinitronPass(config: try Tiny.stage(#"{"hidden": 24, "mlp": 32, "heads": 4, "layers": 4}"#))
        let weightsBefore = m.namedTensors.map { $0.tensor.array }
        let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: windows))
        XCTAssertEqual(m.namedTensors.map { $0.tensor.array }, weightsBefore, "the input model is left untouched")
        XCTAssertTrue(pruned.config.isHomogeneous)
        XCTAssertEqual([pruned.config.hiddenSize, pruned.config.intermediateSize, pruned.config.numAttentionHeads, pruned.config.numKeyValueHeads],
                       [24, 32, 4, 2])
        XCTAssertNil(pruned.config.json.objectValue?["block_configs"], "a plain Llama config")

        let imp = ActivationImportance.compute(model: m, windows: windows, sequence: .mean, batch: .l2)
        let target = try pass.resolveTarget(m.config)
        let sel = MinitronPass.selection(imp, config: m.config, target: target, keep: [0, 1, 2, 3])
        XCTAssertEqual(diag.objectValue?["width"]?.objectValue?["removed_channels"]?.arrayValue?.count, 8)
        // Every kept head set has 2 heads from each KV group of 3.
        for h in sel.heads { XCTAssertEqual(h.map { $0 / 3 }, [0, 0, 1, 1]) }

        // The zeroed original: removed channels never enter the residual stream (embedding columns, o_proj and
        // down_proj rows), removed heads and neurons never leave their sublayer (o_proj / down_proj columns).
        let z = try DecoderModel(config: m.config, tensors: Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, $0.tensor.copy()) }))
        let C = m.config.hiddenSize, D = m.config.headDim, HD = m.config.numAttentionHeads * D, F = m.config.intermediateSize
        let goneC = Set(0..<C).subtracting(sel.channels)
        for r in 0..<m.config.vocabSize { for c in goneC { z.embedTokens.denseView![r * C + c] = 0 } }
        for (l, layer) in z.layers.enumerated() {
            let o = layer.attention!.o.denseView!, down = layer.mlp!.down.denseView!
            for c in goneC { for j in 0..<HD { o[c * HD + j] = 0 }; for j in 0..<F { down[c * F + j] = 0 } }
            for h in Set(0..<m.config.numAttentionHeads).subtracting(sel.heads[l]) { for c in 0..<C { for d in 0..<D { o[c * HD + h * D + d] = 0 } } }
            for f in Set(0..<F).subtracting(sel.neurons[l]) { for c in 0..<C { down[c * F + f] = 0 } }
        }
        let ids = windows[0]
        let a = TransformerDecoder(model: pruned, window: ids.count).logits(ids).array
        let b = TransformerDecoder(model: z, window: ids.count).logits(ids).array
        let err = zip(a, b).map { abs($0 - $1) }.max()!, scale = b.map(abs).max()!
        XCTAssertLessThan(err / scale, 1e-5, "pruned vs zeroed logits")  // observed 5.0e-7
        // The unpruned model differs (the test is not vacuous).
        let full = TransformerDecoder(model: m, window: ids.count).logits(ids).array
        XCTAssertGreaterThan(zip(full, b).map { abs($0 - $1) }.max()! / scale, 1e-2)
    }

    func testDepthPruningRemovesTheLeastImportantBlocksAndBudgetsFit() throws {
        let m = Tiny.model(), windows = Tiny.windows()
        let depth = DepthImportance.compute(model: m, windows: windows)
        for metric in ["ppl", "cosine"] {
            let pass = try MinitronPass(config: try Tiny.stage(#"{"layers": 2, "depth_metric": "\#(metric)"}"#))
            let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: windows))
            XCTAssertEqual(pruned.layers.count, 2)
            let score = metric == "ppl" ? depth.ppl : depth.cosine
            let expected = Array(score.indices.sorted { score[$0] < score[$1] }.prefix(2)).sorted()
            XCTAssertEqual(diag.objectValue?["depth"]?.objectValue?["removed_layers"], .array(expected.map { .int($0) }), metric)
            // The remaining blocks are the originals' (bit-identical weights).
            let kept = (0..<4).filter { !expected.contains($0) }
            for (new, old) in kept.enumerated() { XCTAssertEqual(pruned.layers[new].mlp!.down.dequantized().array, m.layers[old].mlp!.down.dequantized().array) }
        }
        for budget in [30_000, 20_000] {
            let pass = try MinitronPass(config: try Tiny.stage(#"{"params": \#(budget), "axes": ["hidden", "mlp"], "round_to": 4}"#))
            let (pruned, diag) = try pass.run(on: m, context: PassContext(calibration: windows))
            XCTAssertLessThanOrEqual(pruned.parameterCount, budget)
            XCTAssertEqual(diag.objectValue?["target"]?.objectValue?["parameters"]?.intValue, pruned.parameterCount)
            // One rounding step larger on both axes would not fit.
            var c = pruned.config
            c.hiddenSize += 4; c.intermediateSize += 4
            c.blocks = c.blocks.map { BlockConfig(numAttentionHeads: $0.numAttentionHeads, numKeyValueHeads: $0.numKeyValueHeads, intermediateSize: c.intermediateSize) }
            XCTAssertGreaterThan(DecoderModel.parameterCount(c), budget)
        }
    }

    func testBadMinitronSettings() throws {
        let cases: [(String, String)] = [
            (#"{}"#, "no target"),
            (#"{"heads": 5}"#, "multiple of the 2 KV heads"),
            (#"{"hidden": 64}"#, "exceeds the model's 32"),
            (#"{"params": 10, "hidden": 16}"#, "'hidden': given explicitly and also listed in 'axes'"),
            (#"{"mlp": 16, "axes": ["mlp"]}"#, "'axes': only meaningful with 'params'"),
            (#"{"layers": 2, "depth_metric": "loss"}"#, "'depth_metric': 'loss' is not one of ppl, cosine"),
            (#"{"params": 10}"#, "fits 10 parameters"),
            (#"{"layers": 0}"#, "'layers': 0 is out of range"),
        ]
        for (json, fragment) in cases {
            do {
                let p = try MinitronPass(config: try Tiny.stage(json))
                _ = try p.run(on: Tiny.model(), context: PassContext(calibration: Tiny.windows(1)))
                XCTFail("\(json): no error")
            } catch {
                XCTAssertTrue("\(error)".contains(fragment), "\(json): \(error)")
            }
        }
    }
}
