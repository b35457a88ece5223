import Foundation
import Quantization
import XCTest
@testable import Checkpoint

/// `compress apply` end to end on the tiny fixture: stages, report, history, cache, bad recipes.
extension CLITests {
    func makeRecipeDirectory() throws -> (dir: URL, text: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("apply-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("text.txt").path
        try String(repeating: "The quick brown fox jumps over the lazy dog; 0123456789. ", count: 30).write(toFile: text, atomically: true, encoding: .utf8)
        return (dir, text)
    }

    func recipe(_ dir: URL, _ name: String, _ text: String, stages: String) throws -> String {
        let path = dir.appendingPathComponent(name).path
        try """
        {"format": 1, "base": "\(fixture("tiny-llama.h5"))",
         "calibration": {"text": "\(text)", "samples": 3, "window": 16, "seed": 1},
         "eval": {"text": "\(text)", "window": 32},
         "stages": [\(stages)],
         "output": "\(dir.appendingPathComponent("out.h5").path)"}
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testApplyRunsStagesWritesHistoryAndReusesCalibrationStatistics() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cache = dir.appendingPathComponent("cache").path
        let stages = #"{"stage": "finercut", "remove": 2}, {"stage": "eval"}, {"stage": "distill", "steps": 2, "batch": 2, "window": 16, "text": "\#(text)"}, {"stage": "eval"}"#
        let r1 = try launch(["apply", try recipe(dir, "a.json", text, stages: stages), "--cache", cache, "--json"])
        XCTAssertEqual(r1.status, 0, r1.stderr)
        XCTAssertTrue(r1.stderr.contains("stage 3/4 (distill)") && r1.stderr.contains("step 2/2"), r1.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r1.stdout.utf8)) as? [String: Any])
        let reports = try XCTUnwrap(j["stages"] as? [[String: Any]])
        XCTAssertEqual(reports.map { $0["stage"] as? String }, ["finercut", "eval", "distill", "eval"])
        let before = try XCTUnwrap(j["parameters_before"] as? Int), after = try XCTUnwrap(j["parameters_after"] as? Int)
        XCTAssertLessThan(after, before)
        XCTAssertEqual(reports[0]["parameters_after"] as? Int, after)
        XCTAssertEqual(reports[0]["bytes_after"] as? Int, after * 4)
        XCTAssertEqual(reports[0]["cache_misses"] as? [String], ["finercut-order"])
        // Plain distillation computes no calibration statistics: its report lists no cache use (as before the
        // distill stage became a TrainingPass; issue 31 changes no report).
        XCTAssertNil(reports[2]["cache_hits"], "\(reports[2])")
        XCTAssertNil(reports[2]["cache_misses"], "\(reports[2])")
        let order = try XCTUnwrap((reports[0]["diagnostics"] as? [String: Any])?["order"] as? [[String: Any]])
        XCTAssertEqual(order.count, 2)
        let pplBefore = try XCTUnwrap(j["ppl_before"] as? Double), pplAfter = try XCTUnwrap(j["ppl_after"] as? Double)
        XCTAssertEqual(reports[3]["ppl"] as? Double, pplAfter)
        XCTAssertEqual(try XCTUnwrap(j["retention"] as? Double), pplBefore / pplAfter, accuracy: 1e-12)

        // The checkpoint carries the recipe and every stage report.
        let out = try Checkpoint.read(dir.appendingPathComponent("out.h5").path)
        XCTAssertEqual(out.model.parameterCount, after)
        let h = try XCTUnwrap(out.history.last?.objectValue)
        XCTAssertEqual(h["kind"], .string("apply"))
        XCTAssertEqual(h["recipe"]?.objectValue?["format"], .int(1))
        XCTAssertEqual(h["stages"]?.arrayValue?.count, 4)

        // Another target on the same base and calibration: the order comes from the cache, and -o / CHECKPOINT override.
        let other = dir.appendingPathComponent("other.h5").path
        let r2 = try launch(["apply", try recipe(dir, "b.json", text, stages: #"{"stage": "finercut", "remove": 1}"#),
                             fixture("tiny-llama.h5"), "-o", other, "--cache", cache, "--json"])
        XCTAssertEqual(r2.status, 0, r2.stderr)
        let j2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r2.stdout.utf8)) as? [String: Any])
        let s2 = try XCTUnwrap((j2["stages"] as? [[String: Any]])?.first)
        XCTAssertEqual(s2["cache_hits"] as? [String], ["finercut-order"])
        XCTAssertEqual(s2["cache_misses"] as? [String], [])
        XCTAssertEqual(j2["output"] as? String, other)
        XCTAssertTrue(FileManager.default.fileExists(atPath: other))
    }

    /// A cptquant stage: the output stores the decoder's linear weights packed, `inspect` reports their real
    /// bytes and bits per weight, the checkpoint reads back (dequantized) and evaluates; stages that would
    /// change quantized weights are refused.
    func testApplyCPTQuantWritesAPackedCheckpoint() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "cptquant", "estimator": "tdmpq", "bits_per_weight": 4.5, "group_size": 32}, {"stage": "eval"}"#
        let r = try launch(["apply", try recipe(dir, "q.json", text, stages: stages), "--no-cache", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let out = dir.appendingPathComponent("out.h5").path
        let i = try launch(["inspect", out, "--json"])
        XCTAssertEqual(i.status, 0, i.stderr)
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(i.stdout.utf8)) as? [String: Any])
        let tensors = try XCTUnwrap(info["tensors"] as? [[String: Any]])
        let linear = tensors.filter { ($0["name"] as! String).hasPrefix("model.layers.") && ($0["shape"] as! [Int]).count == 2 }
        XCTAssertEqual(linear.count, 14)
        XCTAssertTrue(linear.allSatisfy { ($0["dtype"] as! String).hasSuffix("_g32_asym") }, "\(linear.map { $0["dtype"]! })")
        XCTAssertTrue(tensors.filter { ($0["shape"] as! [Int]).count == 1 }.allSatisfy { $0["dtype"] as? String == "float32" })
        let qBits = try XCTUnwrap(info["quantized_bits_per_weight"] as? Double)
        XCTAssertLessThanOrEqual(qBits, 4.5)
        XCTAssertEqual(info["tensor_bytes"] as? Int, j["bytes_after"] as? Int)
        let ckpt = try Checkpoint.read(out)
        let packed = ckpt.model.quantizedWeights.map(\.packed)
        XCTAssertEqual(packed.count, 14)
        XCTAssertEqual(linear.reduce(0) { $0 + ($1["bytes"] as! Int) }, packed.reduce(0) { $0 + $1.bytes })
        let e = try launch(["eval", out, "--text", text, "--window", "32", "--json"])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stdout.contains(String(format: "%.6f", try XCTUnwrap(j["ppl_after"] as? Double)).prefix(6)), e.stdout)

        // A distill stage after quantization is refused when the recipe is decoded: before any stage runs.
        let after = #"{"stage": "cptquant", "estimator": "tdmpq", "bits_per_weight": 4.5, "group_size": 32}, {"stage": "distill", "steps": 1, "batch": 1, "window": 16, "text": "\#(text)"}"#
        let bad = try launch(["apply", try recipe(dir, "bad.json", text, stages: after), "--no-cache"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("bad.json, stage 2 (distill): cannot take quantized weights, which stage 1 (cptquant) leaves"), bad.stderr)
        XCTAssertFalse(bad.stderr.contains("stage 1/2"), "nothing ran: \(bad.stderr)")
        // A quantized base under a pass that takes only dense weights: refused once the base is read, before any stage.
        let width = try launch(["apply", try recipe(dir, "w.json", text, stages: #"{"stage": "minitron", "layers": 1}"#), out, "-o",
                                dir.appendingPathComponent("w.h5").path, "--no-cache"])
        XCTAssertEqual(width.status, 1)
        XCTAssertTrue(width.stderr.contains("stage 1 (minitron): cannot take quantized weights, which the base checkpoint leaves"), width.stderr)
        XCTAssertFalse(width.stderr.contains("stage 1/1"), "nothing ran: \(width.stderr)")
        // FinerCut removes whole sublayers of any representation: the quantized weights it keeps stay packed.
        let cut = dir.appendingPathComponent("p.h5").path
        let prune = try launch(["apply", try recipe(dir, "p.json", text, stages: #"{"stage": "finercut", "remove": 1}"#), out, "-o", cut, "--no-cache"])
        XCTAssertEqual(prune.status, 0, prune.stderr)
        XCTAssertEqual(try Checkpoint.read(cut).model.linearWeights.filter { $0.weight.kind == .quantized }.count, 14 - 3)
    }

    /// `compress formats`: the table as JSON, bytes per group from bits, group size and float16 scales.
    func testFormatsTable() throws {
        let r = try launch(["formats", "--group-size", "32", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let rows = try XCTUnwrap(j["formats"] as? [[String: Any]])
        XCTAssertEqual(rows.count, 13)
        for row in rows where row["name"] as? String != "f16" {
            let bits = row["bits"] as! Int, symmetric = row["symmetric"] as! Bool
            XCTAssertEqual(row["bytes_per_group"] as? Double, Double(32 * bits) / 8 + (symmetric ? 2 : 4), "\(row)")
        }
        let bad = try launch(["formats", "--group-size", "0", "--json"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stdout.contains("group size must lie in 1...65536, got 0"), bad.stdout)
    }

    func testApplyMinitronGivesAPlainSmallerLlama() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try launch(["apply", try recipe(dir, "m.json", text, stages: #"{"stage": "minitron", "hidden": 48, "mlp": 96, "heads": 2, "layers": 1}"#),
                            "--no-cache", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try Checkpoint.read(dir.appendingPathComponent("out.h5").path)
        let c = out.model.config
        XCTAssertEqual([c.hiddenSize, c.intermediateSize, c.numAttentionHeads, c.numKeyValueHeads, c.numHiddenLayers], [48, 96, 2, 2, 1])
        XCTAssertTrue(c.isHomogeneous)
    }

    func testBadRecipesFailNamingFileStageAndKey() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cases: [(String, String)] = [
            (#"{"stage": "finercut", "remove": 1, "metrc": "js"}"#, "stage 1 (finercut): unknown key 'metrc'"),
            (#"{"stage": "minitron", "heads": 3}"#, "stage 1 (minitron): minitron: 'heads' 3 must be a multiple of the 2 KV heads"),
            (#"{"stage": "finercut", "remove": 4}"#, "cannot remove 4 of 4 candidate sublayers"),
            (#"{"stage": "distill", "steps": 0}"#, "stage 1 (distill): 'steps': 0 is out of range"),
        ]
        for (i, (stage, fragment)) in cases.enumerated() {
            let path = try recipe(dir, "bad\(i).json", text, stages: stage)
            let r = try launch(["apply", path, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, stage)
            XCTAssertTrue(r.stdout.contains(fragment) && r.stdout.contains("bad\(i).json"), "\(stage): \(r.stdout)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out.h5").path), "no output from failed recipes")
        let missing = try launch(["apply", dir.appendingPathComponent("none.json").path, "--json"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stdout.contains("none.json: no such file (expected a recipe (JSON))"), missing.stdout)
    }
}

extension CLITests {
    func testKilledApplyResumesItsDistillStageToTheSameWeights() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "finercut", "remove": 1}, {"stage": "distill", "steps": 6, "batch": 2, "window": 16, "save_every": 2, "text": "\#(text)"}"#
        let path = try recipe(dir, "r.json", text, stages: stages)
        let cache = dir.appendingPathComponent("cache").path
        let whole = dir.appendingPathComponent("whole.h5").path, resumed = dir.appendingPathComponent("resumed.h5").path
        XCTAssertEqual(try launch(["apply", path, "-o", whole, "--cache", cache]).status, 0)
        let killed = try launch(["apply", path, "-o", resumed, "--cache", cache, "--kill-after-step", "3"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        XCTAssertTrue(FileManager.default.fileExists(atPath: resumed + ".stage2.state.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed))
        let r = try launch(["apply", path, "-o", resumed, "--cache", cache, "--resume", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("resumed from") && r.stderr.contains("at step 2"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed + ".stage2.state.h5"), "state removed after completion")
        let a = try Checkpoint.read(whole), b = try Checkpoint.read(resumed)
        for ((name, x), (_, y)) in zip(a.model.namedTensors, b.model.namedTensors) { XCTAssertEqual(x.array, y.array, "\(name) differs after resume") }
    }

    /// Killed in the middle of a save (after the temporary file is written, before the rename): during the
    /// second state save of the distill stage (step 4), during the save after its last step, and during the
    /// final write of the output (after the eval stage). Each time
    /// `--resume` ends with the weights of an uninterrupted run, bit for bit, and no stray temporary is left.
    func testApplyKilledDuringSavesAndTheFinalWriteResumesToTheSameWeights() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "distill", "steps": 6, "batch": 2, "window": 16, "save_every": 2, "text": "\#(text)"}, {"stage": "eval"}"#
        let path = try recipe(dir, "r.json", text, stages: stages)
        let cache = dir.appendingPathComponent("cache").path
        let whole = dir.appendingPathComponent("whole.h5").path
        XCTAssertEqual(try launch(["apply", path, "-o", whole, "--cache", cache]).status, 0)
        let reference = try Checkpoint.read(whole).model.namedTensors.map { $0.tensor.array }
        for (i, kill) in [".stage1.state.h5#2", ".stage1.state.h5#3", "k2.h5"].enumerated() {
            let out = dir.appendingPathComponent("k\(i).h5").path
            let killed = try launch(["apply", path, "-o", out, "--cache", cache], environment: ProcessInfo.processInfo.environment.merging(["COMPRESS_TEST_KILL_WRITING": kill]) { $1 })
            XCTAssertEqual(killed.reason, .uncaughtSignal, "\(kill): \(killed.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), kill)
            if kill.hasPrefix(".stage") {
                // The save that was killed left the previous state in place (step 2 after the 2nd save was killed).
                XCTAssertTrue(FileManager.default.fileExists(atPath: out + ".stage1.state.h5"), kill)
            } else {
                XCTAssertTrue(FileManager.default.fileExists(atPath: out + ".stage1.state.h5"), "the state is kept until the output is in place")
            }
            let r = try launch(["apply", path, "-o", out, "--cache", cache, "--resume", "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try Checkpoint.read(out).model.namedTensors.map { $0.tensor.array }, reference, "\(kill): resumed weights differ")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".stage1.state.h5"), "\(kill): state removed after completion")
            let stray = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.contains(".tmp") }
            XCTAssertTrue(stray.isEmpty, "\(kill): stray temporaries \(stray)")
        }
    }

    /// An eval text too short for one window is an error naming the text file, not just the window.
    func testApplyEvalErrorsNameTheTextFile() throws {
        let (dir, text) = try makeRecipeDirectory()
        let short = dir.appendingPathComponent("short.txt").path
        try "only a few words".write(toFile: short, atomically: true, encoding: .utf8)
        let path = try recipe(dir, "r.json", text, stages: #"{"stage": "eval"}"#)
        let edited = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: #""eval": {"text": "\#(text)""#, with: #""eval": {"text": "\#(short)""#)
        try edited.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try launch(["apply", path, "--no-cache", "--json"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stdout.contains(short + ": need at least one whole window of 32 tokens"), r.stdout)
    }

    /// An output that is the base checkpoint is refused (the base is an input) unless --force; nothing changes.
    func testApplyRefusesToOverwriteItsBase() throws {
        let (dir, text) = try makeRecipeDirectory()
        let base = dir.appendingPathComponent("base.h5").path
        try FileManager.default.copyItem(atPath: fixture("tiny-llama.h5"), toPath: base)
        let before = try Data(contentsOf: URL(fileURLWithPath: base))
        let path = try recipe(dir, "r.json", text, stages: #"{"stage": "finercut", "remove": 1}"#)
        let r = try launch(["apply", path, base, "-o", base, "--no-cache", "--json"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stdout.contains("refusing to overwrite an input"), r.stdout)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: base)), before)
        let forced = try launch(["apply", path, base, "-o", base, "--no-cache", "--force", "--json"])
        XCTAssertEqual(forced.status, 0, forced.stderr)
        XCTAssertLessThan(try Checkpoint.read(base).model.parameterCount, try Checkpoint.read(fixture("tiny-llama.h5")).model.parameterCount)
    }
}
