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

extension CLITests {
    /// `compress distill --stf` on a DSFormer student: the teacher is the dense fixture, the result keeps
    /// exactly s nonzeros per column of S, and STF moves the support (the latent is trained, not only the kept
    /// values) where the same run without `--stf` keeps the initial support; a dense student is refused.
    func testDistillCommandTrainsFactorizedStudentWithSTF() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "dsformer", "targets": ["mlp"], "parameter_ratio": 0.6, "density": 0.5, "iterations": 2}"#
        let made = try launch(["apply", try recipe(dir, "d.json", text, stages: stages), "--no-cache", "--json"])
        XCTAssertEqual(made.status, 0, made.stderr)
        let student = dir.appendingPathComponent("out.h5").path
        let before = try Checkpoint.read(student)
        func distill(_ out: String, stf: Bool) throws -> (status: Int32, stdout: String, stderr: String) {
            let r = try launch(["distill", "--teacher", fixture("tiny-llama.h5"), "--student", student, "-o", out,
                                "--steps", "3", "--batch", "2", "--window", "16", "--lr", "0.01", "--warmup", "1",
                                "--train", text, "--eval-tokens", "0", "--save-every", "0", "--json"] + (stf ? ["--stf"] : []))
            return (r.status, r.stdout, r.stderr)
        }
        let outSTF = dir.appendingPathComponent("stf.h5").path, outFixed = dir.appendingPathComponent("fixed.h5").path
        let a = try distill(outSTF, stf: true), b = try distill(outFixed, stf: false)
        XCTAssertEqual(a.status, 0, a.stderr); XCTAssertEqual(b.status, 0, b.stderr)
        let stfModel = try Checkpoint.read(outSTF).model, fixedModel = try Checkpoint.read(outFixed).model
        var moved = 0, checked = 0
        for (id, w) in stfModel.linearWeights {
            guard case .factorized(let f) = w else { continue }
            guard case .factorized(let f0) = before.model.linearWeights.first(where: { $0.0 == id })!.1,
                  case .factorized(let g) = fixedModel.linearWeights.first(where: { $0.0 == id })!.1 else { return XCTFail("\(id) not factorized") }
            let k = f.rank, C = f.sparse.mask.cols, s = f.nonzerosPerColumn
            XCTAssertEqual(s, f0.nonzerosPerColumn)
            for c in 0..<C { XCTAssertEqual((0..<k).filter { f.sparse.mask[$0 * C + c] }.count, s, "\(id) column \(c)") }
            // Without STF the support is the initialisation's; with it, some entries changed place.
            for i in 0..<(k * C) { XCTAssertEqual(g.sparse.mask[i], f0.sparse.mask[i]) }
            moved += (0..<(k * C)).filter { f.sparse.mask[$0] != f0.sparse.mask[$0] }.count
            checked += 1
        }
        XCTAssertEqual(checked, 3 * stfModel.layers.count)
        XCTAssertGreaterThan(moved, 0, "STF never moved S's support")
        let dense = try launch(["distill", "--teacher", fixture("tiny-llama.h5"), "--student", fixture("tiny-llama.h5"),
                                "-o", dir.appendingPathComponent("x.h5").path, "--steps", "1", "--train", text, "--stf", "--json"])
        XCTAssertEqual(dense.status, 1)
        XCTAssertTrue(dense.stdout.contains("no factorized weights"), dense.stdout)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("x.h5").path))
    }
}
