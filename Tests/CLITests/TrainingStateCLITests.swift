import Foundation
import Model
import TensorCore
import XCTest
@testable import Checkpoint

/// Nothing is lost to a bad training state: `distill --resume` from a damaged state stops before training,
/// names the state, writes nothing and keeps the state; a run stopped by a non-finite loss names only a state
/// that exists.
extension CLITests {
    func distillArguments(_ dir: URL, student: String? = nil, out: String = "out.h5") throws -> [String] {
        let text = dir.appendingPathComponent("train.txt").path
        if !FileManager.default.fileExists(atPath: text) {
            try String(repeating: "The quick brown fox jumps over the lazy dog; 0123456789. ", count: 40)
                .write(toFile: text, atomically: true, encoding: .utf8)
        }
        return ["distill", "--teacher", fixture("tiny-llama-tied.h5"), "--student", student ?? fixture("tiny-llama.h5"),
                "--steps", "6", "--batch", "2", "--window", "24", "--lr", "2e-3", "--warmup", "2", "--save-every", "2",
                "--train", text, "--test", text, "--eval-window", "64", "--eval-tokens", "0",
                "-o", dir.appendingPathComponent(out).path, "--json"]
    }

    func temporaryDirectory(_ name: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    /// The issue's case: a state whose AdamW second moment holds a negative value. Before, the resume exited 0,
    /// wrote a checkpoint with NaN weights and deleted the state.
    func testResumeFromANegativeSecondMomentFailsAndKeepsTheState() throws {
        let dir = try temporaryDirectory("state-cli")
        let killed = try launch(try distillArguments(dir) + ["--kill-after-step", "3"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        let state = dir.appendingPathComponent("out.h5.state.h5").path
        let (meta, tensors) = try TensorArchive.read(state, format: "compress-distill-state", version: 2)
        let key = try XCTUnwrap(tensors.keys.sorted().first { $0.hasPrefix("adam_v:") && $0.contains("down_proj") })
        let v = tensors[key]!.copy()
        for i in 0..<v.count { v[i] = -v[i] - 1e-3 }  // every value negative: sqrt of each is NaN
        try TensorArchive.write(to: state, format: "compress-distill-state", version: 2, meta: meta,
                                tensors: tensors.keys.sorted().map { ($0, $0 == key ? v : tensors[$0]!) })
        let damaged = try Data(contentsOf: URL(fileURLWithPath: state))

        let r = try run(try distillArguments(dir) + ["--resume"])
        XCTAssertEqual(r.status, 1, r.stdout)
        let error = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
        for fragment in [state, "'\(key)'", "second moment", ">= 0"] {
            XCTAssertTrue(error.contains(fragment), "\(fragment): \(error)")
        }
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "one JSON object: \(r.stdout)")
        let out = dir.appendingPathComponent("out.h5").path
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no output from a damaged state")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: state)), damaged, "the state is kept as it was")
    }

    /// A student whose forward overflows (one weight 3e38) gives a non-finite loss at step 1, before the first
    /// save: the error says no state was saved instead of naming a file that does not exist.
    func testNonFiniteStopNamesOnlyAStateThatExists() throws {
        let dir = try temporaryDirectory("state-stop")
        let huge = try hugeWeightCheckpoint(dir)
        let r = try run(try distillArguments(dir, student: huge))
        XCTAssertEqual(r.status, 1, r.stdout)
        let error = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
        let state = dir.appendingPathComponent("out.h5.state.h5").path
        XCTAssertFalse(FileManager.default.fileExists(atPath: state))
        XCTAssertTrue(error.contains("step 1") && error.contains("no training state was saved"), error)
        XCTAssertFalse(error.contains(state), "names a state that does not exist: \(error)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("out.h5").path))
    }

    /// MaskLLM and VTrans stages train through the same state machinery: a damaged state (a negative second moment
    /// of the stage's own trained tensors) is refused on --resume, naming the stage and the state; nothing is
    /// written and the state is kept.
    func testTrainingStagesRefuseADamagedStateOnResume() throws {
        let (dir, text) = try makeRecipeDirectory()
        let stages = [
            ("maskllm", #"{"stage": "maskllm", "prior": "magnitude", "lr": 0.05, "#),
            ("vtrans", #"{"stage": "vtrans", "fraction": 0.6, "mask_lr": 0.1, "#),
        ]
        for (name, settings) in stages {
            let stage = settings + #""steps": 6, "batch": 2, "window": 16, "save_every": 2, "text": "\#(text)"}"#
            let path = try recipe(dir, "\(name).json", text, stages: stage)
            let out = dir.appendingPathComponent("\(name).h5").path, state = out + ".stage1.state.h5"
            let killed = try launch(["apply", path, "-o", out, "--no-cache", "--kill-after-step", "3"])
            XCTAssertEqual(killed.reason, .uncaughtSignal, name)
            let (meta, tensors) = try TensorArchive.read(state, format: "compress-distill-state", version: 2)
            let own = "adam_v:\(name == "vtrans" ? "vib" : name)"  // the stage's own trained tensors
            let key = try XCTUnwrap(tensors.keys.sorted().first { $0.hasPrefix(own) }, "\(tensors.keys)")
            let v = tensors[key]!.copy()
            v[0] = -1
            try TensorArchive.write(to: state, format: "compress-distill-state", version: 2, meta: meta,
                                    tensors: tensors.keys.sorted().map { ($0, $0 == key ? v : tensors[$0]!) })
            let damaged = try Data(contentsOf: URL(fileURLWithPath: state))
            let r = try run(["apply", path, "-o", out, "--no-cache", "--resume", "--json"])
            XCTAssertEqual(r.status, 1, "\(name): \(r.stdout)")
            let error = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
            for fragment in ["stage 1 (\(name))", state, "'\(key)'", "-1.0"] {
                XCTAssertTrue(error.contains(fragment), "\(fragment): \(error)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), "\(name): no output")
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: state)), damaged, "\(name): the state is kept")
        }
    }

    /// A copy of the tiny Llama fixture with one finite but huge weight (3e38 in layer 0's down_proj), written with
    /// the project's checkpoint writer: its forward overflows to NaN.
    func hugeWeightCheckpoint(_ dir: URL) throws -> String {
        let ckpt = try Checkpoint.read(fixture("tiny-llama.h5"))
        let id = LinearID(layer: 0, kind: .down)
        let w = try XCTUnwrap(ckpt.model.linear(id)?.denseView).copy()
        w[0] = 3e38
        let model = try ckpt.model.replacing(.linear(id), with: .dense(w))
        let path = dir.appendingPathComponent("huge.h5").path
        try Checkpoint(model: model, tokenizer: ckpt.tokenizer, history: ckpt.history).write(to: path)
        return path
    }
}
