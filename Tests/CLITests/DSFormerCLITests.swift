import Foundation
import XCTest
@testable import Checkpoint
import Model

/// `compress apply` with DSFormer and STF end to end on the tiny fixture.
extension CLITests {
    /// dsformer → eval → distill with `stf: true` → eval: the output checkpoint holds the MLP projections
    /// factorized with exactly s nonzeros per column of S (STF's opened masks are closed again), the report
    /// carries the initialisation's errors, and the parameter count is the factorization's.
    func testApplyDSFormerThenSTFDistillation() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.6, "density": 0.5, "iterations": 2}, {"stage": "eval"}, {"stage": "distill", "steps": 2, "batch": 2, "window": 16, "lr": 0.001, "stf": true, "save_every": 0, "text": "\#(text)"}, {"stage": "eval"}"#
        let r = try launch(["apply", try recipe(dir, "d.json", text, stages: stages), "--no-cache", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let reports = try XCTUnwrap(j["stages"] as? [[String: Any]])
        XCTAssertEqual(reports.map { $0["stage"] as? String }, ["dsformer", "eval", "distill", "eval"])
        let diag = try XCTUnwrap(reports[0]["diagnostics"] as? [String: Any])
        let err = try XCTUnwrap(diag["relative_error"] as? Double), start = try XCTUnwrap(diag["start_relative_error"] as? Double)
        XCTAssertLessThanOrEqual(err, start + 1e-12)
        XCTAssertEqual(reports[2]["parameters_after"] as? Int, reports[0]["parameters_after"] as? Int)
        let out = try Checkpoint.read(dir.appendingPathComponent("out.h5").path)
        XCTAssertEqual(out.model.parameterCount, try XCTUnwrap(j["parameters_after"] as? Int))
        var factorized = 0
        for (id, w) in out.model.linearWeights {
            guard case .factorized(let f) = w else { XCTAssertFalse([LinearKind.gate, .up, .down].contains(id.kind), "\(id)"); continue }
            factorized += 1
            let k = f.rank, C = f.sparse.mask.cols, s = f.nonzerosPerColumn
            XCTAssertLessThan(s, k, "\(id): the mask is still open")
            for c in 0..<C { XCTAssertEqual((0..<k).filter { f.sparse.mask[$0 * C + c] }.count, s) }
        }
        XCTAssertEqual(factorized, 3 * out.model.layers.count)
    }
}
