import Foundation
import Model
import Quantization
import Recipes
import TensorCore
import XCTest
@testable import Passes

/// CPTQuant's measured damage (issue 19): KL(base ‖ model with one unit quantized) per unit and width, the
/// knapsack over it, predicted against measured totals; embedding and LM head at a fixed width in the budget.
final class MeasuredDamageTests: XCTestCase {
    func pass(_ json: String) throws -> CPTQuantPass { try CPTQuantPass(config: try Tiny.stage(json)) }

    /// Mean over positions of KL(p_a ‖ p_b), from the plain reference forward, in Double.
    func referenceKL(_ a: DecoderModel, _ b: DecoderModel, _ windows: [[Int32]]) -> Double {
        let V = a.config.vocabSize
        var total = 0.0, n = 0
        for ids in windows {
            let la = a.referenceLogits(ids).array.map(Double.init), lb = b.referenceLogits(ids).array.map(Double.init)
            for t in 0..<ids.count {
                func logp(_ l: [Double]) -> [Double] {
                    let row = Array(l[(t * V)..<((t + 1) * V)]), m = row.max()!
                    let z = log(row.reduce(0) { $0 + exp($1 - m) }) + m
                    return row.map { $0 - z }
                }
                let pa = logp(la), pb = logp(lb)
                total += (0..<V).reduce(0) { $0 + exp(pa[$1]) * (pa[$1] - pb[$1]) }
                n += 1
            }
        }
        return total / Double(n)
    }

    /// `m` with the named tensors replaced by these values (an independently built model).
    func replaced(_ m: DecoderModel, _ values: [String: [Float]]) throws -> DecoderModel {
        var tensors = Dictionary(uniqueKeysWithValues: m.namedTensors.map { ($0.name, Tensor(shape: $0.tensor.shape, values: $0.tensor.array)) })
        for (name, v) in values { tensors[name] = Tensor(shape: tensors[name]!.shape, values: v) }
        return try DecoderModel(config: m.config, tensors: tensors)
    }

    /// The least total damage over every choice of one option per unit within the budget (exhaustive).
    func exhaustiveOptimum(_ table: [[(bytes: Int, damage: Double)]], budget: Int) -> Double {
        var best = Double.infinity
        func search(_ u: Int, _ bytes: Int, _ damage: Double) {
            if bytes > budget { return }
            if u == table.count { best = min(best, damage); return }
            for o in table[u] { search(u + 1, bytes + o.bytes, damage + o.damage) }
        }
        search(0, 0, 0)
        return best
    }

    func testMeasuredDamageIsTheKLOfEachUnitAloneAndTheKnapsackIsOptimal() throws {
        let m = Tiny.model(), windows = Tiny.windows(3, length: 12)
        let original = m.namedTensors.map { $0.tensor.array }
        let widths = [2, 3, 4]
        let p = try pass(#"{"estimator": "none", "damage": "measured", "bits_per_weight": 3.3, "widths": [2, 3, 4], "group_size": 16, "symmetric": true, "method": "rtn", "damage_windows": 2, "damage_tokens": 10}"#)
        let (q, diag) = try p.run(on: m, context: PassContext(calibration: windows))
        let d = try XCTUnwrap(diag.objectValue)
        let cut = windows.prefix(2).map { Array($0.prefix(10)) }
        let units = try p.units(m)
        XCTAssertEqual(units.count, 4)
        let reports = try XCTUnwrap(d["units"]?.arrayValue).map { $0.objectValue! }
        var table: [[(bytes: Int, damage: Double)]] = []
        for (u, unit) in units.enumerated() {
            let got = try XCTUnwrap(reports[u]["measured_damage"]?.arrayValue).map { $0.doubleValue! }
            var row: [(bytes: Int, damage: Double)] = []
            for (fi, b) in widths.enumerated() {
                let f = try QuantFormat(bits: b, groupSize: 16, symmetric: true)
                var values: [String: [Float]] = [:], bytes = 0
                for id in unit.tensors {
                    let w = m.namedTensors.first { $0.name == id.hfName }!.tensor
                    let qt = try QuantizedTensor(weights: w.array, shape: w.shape, format: f)
                    values[id.hfName] = qt.dequantized(); bytes += qt.bytes
                }
                let ref = referenceKL(m, try replaced(m, values), cut)
                // Observed: agreement to ≤ 1.1e-6 relative (float32 forward against the reference ops).
                XCTAssertEqual(got[fi], ref, accuracy: 1e-5 * ref, "\(unit.name) at \(b) bits")
                XCTAssertGreaterThan(ref, 0)
                row.append((bytes, got[fi]))
            }
            table.append(row)
            XCTAssertGreaterThan(got[0], got[2], "\(unit.name): 2 bits damages more than 4")
        }
        // The knapsack's choice is the exhaustive optimum of the measured table under the budget.
        let budget = try XCTUnwrap(d["budget_bytes"]?.intValue)
        let best = exhaustiveOptimum(table, budget: budget)
        let chosen = reports.map { $0["bits"]!.intValue! }
        let predicted = zip(table, chosen).reduce(0.0) { $0 + $1.0[widths.firstIndex(of: $1.1)!].damage }
        XCTAssertEqual(predicted, best, accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(d["predicted_damage"]?.doubleValue), predicted, accuracy: 1e-12)
        XCTAssertGreaterThan(Set(chosen).count, 1, "the budget between widths mixes them")
        // The measured total is the KL of the returned model.
        let total = referenceKL(m, q, cut)
        XCTAssertEqual(try XCTUnwrap(d["measured_damage"]?.doubleValue), total, accuracy: 1e-5 * total)
        let uniform = try XCTUnwrap(d["uniform_baseline"]?.objectValue)
        XCTAssertNotNil(uniform["measured_damage"]?.doubleValue)
        // The model given is unchanged (the probe writes into a private copy and restores it).
        for (a, b) in zip(original, m.namedTensors) { XCTAssertEqual(a, b.tensor.array) }
    }

    func testEmbeddingAndHeadAtAFixedWidthCountInTheBudget() throws {
        let m = Tiny.model(), windows = Tiny.windows(2, length: 10)
        let p = try pass(#"{"estimator": "none", "damage": "measured", "bits_per_weight": 4.5, "widths": [2, 3, 4, 8], "group_size": 16, "method": "rtn", "embedding": 8, "lm_head": 4, "fixed_in_budget": true, "damage_windows": 2}"#)
        let (q, diag) = try p.run(on: m, context: PassContext(calibration: windows))
        let d = try XCTUnwrap(diag.objectValue)
        let forms = q.quantizedForms
        let all = m.namedTensors.filter { $0.tensor.shape.count == 2 }
        XCTAssertEqual(Set(forms.keys), Set(all.map(\.name)), "decoder weights, embedding and LM head are stored quantized")
        let weights = all.reduce(0) { $0 + $1.tensor.count }
        XCTAssertLessThanOrEqual(forms.values.reduce(0) { $0 + $1.bytes }, Int(4.5 * Double(weights) / 8))
        XCTAssertEqual(forms["model.embed_tokens.weight"]?.format.description, "q8_g16_asym")
        XCTAssertEqual(forms["lm_head.weight"]?.format.description, "q4_g16_asym")
        let fixed = try XCTUnwrap(d["fixed"]?.objectValue)
        let emb = try XCTUnwrap(fixed["model.embed_tokens.weight"]?.objectValue)
        XCTAssertEqual(emb["bytes"]?.intValue, forms["model.embed_tokens.weight"]!.bytes)
        XCTAssertEqual(emb["tied_lm_head"], .bool(false))
        // The embedding's measured damage: KL with only the embedding at 8 bits (a full forward).
        let ref = referenceKL(m, try replaced(m, ["model.embed_tokens.weight": forms["model.embed_tokens.weight"]!.dequantized()]), windows)
        // Observed: 6e-5 relative (a KL of 7e-6 nats is near the float32 forward's noise).
        XCTAssertEqual(try XCTUnwrap(emb["measured_damage"]?.doubleValue), ref, accuracy: 3e-4 * ref)
        XCTAssertEqual(try XCTUnwrap(d["measured_damage_with_fixed"]?.doubleValue), referenceKL(m, q, windows), accuracy: 1e-5 * referenceKL(m, q, windows))

        // Tied: one copy, set by 'embedding'; 'lm_head' is refused.
        var c = Tiny.config
        c.tieWordEmbeddings = true
        let tied = DecoderModel.random(config: c, seed: 4)
        XCTAssertThrowsError(try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 4.5, "group_size": 16, "method": "rtn", "lm_head": 4}"#)
            .run(on: tied, context: PassContext(calibration: windows))) { XCTAssertTrue("\($0)".contains("tied to the embedding"), "\($0)") }
        let (tq, tdiag) = try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 4.5, "group_size": 16, "method": "rtn", "embedding": 8, "fixed_in_budget": true}"#)
            .run(on: tied, context: PassContext(calibration: windows))
        let e = try XCTUnwrap(tq.quantizedForms["model.embed_tokens.weight"])
        XCTAssertEqual(tq.quantizedForms.count, 1 + 28)
        XCTAssertEqual(tq.lmHead.dequantized().array, e.dequantized(), "the head is the quantized embedding")
        let tfixed = try XCTUnwrap(tdiag.objectValue?["fixed"]?.objectValue?["model.embed_tokens.weight"]?.objectValue)
        XCTAssertEqual(tfixed["tied_lm_head"], .bool(true))
        let tall = tied.namedTensors.filter { $0.tensor.shape.count == 2 }.reduce(0) { $0 + $1.tensor.count }
        XCTAssertLessThanOrEqual(tq.quantizedForms.values.reduce(0) { $0 + $1.bytes }, Int(4.5 * Double(tall) / 8))

        // An asymmetric decoder with a symmetric 8-bit embedding (GGUF Q5_1 / Q8_0, as llama.cpp mixes them).
        let (mq, _) = try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 7, "group_size": 16, "method": "rtn", "symmetric": false, "embedding": 8, "embedding_symmetric": true}"#)
            .run(on: tied, context: PassContext(calibration: windows))
        XCTAssertEqual(mq.quantizedForms["model.embed_tokens.weight"]?.format.description, "q8_g16_sym")
        XCTAssertTrue(mq.quantizedForms.filter { $0.key != "model.embed_tokens.weight" }.allSatisfy { $0.value.format.description == "q5_g16_asym" },
                      "\(mq.quantizedForms.mapValues(\.format.description))")
        XCTAssertThrowsError(try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 6, "group_size": 16, "method": "rtn", "embedding_symmetric": true}"#)) {
            XCTAssertTrue("\($0)".contains("'embedding_symmetric' needs 'embedding'"), "\($0)")
        }
    }

    /// `formats`: candidates of several widths, group sizes and symmetries; each unit's measured damage in the
    /// format it got is the reference KL, the knapsack is the exhaustive optimum, and the stored forms are the formats reported.
    func testFormatsMixWidthsGroupSizesAndSymmetry() throws {
        let m = Tiny.model(), windows = Tiny.windows(2, length: 10)
        let names = ["q4_g8_sym", "q3_g16_asym", "q3_g16_sym"]  // 6.0, 5.0 and 4.0 bits per weight
        let p = try pass(#"{"estimator": "none", "damage": "measured", "bits_per_weight": 5.0, "formats": ["q4_g8_sym", "q3_g16_asym", "q3_g16_sym"], "method": "search", "damage_windows": 2}"#)
        XCTAssertEqual(p.candidates.map(\.description), ["q3_g16_sym", "q3_g16_asym", "q4_g8_sym"], "narrowest first")
        XCTAssertEqual(p.groupSize, 64, "no common group size: group_size keeps its default")
        let (q, diag) = try p.run(on: m, context: PassContext(calibration: windows))
        let d = try XCTUnwrap(diag.objectValue)
        let reports = try XCTUnwrap(d["units"]?.arrayValue).map { $0.objectValue! }
        let units = try p.units(m)
        var table: [[(bytes: Int, damage: Double)]] = []
        var chosen: [Int] = []
        for (u, unit) in units.enumerated() {
            let damage = try XCTUnwrap(reports[u]["measured_damage"]?.arrayValue).map { $0.doubleValue! }
            XCTAssertEqual(damage.count, 3)
            let format = try XCTUnwrap(reports[u]["format"]?.stringValue)
            XCTAssertTrue(names.contains(format))
            let fi = p.candidates.firstIndex { $0.description == format }!
            chosen.append(fi)
            // The stored forms are in that format, and the unit's damage in it is their KL alone.
            var values: [String: [Float]] = [:]
            for id in unit.tensors {
                let form = try XCTUnwrap(q.quantizedForms[id.hfName])
                XCTAssertEqual(form.format.description, format, id.hfName)
                values[id.hfName] = form.dequantized()
            }
            let ref = referenceKL(m, try replaced(m, values), windows)
            XCTAssertEqual(damage[fi], ref, accuracy: 1e-5 * ref, unit.name)
            table.append(p.candidates.enumerated().map { ci, f in
                (unit.tensors.reduce(0) { a, id in a + f.storageBytes(rows: m.namedTensors.first { $0.name == id.hfName }!.tensor.shape[0],
                                                                       columns: m.namedTensors.first { $0.name == id.hfName }!.tensor.shape[1]) },
                 damage[ci])
            })
        }
        let budget = try XCTUnwrap(d["budget_bytes"]?.intValue)
        let best = exhaustiveOptimum(table, budget: budget)
        XCTAssertEqual(zip(table, chosen).reduce(0.0) { $0 + $1.0[$1.1].damage }, best, accuracy: 1e-12)
        XCTAssertGreaterThan(Set(chosen).count, 1, "the budget between formats mixes them")
        XCTAssertLessThanOrEqual(zip(table, chosen).reduce(0) { $0 + $1.0[$1.1].bytes }, budget)
        XCTAssertEqual(try XCTUnwrap(d["uniform_baseline"]?.objectValue?["format"]?.stringValue), "q3_g16_asym", "the widest single format within 5 bits")

        let bad: [(String, String)] = [
            (#"{"bits_per_weight": 4, "formats": ["q4_g32_sym"], "widths": [4]}"#, "not both"),
            (#"{"bits_per_weight": 4, "formats": ["q4_g32_sym", "q4_g32_sym"]}"#, "distinct formats"),
            (#"{"bits_per_weight": 4, "formats": ["q4_32"]}"#, "not a quantization format"),
            (#"{"bits_per_weight": 4, "formats": [4]}"#, "expected format names"),
            (#"{"allocation": "clusters", "formats": ["q4_g32_sym", "q4_g32_asym"]}"#, "two formats of one width"),
        ]
        for (json, expected) in bad {
            XCTAssertThrowsError(try pass(json), json) { XCTAssertTrue("\($0)".contains(expected) && "\($0)".contains("test, stage 1"), "\(json): \($0)") }
        }
        // A group size that does not divide a targeted tensor's input size (o_proj and down_proj: 48) is refused, naming it.
        XCTAssertThrowsError(try pass(#"{"estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "formats": ["q4_g32_sym"], "method": "rtn"}"#)
            .run(on: m, context: PassContext(calibration: windows))) {
            XCTAssertTrue("\($0)".contains("has 48 input columns, not a whole number of groups of 32") && "\($0)".contains("_proj.weight'"), "\($0)")
        }
    }

    /// `granularity: sublayer`: two units per layer (attention, MLP), each measured alone from its own sublayer.
    func testSublayerUnitsAreMeasuredAlone() throws {
        let m = Tiny.model(), windows = Tiny.windows(2, length: 10)
        let p = try pass(#"{"estimator": "none", "damage": "measured", "granularity": "sublayer", "bits_per_weight": 3.5, "widths": [2, 4], "group_size": 16, "symmetric": true, "method": "rtn", "damage_windows": 2}"#)
        let units = try p.units(m)
        XCTAssertEqual(units.map(\.name), (0..<4).flatMap { ["layer \($0) attention", "layer \($0) mlp"] })
        XCTAssertEqual(units.map(\.firstSublayer), Array(0..<8))
        XCTAssertEqual(units.map { $0.tensors.count }, [Int](repeating: 0, count: 4).flatMap { _ in [4, 3] })
        let (_, diag) = try p.run(on: m, context: PassContext(calibration: windows))
        let reports = try XCTUnwrap(diag.objectValue?["units"]?.arrayValue).map { $0.objectValue! }
        for u in [1, 6] {
            let f = try QuantFormat(bits: 2, groupSize: 16, symmetric: true)
            var values: [String: [Float]] = [:]
            for id in units[u].tensors {
                let w = m.namedTensors.first { $0.name == id.hfName }!.tensor
                values[id.hfName] = try QuantizedTensor(weights: w.array, shape: w.shape, format: f).dequantized()
            }
            let ref = referenceKL(m, try replaced(m, values), windows)
            XCTAssertEqual(try XCTUnwrap(reports[u]["measured_damage"]?.arrayValue?[0].doubleValue), ref, accuracy: 1e-5 * ref, units[u].name)
        }
    }

    func testBadMeasuredDamageSettings() throws {
        let cases: [(String, String)] = [
            (#"{"estimator": "pmpq", "allocation": "clusters", "damage": "measured"}"#, "'damage': 'measured' is for allocation 'budget'"),
            (#"{"bits_per_weight": 4, "damage": "exact"}"#, "'damage'"),
            (#"{"bits_per_weight": 4, "damage_windows": 0}"#, "'damage_windows'"),
            (#"{"bits_per_weight": 4, "fixed_in_budget": true}"#, "set at least one of them"),
        ]
        for (json, expected) in cases {
            XCTAssertThrowsError(try pass(json), json) { XCTAssertTrue("\($0)".contains(expected) && "\($0)".contains("test, stage 1"), "\(json): \($0)") }
        }
        XCTAssertThrowsError(try pass(#"{"estimator": "none", "damage": "measured", "bits_per_weight": 4, "group_size": 16, "damage_windows": 5}"#)
            .run(on: Tiny.model(), context: PassContext(calibration: Tiny.windows(2, length: 8)))) {
            XCTAssertTrue("\($0)".contains("'damage_windows' is 5"), "\($0)")
        }
    }
}
