import Foundation
import XCTest

/// `compress export` and the `export` recipe stage end to end on the tiny fixture.
extension CLITests {
    func testExportCommandReportsAndRefuses() throws {
        let (dir, _) = try makeRecipeDirectory()
        let out = dir.appendingPathComponent("t.gguf").path
        let r = try launch(["export", fixture("tiny-llama.h5"), "--format", "gguf", "--dtype", "f16", "-o", out, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(j["architecture"] as? String, "llama")
        XCTAssertEqual(j["bytes"] as? Int, Int((try FileManager.default.attributesOfItem(atPath: out)[.size] as? NSNumber)?.intValue ?? -1))
        let tensors = try XCTUnwrap(j["tensors"] as? [[String: Any]])
        XCTAssertEqual(tensors.count, 21)
        XCTAssertEqual(Set(tensors.compactMap { $0["type"] as? String }), ["F16", "F32"])
        XCTAssertEqual((j["lossy"] as? [String])?.count, 16)  // every matrix rounded to float16; norms stay F32
        // Existing output without --force: one JSON error, status 1, the file untouched.
        let again = try launch(["export", fixture("tiny-llama.h5"), "--format", "gguf", "-o", out, "--json"])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stdout.contains("already exists") && again.stdout.contains("--force"), again.stdout)
        let bad = try launch(["export", fixture("tiny-llama.h5"), "--format", "onnx", "-o", out])
        XCTAssertNotEqual(bad.status, 0)
    }

    func testApplyRunsExportStagesLast() throws {
        let (dir, text) = try makeRecipeDirectory()
        let gguf = dir.appendingPathComponent("x.gguf").path, hf = dir.appendingPathComponent("x-hf").path
        let stages = #"{"stage": "finercut", "remove": 1}, {"stage": "export", "format": "gguf", "output": "\#(gguf)"}, {"stage": "export", "format": "hf", "output": "\#(hf)"}"#
        let r = try launch(["apply", try recipe(dir, "e.json", text, stages: stages), "--no-cache", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let reports = try XCTUnwrap(j["stages"] as? [[String: Any]])
        XCTAssertEqual((reports[1]["diagnostics"] as? [String: Any])?["architecture"] as? String, "deci")
        XCTAssertEqual((reports[2]["diagnostics"] as? [String: Any])?["architecture"] as? String, "DeciLMForCausalLM")
        XCTAssertTrue(FileManager.default.fileExists(atPath: gguf) && FileManager.default.fileExists(atPath: hf + "/model.safetensors"))
        // An export output that already exists is refused before any stage runs.
        let r2 = try launch(["apply", try recipe(dir, "f.json", text, stages: stages), "--no-cache", "-o", dir.appendingPathComponent("o2.h5").path, "--json"])
        XCTAssertEqual(r2.status, 1)
        XCTAssertTrue(r2.stdout.contains("stage 2 (export)") && r2.stdout.contains("already exists"), r2.stdout)
        XCTAssertFalse(r2.stderr.contains("stage 1/3 (finercut): start"), r2.stderr)
    }
}
