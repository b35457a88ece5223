import Foundation
import Model
import XCTest
@testable import Checkpoint

/// One-shot pruning composed with the other stages through `compress apply` on the tiny fixture.
extension CLITests {
    /// sparsegpt 2:4 → distill keeps the mask (pruned weights stay 0, kept ones train); → cptquant (symmetric,
    /// GPTQ) quantizes the kept values and holds the pruned ones at exactly 0; inspect shows pattern, density
    /// and bytes of the sparse tensors.
    func testSparseGPTThenDistillThenGPTQKeepsTheMask() throws {
        let (dir, text) = try makeRecipeDirectory()
        func apply(_ name: String, _ stages: String) throws -> Checkpoint {
            let out = dir.appendingPathComponent(name + ".h5").path
            let r = try launch(["apply", try recipe(dir, name + ".json", text, stages: stages), "-o", out, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            return try Checkpoint.read(out)
        }
        let prune = #"{"stage": "sparsegpt", "pattern": "2:4"}"#
        let distill = #"{"stage": "distill", "steps": 3, "batch": 2, "window": 16, "lr": 1e-2, "warmup": 0, "text": "\#(text)"}"#
        let pruned = try apply("pruned", prune)
        let trained = try apply("trained", prune + ", " + distill)
        let quantized = try apply("quantized", prune + ", " + distill + #", {"stage": "cptquant", "estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "group_size": 16, "symmetric": true, "method": "gptq"}, {"stage": "eval"}"#)
        var moved = 0
        for (id, w) in pruned.model.linearWeights {
            guard case .sparse(let s) = w else { return XCTFail("\(id) is not sparse after sparsegpt") }
            guard case .sparse(let t)? = trained.model.linear(id) else { return XCTFail("\(id) is not sparse after distill") }
            XCTAssertEqual(t.mask, s.mask, "\(id): distillation keeps the mask")
            moved += (0..<s.mask.count).filter { s.mask[$0] && t.values[$0] != s.values[$0] }.count
            guard case .quantized(let q)? = quantized.model.linear(id) else { return XCTFail("\(id) is not quantized") }
            let back = q.packed.dequantized()
            for i in 0..<s.mask.count where !s.mask[i] { XCTAssertEqual(back[i], 0, "\(id): pruned weight \(i) quantized to \(back[i])") }
        }
        XCTAssertGreaterThan(moved, 0, "the kept weights train")
        let info = try run(["inspect", dir.appendingPathComponent("pruned.h5").path, "--json"])
        XCTAssertEqual(info.status, 0, info.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any])
        let entry = try XCTUnwrap((j["tensors"] as? [[String: Any]])?.first { $0["name"] as? String == "model.layers.1.mlp.down_proj.weight" })
        XCTAssertEqual(entry["representation"] as? String, "sparse")
        XCTAssertEqual(entry["pattern"] as? String, "2:4")
        XCTAssertEqual(entry["density"] as? Double, 0.5)
        XCTAssertEqual(entry["bytes"] as? Int, 4 * 64 * 160 / 2 + 64 * 160 / 8)

        // An asymmetric grid cannot hold the pruned zeros: refused before any quantization.
        let bad = try launch(["apply", try recipe(dir, "bad.json", text, stages: prune + #", {"stage": "cptquant", "estimator": "none", "allocation": "uniform", "bits_per_weight": 5, "group_size": 16, "method": "rtn"}"#),
                              "-o", dir.appendingPathComponent("bad.h5").path, "--no-cache"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("is sparse (2:4); its pruned weights stay exactly 0 only on a symmetric grid: set 'symmetric': true"), bad.stderr)
    }
}
