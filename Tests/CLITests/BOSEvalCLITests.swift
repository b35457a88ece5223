import Foundation
import Model
import XCTest
@testable import Checkpoint

/// The perplexity protocol follows the checkpoint's tokenizer in every command that evaluates (eval, apply's base and
/// eval stages, distill's teacher and student): BOS + W − 1 stream tokens per window when `add_bos_token` is true.
extension CLITests {
    /// tiny-llama.h5 with its tokenizer's add_bos_token / bos_token_id set, written to a temporary file.
    func bosCheckpoint(addBos: Bool = true, bos: Int32? = 1) throws -> String {
        var c = try Checkpoint.read(fixture("tiny-llama.h5"))
        var spec = try XCTUnwrap(c.tokenizer)
        spec.addBosToken = addBos
        spec.bosTokenID = bos
        c.tokenizer = spec
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bos-\(UUID().uuidString).h5").path
        try c.write(to: path)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// Σ −log p(chunk tokens | BOS and the tokens before them) over the windows [bos] + chunk of W − 1 stream tokens,
    /// from the plain reference forward and a Float64 log-softmax (independent of the evaluator).
    func referenceBOSNLL(_ model: DecoderModel, _ tokens: [Int32], window W: Int, bos: Int32) -> (nll: Double, windows: Int) {
        let windows = tokens.count / (W - 1), V = model.config.vocabSize
        var total = 0.0
        for w in 0..<windows {
            let ids = [bos] + tokens[(w * (W - 1))..<((w + 1) * (W - 1))]
            let logits = model.referenceLogits(ids)
            for t in 0..<(W - 1) {
                let row = (0..<V).map { Double(logits[t * V + $0]) }
                let m = row.max()!
                total += m + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - m) }) - row[Int(ids[t + 1])]
            }
        }
        return (total, windows)
    }

    func testEvalFollowsTheTokenizersBOS() throws {
        let stream = fixture("tiny-llama.stream.txt")
        let tokens = try String(contentsOfFile: stream, encoding: .utf8).split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
        let ckpt = try bosCheckpoint()
        let r = try run(["eval", ckpt, "--tokens", stream, "--window", "32", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(r.json)
        let ref = referenceBOSNLL(try Checkpoint.read(ckpt).model, tokens, window: 32, bos: 1)
        XCTAssertEqual(j["bos"] as? Bool, true)
        XCTAssertEqual(j["bos_token_id"] as? Int, 1)
        XCTAssertEqual(j["windows"] as? Int, ref.windows)
        XCTAssertEqual(j["windows"] as? Int, 167 / 31)
        XCTAssertEqual(j["predicted_tokens"] as? Int, ref.windows * 31)
        XCTAssertEqual(j["stream_tokens_scored"] as? Int, ref.windows * 31)
        XCTAssertEqual(j["tokens"] as? Int, ref.windows * 32)
        XCTAssertEqual(try XCTUnwrap(j["total_nll"] as? Double), ref.nll, accuracy: 1e-4)
        let text = try run(["eval", ckpt, "--tokens", stream, "--window", "32"])
        XCTAssertTrue(text.stdout.contains("each BOS 1 + 31 stream tokens"), text.stdout)
        // --max-tokens counts stream tokens: W − 1 of them are one BOS window; fewer are refused.
        let one = try run(["eval", ckpt, "--tokens", stream, "--window", "32", "--max-tokens", "31", "--json"])
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertEqual(one.json?["windows"] as? Int, 1)
        XCTAssertEqual(one.json?["predicted_tokens"] as? Int, 31)
        let few = try run(["eval", ckpt, "--tokens", stream, "--window", "32", "--max-tokens", "30"])
        XCTAssertNotEqual(few.status, 0)
        XCTAssertTrue(few.stderr.contains("--max-tokens 30 is less than one window"), few.stderr)
        let plainOne = try run(["eval", fixture("tiny-llama.h5"), "--tokens", stream, "--window", "32", "--max-tokens", "31", "--json"])
        XCTAssertEqual(plainOne.status, 1)
        XCTAssertTrue((plainOne.json?["error"] as? String ?? "").contains("need at least one whole window of 32 tokens, have 31"), plainOne.stdout)

        // add_bos_token false (the fixture as committed, and with a BOS id set): today's protocol, unchanged.
        for plain in [fixture("tiny-llama.h5"), try bosCheckpoint(addBos: false, bos: 1)] {
            let p = try run(["eval", plain, "--tokens", stream, "--window", "32", "--json"])
            XCTAssertEqual(p.status, 0, p.stderr)
            XCTAssertEqual(p.json?["bos"] as? Bool, false)
            XCTAssertNil(p.json?["bos_token_id"] as? Int)
            XCTAssertEqual(p.json?["windows"] as? Int, 5)
            XCTAssertEqual(p.json?["stream_tokens_scored"] as? Int, 5 * 32)
            let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.reference.json"))) as? [String: Any]
            let refPPL = try XCTUnwrap((ref?["perplexity"] as? [String: Any])?["ppl"] as? Double)
            XCTAssertEqual(try XCTUnwrap(p.json?["ppl"] as? Double), refPPL, accuracy: refPPL * 1e-6)
        }
    }

    func testEvalRefusesBOSWithoutItsID() throws {
        let ckpt = try bosCheckpoint(addBos: true, bos: nil)
        let r = try run(["eval", ckpt, "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"])
        XCTAssertEqual(r.status, 1)
        let message = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
        XCTAssertTrue(message.contains(ckpt) && message.contains("add_bos_token is true but bos_token_id is missing"), message)
    }

    /// apply (base PPL and eval stages) and distill (teacher and student) evaluate under the same protocol as eval.
    func testApplyAndDistillFollowTheTokenizersBOS() throws {
        let (dir, text) = try makeRecipeDirectory()
        let ckpt = try bosCheckpoint()
        let e = try run(["eval", ckpt, "--text", text, "--window", "32", "--json"])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertEqual(e.json?["bos"] as? Bool, true)
        let ppl = try XCTUnwrap(e.json?["ppl"] as? Double)

        let recipe = try self.recipe(dir, "r.json", text, stages: #"{"stage": "eval"}"#)
        let a = try run(["apply", recipe, ckpt, "--no-cache", "--json"])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(a.json?["eval_bos"] as? Bool, true)
        XCTAssertEqual(try XCTUnwrap(a.json?["ppl_before"] as? Double), ppl, accuracy: ppl * 1e-12)
        XCTAssertEqual(try XCTUnwrap(a.json?["ppl_after"] as? Double), ppl, accuracy: ppl * 1e-12)
        let plain = try run(["apply", recipe, fixture("tiny-llama.h5"), "-o", dir.appendingPathComponent("plain.h5").path, "--no-cache", "--json"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        XCTAssertEqual(plain.json?["eval_bos"] as? Bool, false)
        XCTAssertNotEqual(plain.json?["ppl_before"] as? Double, ppl)

        let out = dir.appendingPathComponent("d.h5").path
        let d = try run(["distill", "--teacher", ckpt, "--student", ckpt, "--steps", "1", "--batch", "1", "--window", "16",
                         "--train", text, "--test", text, "--eval-window", "32", "-o", out, "--json"])
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertEqual(d.json?["eval_bos"] as? Bool, true)
        XCTAssertEqual(try XCTUnwrap(d.json?["teacher_ppl"] as? Double), ppl, accuracy: ppl * 1e-12)
        XCTAssertEqual(try XCTUnwrap(d.json?["student_ppl_before"] as? Double), ppl, accuracy: ppl * 1e-12)
    }
}
