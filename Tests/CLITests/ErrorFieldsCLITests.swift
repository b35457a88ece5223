import Foundation
import TensorCore
import XCTest

/// Under `--json` a failing command's error object holds the message and the fields the error states: the file,
/// the recipe stage, the key, the tensor, what was expected and what was found. The message on standard error is
/// the same text, formatted once.
extension CLITests {
    func testJSONErrorObjectsCarryTheErrorsFields() throws {
        // A checkpoint tensor of the wrong shape.
        let shape = try brokenCheckpoint("shape.h5") { ts in
            ts = ts.map { $0.0 == "model.norm.weight" ? ($0.0, Tensor(shape: [63])) : $0 }
        }
        let e = try run(["eval", shape, "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"])
        XCTAssertEqual(e.status, 1)
        let ej = try XCTUnwrap(e.json, e.stdout)
        XCTAssertEqual(ej["error"] as? String, "\(shape): tensor 'model.norm.weight': expected shape [64], found [63]")
        XCTAssertEqual(e.stderr, "error: \(shape): tensor 'model.norm.weight': expected shape [64], found [63]\n")
        XCTAssertEqual(ej["file"] as? String, shape)
        XCTAssertEqual(ej["tensor"] as? String, "model.norm.weight")
        XCTAssertEqual(ej["expected"] as? String, "[64]")
        XCTAssertEqual(ej["found"] as? String, "[63]")

        // A recipe stage's unknown key.
        let (dir, text) = try makeRecipeDirectory()
        let bad = try recipe(dir, "bad.json", text, stages: #"{"stage": "eval"}, {"stage": "eval", "bitz": 4}"#)
        let r = try run(["apply", bad, "--json"])
        XCTAssertEqual(r.status, 1)
        let rj = try XCTUnwrap(r.json, r.stdout)
        XCTAssertEqual(rj["error"] as? String, "\(bad), stage 2 (eval): unknown key 'bitz' (known: stage)")
        XCTAssertEqual(rj["file"] as? String, bad)
        XCTAssertEqual(rj["stage"] as? Int, 2)
        XCTAssertEqual(rj["stage_name"] as? String, "eval")
        XCTAssertEqual(rj["key"] as? String, "bitz")
        XCTAssertEqual(rj["found"] as? String, "'bitz'")

        // A stage that fails while running: the runner adds the stage to the error of the file it read.
        let short = try tempFile("short.txt", Data("A short text.".utf8))
        let stage = #"{"stage": "distill", "steps": 1, "batch": 1, "window": 64, "text": "\#(short)"}"#
        let distill = try recipe(dir, "short.json", text, stages: stage)
        let d = try run(["apply", distill, "--json"])
        XCTAssertEqual(d.status, 1)
        let dj = try XCTUnwrap(d.json, d.stdout)
        let message = try XCTUnwrap(dj["error"] as? String)
        XCTAssertTrue(message.hasPrefix("\(distill), stage 1 (distill): \(short): "), message)
        XCTAssertEqual(dj["file"] as? String, short)
        XCTAssertEqual(dj["stage"] as? Int, 1)
        XCTAssertEqual(dj["stage_name"] as? String, "distill")
        XCTAssertEqual(dj["expected"] as? String, "at least 65 tokens")

        // A truncated GGUF file.
        let gguf = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.gguf"))
        let cut = try tempFile("cut.gguf", gguf.prefix(3))
        let g = try run(["import", cut, "-o", dir.appendingPathComponent("g.h5").path, "--json"])
        XCTAssertEqual(g.status, 1)
        let gj = try XCTUnwrap(g.json, g.stdout)
        XCTAssertTrue((gj["error"] as? String ?? "").hasPrefix("\(cut): truncated"), g.stdout)
        XCTAssertEqual(gj["file"] as? String, cut)
        XCTAssertEqual(gj["expected"] as? String, "4 bytes")
        XCTAssertEqual(gj["found"] as? String, "3 bytes")

        // An error without fields keeps the one-key object.
        let o = try run(["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"),
                         "--window", "1", "--json"])
        XCTAssertEqual(o.status, 1)
        XCTAssertEqual(o.json?.keys.sorted(), ["error"], o.stdout)
    }
}
