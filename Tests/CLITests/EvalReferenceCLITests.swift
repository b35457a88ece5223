import Foundation
import Model
import XCTest
@testable import Checkpoint

/// `compress eval --reference` and the divergence columns of `apply` and `sweep` (issue 30) on the tiny fixture.
extension CLITests {
    /// tiny-llama.h5 with every dense decoder weight scaled by (1 + 0.3·noise), written to a temporary file.
    func perturbedCheckpoint() throws -> String {
        var c = try Checkpoint.read(fixture("tiny-llama.h5"))
        c.model = c.model.copy()
        var seed: UInt32 = 11
        for l in c.model.layers {
            for w in [l.attention?.q, l.attention?.o, l.mlp?.up, l.mlp?.down] {
                guard case .dense(let t)? = w else { continue }
                for i in 0..<t.count {
                    seed = seed &* 1_664_525 &+ 1_013_904_223
                    t.data[i] *= 1 + 0.3 * (Float(seed >> 8) / Float(1 << 24) - 0.5)
                }
            }
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("perturbed-\(UUID().uuidString).h5").path
        try c.write(to: path)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testEvalAgainstAReference() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cache = dir.appendingPathComponent("cache").path
        let model = try perturbedCheckpoint(), base = fixture("tiny-llama.h5")
        let V = try Checkpoint.read(base).model.config.vocabSize
        let common = ["eval", model, "--text", text, "--window", "32", "--reference", base, "--cache", cache, "--json"]
        let first = try run(common)
        XCTAssertEqual(first.status, 0, first.stderr)
        let j = try XCTUnwrap(first.json)
        let d = try XCTUnwrap(j["divergence"] as? [String: Any])
        XCTAssertEqual(j["reference_cached"] as? Bool, false)
        XCTAssertNil(d["top_k"] as? Int)
        XCTAssertEqual(d["reference_kind"] as? String, "hidden")
        XCTAssertEqual(d["kld_bound_mean"] as? Double, 0)
        let kld = try XCTUnwrap(d["kld"] as? [String: Any])
        XCTAssertGreaterThan(try XCTUnwrap(kld["mean"] as? Double), 0)
        XCTAssertEqual(Set((kld["percentiles"] as? [String: Double])?.keys ?? [:].keys), ["99.9", "99", "95", "90", "75", "50", "25", "10", "5", "1", "0.1"])
        for key in ["reverse_kld_mean", "same_top_p", "ppl_ratio", "nll_correlation", "window_ln_ppl_correlation", "kld_bound_mean"] {
            XCTAssertNotNil(d[key] as? Double, key)
        }
        XCTAssertEqual(try XCTUnwrap(d["ppl_model"] as? Double), try XCTUnwrap(j["ppl"] as? Double), accuracy: 1e-9)
        // The same figures without a reference: the evaluator's PPL.
        let plain = try run(["eval", model, "--text", text, "--window", "32", "--json"])
        XCTAssertEqual(plain.json?["ppl"] as? Double, j["ppl"] as? Double)
        // Second run: the reference comes from the cache; the base alongside gives the same figures; a top-k
        // reference with k = V too, and with a small k a lower bound.
        let again = try run(common)
        XCTAssertEqual(again.json?["reference_cached"] as? Bool, true)
        func mean(_ r: Result) throws -> Double {
            XCTAssertEqual(r.status, 0, r.stderr)
            return try XCTUnwrap(((r.json?["divergence"] as? [String: Any])?["kld"] as? [String: Any])?["mean"] as? Double)
        }
        let hidden = try mean(first)
        XCTAssertEqual(try mean(run(common + ["--reference-kind", "alongside"])), hidden)
        XCTAssertEqual(try mean(run(common + ["--reference-kind", "topk", "--top-k", String(V)])), hidden, accuracy: 1e-5 * hidden)
        XCTAssertLessThan(try mean(run(common + ["--reference-kind", "topk", "--top-k", "4"])), hidden)
        let study = try run(common + ["--top-k-study", "4,16"])
        XCTAssertEqual(((study.json?["divergence"] as? [String: Any])?["top_k_errors"] as? [[String: Any]])?.count, 2)
        // Text output: llama.cpp's figures.
        let t = try run(["eval", model, "--text", text, "--window", "32", "--reference", base, "--no-cache"])
        XCTAssertEqual(t.status, 0, t.stderr)
        for s in ["mean KLD", "same top p", "RMS Δp", "Cor(NLL per token)", "99.9%"] { XCTAssertTrue(t.stdout.contains(s), t.stdout) }
        // A base of another vocabulary is refused by name.
        var foreign = try Checkpoint.read(base)
        var spec = try XCTUnwrap(foreign.tokenizer)
        spec.tokens[7] = "another token"
        foreign.tokenizer = spec
        let foreignPath = dir.appendingPathComponent("foreign.h5").path
        try foreign.write(to: foreignPath)
        let other = try run(["eval", model, "--text", text, "--window", "32", "--reference", foreignPath, "--no-cache", "--json"])
        XCTAssertEqual(other.status, 1)
        XCTAssertTrue((other.json?["error"] as? String ?? "").contains("foreign.h5"), other.stdout)
        // --top-k without --reference, a negative one.
        XCTAssertEqual(try run(["eval", model, "--text", text, "--top-k", "5"]).status, 64)
        XCTAssertEqual(try run(["eval", model, "--text", text, "--reference", base, "--top-k", "5"]).status, 64, "--top-k is for topk")
        XCTAssertNotEqual(try run(["eval", model, "--text", text, "--reference", base, "--reference-kind", "topk", "--top-k", "-1"]).status, 0)
        XCTAssertEqual(try run(["eval", model, "--text", text, "--reference", base, "--reference-kind", "topk", "--top-k-study", "4"]).status, 64)
    }

    func testEvalWithLlamaCppProtocol() throws {
        let (_, text) = try makeRecipeDirectory()
        let r = try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--protocol", "llamacpp", "--window", "32", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(r.json)
        XCTAssertEqual(j["protocol_name"] as? String, "llamacpp")
        XCTAssertEqual(j["first_scored"] as? Int, 16)
        let windows = try XCTUnwrap(j["windows"] as? Int)
        XCTAssertEqual(j["predicted_tokens"] as? Int, windows * 15)
        let t = try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--protocol", "llamacpp", "--window", "32"])
        XCTAssertTrue(t.stdout.contains("llama.cpp's protocol: \(windows) chunks of 32"), t.stdout)
        XCTAssertTrue(t.stdout.contains("positions 16..30 scored"), t.stdout)
        // Its default context is 512: more than this text holds.
        let short = try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--protocol", "llamacpp", "--max-tokens", "600", "--json"])
        XCTAssertEqual(short.json?["windows"] as? Int, 1)
        let shorter = try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--protocol", "llamacpp", "--max-tokens", "510", "--json"])
        XCTAssertEqual(shorter.status, 1)
        XCTAssertTrue((shorter.json?["error"] as? String ?? "").contains("512"), shorter.stdout)
        XCTAssertNotEqual(try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--protocol", "llama"]).status, 0)
    }

    func testApplyEvalStagesReportTheDivergence() throws {
        let (dir, text) = try makeRecipeDirectory()
        let cache = dir.appendingPathComponent("cache").path
        let stages = #"{"stage": "finercut", "remove": 1}, {"stage": "eval"}, {"stage": "finercut", "remove": 1}, {"stage": "eval"}"#
        let r = try launch(["apply", try recipe(dir, "a.json", text, stages: stages), "--cache", cache, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let reports = try XCTUnwrap(j["stages"] as? [[String: Any]])
        let k1 = try XCTUnwrap(reports[1]["kld"] as? Double), k2 = try XCTUnwrap(reports[3]["kld"] as? Double)
        XCTAssertGreaterThan(k1, 0)
        XCTAssertGreaterThan(k2, k1, "two sublayers removed move further from the base than one")
        XCTAssertEqual(j["kld_after"] as? Double, k2)
        XCTAssertNotNil(j["kld_p99_after"] as? Double)
        XCTAssertNotNil(j["same_top_p_after"] as? Double)
        XCTAssertEqual(j["eval_protocol"] as? String, "pinned")
        XCTAssertTrue(r.stderr.contains("hidden-state reference"), r.stderr)
        // The text report's before/after table.
        let t = try launch(["apply", try recipe(dir, "a.json", text, stages: stages), "--cache", cache])
        XCTAssertTrue(t.stdout.contains("mean KLD") && t.stdout.contains("before (base)") && t.stdout.contains("100.00 %"), t.stdout)
        XCTAssertTrue(t.stderr.contains("(cached)"), t.stderr)
        // "kld": false: PPL only.
        let path = try recipe(dir, "b.json", text, stages: #"{"stage": "finercut", "remove": 1}, {"stage": "eval"}"#)
        var o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        o["eval"] = ["text": text, "window": 32, "kld": false]
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        let n = try launch(["apply", path, "--cache", cache, "--json"])
        XCTAssertEqual(n.status, 0, n.stderr)
        let nj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(n.stdout.utf8)) as? [String: Any])
        XCTAssertNil(nj["kld_after"] as? Double)
        XCTAssertNotNil(nj["ppl_after"] as? Double)
        // An unknown protocol is refused by key.
        o["eval"] = ["text": text, "window": 32, "protocol": "wikitext"]
        try JSONSerialization.data(withJSONObject: o).write(to: URL(fileURLWithPath: path))
        let bad = try launch(["apply", path, "--json"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stdout.contains("eval.protocol"), bad.stdout)
    }
}
