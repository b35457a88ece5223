import Foundation
import XCTest
@testable import Checkpoint
import Model
import Safetensors

/// `compress apply` with DSFormer followed by CPTQuant end to end on the tiny fixture (issue 16), then
/// `inspect`, `eval` and the HF export of the result.
extension CLITests {
    /// dsformer → cptquant (uniform 4-bit symmetric, group 32, round to nearest, on the factorized MLP) → eval →
    /// export hf: the checkpoint holds the MLP weights factorized with D stored as q4_g32_sym codes; the report's
    /// and inspect's bytes are the checkpoint's own; `compress eval` of the file gives the recipe's perplexity; the
    /// export writes D̂ · S (float32, to rounding) with a warning; a distill stage after it is refused before anything runs.
    func testApplyDSFormerThenCPTQuant() throws {
        let (dir, text) = try makeRecipeDirectory()
        let hf = dir.appendingPathComponent("hf").path
        let stages = #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.6, "density": 0.5, "iterations": 2}, {"stage": "cptquant", "estimator": "none", "allocation": "uniform", "method": "rtn", "widths": [4], "bits_per_weight": 4.5, "group_size": 32, "symmetric": true, "targets": ["gate_proj", "up_proj", "down_proj"]}, {"stage": "eval"}, {"stage": "export", "format": "hf", "output": "\#(hf)"}"#
        let r = try launch(["apply", try recipe(dir, "dq.json", text, stages: stages), "--no-cache", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let reports = try XCTUnwrap(j["stages"] as? [[String: Any]])
        XCTAssertEqual(reports.map { $0["stage"] as? String }, ["dsformer", "cptquant", "eval", "export"])
        let diag = try XCTUnwrap(reports[1]["diagnostics"] as? [String: Any])
        let out = dir.appendingPathComponent("out.h5").path
        let model = try Checkpoint.read(out).model
        XCTAssertEqual(model.weightKinds, [.dense, .quantized, .factorized])
        var mlpBytes = 0, codeBytes = 0
        var factors: [String: (bytes: Int, elements: Int)] = [:]
        for (id, w) in model.linearWeights {
            guard [LinearKind.gate, .up, .down].contains(id.kind) else { XCTAssertEqual(w.kind, .dense, "\(id)"); continue }
            guard case .factorized(let f) = w else { return XCTFail("\(id) is \(w.kind)") }
            let q = try XCTUnwrap(f.quantizedDense, "\(id)")
            XCTAssertEqual(q.format.description, "q4_g32_sym")
            XCTAssertEqual(q.shape, [f.rank, w.outFeatures])
            XCTAssertEqual(w.storageBytes, q.bytes + 5 * f.sparse.mask.nonzeros)
            mlpBytes += w.storageBytes; codeBytes += q.bytes
            factors[WeightID.linear(id).hfName] = (w.storageBytes, w.outFeatures * w.inFeatures)
        }
        XCTAssertEqual(factors.count, 6)
        XCTAssertEqual(diag["bytes"] as? Int, codeBytes)
        XCTAssertEqual(diag["bits_per_weight"] as? Double, 4.5)
        XCTAssertEqual((diag["targeted"] as? [String: Any])?["bytes"] as? Int, mlpBytes)
        XCTAssertEqual(j["bytes_after"] as? Int, model.storageBytes)

        // inspect: representation, format, bytes and bits per weight of each factor.
        let i = try launch(["inspect", out, "--json"])
        XCTAssertEqual(i.status, 0, i.stderr)
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(i.stdout.utf8)) as? [String: Any])
        for t in try XCTUnwrap(info["tensors"] as? [[String: Any]]) {
            guard let name = t["name"] as? String, let (bytes, n) = factors[name] else { continue }
            XCTAssertEqual(t["representation"] as? String, "factorized")
            XCTAssertEqual(t["dtype"] as? String, "q4_g32_sym")
            XCTAssertEqual(t["bytes"] as? Int, bytes)
            XCTAssertEqual(t["bits_per_weight"] as? Double, Double(8 * bytes) / Double(n))
        }
        let textInfo = try launch(["inspect", out])
        XCTAssertTrue(textInfo.stdout.contains("factorized rank") && textInfo.stdout.contains(", D q4_g32_sym"), textInfo.stdout)

        // The file computes what the recipe measured.
        let e = try launch(["eval", out, "--text", text, "--window", "32", "--json"])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains(String(format: "%.6f", try XCTUnwrap(j["ppl_after"] as? Double)).prefix(6)), e.stdout)

        // Export: multiplied out (D̂ · S), the model's W in float32, with warnings.
        let export = try XCTUnwrap(reports[3]["diagnostics"] as? [String: Any])
        let warnings = try XCTUnwrap(export["warnings"] as? [String])
        XCTAssertTrue(warnings.contains { $0.contains("6 of them hold quantized factors (D q4_g32_sym)") }, "\(warnings)")
        let st = try SafetensorsFile(path: hf + "/model.safetensors")
        for (id, w) in model.linearWeights where id.kind == .gate || id.kind == .down {
            let exported = try st.floats(WeightID.linear(id).hfName), ours = w.dequantized().array, info = try st.info(WeightID.linear(id).hfName)
            // The product's float32 sums may round differently between processes (BLAS threading): ~1 ulp.
            let diff = zip(exported, ours).map { abs($0 - $1) }.max() ?? .infinity, scale = ours.map(abs).max() ?? 0
            XCTAssertEqual(info.shape, w.shape)
            XCTAssertLessThanOrEqual(diff, 1e-6 * scale, "\(id): max |exported − D̂ · S| \(diff); \(info)")
        }

        // A distill stage after it is refused when the recipe is read.
        let bad = #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.6}, {"stage": "cptquant", "estimator": "none", "allocation": "uniform", "method": "rtn", "bits_per_weight": 4.5, "widths": [4], "group_size": 32, "symmetric": true}, {"stage": "distill", "steps": 2, "text": "\#(text)"}"#
        let refused = try launch(["apply", try recipe(dir, "bad.json", text, stages: bad), "--no-cache", "-o", dir.appendingPathComponent("bad.h5").path, "--json"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stdout.contains("stage 3 (distill): cannot take quantized weights"), refused.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("bad.h5").path))

        // lowrank → cptquant with the search and S's values at 8 bits: both factors stored quantized.
        let low = #"{"stage": "lowrank", "targets": ["down_proj"], "rank": 16}, {"stage": "cptquant", "estimator": "none", "allocation": "uniform", "method": "search", "bits_per_weight": 4.5, "widths": [4], "group_size": 32, "symmetric": true, "sparse_factor_bits": 8, "targets": ["down_proj"]}, {"stage": "eval"}"#
        let lr = try launch(["apply", try recipe(dir, "low.json", text, stages: low), "--no-cache", "-o", dir.appendingPathComponent("low.h5").path, "--json"])
        XCTAssertEqual(lr.status, 0, lr.stderr)
        let lowModel = try Checkpoint.read(dir.appendingPathComponent("low.h5").path).model
        for (id, w) in lowModel.linearWeights where id.kind == .down {
            guard case .factorized(let f) = w else { return XCTFail("\(id) is \(w.kind)") }
            XCTAssertEqual(f.quantizedDense?.format.description, "q4_g32_sym")
            XCTAssertEqual(f.quantizedSparse?.format.description, "q8_g32_sym")
            // 16 × 160 values of S at 8 bits + a float16 scale per 32, 1-byte indices; Dᵀ 16 × 64 at 4.5 bits.
            XCTAssertEqual(w.storageBytes, (16 * 64) * 9 / 16 + (16 * 160 + 2 * 16 * 160 / 32) + 16 * 160)
        }
        let li = try launch(["inspect", dir.appendingPathComponent("low.h5").path])
        XCTAssertTrue(li.stdout.contains(", D q4_g32_sym") && li.stdout.contains("+ S q8_g32_sym"), li.stdout)
    }
}
