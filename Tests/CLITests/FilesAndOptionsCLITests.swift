import Foundation
import XCTest
import Workbench

/// Outputs that cannot be written, option values out of range, GGUF metadata that is not finite, texts too short,
/// and sweeps sharing a directory: each refused with an error naming the file, option or directory.
extension CLITests {
    /// A name longer than the file system takes gives "file name too long" naming the path; an output under a
    /// regular file says that file is not a directory (not that a directory "does not exist").
    func testOutputNamesTooLongOrUnderARegularFile() throws {
        let (dir, _) = try makeRecipeDirectory()
        let long = dir.appendingPathComponent(String(repeating: "x", count: 300) + ".h5").path
        let a = try run(["import", fixture("tiny-llama.gguf"), "-o", long])
        XCTAssertEqual(a.status, 1)
        XCTAssertTrue(a.stderr.contains(long) && a.stderr.contains("file name too long"), a.stderr)
        // 250 bytes fit the file system but not the temporary name written first.
        let near = dir.appendingPathComponent(String(repeating: "y", count: 247) + ".h5").path
        XCTAssertTrue(try run(["import", fixture("tiny-llama.gguf"), "-o", near]).stderr.contains("file name too long"))
        let file = dir.appendingPathComponent("afile").path
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        for out in [file + "/out.h5", file + "/sub/out.h5"] {
            let r = try run(["import", fixture("tiny-llama.gguf"), "-o", out, "--json"])
            XCTAssertEqual(r.status, 1)
            let message = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
            XCTAssertTrue(message.contains("'\(file)' is not a directory") && !message.contains("does not exist"), message)
        }
        // export checks its output the same way (it had a check of its own that said "does not exist").
        for format in ["gguf", "hf"] {
            let e = try run(["export", fixture("tiny-llama.h5"), "--format", format, "-o", file + "/out"])
            XCTAssertEqual(e.status, 1)
            XCTAssertTrue(e.stderr.contains("'\(file)' is not a directory"), e.stderr)
            let n = try run(["export", fixture("tiny-llama.h5"), "--format", format, "-o", long])
            XCTAssertTrue(n.stderr.contains("file name too long"), n.stderr)
        }
        let missing = try run(["import", fixture("tiny-llama.gguf"), "-o", dir.appendingPathComponent("none/out.h5").path])
        XCTAssertTrue(missing.stderr.contains("directory '\(dir.appendingPathComponent("none").path)' does not exist"), missing.stderr)
        let r = try recipe(dir, "s.json", dir.appendingPathComponent("text.txt").path, stages: #"{"stage": "eval"}"#)
        let s = try run(["sweep", r, "--set", "eval.window=32", "-o", file + "/sweep"])
        XCTAssertEqual(s.status, 1)
        XCTAssertTrue(s.stderr.contains("'\(file)' is not a directory"), s.stderr)
    }

    /// Every numeric option reads "-3" as a number (not as a missing value) and refuses it with its range.
    func testNegativeNumbersAreReadAsNumbersAndRefusedWithTheirRange() throws {
        let h5 = fixture("tiny-llama.h5"), stream = fixture("tiny-llama.stream.txt")
        let distill = ["distill", "--teacher", h5, "--student", h5, "-o", "/tmp/never.h5"]
        let cases: [([String], String)] = [
            (["eval", h5, "--tokens", stream, "--max-tokens", "-3"], "--max-tokens -3 is less than one window of 2048"),
            (["eval", h5, "--tokens", stream, "--window", "-3"], "--window must lie in 2..."),
            (["eval", h5, "--tokens", stream, "--top-k", "-3"], "--top-k must lie in 1..."),
            (distill + ["--steps", "5", "--eval-tokens", "-3"], "--eval-tokens must be >= 0"),
            (distill + ["--steps", "-3"], "--steps must lie in 1..."),
            (distill + ["--steps", "5", "--batch", "-3"], "--batch must lie in 1..."),
            (distill + ["--steps", "5", "--window", "-3"], "--window must lie in 2..."),
            (distill + ["--steps", "5", "--accumulation", "-3"], "--accumulation must lie in 1..."),
            (distill + ["--steps", "5", "--warmup", "-3"], "--warmup must lie in 0..."),
            (distill + ["--steps", "5", "--lr", "-3"], "--lr must lie in (0, "),
            (distill + ["--steps", "5", "--min-lr-ratio", "-3"], "--min-lr-ratio: min-lr ratio must lie in 0.0...1.0"),
            (distill + ["--steps", "5", "--weight-decay", "-3"], "--weight-decay: weight decay must lie in 0.0...1.0"),
            (distill + ["--steps", "5", "--beta1", "-3"], "--beta1 must lie in [0, 1)"),
            (distill + ["--steps", "5", "--beta2", "-3"], "--beta2 must lie in [0, 1)"),
            (distill + ["--steps", "5", "--clip", "-3"], "--clip: clip must lie in 0.0..."),
            (distill + ["--steps", "5", "--temperature", "-3"], "--temperature: temperature must lie in 0.001..."),
            (distill + ["--steps", "5", "--kl-weight", "-3"], "--kl-weight: kl weight must lie in 0.0..."),
            (distill + ["--steps", "5", "--ce-weight", "-3"], "--ce-weight: ce weight must lie in 0.0..."),
            (distill + ["--steps", "5", "--intermediate-weight", "-3"], "--intermediate-weight: intermediate weight must lie in 0.0..."),
            (distill + ["--steps", "5", "--eval-window", "-3"], "--eval-window must lie in 2..."),
            (distill + ["--steps", "5", "--log-every", "-3"], "--log-every must be at least 1"),
            (distill + ["--steps", "5", "--save-every", "-3"], "--save-every must be >= 0"),
            (distill + ["--steps", "5", "--kill-after-step", "-3"], "--kill-after-step must be at least 1"),
            (distill + ["--steps", "5", "--seed", "-3"], "The value '-3' is invalid for '--seed"),
            (["apply", "r.json", "--kill-after-step", "-3"], "--kill-after-step must be at least 1"),
            (["sweep", "r.json", "--set", "a=1", "-o", "d", "--jobs", "-3"], "--jobs must lie in 1...64"),
            (["sweep", "r.json", "--set", "a=1", "-o", "d", "--cpus-per-task", "-3"], "--cpus-per-task must lie in 1..."),
            (["formats", "--group-size", "-3"], "group size must lie in 1..."),
            (["bench", "--window", "-3"], "--window must lie in 2..."),
            (["bench", "--windows", "-3"], "--windows must lie in 1..."),
            (["bench", "--layers", "-3"], "--layers must lie in 1..."),
            (["bench-train", "--batch", "-3"], "--batch must lie in 1..."),
            (["bench-train", "--window", "-3"], "--window must lie in 2..."),
            (["bench-train", "--steps", "-3"], "--steps must lie in 1..."),
            (["bench-train", "--warmup", "-3"], "--warmup in 0..."),
            (["drop-layers", h5, "--drop", "-3", "-o", "/tmp/never.h5"], "--drop: '-3' is not a layer index"),
        ]
        for (args, expected) in cases {
            let r = try run(args)
            XCTAssertEqual(r.status, r.stderr.contains("Usage:") ? 64 : 1, "\(args)")
            XCTAssertTrue(r.stderr.contains(expected) && !r.stderr.contains("Missing value"), "\(args): \(r.stderr)")
        }
    }

    /// A NaN norm epsilon or an infinite rope base in a GGUF file is refused naming the file and the key.
    func testNonFiniteGGUFMetadataNamesFileAndKey() throws {
        let source = try Data(contentsOf: URL(fileURLWithPath: fixture("tiny-llama.gguf")))
        for (key, bits) in [("llama.attention.layer_norm_rms_epsilon", Float.nan.bitPattern),
                            ("llama.rope.freq_base", Float.infinity.bitPattern)] {
            var bytes = [UInt8](source)
            let needle = [UInt8](key.utf8)
            let at = try XCTUnwrap((0...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }, key)
            let value = at + needle.count + 4  // after the key, its type id (uint32, 6 = float32)
            XCTAssertEqual(bytes[at + needle.count], 6, "\(key) is a float32")
            withUnsafeBytes(of: bits.littleEndian) { for i in 0..<4 { bytes[value + i] = $0[i] } }
            let bad = try tempFile("bad.gguf", Data(bytes))
            let r = try run(["import", bad, "-o", bad + ".h5", "--json"])
            XCTAssertEqual(r.status, 1)
            let message = try XCTUnwrap(r.json?["error"] as? String, r.stdout)
            XCTAssertTrue(message.contains(bad) && message.contains("metadata '\(key)'") && message.contains("finite"), message)
        }
    }

    /// A text too short for one window names the file with the tokens needed and found.
    func testTooShortTextsNameTheFileAndTheCounts() throws {
        let text = try tempFile("short.txt", Data("A short text.".utf8))
        let r = try run(["eval", fixture("tiny-llama.h5"), "--text", text, "--window", "64"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains(text) && r.stderr.contains("window of 64 tokens") && r.stderr.contains("have "), r.stderr)
        XCTAssertThrowsError(try Workbench.requireTokens([1, 2, 3], from: "t.txt", needed: 65, for: "one training window of 64 + 1")) {
            XCTAssertEqual("\($0)", "t.txt: 3 tokens, fewer than the 65 one training window of 64 + 1 needs (use a longer text)")
        }
        XCTAssertNoThrow(try Workbench.requireTokens([1, 2, 3], from: "t.txt", needed: 3, for: "one window of 3"))
        // Training texts: distill, and a recipe's distill and maskllm stages (which read the text themselves).
        let h5 = fixture("tiny-llama.h5"), out = text + ".out.h5"
        let d = try run(["distill", "--teacher", h5, "--student", h5, "--train", text, "--steps", "1", "--window", "64",
                         "--eval-tokens", "0", "-o", out, "--json"])
        XCTAssertEqual(d.status, 1)
        let dm = try XCTUnwrap(d.json?["error"] as? String, d.stdout)
        XCTAssertTrue(dm.contains(text) && dm.contains("fewer than the 65 one training window of 64 + 1 needs"), dm)
        let (dir, long) = try makeRecipeDirectory()
        for stage in [#"{"stage": "distill", "steps": 1, "batch": 1, "window": 64, "text": "\#(text)"}"#,
                      #"{"stage": "maskllm", "pattern": "2:4", "steps": 1, "batch": 1, "window": 64, "text": "\#(text)"}"#] {
            let r = try recipe(dir, "short.json", long, stages: stage)
            let a = try run(["apply", r, "--json"])
            XCTAssertEqual(a.status, 1)
            let m = try XCTUnwrap(a.json?["error"] as? String, a.stdout)
            XCTAssertTrue(m.contains(text + ": ") && m.contains("stage 1"), m)
        }
    }

    /// A second sweep into a directory in use is refused at once, naming the directory and the process holding its
    /// lock; no point runs. The lock is the kernel's: once its holder is gone, the same command runs.
    func testASecondSweepIntoADirectoryInUseIsRefused() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try recipe(dir, "s.json", text, stages: #"{"stage": "eval"}"#)
        let out = dir.appendingPathComponent("sweep").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        // Another sweep holds the directory (this process, as `compress sweep` does: flock on DIR/.sweep.lock).
        let fd = open(out + "/.sweep.lock", O_RDWR | O_CREAT, 0o644)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_EX | LOCK_NB), 0)
        _ = Array("\(getpid())\n".utf8).withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        let started = Date()
        let second = try run(["sweep", r, "--set", "eval.window=32,16", "-o", out, "--json"])
        XCTAssertEqual(second.status, 1)
        let message = try XCTUnwrap(second.json?["error"] as? String, second.stdout)
        XCTAssertTrue(message.contains(out) && message.contains("in use by another sweep (process \(getpid())"), message)
        XCTAssertLessThan(Date().timeIntervalSince(started), 20, "refused at once, before any point")  // observed 0.3 s
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/points"), "no point was planned or run")
        // The holder ends (its lock goes with it; the file stays): the same command runs.
        close(fd)
        let third = try run(["sweep", r, "--set", "eval.window=32,16", "-o", out, "--json"])
        XCTAssertEqual(third.status, 0, third.stderr)
        XCTAssertEqual(third.json?["finished"] as? Int, 2)
    }

    /// `sweep` reads its recipe as strictly as `apply` does: invalid UTF-8 names the byte offset (it was replaced
    /// by U+FFFD and accepted), a number past a 64-bit float names its key path.
    func testSweepRecipeBytesAreReadStrictly() throws {
        let (dir, text) = try makeRecipeDirectory()
        let r = try recipe(dir, "s.json", text, stages: #"{"stage": "eval", "note": "\u00e9"}"#)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: r))
        let at = try XCTUnwrap(bytes.range(of: Data("\\u00e9".utf8)))
        bytes.replaceSubrange(at, with: [0xFF])
        try bytes.write(to: URL(fileURLWithPath: r))
        let s = try run(["sweep", r, "--set", "eval.window=32", "-o", dir.appendingPathComponent("sw").path, "--json"])
        XCTAssertEqual(s.status, 1)
        let message = try XCTUnwrap(s.json?["error"] as? String, s.stdout)
        XCTAssertTrue(message.contains(r) && message.contains("not valid UTF-8 at byte offset \(at.lowerBound)"), message)
        let o = try recipe(dir, "o.json", text, stages: #"{"stage": "eval", "window": 1e400}"#)
        let t = try run(["sweep", o, "--set", "eval.window=32", "-o", dir.appendingPathComponent("sw2").path, "--json"])
        let overflow = try XCTUnwrap(t.json?["error"] as? String, t.stdout)
        XCTAssertTrue(overflow.contains(o) && overflow.contains("1e400 overflows"), overflow)
    }

    /// A report holding a non-finite number is never written: encoding throws (the CLI's error path reports it),
    /// naming the value's path; it used to print an error and exit inside the library.
    func testAReportWithANonFiniteNumberIsAnErrorNamingItsPath() throws {
        struct Stage: Encodable { let ppl: Double }
        struct Report: Encodable { let stages: [Stage] }
        XCTAssertThrowsError(try encodeJSON(Report(stages: [Stage(ppl: 3), Stage(ppl: .nan)]))) {
            XCTAssertTrue("\($0)".contains("stages.1.ppl (nan) is not a finite number"), "\($0)")
        }
        XCTAssertEqual(try encodeJSON(Report(stages: [Stage(ppl: 3)])), #"{"stages":[{"ppl":3}]}"#)
    }
}
