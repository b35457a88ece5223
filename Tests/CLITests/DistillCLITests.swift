import Foundation
import Model
import TensorCore
import XCTest
@testable import Checkpoint

/// `compress distill` end to end, including a run killed midway (SIGKILL) and resumed.
extension CLITests {
    func testKilledRunResumesToTheSameWeights() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("distill-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("train.txt").path
        try String(repeating: "The quick brown fox jumps over the lazy dog; 0123456789. ", count: 40).write(toFile: text, atomically: true, encoding: .utf8)
        func args(_ out: String) -> [String] {
            ["distill", "--teacher", fixture("tiny-llama-tied.h5"), "--student", fixture("tiny-llama.h5"),
             "--steps", "12", "--batch", "2", "--window", "24", "--lr", "2e-3", "--warmup", "3", "--ce-weight", "0.2",
             "--intermediate", "1:2", "--save-every", "4", "--train", text, "--test", text, "--eval-window", "64",
             "--eval-tokens", "0", "-o", dir.appendingPathComponent(out).path, "--json"]
        }
        let whole = try launch(args("whole.h5"))
        XCTAssertEqual(whole.status, 0, whole.stderr)
        XCTAssertTrue(whole.stderr.contains("step 12/12"), whole.stderr)

        let killed = try launch(args("resumed.h5") + ["--kill-after-step", "6"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        XCTAssertEqual(killed.status, SIGKILL)
        let state = dir.appendingPathComponent("resumed.h5.state.h5").path
        XCTAssertTrue(FileManager.default.fileExists(atPath: state), "no state after the kill")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("resumed.h5").path))

        let resumed = try launch(args("resumed.h5") + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(resumed.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["resumed_from"] as? Int, 4)  // the last save before the kill at step 6
        XCTAssertFalse(FileManager.default.fileExists(atPath: state), "state not removed after completion")

        let a = try Checkpoint.read(dir.appendingPathComponent("whole.h5").path)
        let b = try Checkpoint.read(dir.appendingPathComponent("resumed.h5").path)
        for ((name, x), (_, y)) in zip(a.model.namedTensors, b.model.namedTensors) {
            XCTAssertEqual(x.array, y.array, "\(name) differs after resume")
        }
        let wholeJSON = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(whole.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["final_loss"] as? Double, wholeJSON["final_loss"] as? Double)
        XCTAssertEqual(b.history.last?.objectValue?["kind"], .string("distill"))
    }

    func testBadDistillOptionsFailWithTheirName() throws {
        let base = ["distill", "--teacher", fixture("tiny-llama-tied.h5"), "--student", fixture("tiny-llama.h5"),
                    "--steps", "2", "-o", NSTemporaryDirectory() + "distill-bad-\(UUID().uuidString).h5", "--json"]
        let cases: [([String], String)] = [(["--decay", "exp"], "--decay"), (["--intermediate", "1-2"], "--intermediate"),
                                  (["--intermediate", "7:0", "--train", fixture("tiny-llama.stream.txt")], "student layer 7"),
                                  (["--train", "/nonexistent/train.txt"], "/nonexistent/train.txt"),
                                  (["-o", "/nonexistent/out.h5"], "directory '/nonexistent' does not exist")]
        for (extra, fragment) in cases {
            let r = try launch(base + extra)
            XCTAssertEqual(r.status, 1, "\(extra)")
            XCTAssertTrue(r.stdout.contains(fragment), "\(extra): \(r.stdout)")
        }
    }
}

extension CLITests {
    /// A sparse (2:4) student stays sparse through distillation: its pattern travels with it, pruned elements
    /// stay zero and the kept ones train.
    func testSparseStudentStaysSparse() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("distill-mask-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let id = LinearID(layer: 0, kind: .gate)
        let ckpt = try Checkpoint.read(fixture("tiny-llama.h5"))
        let w = try XCTUnwrap(ckpt.model.linear(id)?.denseView)
        let mask = try SparsityMask(pattern: .nm(n: 2, m: 4), rows: w.shape[0], cols: w.shape[1]) { $0 % 4 < 2 }
        let model = try ckpt.model.replacing(.linear(id), with: .sparse(SparseWeight(masking: w, mask: mask)))
        let student = dir.appendingPathComponent("sparse.h5").path, out = dir.appendingPathComponent("out.h5").path
        try Checkpoint(model: model, tokenizer: ckpt.tokenizer, history: ckpt.history).write(to: student)
        // inspect: the representation, pattern, density, bytes as stored and bits per weight of the sparse tensor,
        // and totals that count the mask bits.
        let info = try run(["inspect", student, "--json"])
        XCTAssertEqual(info.status, 0, info.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(info.stdout.utf8)) as? [String: Any])
        let tensors = try XCTUnwrap(j["tensors"] as? [[String: Any]])
        let entry = try XCTUnwrap(tensors.first { $0["name"] as? String == "model.layers.0.mlp.gate_proj.weight" })
        XCTAssertEqual(entry["representation"] as? String, "sparse")
        XCTAssertEqual(entry["pattern"] as? String, "2:4")
        XCTAssertEqual(entry["density"] as? Double, 0.5)
        XCTAssertEqual(entry["bytes"] as? Int, 4 * w.count / 2 + w.count / 8)
        XCTAssertEqual(entry["bits_per_weight"] as? Double, 17)
        XCTAssertEqual(j["tensor_bytes"] as? Int, tensors.reduce(0) { $0 + ($1["bytes"] as! Int) })
        XCTAssertEqual(j["tensor_bytes"] as? Int, model.storageBytes)

        let text = dir.appendingPathComponent("train.txt").path
        try String(repeating: "Sparse students stay sparse. ", count: 30).write(toFile: text, atomically: true, encoding: .utf8)
        let r = try run(["distill", "--teacher", fixture("tiny-llama-tied.h5"), "--student", student, "--steps", "4", "--batch", "2",
                         "--window", "16", "--lr", "1e-2", "--warmup", "0", "--train", text, "--eval-tokens", "0", "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let trained = try Checkpoint.read(out)
        guard case .sparse(let s)? = trained.model.linear(id) else { return XCTFail("the trained weight is not sparse") }
        XCTAssertEqual(s.mask, mask)
        for i in 0..<s.values.count where !mask[i] { XCTAssertEqual(s.values[i], 0, "pruned element \(i) came back") }
        XCTAssertGreaterThan((0..<w.count).filter { mask[$0] && s.values[$0] != w[$0] }.count, w.count / 4)
    }
}

extension CLITests {
    /// A saved state resumes only with the teacher and training text it was written with, and only at a step
    /// inside the run; a non-finite state or a stale temporary file of a dead process is handled.
    func testResumeRefusesImpossibleStates() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("distill-state-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let text = dir.appendingPathComponent("train.txt").path, other = dir.appendingPathComponent("other.txt").path
        try String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 30).write(toFile: text, atomically: true, encoding: .utf8)
        try String(repeating: "Another text entirely, 0123456789! ", count: 30).write(toFile: other, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("s.h5").path, state = out + ".state.h5"
        func args(train: String = text, teacher: String = "tiny-llama-tied.h5", steps: String = "6") -> [String] {
            ["distill", "--teacher", fixture(teacher), "--student", fixture("tiny-llama.h5"), "--steps", steps, "--batch", "1",
             "--window", "16", "--save-every", "2", "--train", train, "--eval-tokens", "0", "-o", out, "--json"]
        }
        // A stale temporary file of a process that no longer exists is removed by the next write.
        let stale = dir.appendingPathComponent(".s.h5.state.h5.tmp-2147480000").path
        FileManager.default.createFile(atPath: stale, contents: Data("junk".utf8))
        let killed = try launch(args() + ["--kill-after-step", "3"])
        XCTAssertEqual(killed.reason, .uncaughtSignal)
        XCTAssertTrue(FileManager.default.fileExists(atPath: state))
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "stale temporary file not removed")

        let otherText = try launch(args(train: other) + ["--resume"])
        XCTAssertEqual(otherText.status, 1)
        XCTAssertTrue(otherText.stdout.contains(state) && otherText.stdout.contains("another teacher or training text"), otherText.stdout)
        let otherTeacher = try launch(args(teacher: "tiny-llama.h5") + ["--resume"])
        XCTAssertEqual(otherTeacher.status, 1)
        XCTAssertTrue(otherTeacher.stdout.contains("another teacher or training text"), otherTeacher.stdout)
        let fewer = try launch(args(steps: "1") + ["--resume"])
        XCTAssertEqual(fewer.status, 1, "a state at step 2 resumed by a 1-step run")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "a refused resume wrote the output")

        // The distill command refuses to overwrite its student.
        let student = dir.appendingPathComponent("student.h5").path
        try FileManager.default.copyItem(atPath: fixture("tiny-llama.h5"), toPath: student)
        let same = try launch(["distill", "--teacher", fixture("tiny-llama-tied.h5"), "--student", student, "--steps", "1",
                               "--train", text, "-o", student, "--json"])
        XCTAssertEqual(same.status, 1)
        XCTAssertTrue(same.stdout.contains("refusing to overwrite an input"), same.stdout)
    }
}
