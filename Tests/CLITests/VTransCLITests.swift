import Checkpoint
import Foundation
import XCTest

extension CLITests {
    /// A vtrans stage killed after step 3 (state saved every 2 steps) resumes with --resume to the same pruned
    /// model, bit for bit, as an uninterrupted run; progress lines show the expected size against the target.
    func testKilledVTransStageResumesToTheSameModel() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "vtrans", "fraction": 0.6, "steps": 6, "batch": 2, "window": 16, "save_every": 2, "log_every": 1, "mask_lr": 0.1, "text": "\#(text)"}, {"stage": "eval"}"#
        let path = try recipe(dir, "r.json", text, stages: stages)
        let cache = dir.appendingPathComponent("cache").path
        let whole = dir.appendingPathComponent("whole.h5").path, resumed = dir.appendingPathComponent("resumed.h5").path
        let first = try launch(["apply", path, "-o", whole, "--cache", cache, "--json"])
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stderr.contains("step 6/6") && first.stderr.contains("expected_params") && first.stderr.contains("target_params"), first.stderr)
        let killed = try launch(["apply", path, "-o", resumed, "--cache", cache, "--kill-after-step", "3"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        XCTAssertTrue(FileManager.default.fileExists(atPath: resumed + ".stage1.state.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed))
        let r = try launch(["apply", path, "-o", resumed, "--cache", cache, "--resume", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("resumed from") && r.stderr.contains("at step 2"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + ".stage1.state.h5"), "state removed after completion")
        let a = try Checkpoint.read(whole), b = try Checkpoint.read(resumed)
        XCTAssertEqual(a.model.config, b.model.config)
        XCTAssertLessThan(a.model.parameterCount, 124_000)
        for ((name, x), (_, y)) in zip(a.model.namedTensors, b.model.namedTensors) { XCTAssertEqual(x.array, y.array, "\(name) differs after resume") }
    }

    /// Impossible targets, unknown axes and keys fail with the recipe, stage and key named, before any
    /// evaluation or training, and write nothing.
    func testBadVTransRecipesFailBeforeAnythingRuns() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cases: [(String, String)] = [
            (#"{"stage": "vtrans", "params": 20000, "steps": 2, "axes": ["mlp", "heads"]}"#, "stage 1 (vtrans): 'params': target 20000 parameters is below"),
            (#"{"stage": "vtrans", "params": 999999999, "steps": 2}"#, "stage 1 (vtrans): 'params': target 999999999 parameters is not below the model's"),
            (#"{"stage": "vtrans", "fraction": 0.5, "steps": 2, "axes": ["depth"]}"#, "depth\\\" is not one of hidden, heads, mlp, layers"),
            (#"{"stage": "vtrans", "fraction": 0.5}"#, "stage 1 (vtrans): 'steps': required"),
        ]
        for (i, (stage, fragment)) in cases.enumerated() {
            let path = try recipe(dir, "bad\(i).json", text, stages: stage + #", {"stage": "eval"}"#)
            let r = try launch(["apply", path, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, stage)
            XCTAssertTrue(r.stdout.contains(fragment) && r.stdout.contains("bad\(i).json"), "\(stage): \(r.stdout)")
            XCTAssertFalse(r.stderr.contains("eval base"), "nothing runs before the error: \(r.stderr)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out.h5").path), "no output from failed recipes")
    }
}
