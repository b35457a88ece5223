import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import Training
import XCTest
@testable import Passes

/// CPTQuant after DSFormer / low rank (issue 16): a factorized weight's dense factor D is the unit quantized,
/// stored as the codes of Dᵀ grouped along the output; S stays float32 and is counted in the report.
final class FactorizedQuantizationTests: XCTestCase {
    func stage<P: CompressionPass>(_ type: P.Type, _ json: String) throws -> P { try P(config: try Tiny.stage(json)) }

    /// Tiny (hidden 32, MLP 48) with its MLP weights factorized by DSFormer.
    func factored() throws -> DecoderModel {
        let ds = try stage(DSFormerPass.self, #"{"targets": ["mlp"], "parameter_ratio": 0.6, "density": 0.5, "iterations": 3}"#)
        return try ds.run(on: Tiny.model(), context: PassContext()).model
    }

    /// Dᵀ of D (OC, k), row-major (k, OC), by plain loops.
    func transposed(_ d: Tensor) -> [Float] {
        let (OC, k) = (d.shape[0], d.shape[1])
        var out = [Float](repeating: 0, count: OC * k)
        for r in 0..<k { for o in 0..<OC { out[r * OC + o] = d[o * k + r] } }
        return out
    }

    /// Uniform 4-bit round-to-nearest on the MLP (factorized) and q_proj (dense): every factor's D becomes the
    /// codes an independent quantization of Dᵀ gives, S is unchanged bit for bit, W = D̂ · S (plain Float64
    /// product from the codes), and the report's bytes are exact: allocated = D's codes + scales (+ q_proj's),
    /// targeted = allocated + S's float32 values and 1-byte row indices.
    func testUniformRTNQuantizesEachFactorsDenseFactor() throws {
        let base = try factored()
        let f4 = try QuantFormat(bits: 4, groupSize: 16, symmetric: true)
        let p = try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "widths": [4], "bits_per_weight": 5, "group_size": 16, "symmetric": true, "targets": ["q_proj", "gate_proj", "up_proj", "down_proj"]}"#)
        XCTAssertEqual(p.needs, [], "rtn with no estimator needs no calibration")
        let (q, diag) = try p.run(on: base, context: PassContext())
        XCTAssertEqual(q.weightKinds, [.dense, .quantized, .factorized])
        var allocated = 0, sparseBytes = 0, parameters = 0, elements = 0, weights = 0
        for (id, w) in q.linearWeights {
            let before = try XCTUnwrap(base.linear(id))
            switch id.kind {
            case .gate, .up, .down:
                guard case .factorized(let f) = w, case .factorized(let b) = before else { return XCTFail("\(id) is \(w.kind)") }
                let qd = try XCTUnwrap(f.quantizedDense, "\(id): D not quantized")
                let OC = b.dense.shape[0], k = b.rank, C = b.sparse.mask.cols
                XCTAssertEqual(qd, try QuantizedTensor(weights: transposed(b.dense), shape: [k, OC], format: f4), "\(id): codes of Dᵀ")
                XCTAssertEqual(f.sparse.values.array, b.sparse.values.array, "\(id): S unchanged")
                XCTAssertEqual(f.sparse.mask, b.sparse.mask)
                // W = D̂ · S with D̂[o, r] = Dᵀ-codes dequantized at (r, o).
                let dt = qd.dequantized(), wq = w.dequantized()
                for o in 0..<OC {
                    for c in 0..<C {
                        var acc = 0.0
                        for r in 0..<k where f.sparse.mask[r * C + c] { acc += Double(dt[r * OC + o]) * Double(f.sparse.values[r * C + c]) }
                        XCTAssertEqual(Double(wq[o * C + c]), acc, accuracy: 1e-5 * max(1, abs(acc)))
                    }
                }
                XCTAssertNotEqual(f.dense.array, b.dense.array, "\(id): 4-bit codes do not hold D exactly")
                // Exact bytes: k·OC 4-bit codes, one float16 scale per 16, S: 4 + 1 bytes per kept value (k ≤ 256).
                XCTAssertEqual(qd.bytes, k * OC / 2 + 2 * (k * OC / 16))
                XCTAssertEqual(w.storageBytes, qd.bytes + 5 * b.sparse.mask.nonzeros)
                allocated += qd.bytes; sparseBytes += 5 * b.sparse.mask.nonzeros; weights += k * OC
            case .q:
                guard case .quantized(let qw) = w else { return XCTFail("\(id) is \(w.kind)") }
                XCTAssertEqual(qw.packed, try QuantizedTensor(weights: before.denseView!.array, shape: before.shape, format: f4))
                allocated += qw.packed.bytes; weights += before.shape.reduce(1, *)
            default:
                XCTAssertEqual(w.denseView?.array, before.denseView?.array, "\(id) untouched")
                continue
            }
            parameters += w.parameterCount; elements += w.outFeatures * w.inFeatures
        }
        let d = try XCTUnwrap(diag.objectValue)
        XCTAssertEqual(d["bytes"], .int(allocated))
        XCTAssertEqual(d["allocated_weights"], .int(weights))
        XCTAssertEqual(d["bits_per_weight"]?.doubleValue, 5.0)
        let targeted = try XCTUnwrap(d["targeted"]?.objectValue)
        XCTAssertEqual(targeted["bytes"], .int(allocated + sparseBytes))
        XCTAssertEqual(targeted["parameters"], .int(parameters))
        XCTAssertEqual(targeted["matrix_elements"], .int(elements))
        XCTAssertEqual(targeted["bits_per_matrix_element"]?.doubleValue, Double(8 * (allocated + sparseBytes)) / Double(elements))
        let fac = try XCTUnwrap(d["factorized"]?.objectValue)
        XCTAssertEqual(fac["tensors"], .int(12))
        XCTAssertEqual(fac["sparse_factor_bytes"], .int(sparseBytes))
        // The model's own accounting agrees: bytes changed only by the targeted weights.
        let untouched = base.storageBytes - base.linearWeights.filter { [.q, .gate, .up, .down].contains($0.0.kind) }.reduce(0) { $0 + $1.1.storageBytes }
        XCTAssertEqual(q.storageBytes, untouched + allocated + sparseBytes)
    }

    /// `sparse_factor_bits`: S's kept values of every targeted factorized weight at a fixed width, in groups of
    /// consecutive kept values in storage order (column by column): their codes equal an independent quantization
    /// of those values, D is as without it, and the bytes (report and model) count S's codes, scales and indices.
    func testSparseFactorValuesAtAFixedWidth() throws {
        let base = try factored()
        let f4 = try QuantFormat(bits: 4, groupSize: 16, symmetric: true), f8 = try QuantFormat(bits: 8, groupSize: 16, symmetric: true)
        let p = try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "widths": [4], "bits_per_weight": 5, "group_size": 16, "symmetric": true, "sparse_factor_bits": 8, "targets": ["gate_proj", "up_proj", "down_proj"]}"#)
        let (q, diag) = try p.run(on: base, context: PassContext())
        var total = 0, dBytes = 0
        for (id, w) in q.linearWeights where [LinearKind.gate, .up, .down].contains(id.kind) {
            guard case .factorized(let f) = w, case .factorized(let b)? = base.linear(id) else { return XCTFail("\(id) is \(w.kind)") }
            let k = b.rank, C = b.sparse.mask.cols, OC = b.dense.shape[0]
            var kept: [Float] = []
            for c in 0..<C { for r in 0..<k where b.sparse.mask[r * C + c] { kept.append(b.sparse.values[r * C + c]) } }
            let qs = try XCTUnwrap(f.quantizedSparse, "\(id)")
            XCTAssertEqual(qs, try QuantizedTensor(weights: kept, shape: [1, kept.count], format: f8), "\(id): S's codes")
            XCTAssertEqual(f.quantizedDense, try QuantizedTensor(weights: transposed(b.dense), shape: [k, OC], format: f4), "\(id): D's codes")
            // Ŝ in the model is the codes dequantized at the kept positions, zero elsewhere.
            let back = qs.dequantized()
            var j = 0
            for c in 0..<C { for r in 0..<k { XCTAssertEqual(f.sparse.values[r * C + c], b.sparse.mask[r * C + c] ? back[j] : 0); if b.sparse.mask[r * C + c] { j += 1 } } }
            XCTAssertEqual(qs.bytes, kept.count + 2 * kept.count / 16)
            XCTAssertEqual(w.storageBytes, f.quantizedDense!.bytes + qs.bytes + kept.count)
            total += w.storageBytes; dBytes += f.quantizedDense!.bytes
        }
        let d = try XCTUnwrap(diag.objectValue)
        XCTAssertEqual(d["bytes"], .int(dBytes), "the allocation covers D only")
        XCTAssertEqual((d["targeted"]?.objectValue)?["bytes"], .int(total))
        XCTAssertEqual((d["factorized"]?.objectValue)?["sparse_factor_format"], .string("q8_g16_sym"))
        XCTAssertEqual((d["factorized"]?.objectValue)?["sparse_factor_bytes"], .int(total - dBytes))

        // Refusals: kept values not a whole number of groups; no factorized target; with measured damage.
        let (low, _) = try stage(LowRankPass.self, #"{"targets": ["down_proj"], "rank": 3}"#).run(on: Tiny.model(), context: PassContext())
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 5, "widths": [4], "group_size": 32, "symmetric": true, "sparse_factor_bits": 4, "targets": ["down_proj"]}"#)
            .run(on: low, context: PassContext())) {
            XCTAssertTrue("\($0)".contains("'sparse_factor_bits': the 144 kept values of the sparse factor of 'model.layers.0.mlp.down_proj.weight' are not a whole number of groups of 32"), "\($0)")
        }
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 5, "widths": [4], "group_size": 16, "sparse_factor_bits": 4, "targets": ["q_proj"]}"#)
            .run(on: low, context: PassContext())) {
            XCTAssertTrue("\($0)".contains("no targeted weight is factorized"), "\($0)")
        }
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "sparse_factor_bits": 4, "damage": "measured"}"#)) {
            XCTAssertTrue("\($0)".contains("test, stage 1: 'sparse_factor_bits' with 'damage': 'measured'"), "\($0)")
        }
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "sparse_factor_bits": 7}"#)) {
            XCTAssertTrue("\($0)".contains("'sparse_factor_bits': 7 bits is not a width"), "\($0)")
        }
    }

    /// The clipping search on D never does worse than round-to-nearest on ‖D − D̂‖² (α = 1 is RTN; D has no
    /// input weighting); budget allocation with each estimator, and measured damage, run on factorized models,
    /// meet the budget, and leave the input model unchanged.
    func testSearchAndMixedPrecisionOnFactorizedWeights() throws {
        let base = try factored(), windows = Tiny.windows(4, length: 16)
        func errors(_ json: String) throws -> [Double] {
            let (_, diag) = try stage(CPTQuantPass.self, json).run(on: base, context: PassContext(calibration: windows))
            return try XCTUnwrap(diag.objectValue?["units"]?.arrayValue).map { try XCTUnwrap($0.objectValue?["relative_error"]?.doubleValue) }
        }
        let common = #""estimator": "none", "allocation": "uniform", "granularity": "tensor", "widths": [3], "bits_per_weight": 5, "group_size": 16, "targets": ["gate_proj", "up_proj", "down_proj"]"#
        let rtn = try errors("{\(common), \"method\": \"rtn\"}"), search = try errors("{\(common), \"method\": \"search\"}")
        XCTAssertEqual(rtn.count, 12)
        for (a, b) in zip(search, rtn) { XCTAssertLessThanOrEqual(a, b * (1 + 1e-12)) }
        XCTAssertLessThan(search.reduce(0, +), rtn.reduce(0, +), "the search finds a better clip somewhere")

        let snapshot = base.linearWeights.map { ($0.0, $0.1.dequantized().array) }
        for estimator in ["cmpq", "pmpq", "tdmpq"] {
            let json = #"{"estimator": "\#(estimator)", "bits_per_weight": 4.5, "widths": [2, 4, 8], "group_size": 16, "pool_tokens": 4, "cca_dims": 3, "targets": ["q_proj", "gate_proj", "up_proj", "down_proj"]"#
                + (estimator == "pmpq" ? #", "damage": "measured", "damage_windows": 2, "damage_tokens": 8}"# : "}")
            let (q, diag) = try stage(CPTQuantPass.self, json).run(on: base, context: PassContext(calibration: windows))
            let d = try XCTUnwrap(diag.objectValue)
            let weights = try XCTUnwrap(d["allocated_weights"]?.intValue), bytes = try XCTUnwrap(d["bytes"]?.intValue)
            XCTAssertLessThanOrEqual(bytes, Int(4.5 * Double(weights) / 8), estimator)
            var stored = 0
            for (id, w) in q.linearWeights where id.kind != .k && id.kind != .v && id.kind != .o {
                if case .factorized(let f) = w { stored += try XCTUnwrap(f.quantizedDense, "\(estimator) \(id)").bytes }
                else if case .quantized(let qw) = w { stored += qw.packed.bytes } else { XCTFail("\(estimator): \(id) is \(w.kind)") }
            }
            XCTAssertEqual(stored, bytes, estimator)
            if estimator == "pmpq" {
                let m = try XCTUnwrap(d["measured_damage"]?.doubleValue)
                XCTAssertTrue(m.isFinite && m >= 0, "\(m)")
            }
            for ((id, a), (_, b)) in zip(snapshot, base.linearWeights) { XCTAssertEqual(a, b.dequantized().array, "\(estimator): \(id) of the input changed") }
        }
    }

    /// Refusals: a group size that does not divide D's output rows names the weight and the axis; a quantized
    /// factor cannot be trained or quantized again, while [dsformer, cptquant, eval] (rtn or gptq) and
    /// [lowrank, cptquant] are accepted.
    func testRefusals() throws {
        let base = try factored()  // gate/up: 48 output rows, down: 32
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 5, "group_size": 32, "targets": ["up_proj"]}"#)
            .run(on: base, context: PassContext())) {
            XCTAssertTrue("\($0)".contains("'model.layers.0.mlp.up_proj.weight' is factorized") && "\($0)".contains("48 output rows are not a whole number of groups of 32"), "\($0)")
        }
        let (once, _) = try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 5, "group_size": 16, "targets": ["down_proj"]}"#)
            .run(on: base, context: PassContext())
        XCTAssertThrowsError(try stage(CPTQuantPass.self, #"{"estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 5, "group_size": 16, "targets": ["down_proj"]}"#)
            .run(on: once, context: PassContext())) {
            XCTAssertTrue("\($0)".contains("already quantized"), "\($0)")
        }

        func decode(_ stages: String) throws -> Recipe {
            try Recipe(json: try JSONValue.parse(#"{"format": 1, "calibration": {"samples": 2}, "stages": \#(stages)}"#), path: "r.json", registry: .passes())
        }
        let ds = #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.5}"#
        let cq = #"{"stage": "cptquant", "allocation": "uniform", "estimator": "none", "method": "rtn", "bits_per_weight": 4.5, "widths": [4], "group_size": 32, "symmetric": true}"#
        var accepted = try decode("[\(ds), \(cq), {\"stage\": \"eval\"}]")
        XCTAssertEqual(try accepted.check(baseKinds: [.dense]), [.dense, .factorized, .quantized])
        XCTAssertNoThrow(try decode(#"[{"stage": "lowrank", "rank": 4}, \#(cq)]"#))
        XCTAssertNoThrow(try decode("[\(ds), {\"stage\": \"cptquant\", \"allocation\": \"uniform\", \"estimator\": \"none\", \"method\": \"gptq\", \"bits_per_weight\": 4.5}]"))
        for (stages, fragment) in [
            ("[\(ds), \(cq), {\"stage\": \"distill\", \"steps\": 2}]", "stage 3 (distill): cannot take quantized weights"),
            ("[\(ds), \(cq), \(cq)]", "stage 3 (cptquant): cannot take quantized weights"),
            ("[\(ds), \(cq), \(ds)]", "stage 3 (dsformer): cannot take quantized, factorized weights"),
        ] {
            XCTAssertThrowsError(try decode(stages), stages) { XCTAssertTrue("\($0)".contains(fragment), "\($0)") }
        }
        // STF cannot train a quantized factor (a distill command given such a student).
        XCTAssertThrowsError(try StraightThroughFactorizer.prepare(once, lr: 1e-3, weightDecay: 0)) {
            XCTAssertTrue("\($0)".contains("'model.layers.0.mlp.down_proj.weight' holds a quantized factor"), "\($0)")
        }
        // A base that already holds a quantized factor (a checkpoint of [dsformer, cptquant]) cannot be distilled.
        var distill = try decode(#"[{"stage": "distill", "steps": 2}]"#)
        XCTAssertThrowsError(try distill.check(baseKinds: once.weightKinds)) {
            XCTAssertTrue("\($0)".contains("stage 1 (distill): cannot take quantized weights, which the base checkpoint leaves"), "\($0)")
        }
    }

    /// The cptquant stages of the two SmolLM2 recipes, as written, on one decoder layer of SmolLM2's shapes (hidden
    /// 576, MLP 1536) whose MLP weights are factorized at the sizes the recipes' dsformer stage gives (ratio 0.5,
    /// density 0.25; random D and S values, so no DSFormer run): the groups fit (out and the kept-value counts are
    /// multiples of 32) and the MLP's bytes are those recipes/README.md derives from the shapes.
    func testSmolLM2RecipesCPTQuantStageFitsTheFactorShapes() throws {
        let c = ModelConfig(vocabSize: 64, hiddenSize: 576, intermediateSize: 1536, numHiddenLayers: 1, numAttentionHeads: 9,
                            numKeyValueHeads: 3, headDim: 64, rmsNormEps: 1e-5)
        var model = DecoderModel.random(config: c, seed: 2)
        var rng = SplitMix64(seed: 5)
        for kind in [LinearKind.gate, .up, .down] {
            let id = LinearID(layer: 0, kind: kind), (OC, C) = (model.linear(id)!.outFeatures, model.linear(id)!.inFeatures)
            let (k, s) = try XCTUnwrap(DenseSparseFactorizer.sizes(ratio: 0.5, density: 0.25, rows: OC, columns: C))
            XCTAssertEqual([k, s], kind == .down ? [461, 115] : [263, 66], "\(kind)")
            let d = Tensor(shape: [OC, k]), sv = Tensor(shape: [k, C])
            d.fillUniform(scale: 0.1, rng: &rng); sv.fillUniform(scale: 0.1, rng: &rng)
            let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + 7 * (i % C)) % k < s }
            model = try model.replacing(.linear(id), with: .factorized(try FactorizedWeight(dense: d, sparse: SparseWeight(masking: sv, mask: mask))))
        }
        for (name, mlpBytes) in [("smollm2-dsformer-mlp-2x-cptquant.json", 2_119_860), ("smollm2-dsformer-mlp-2x-cptquant-s4.json", 1_251_300)] {
            let recipe = try Recipe.read(RecipeTests.recipesDirectory.appendingPathComponent(name).path, registry: .passes())
            XCTAssertEqual(recipe.stages.map(\.name), ["dsformer", "cptquant", "eval"])
            let pass = try XCTUnwrap(recipe.stages[1].stage as? CPTQuantPass)
            let (q, diag) = try pass.run(on: model, context: PassContext())
            let bytes = [LinearKind.gate, .up, .down].reduce(0) { $0 + q.linear(LinearID(layer: 0, kind: $1))!.storageBytes }
            XCTAssertEqual(bytes, mlpBytes, name)
            XCTAssertEqual(diag.objectValue?["targeted"]?.objectValue?["bytes"], .int(mlpBytes), name)
            XCTAssertEqual(diag.objectValue?["bytes"], .int(603_828), "\(name): D at 4.5 bits")
        }
    }

    // MARK: GPTQ on the dense factor

    /// GPTQ on a factor D with groups along the output equals the sequential OBS with explicit inverses of H
    /// (blocks of one column), each column's group grids fixed by round to nearest on every row's current value
    /// when the column is reached; the codes of Dᵀ dequantize to those values. (The layer data's inputs stand for
    /// D's inputs S·x.)
    func testGPTQOnADenseFactorEqualsDirectOBSUpdates() throws {
        let d = LayerData(OC: 8, C: 6, n: 40, seed: 9)
        let h = OBSReference.damped(d.hessian, damp: 0.01)
        let f = try QuantFormat(bits: 3, groupSize: 4, symmetric: false), G = 4
        var grids: [Int: (Double, Double)] = [:]  // row group → its grid at the current column
        let ref = OBSReference.solve(d.rows, hessian: h, block: 1, beginBlock: { j, W, _ in
            for g in 0..<(d.OC / G) {
                let q = try! QuantizedTensor(weights: (0..<G).map { Float(W[g * G + $0][j]) }, shape: [1, G], format: f)
                grids[g] = (Double(q.scales[0]), Double(q.mins[0]))
            }
        }) { r, j, w, _ in
            let (s, lo) = grids[r / G]!
            return lo + s * min(7, max(0, ((w[j] - lo) / s).rounded()))
        }
        let factor = try d.stats.factorization(damp: 0.01, actOrder: false)
        let (q, _, values) = try GPTQ.quantizeOutputGroups(d.weight, factor: factor, format: f, clipSearch: false)
        XCTAssertEqual(q.shape, [6, 8])
        let dt = q.dequantized()
        for r in 0..<8 {
            for c in 0..<6 {
                XCTAssertEqual(Double(dt[c * 8 + r]), ref[r][c], accuracy: 1e-4 * (1 + abs(ref[r][c])), "(\(r), \(c))")
                XCTAssertEqual(dt[c * 8 + r], values[r * 6 + c])
            }
        }
    }

    /// Random D (OC, k), sparse S (k, C) with s kept per column, and calibration inputs X (LayerData's).
    func factorCase(OC: Int, k: Int, s: Int, n: Int, seed: UInt64) throws -> (d: Tensor, sparse: SparseWeight, x: LayerData) {
        let data = LayerData(OC: k, C: 48, n: n, seed: seed), C = 48
        var rng = SplitMix64(seed: seed + 1)
        let d = Tensor(shape: [OC, k]), sv = Tensor(shape: [k, C])
        d.fillUniform(scale: 1, rng: &rng); sv.fillUniform(scale: 1, rng: &rng)
        let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + 5 * (i % C)) % k < s }
        return (d, SparseWeight(masking: sv, mask: mask), data)
    }

    /// H_D = S·H·Sᵀ equals (2/n) Σ_t (S x_t)(S x_t)ᵀ computed directly.
    func testFactorHessianIsThatOfTheFactorsInput() throws {
        let (_, sparse, data) = try factorCase(OC: 8, k: 10, s: 3, n: 30, seed: 3)
        let k = 10, C = 48
        let hd = GPTQ.factorHessian(data.stats.hessian(), sparse: sparse)
        var direct = [Double](repeating: 0, count: k * k)
        for t in 0..<data.n {
            let sx = (0..<k).map { r in (0..<C).reduce(0.0) { $0 + Double(sparse.values[r * C + $1]) * Double(data.x[t * C + $1]) } }
            for a in 0..<k { for b in 0..<k { direct[a * k + b] += 2 * sx[a] * sx[b] / Double(data.n) } }
        }
        for i in 0..<(k * k) { XCTAssertEqual(hd[i], direct[i], accuracy: 1e-4 * (1 + abs(direct[i]))) }
    }

    /// GPTQ's output error ‖(D − D̂)·S·X‖² on the calibration inputs is below round to nearest's (min-max grids)
    /// and the clipping search's (searched grids), symmetric and asymmetric, with and without activation order.
    func testGPTQOnADenseFactorBeatsRoundToNearest() throws {
        let OC = 32, k = 12
        let (d, sparse, data) = try factorCase(OC: OC, k: k, s: 4, n: 160, seed: 11)
        let C = 48
        let t = (0..<data.n).map { tt in (0..<k).map { r in (0..<C).reduce(0.0) { $0 + Double(sparse.values[r * C + $1]) * Double(data.x[tt * C + $1]) } } }
        func error(_ dhat: [Float]) -> Double {  // dhat: Dᵀ (k, OC)
            var e = 0.0
            for tt in t { for o in 0..<OC { var v = 0.0; for r in 0..<k { v += (Double(d[o * k + r]) - Double(dhat[r * OC + o])) * tt[r] }; e += v * v } }
            return e
        }
        let dt = FactorizedWeight.transpose(d.array, rows: OC, cols: k)
        let hd = GPTQ.factorHessian(data.stats.hessian(), sparse: sparse)
        for (bits, symmetric) in [(3, true), (4, false), (2, false)] {
            let f = try QuantFormat(bits: bits, groupSize: 8, symmetric: symmetric)
            let rtn = error(try QuantizedTensor(weights: dt, shape: [k, OC], format: f).dequantized())
            let search = error(try QuantizedTensor(weights: dt, shape: [k, OC], format: f, search: true).dequantized())
            for actOrder in [false, true] {
                let factor = try HessianFactorization(hessian: hd, features: k, damp: 0.01, actOrder: actOrder)
                let plain = error(try GPTQ.quantizeOutputGroups(d, factor: factor, format: f, clipSearch: false).0.dequantized())
                let searched = error(try GPTQ.quantizeOutputGroups(d, factor: factor, format: f, clipSearch: true).0.dequantized())
                XCTAssertLessThan(plain, rtn, "\(f) act order \(actOrder)")
                XCTAssertLessThan(searched, search, "\(f) act order \(actOrder)")
            }
        }
    }

    /// `method: gptq` through the layer-wise driver on a factorized model: every factor's D is stored at the
    /// chosen format, S unchanged, the report lists the factors, and the layer-0 MLP output error on the
    /// calibration inputs is below that of round to nearest at the same format.
    func testCPTQuantGPTQOnFactorizedWeights() throws {
        let base = try factored(), windows = Tiny.windows(4, length: 16)
        let json = #"{"estimator": "none", "allocation": "uniform", "widths": [3], "bits_per_weight": 4, "group_size": 16, "symmetric": true, "targets": ["gate_proj", "up_proj", "down_proj"], "method": "#
        let (g, diag) = try stage(CPTQuantPass.self, json + #""gptq"}"#).run(on: base, context: PassContext(calibration: windows))
        let (r, _) = try stage(CPTQuantPass.self, json + #""rtn"}"#).run(on: base, context: PassContext(calibration: windows))
        let reports = try XCTUnwrap(diag.objectValue?["gptq"]?.objectValue?["tensors"]?.arrayValue)
        XCTAssertEqual(reports.count, 12)
        XCTAssertTrue(reports.allSatisfy { $0.objectValue?["factorized"] == .bool(true) })
        for (id, w) in g.linearWeights where [LinearKind.gate, .up, .down].contains(id.kind) {
            guard case .factorized(let f) = w, case .factorized(let b)? = base.linear(id) else { return XCTFail("\(id)") }
            XCTAssertEqual(f.quantizedDense?.format.description, "q3_g16_sym")
            XCTAssertEqual(f.sparse.values.array, b.sparse.values.array)
        }
        // Layer 0's gate projection sees the base's normed stream (nothing before it is factorized or quantized).
        func gateError(_ m: DecoderModel) throws -> Double {
            let id = LinearID(layer: 0, kind: .gate), T = 16, C = Tiny.config.hiddenSize
            let w = base.linear(id)!, q = m.linear(id)!
            var e = 0.0
            for ids in windows {
                let trace = ReferenceTrace(Tiny.model(), ids)  // the dense model: layer 0's MLP input is the same
                let x = Tensor(shape: [T, C], values: trace.normed[1])
                let a = Tensor(shape: [T, w.outFeatures]), b = Tensor(shape: [T, w.outFeatures])
                w.forwardReference(out: a.data, inp: x.data, rows: T); q.forwardReference(out: b.data, inp: x.data, rows: T)
                for i in 0..<a.count { let v = Double(a[i] - b[i]); e += v * v }
            }
            return e
        }
        XCTAssertLessThan(try gateError(g), try gateError(r))
    }
}
