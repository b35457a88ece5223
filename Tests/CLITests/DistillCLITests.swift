import Foundation
import XCTest
@testable import Checkpoint

/// `compress distill` end to end, including a run killed midway (SIGKILL) and resumed.
extension CLITests {
    func launch(_ args: [String]) throws -> (reason: Process.TerminationReason, status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationReason, p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

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
                    "--steps", "2", "-o", "/nonexistent/out.h5", "--json"]
        let cases: [([String], String)] = [(["--decay", "exp"], "--decay"), (["--intermediate", "1-2"], "--intermediate"),
                                  (["--intermediate", "7:0", "--train", fixture("tiny-llama.stream.txt")], "student layer 7"),
                                  (["--train", "/nonexistent/train.txt"], "/nonexistent/train.txt")]
        for (extra, fragment) in cases {
            let r = try launch(base + extra)
            XCTAssertEqual(r.status, 1, "\(extra)")
            XCTAssertTrue(r.stdout.contains(fragment), "\(extra): \(r.stdout)")
        }
    }
}
