import Foundation
import XCTest

/// Non-finite results are errors: on a checkpoint whose forward overflows (one weight 3e38), `eval` and every
/// pass that ranks by a distance, score or damage stop with exit 1 naming the checkpoint and the stage; under
/// `--json` the output is one JSON object, never a "nan" string.
extension CLITests {
    /// Before: exit 0 with "ppl":"nan" (text mode: "ppl -nan").
    func testEvalOfAnOverflowingModelFailsNamingTheCheckpoint() throws {
        let dir = try temporaryDirectory("nonfinite-eval")
        let huge = try hugeWeightCheckpoint(dir)
        let args = ["eval", huge, "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32"]
        let json = try run(args + ["--json"])
        XCTAssertEqual(json.status, 1, json.stdout)
        XCTAssertEqual(json.stdout.split(separator: "\n").count, 1, "one JSON object: \(json.stdout)")
        let error = try XCTUnwrap(json.json?["error"] as? String, json.stdout)
        XCTAssertTrue(error.contains(huge) && error.contains("finite"), error)
        XCTAssertNil(json.json?["ppl"])
        let text = try run(args)
        XCTAssertEqual(text.status, 1, text.stdout)
        XCTAssertFalse(text.stdout.contains("nan"), text.stdout)
        XCTAssertTrue(text.stderr.contains(huge), text.stderr)
        // The same evaluation against the untouched fixture still works.
        let good = try run(["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32"])
        XCTAssertEqual(good.status, 0, good.stderr)
    }

    /// Before: FinerCut exited 0 having removed a sublayer chosen by NaN distances. Now every ranking pass stops at
    /// its first non-finite distance, score or damage, naming the stage and the base; nothing is written.
    func testPassesRankingByNonFiniteNumbersFailNamingTheStage() throws {
        let (dir, text) = try makeRecipeDirectory()
        let huge = try hugeWeightCheckpoint(dir)
        let stages: [(String, String, String)] = [
            (#"{"stage": "finercut", "remove": 1}"#, "finercut", "the original model's output"),
            (#"{"stage": "minitron", "layers": 1}"#, "minitron", "calibration perplexity"),
            (#"{"stage": "minitron", "mlp": 96}"#, "minitron", "importance"),
            (#"{"stage": "wanda", "pattern": "2:4"}"#, "wanda", "score"),
            (#"{"stage": "cptquant", "bits_per_weight": 6, "group_size": 32, "damage": "measured", "estimator": "none", "#
                + #""damage_windows": 2}"#, "cptquant", "damage window"),
        ]
        let out = dir.appendingPathComponent("out.h5").path
        for (i, (stage, name, what)) in stages.enumerated() {
            let path = try recipe(dir, "r\(i).json", text, stages: stage)
            let r = try run(["apply", path, huge, "-o", out, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, "\(name): \(r.stdout)")
            XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "one JSON object: \(r.stdout)")
            let error = try XCTUnwrap(r.json?["error"] as? String, "\(name): \(r.stdout)")
            for fragment in ["stage 1 (\(name))", what, "finite", huge] {
                XCTAssertTrue(error.contains(fragment), "\(name): \(fragment): \(error)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(name): no output")
        }
    }

    /// An eval stage on a model that overflows: the base's reference (its hidden states) is refused, naming the base.
    func testApplyEvalOfAnOverflowingBaseFailsNamingIt() throws {
        let (dir, text) = try makeRecipeDirectory()
        let huge = try hugeWeightCheckpoint(dir)
        for (i, eval) in [#"{"stage": "eval"}"#, #"{"stage": "eval", "kld": false}"#].enumerated() {
            let path = try recipe(dir, "e\(i).json", text, stages: eval)
            if eval.contains("kld") {
                // "kld" is a recipe-level eval setting: move it there.
                let s = try String(contentsOfFile: path, encoding: .utf8)
                    .replacingOccurrences(of: #""window": 32}"#, with: #""window": 32, "kld": false}"#)
                    .replacingOccurrences(of: eval, with: #"{"stage": "eval"}"#)
                try s.write(toFile: path, atomically: true, encoding: .utf8)
            }
            let out = dir.appendingPathComponent("o\(i).h5").path
            let r = try run(["apply", path, huge, "-o", out, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, r.stdout)
            XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "one JSON object: \(r.stdout)")
            let error = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
            XCTAssertTrue(error.contains(huge) && error.contains("finite"), error)
        }
    }
}
