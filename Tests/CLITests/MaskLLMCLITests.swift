import Foundation
import XCTest
@testable import Checkpoint
import Model

/// `compress apply` with a `maskllm` stage on the tiny fixture: valid N:M results, kill and resume to the same
/// masks, the prior alone, and bad settings refused naming the recipe, stage and key.
extension CLITests {
    /// Every decoder linear weight of `path` is sparse with exactly N of every M kept (counted from the bits).
    func assertAllNM(_ path: String, n: Int, m: Int, file: StaticString = #filePath, line: UInt = #line) throws -> [String: [UInt8]] {
        let model = try Checkpoint.read(path).model
        var out: [String: [UInt8]] = [:]
        for (id, w) in model.linearWeights {
            guard case .sparse(let s) = w else { XCTFail("\(id) is \(w.kind)", file: file, line: line); continue }
            XCTAssertEqual(s.mask.pattern, .nm(n: n, m: m), file: file, line: line)
            for g in 0..<(s.mask.count / m) {
                let kept = (0..<m).filter { s.mask.bits[(g * m + $0) >> 3] & (1 << UInt8((g * m + $0) & 7)) != 0 }.count
                if kept != n { XCTFail("\(id) group \(g) keeps \(kept)", file: file, line: line); break }
            }
            for i in 0..<s.values.count where !s.mask[i] { XCTAssertEqual(s.values[i], 0, file: file, line: line) }
            out[WeightID.linear(id).hfName] = s.mask.bits
        }
        XCTAssertEqual(out.count, 14, file: file, line: line)
        return out
    }

    func testKilledMaskLLMResumesToTheSameMasks() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = #"{"stage": "maskllm", "prior": "magnitude", "steps": 6, "batch": 2, "window": 16, "accumulation": 2, "lr": 0.05, "save_every": 2, "log_every": 1, "text": "\#(text)"}, {"stage": "eval"}"#
        let path = try recipe(dir, "m.json", text, stages: stages)
        let cache = dir.appendingPathComponent("cache").path
        let whole = dir.appendingPathComponent("whole.h5").path, resumed = dir.appendingPathComponent("resumed.h5").path
        let w = try launch(["apply", path, "-o", whole, "--cache", cache, "--json"])
        XCTAssertEqual(w.status, 0, w.stderr)
        XCTAssertTrue(w.stderr.contains("mask_change") && w.stderr.contains("tok/s") && w.stderr.contains("ETA"), w.stderr)
        let masks = try assertAllNM(whole, n: 2, m: 4)
        let killed = try launch(["apply", path, "-o", resumed, "--cache", cache, "--kill-after-step", "3"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        XCTAssertTrue(FileManager.default.fileExists(atPath: resumed + ".stage1.state.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: resumed))
        let r = try launch(["apply", path, "-o", resumed, "--cache", cache, "--resume", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("resumed from") && r.stderr.contains("at step 2"), r.stderr)
        XCTAssertEqual(try assertAllNM(resumed, n: 2, m: 4), masks, "the resumed run ends with the same masks")
        let a = try Checkpoint.read(whole), b = try Checkpoint.read(resumed)
        for ((name, x), (_, y)) in zip(a.model.namedTensors, b.model.namedTensors) { XCTAssertEqual(x.array, y.array, "\(name) differs after resume") }
        // Mask-only: the kept values are the original weights.
        let base = try Checkpoint.read(fixture("tiny-llama.h5")).model
        for (id, wt) in a.model.linearWeights {
            guard case .sparse(let s) = wt, let orig = base.linear(id)?.denseView else { continue }
            for i in 0..<s.values.count where s.mask[i] { XCTAssertEqual(s.values[i], orig[i]) }
        }
    }

    /// `steps: 0` keeps the prior's masks: the `magnitude` pass's, exactly, over the original weights.
    func testMaskLLMWithoutStepsIsItsPrior() throws {
        let (dir, text) = try makeRecipeDirectory()
        let prior = try recipe(dir, "p.json", text, stages: #"{"stage": "maskllm", "prior": "magnitude", "pattern": "4:8", "steps": 0, "text": "\#(text)"}"#)
        let mag = try recipe(dir, "g.json", text, stages: #"{"stage": "magnitude", "pattern": "4:8"}"#)
        let a = dir.appendingPathComponent("a.h5").path, b = dir.appendingPathComponent("b.h5").path
        XCTAssertEqual(try launch(["apply", prior, "-o", a, "--no-cache"]).status, 0)
        XCTAssertEqual(try launch(["apply", mag, "-o", b, "--no-cache"]).status, 0)
        XCTAssertEqual(try assertAllNM(a, n: 4, m: 8), try assertAllNM(b, n: 4, m: 8))
    }

    func testBadMaskLLMSettingsFailNamingStageAndKey() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cases: [(String, String)] = [
            (#"{"stage": "maskllm", "pattern": "4:4", "steps": 1}"#, "stage 1 (maskllm): 'pattern': 4:4 needs 1 ≤ N < M"),
            (#"{"stage": "maskllm", "pattern": "5:4", "steps": 1}"#, "stage 1 (maskllm): 'pattern': 5:4 needs 1 ≤ N < M"),
            (#"{"stage": "maskllm", "pattern": "2:7", "prior": "magnitude", "steps": 1, "text": "\#(text)"}"#, "stage 1 (maskllm): 'pattern': M = 7 does not divide the input size 64 of layer 0 q_proj"),
            (#"{"stage": "maskllm", "pattern": "two:four", "steps": 1}"#, "'pattern': \"two:four\" is not N:M"),
            (#"{"stage": "maskllm", "targets": ["q_proj", "lm_head"], "steps": 1}"#, "stage 1 (maskllm): 'targets': \"lm_head\" is not a decoder linear weight"),
            (#"{"stage": "maskllm", "prior": "oracle", "steps": 1}"#, "stage 1 (maskllm): 'prior'"),
            (#"{"stage": "maskllm", "steps": 1, "temperature": [4]}"#, "'temperature': expected [start, end]"),
            (#"{"stage": "maskllm", "steps": 1, "weight_lr": 1e-4}"#, "'weight_lr': only with \"train_weights\": true"),
            (#"{"stage": "maskllm", "steps": 1, "gumbel": 1}"#, "stage 1 (maskllm): unknown key 'gumbel'"),
            (#"{"stage": "maskllm", "steps": 1, "exclude_layers": [5], "prior": "magnitude", "text": "\#(text)"}"#, "'exclude_layers': layer 5 outside 0..<2"),
            (#"{"stage": "cptquant", "estimator": "none", "allocation": "uniform", "bits_per_weight": 4.5, "method": "rtn"}, {"stage": "maskllm", "steps": 1}"#,
             "stage 2 (maskllm): cannot take quantized weights"),
        ]
        for (i, (stage, fragment)) in cases.enumerated() {
            let path = try recipe(dir, "bad\(i).json", text, stages: stage)
            let r = try launch(["apply", path, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, stage)
            let message = r.stdout.replacingOccurrences(of: "\\\"", with: "\"")
            XCTAssertTrue(message.contains(fragment) && message.contains("bad\(i).json"), "\(stage): \(r.stdout)")
            XCTAssertFalse(r.stderr.contains("step 1/"), "\(stage): refused before training")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out.h5").path), "no output from failed recipes")
    }

    /// Settings that only the base can refute (M against every targeted input size, targets left by
    /// 'exclude_layers', layers the base lacks, quantized weights) are refused against the real base before
    /// anything runs: no calibration, no base evaluation, no prior, no training; the recipe, stage and key named.
    func testMaskLLMSettingsAreCheckedAgainstTheBaseBeforeAnythingRuns() throws {
        let (dir, text) = try makeRecipeDirectory()
        let sparsegpt = #""prior": "sparsegpt", "steps": 2, "batch": 2, "window": 16, "text": "\#(text)""#
        let cases: [(String, String)] = [
            // 64 (attention inputs) and 160 (down_proj's) are not multiples of 3, 6 or 7.
            (#"{"stage": "maskllm", "pattern": "2:7", \#(sparsegpt)}"#, "stage 1 (maskllm): 'pattern': M = 7 does not divide the input size 64 of layer 0 q_proj"),
            (#"{"stage": "maskllm", "pattern": "2:6", "targets": ["down_proj"], \#(sparsegpt)}"#,
             "stage 1 (maskllm): 'pattern': M = 6 does not divide the input size 160 of layer 0 down_proj"),
            (#"{"stage": "maskllm", "pattern": "1:3", "targets": ["up_proj", "down_proj"], \#(sparsegpt)}"#,
             "stage 1 (maskllm): 'pattern': M = 3 does not divide the input size 64 of layer 0 up_proj"),
            (#"{"stage": "maskllm", "exclude_layers": [0, 1], \#(sparsegpt)}"#, "stage 1 (maskllm): 'targets': no weight of the model matches outside 'exclude_layers'"),
            (#"{"stage": "maskllm", "exclude_layers": [2], \#(sparsegpt)}"#, "stage 1 (maskllm): 'exclude_layers': layer 2 outside 0..<2"),
            // After a stage that does not change the model (eval, distill) the check still runs first.
            (#"{"stage": "eval"}, {"stage": "maskllm", "pattern": "2:6", \#(sparsegpt)}"#, "stage 2 (maskllm): 'pattern': M = 6 does not divide the input size 64 of layer 0 q_proj"),
        ]
        for (i, (stages, fragment)) in cases.enumerated() {
            let path = try recipe(dir, "base\(i).json", text, stages: stages + #", {"stage": "eval"}"#)
            let r = try launch(["apply", path, "--no-cache", "--json"])
            XCTAssertEqual(r.status, 1, stages)
            XCTAssertTrue(r.stdout.contains(fragment) && r.stdout.contains("base\(i).json") && r.stdout.contains("tiny-llama.h5"), "\(stages): \(r.stdout)")
            for early in ["calibration:", "eval base", "prior:", "step 1/"] {
                XCTAssertFalse(r.stderr.contains(early), "\(stages): '\(early)' ran before the error: \(r.stderr)")
            }
        }
        // A quantized base: refused for its weight kind before anything runs.
        let quantized = dir.appendingPathComponent("q.h5").path
        let q = try recipe(dir, "q.json", text, stages: #"{"stage": "cptquant", "estimator": "none", "allocation": "uniform", "bits_per_weight": 4.5, "method": "rtn", "group_size": 32}"#)
        XCTAssertEqual(try launch(["apply", q, "-o", quantized, "--no-cache"]).status, 0)
        let onQuantized = try recipe(dir, "onq.json", text, stages: #"{"stage": "maskllm", \#(sparsegpt)}, {"stage": "eval"}"#)
        let r = try launch(["apply", onQuantized, quantized, "--no-cache", "--json"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stdout.contains("onq.json, stage 1 (maskllm): cannot take quantized weights, which the base checkpoint leaves"), r.stdout)
        for early in ["calibration:", "eval base", "prior:", "step 1/"] { XCTAssertFalse(r.stderr.contains(early), r.stderr) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out.h5").path), "no output from failed recipes")
    }
}
