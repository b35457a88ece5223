import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import Training
import XCTest
@testable import Passes

final class CPTQuantTests: XCTestCase {
    /// Tiny's linear inputs have 32 (hidden) or 48 (heads × D, MLP) columns: group 16 divides both.
    func pass(_ json: String) throws -> CPTQuantPass { try CPTQuantPass(config: try Tiny.stage(json)) }

    func testEveryEstimatorMeetsTheBudgetAndTheModelIsItsStoredForms() throws {
        let m = Tiny.model(), windows = Tiny.windows(4, length: 16)
        let original = m.namedTensors.map { ($0.name, $0.tensor.array) }
        for estimator in ["cmpq", "pmpq", "tdmpq"] {
            for granularity in ["layer", "tensor"] {
                let p = try pass(#"{"estimator": "\#(estimator)", "granularity": "\#(granularity)", "bits_per_weight": 4.25, "group_size": 16, "pool_tokens": 4, "cca_dims": 3}"#)
                let (q, diag) = try p.run(on: m, context: PassContext(calibration: windows))
                let stored = q.quantizedForms
                let linear = m.namedTensors.filter { $0.name.hasPrefix("model.layers.") && $0.tensor.shape.count == 2 }
                XCTAssertEqual(Set(stored.keys), Set(linear.map(\.name)), "every decoder linear weight, nothing else")
                let weights = linear.reduce(0) { $0 + $1.tensor.count }
                let bytes = stored.values.reduce(0) { $0 + $1.bytes }
                XCTAssertLessThanOrEqual(bytes, Int(4.25 * Double(weights) / 8), "\(estimator) \(granularity)")
                XCTAssertEqual(diag.objectValue?["bytes"], .int(bytes))
                let tensors = Dictionary(uniqueKeysWithValues: q.namedTensors.map { ($0.name, $0.tensor.array) })
                for (name, s) in stored { XCTAssertEqual(tensors[name], s.dequantized(), name) }
                for (name, values) in original where stored[name] == nil { XCTAssertEqual(tensors[name], values, "\(name) untouched") }
                // The input model is unchanged (PMPQ prunes in place and restores).
                for ((_, a), b) in zip(original, m.namedTensors) { XCTAssertEqual(a, b.tensor.array) }
                let units = diag.objectValue?["units"]?.arrayValue ?? []
                XCTAssertEqual(units.count, granularity == "layer" ? 4 : 28)
            }
        }
    }

    /// PMPQ's score of a layer: the calibration PPL of an independently built copy with 30 % of each of the
    /// `estimator_windows: N` estimates on the first N calibration windows: the sensitivities are those of a run
    /// given only those windows.
    func testEstimatorWindowsUseTheFirstWindows() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 12)
        for estimator in ["pmpq", "tdmpq"] {
            let (_, a) = try pass(#"{"estimator": "\#(estimator)", "bits_per_weight": 4, "group_size": 16, "estimator_windows": 1}"#)
                .run(on: m, context: PassContext(calibration: windows))
            let (_, b) = try pass(#"{"estimator": "\#(estimator)", "bits_per_weight": 4, "group_size": 16}"#)
                .run(on: m, context: PassContext(calibration: Array(windows.prefix(1))))
            let (_, c) = try pass(#"{"estimator": "\#(estimator)", "bits_per_weight": 4, "group_size": 16}"#)
                .run(on: m, context: PassContext(calibration: windows))
            func scores(_ d: JSONValue) -> [Double] { d.objectValue!["units"]!.arrayValue!.map { $0.objectValue!["sensitivity"]!.doubleValue! } }
            XCTAssertEqual(scores(a), scores(b), estimator)
            XCTAssertNotEqual(scores(a), scores(c), estimator)
        }
    }

    /// layer's weights (smallest |w|) zeroed, minus the base PPL, both with the reference forward.
    func testPruningSensitivityMatchesAnExplicitlyPrunedModel() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 12)
        let p = try pass(#"{"estimator": "pmpq", "bits_per_weight": 4, "group_size": 16}"#)
        let units = try p.units(m)
        let scores = CPTQuantPass.pruningSensitivity(model: m, units: units, fraction: 0.3, windows: windows) { _, _ in }
        func ppl(_ model: DecoderModel) -> Double {
            var nll = 0.0, n = 0
            for ids in windows {
                let logits = model.referenceLogits(ids), V = model.config.vocabSize
                for t in 0..<(ids.count - 1) {
                    let row = (0..<V).map { Double(logits[t * V + $0]) }
                    let mx = row.max()!
                    nll += log(row.reduce(0) { $0 + exp($1 - mx) }) + mx - row[Int(ids[t + 1])]
                    n += 1
                }
            }
            return exp(nll / Double(n))
        }
        let base = ppl(m)
        for (u, unit) in units.enumerated() {
            let tensors = Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, Tensor(shape: $0.tensor.shape, values: $0.tensor.array)) })
            for id in unit.tensors {
                let w = tensors[id.hfName]!
                let k = Int(0.3 * Double(w.count))
                for i in w.array.indices.sorted(by: { abs(w[$0]) != abs(w[$1]) ? abs(w[$0]) < abs(w[$1]) : $0 < $1 }).prefix(k) { w[i] = 0 }
            }
            let pruned = try DecoderModel(config: m.config, tensors: tensors)
            // Observed: 9e-8 of the base PPL (float32 forward vs reference ops).
            XCTAssertEqual(scores[u], ppl(pruned) - base, accuracy: 1e-5 * base, unit.name)
        }
    }

    /// TDMPQ's |x·∂L/∂x| per token against central differences of the loss along x itself:
    /// (L(x_t(1 + ε)) − L(x_t(1 − ε))) / 2ε = x_t · ∂L/∂x_t, with x the residual entering the layer.
    func testTaylorSensitivityMatchesFiniteDifferences() throws {
        let m = Tiny.model(), ids = Tiny.windows(1, length: 10)[0], T = ids.count, C = m.config.hiddenSize, V = m.config.vocabSize
        let p = try pass(#"{"estimator": "tdmpq", "bits_per_weight": 4, "group_size": 16}"#)
        let units = try p.units(m)
        let scores = CPTQuantPass.taylorSensitivity(model: m, units: units, windows: [ids], perTensor: false) { _, _ in }
        let fwd = ResumableForward(model: m, window: T)
        fwd.run(ids)
        let eps: Float = 1e-2
        for (u, unit) in units.enumerated() {
            let s = 2 * unit.layer
            var total = 0.0
            for t in 0..<T {
                let row = fwd.states.data + s * T * C + t * C
                let saved = Array(UnsafeBufferPointer(start: row, count: C))
                func loss(_ f: Float) -> Double {
                    for c in 0..<C { row[c] = saved[c] * f }
                    return windowNLL(fwd.resume(at: s, skip: []), ids, vocab: V) / Double(T - 1)
                }
                total += abs((loss(1 + eps) - loss(1 - eps)) / (2 * Double(eps)))
                for c in 0..<C { row[c] = saved[c] }
            }
            // Observed: relative difference 6e-5 (float32 central differences with ε = 1e-2).
            XCTAssertEqual(scores[u], total / Double(T), accuracy: 1e-3 * total / Double(T), unit.name)
        }
    }

    /// E[x²] per input column of the q projection equals the reference trace's normed input.
    func testCalibrationMomentsMatchTheReferenceActivations() throws {
        let m = Tiny.model(), windows = Tiny.windows(2, length: 8)
        let moments = try CalibrationMoments.compute(model: m, windows: windows, poolTokens: 2, ccaDims: 2, ridge: 1e-3)
        let traces = windows.map { ReferenceTrace(m, $0) }
        let C = m.config.hiddenSize
        for l in 0..<m.layers.count {
            let got = moments.columns["model.layers.\(l).self_attn.q_proj.weight"]!
            for k in 0..<C {
                let want = traces.reduce(0.0) { a, tr in a + (0..<8).reduce(0.0) { $0 + Double(tr.normed[2 * l][$1 * C + k] * tr.normed[2 * l][$1 * C + k]) } } / 16
                XCTAssertEqual(Double(got[k]), want, accuracy: 1e-5 * max(want, 1e-3))  // observed 5e-7
            }
        }
        XCTAssertEqual(moments.cmpq.count, 4)
        XCTAssertTrue(moments.cmpq.allSatisfy { $0 >= 0 && $0 <= 1 })
        XCTAssertEqual(moments.pooledSamples, 8)
    }

    func testClusterAllocationGivesMoreBitsToMoreSensitiveLayers() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 16)
        let p = try pass(#"{"estimator": "pmpq", "allocation": "clusters", "widths": [2, 4, 8], "group_size": 16}"#)
        let (_, diag) = try p.run(on: m, context: PassContext(calibration: windows))
        let units = diag.objectValue!["units"]!.arrayValue!.map { $0.objectValue! }
        let pairs = units.map { ($0["sensitivity"]!.doubleValue!, $0["bits"]!.intValue!) }.sorted { $0.0 < $1.0 }
        XCTAssertEqual(pairs.map(\.1), pairs.map(\.1).sorted(), "widths ascend with sensitivity")
        XCTAssertEqual(pairs.last?.1, 8)
    }

    /// A uniform allocation quantizes its table at the chosen format only: the widest whose bytes fit the budget
    /// (bits_per_weight 5 at group 16 symmetric: q4 at 4 + 16/16 = 5.0; q5 would be 6.0). The stored forms are the
    /// quantizer's own at that format (the search weighted by the calibration E[x²], which the pass computes);
    /// with GPTQ neither the moments' forward nor any other width runs, and the weights are GPTQ's whatever the
    /// candidate widths.
    func testUniformAllocationQuantizesOnlyTheChosenFormat() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 16)
        let weights = m.namedTensors.filter { $0.name.hasPrefix("model.layers.") && $0.tensor.shape.count == 2 }
        let q4 = try QuantFormat.width(4, groupSize: 16, symmetric: true)
        for method in ["rtn", "search", "gptq"] {
            var lines: [String] = []
            let (q, diag) = try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "group_size": 16, "symmetric": true, "method": "\#(method)"}"#)
                .run(on: m, context: PassContext(calibration: windows, progress: { lines.append($0) }))
            XCTAssertEqual(lines.filter { $0.hasPrefix("cptquant: quantized") }, ["cptquant: quantized 28 tensors at \(q4)"],
                           method)
            XCTAssertEqual(lines.contains { $0.contains("calibration statistics") }, method == "search", method)
            let units = diag.objectValue!["units"]!.arrayValue!.map { $0.objectValue! }
            XCTAssertEqual(Set(units.map { $0["format"]!.stringValue! }), [q4.description], method)
            let stored = q.quantizedForms
            XCTAssertEqual(stored.values.reduce(0) { $0 + $1.bytes }, Int(5 * Double(weights.reduce(0) { $0 + $1.tensor.count }) / 8))
            switch method {
            case "rtn":
                for w in weights {
                    let want = try QuantizedTensor(weights: w.tensor.array, shape: w.tensor.shape, format: q4)
                    XCTAssertEqual(stored[w.name]?.dequantized(), want.dequantized(), w.name)
                }
            case "gptq":
                // The same GPTQ as with a single candidate width (whose table is the same one format).
                let (one, _) = try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "group_size": 16, "symmetric": true, "method": "gptq", "widths": [4]}"#)
                    .run(on: m, context: PassContext(calibration: windows))
                for (name, s) in stored { XCTAssertEqual(s.dequantized(), one.quantizedForms[name]?.dequantized(), name) }
            default: break
            }
        }
    }

    func testBadConfigurationsNameTheKey() throws {
        let cases: [(String, String)] = [
            (#"{"estimator": "hessian", "bits_per_weight": 4}"#, "'estimator'"),
            (#"{"bits_per_weight": 4, "bytes": 1000}"#, "exactly one of 'bits_per_weight'"),
            (#"{"allocation": "budget"}"#, "exactly one of 'bits_per_weight'"),
            (#"{"allocation": "clusters", "bits_per_weight": 4}"#, "takes no budget"),
            (#"{"bits_per_weight": 4, "widths": [3, 7]}"#, "'widths': 7 bits is not a width"),
            (#"{"bits_per_weight": 4, "widths": [3, 3]}"#, "distinct widths"),
            (#"{"bits_per_weight": 4, "targets": ["lm_head"]}"#, "not a decoder linear weight"),
            (#"{"bits_per_weight": 4, "group_size": 0}"#, "'group_size'"),
            (#"{"bits_per_weight": 4, "prune_fraction": 1}"#, "'prune_fraction'"),
            (#"{"estimator": "none", "bits_per_weight": 4}"#, "estimator 'none' is only for allocation 'uniform'"),
            (#"{"bits_per_weight": 4, "embedding": 7}"#, "'embedding': 7 bits"),
            (#"{"bits_per_weight": 4, "method": "gptq", "search_weights": "activation_magnitude"}"#, "'search_weights' applies to method 'search' only"),
            (#"{"bits_per_weight": 4, "search_weights": "magnitude"}"#, "'search_weights'"),
            (#"{"bits_per_weight": 4, "method": "search", "static_groups": true}"#, "'static_groups' applies to method 'gptq' only"),
            (#"{"bits_per_weight": 4, "estimator": "cmpq", "estimator_windows": 2}"#, "'estimator_windows' applies to the estimators 'pmpq' and 'tdmpq'"),
            (#"{"bits_per_weight": 4, "estimator": "pmpq", "estimator_windows": 0}"#, "'estimator_windows'"),
        ]
        for (json, expected) in cases {
            XCTAssertThrowsError(try pass(json), json) { XCTAssertTrue("\($0)".contains(expected) && "\($0)".contains("test, stage 1"), "\(json): \($0)") }
        }
        // Errors that depend on the model: group size, budget below the smallest size, excluded layer.
        let m = Tiny.model(), windows = Tiny.windows(2, length: 8)
        let runtime: [(String, String)] = [
            (#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 4, "group_size": 5, "method": "rtn"}"#, "not a whole number of groups of 5"),
            (#"{"estimator": "pmpq", "bits_per_weight": 2, "group_size": 16}"#, "below the smallest possible size"),
            (#"{"estimator": "pmpq", "bits_per_weight": 4, "group_size": 16, "exclude_layers": [9]}"#, "layer 9 outside 0..<4"),
            (#"{"estimator": "tdmpq", "bits_per_weight": 4, "group_size": 16, "estimator_windows": 3}"#, "'estimator_windows' is 3, but the recipe draws 2"),
        ]
        for (json, expected) in runtime {
            XCTAssertThrowsError(try pass(json).run(on: m, context: PassContext(calibration: windows)), json) {
                XCTAssertTrue("\($0)".contains(expected), "\(json): \($0)")
            }
        }
    }
}

extension DecoderModel {
    /// The packed forms of the quantized weights, by Hugging Face name.
    var quantizedForms: [String: QuantizedTensor] { Dictionary(uniqueKeysWithValues: quantizedWeights.map { ($0.id.hfName, $0.packed) }) }
}
