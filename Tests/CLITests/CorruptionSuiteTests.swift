import CHDF5
import Foundation
import Model
import TensorCore
import XCTest
@testable import Checkpoint

/// Broken inputs generated at test time for every reader (HDF5 checkpoint, GGUF, safetensors, tokenizer.json,
/// config.json, recipes, token files, texts, CLI options). For each: the binary, run under a 4 GiB address-space
/// limit and a time limit, exits (no signal, no hang) with status 1, prints one JSON error object naming the file
/// (or option), and writes nothing.
extension CLITests {
    struct Case {
        let label: String
        let args: [String]
        /// Text the error must contain (the file, key or option).
        let names: String
        /// Directory whose listing must not change (outputs go there).
        var outputDir: String? = nil
    }

    struct Outcome { let reason: Process.TerminationReason; let status: Int32; let stdout: String; let stderr: String; let timedOut: Bool }

    /// Runs the binary under `ulimit -v` (bounded memory) with output to files and a deadline (no hang).
    func launchBounded(_ args: [String], scratch: URL, seconds: Double = 30) throws -> Outcome {
        let id = UUID().uuidString
        let out = scratch.appendingPathComponent("o-\(id)"), err = scratch.appendingPathComponent("e-\(id)")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        FileManager.default.createFile(atPath: err.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "ulimit -v 4194304; exec \"$0\" \"$@\"", binary.path] + args
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        try p.run()
        var timedOut = false
        if done.wait(timeout: .now() + seconds) == .timedOut { timedOut = true; p.terminate(); done.wait() }
        return Outcome(reason: p.terminationReason, status: p.terminationStatus,
                       stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "", stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "",
                       timedOut: timedOut)
    }

    /// Writes a checkpoint by hand: attributes, float32 tensors, optional tokenizer bytes, and datasets that only
    /// declare a shape (nothing written, so a small file can claim a huge one).
    func handMadeCheckpoint(_ path: String, config: String, tensors: [(String, Tensor)], tokenizer: [UInt8]? = nil,
                            declared: [(String, [UInt64])] = []) throws {
        let f = try H5File.create(path)
        try f.setString("format", CheckpointFormat.name)
        try f.setInt("format_version", CheckpointFormat.version)
        try f.setString("config", config)
        try f.createGroup("tensors")
        for (n, t) in tensors {
            try f.write("tensors/" + n, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data)
        }
        if let tokenizer {
            try tokenizer.withUnsafeBytes { try f.write("tokenizer", shape: [tokenizer.count], fileType: H5Types.uint8File, memType: H5Types.uint8, data: $0.baseAddress!) }
        }
        for (name, dims) in declared {
            var d = dims
            let space = H5Screate_simple(Int32(d.count), &d, nil)
            let ds = H5Dcreate2(f.id, name, h5_std_u8le(), space, h5p_default(), h5p_default(), h5p_default())
            XCTAssertGreaterThanOrEqual(ds, 0, name)
            H5Dclose(ds); H5Sclose(space)
        }
        try f.close()
    }

    func testCorruptionSuite() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("corrupt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: scratch) }
        var n = 0
        func file(_ name: String, _ data: Data) throws -> String {
            n += 1
            let url = scratch.appendingPathComponent("\(n)-\(name)")
            try data.write(to: url)
            return url.path
        }
        let outDir = scratch.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
        let out = outDir.appendingPathComponent("result.h5").path
        let stream = fixture("tiny-llama.stream.txt")
        let good = fixture("tiny-llama.h5")
        let ckpt = try Checkpoint.read(good)
        let tensors = ckpt.model.namedTensors.map { ($0.name, $0.tensor) }
        let baseConfig = try XCTUnwrap(ckpt.config.json.objectValue)
        let tokenizerJSON = try JSONSerialization.jsonObject(with: JSONEncoder().encode(try XCTUnwrap(ckpt.tokenizer))) as! [String: Any]
        var cases: [Case] = []

        // HDF5 checkpoints: config values out of range or of the wrong kind.
        func checkpoint(_ label: String, config: [String: JSONValue] = baseConfig, tensors ts: [(String, Tensor)] = tensors,
                        tokenizer: [String: Any]? = tokenizerJSON, rawTokenizer: [UInt8]? = nil, declared: [(String, [UInt64])] = []) throws {
            n += 1
            let path = scratch.appendingPathComponent("\(n)-\(label).h5").path
            let tok = try rawTokenizer ?? tokenizer.map { [UInt8](try JSONSerialization.data(withJSONObject: $0)) }
            try handMadeCheckpoint(path, config: JSONValue.object(config).text, tensors: ts, tokenizer: tok, declared: declared)
            cases.append(Case(label: label, args: ["inspect", path, "--json"], names: path))
            cases.append(Case(label: label + " (drop-layers)", args: ["drop-layers", path, "--drop", "0", "-o", out, "--json"], names: path, outputDir: outDir.path))
        }
        let sizes = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "max_position_embeddings"]
        let values: [JSONValue] = [.int(0), .int(-1), .int(1 << 33), .int(1 << 40), .int(100_000_000), .string("x")]
        for key in sizes { for (i, v) in values.enumerated() { var c = baseConfig; c[key] = v; try checkpoint("\(key)-\(i)", config: c) } }
        for (key, v) in [("rope_theta", 1e-300), ("rope_theta", -1), ("rope_theta", 1e300), ("rms_norm_eps", 0), ("rms_norm_eps", 1e300)] {
            var c = baseConfig; c[key] = .double(v); c["rope_parameters"] = nil; try checkpoint("\(key)=\(v)", config: c)
        }
        for (key, v) in [("bos_token_id", 99999), ("eos_token_id", -1)] { var c = baseConfig; c[key] = .int(v); try checkpoint("\(key)=\(v)", config: c) }
        do { var c = baseConfig; c["rope_scaling"] = .object(["type": .string("linear")]); try checkpoint("rope_scaling", config: c) }
        do { var c = baseConfig; c["block_configs"] = .array([]); try checkpoint("block_configs", config: c) }
        // Non-finite and misshapen tensors.
        func edited(_ name: String, _ f: (Tensor) -> Tensor) -> [(String, Tensor)] { tensors.map { $0.0 == name ? ($0.0, f($0.1)) : $0 } }
        for (label, value) in [("nan", Float.nan), ("inf", Float.infinity)] {
            try checkpoint("weight-\(label)", tensors: edited("model.layers.0.mlp.up_proj.weight") { t in let c = Tensor(shape: t.shape); c.data.update(from: t.data, count: t.count); c[7] = value; return c })
            try checkpoint("norm-\(label)", tensors: edited("model.norm.weight") { t in let c = Tensor(shape: t.shape); c.data.update(from: t.data, count: t.count); c[0] = value; return c })
        }
        // Tokenizers that could not be used, and sizes declared beyond the file.
        func tok(_ f: (inout [String: Any]) -> Void) -> [String: Any] { var t = tokenizerJSON; f(&t); return t }
        let tokens = tokenizerJSON["tokens"] as! [String]
        try checkpoint("tok-types-count", tokenizer: tok { $0["token_types"] = Array(repeating: 1, count: 10) })
        try checkpoint("tok-type-value", tokenizer: tok { $0["token_types"] = Array(repeating: 9, count: tokens.count) })
        try checkpoint("tok-identical", tokenizer: tok { $0["tokens"] = Array(repeating: "a", count: tokens.count) })
        try checkpoint("tok-bos", tokenizer: tok { $0["bos_token_id"] = 99999 })
        try checkpoint("tok-merge", tokenizer: tok { $0["merges"] = ["zzz qqq"] })
        try checkpoint("tok-too-many", tokenizer: tok { $0["tokens"] = tokens + ["extra1"]; $0["token_types"] = nil })
        try checkpoint("tok-not-json", rawTokenizer: Array("{not json".utf8))
        try checkpoint("tok-declared-2^40", tokenizer: nil, declared: [("tokenizer", [1 << 40])])
        try checkpoint("tensor-declared-2^40", declared: [("tensors/model.extra", [1 << 40])])
        // Truncations and other files where a checkpoint is expected.
        let bytes = try Data(contentsOf: URL(fileURLWithPath: good))
        for cut in [0, 7, 64, 512, 2048, bytes.count / 3, bytes.count / 2, bytes.count - 4096, bytes.count - 1] {
            let path = try file("cut\(cut).h5", bytes.prefix(cut))
            cases.append(Case(label: "truncated at \(cut)", args: ["eval", path, "--tokens", stream, "--window", "32", "--json"], names: path))
        }
        let fifo = scratch.appendingPathComponent("fifo").path
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        for cmd in [["inspect", fifo], ["eval", fifo, "--tokens", stream], ["tokenize", fifo, "--text", stream], ["import", fifo, "-o", out],
                    ["eval", good, "--tokens", fifo], ["eval", good, "--text", fifo], ["apply", fifo, good, "-o", out], ["inspect", scratch.path],
                    ["inspect", "/dev/zero"]] {
            cases.append(Case(label: "special \(cmd[0])", args: cmd + ["--json"], names: cmd.contains(fifo) ? fifo : cmd[1], outputDir: outDir.path))
        }

        // GGUF: truncations and a wrong magic.
        let gguf = try Data(contentsOf: URL(fileURLWithPath: fixture("tiny-llama.gguf")))
        for cut in [3, 8, 24, 100, 1000, gguf.count / 2, gguf.count - 1] {
            let path = try file("cut\(cut).gguf", gguf.prefix(cut))
            cases.append(Case(label: "gguf cut \(cut)", args: ["import", path, "-o", out, "--json"], names: path, outputDir: outDir.path))
        }
        do { var g = gguf; g[0] = 0x58; let path = try file("magic.gguf", g)
             cases.append(Case(label: "gguf magic", args: ["import", path, "-o", out, "--json"], names: path, outputDir: outDir.path)) }

        // Hugging Face directories: config.json, tokenizer.json and safetensors broken one at a time.
        func hfCopy(_ label: String, _ edit: (URL) throws -> String) throws {
            n += 1
            let dir = scratch.appendingPathComponent("\(n)-\(label)")
            try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-llama-hf"), to: dir)
            let named = try edit(dir)
            cases.append(Case(label: "hf \(label)", args: ["import", dir.path, "-o", out, "--json"], names: named, outputDir: outDir.path))
        }
        func jsonEdit(_ dir: URL, _ name: String, _ f: (inout [String: Any]) -> Void) throws -> String {
            let url = dir.appendingPathComponent(name)
            var o = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            f(&o)
            try JSONSerialization.data(withJSONObject: o).write(to: url)
            return url.path
        }
        for (key, v) in [("num_hidden_layers", 1 << 40 as Any), ("num_hidden_layers", 100_000_000), ("vocab_size", "x"), ("num_attention_heads", 1 << 33), ("rope_theta", 1e-300)] {
            try hfCopy("config-\(key)") { try jsonEdit($0, "config.json") { $0[key] = v } }
        }
        try hfCopy("config-not-json") { d in let u = d.appendingPathComponent("config.json"); try Data("{".utf8).write(to: u); return u.path }
        for (label, id) in [("minus1", -1), ("minus5", -5), ("2^40", 1 << 40)] {
            try hfCopy("tokenizer-id-\(label)") { try jsonEdit($0, "tokenizer.json") { t in
                var m = t["model"] as! [String: Any]; var v = m["vocab"] as! [String: Any]; v["Ā"] = id; m["vocab"] = v; t["model"] = m } }
        }
        try hfCopy("tokenizer-added-2^40") { try jsonEdit($0, "tokenizer.json") { $0["added_tokens"] = [["id": 1 << 40, "content": "<x>", "special": true]] } }
        try hfCopy("tokenizer-merge-nontoken") { try jsonEdit($0, "tokenizer.json") { t in
            var m = t["model"] as! [String: Any]; m["merges"] = ["zzz qqq"]; t["model"] = m } }
        try hfCopy("tokenizer-not-json") { d in let u = d.appendingPathComponent("tokenizer.json"); try Data("[1,".utf8).write(to: u); return u.path }
        try hfCopy("safetensors-truncated") { d in
            let u = d.appendingPathComponent("model-00002-of-00003.safetensors"); let b = try Data(contentsOf: u); try b.prefix(b.count / 2).write(to: u); return u.path }
        try hfCopy("safetensors-header-size") { d in
            let u = d.appendingPathComponent("model-00001-of-00003.safetensors"); var b = try Data(contentsOf: u)
            b.replaceSubrange(0..<8, with: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]); try b.write(to: u); return u.path }
        try hfCopy("safetensors-nan") { d in
            // A NaN in the middle of a float tensor's data (the last 4 bytes of the file are tensor data).
            let u = d.appendingPathComponent("model-00003-of-00003.safetensors"); var b = try Data(contentsOf: u)
            let nan: [UInt8] = [0x00, 0x00, 0xc0, 0x7f]
            let header = Int(b.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
            let dtypeF32 = String(decoding: b[8..<(8 + header)], as: UTF8.self).contains("F32")
            b.replaceSubrange((b.count - (dtypeF32 ? 4 : 2))..<b.count, with: dtypeF32 ? nan : [0xc0, 0x7f])
            try b.write(to: u); return "tensor '" }
        try hfCopy("index-not-json") { d in let u = d.appendingPathComponent("model.safetensors.index.json"); try Data("nope".utf8).write(to: u); return u.path }

        // Recipes.
        func recipeCase(_ label: String, _ text: String) throws {
            let path = try file("\(label).json", Data(text.utf8))
            cases.append(Case(label: "recipe \(label)", args: ["apply", path, good, "-o", out, "--no-cache", "--json"], names: path, outputDir: outDir.path))
        }
        try recipeCase("not-json", "{")
        try recipeCase("format-2", #"{"format": 2, "stages": [{"stage": "eval"}]}"#)
        try recipeCase("unknown-stage", #"{"format": 1, "stages": [{"stage": "magic"}]}"#)
        try recipeCase("huge-distill", #"{"format": 1, "stages": [{"stage": "distill", "steps": 1, "batch": 4096, "window": 8192, "text": "\#(stream)"}]}"#)
        try recipeCase("distill-inf", #"{"format": 1, "stages": [{"stage": "distill", "steps": 1, "temperature": 1e999, "text": "\#(stream)"}]}"#)
        try recipeCase("duplicate-key", #"{"format": 1, "format": 1, "stages": []}"#)
        // Token files and texts.
        for (label, text) in [("letters", "1 2 x"), ("empty", " \n"), ("huge-id", "99999999999"), ("negative", "1 -2 3"), ("outside-vocab", String(repeating: "256 ", count: 200))] {
            let path = try file("\(label).tokens", Data(text.utf8))
            cases.append(Case(label: "tokens \(label)", args: ["eval", good, "--tokens", path, "--window", "32", "--json"], names: path))
        }
        do { let path = try file("short.tokens", Data("1 2 3".utf8))
             cases.append(Case(label: "tokens short", args: ["eval", good, "--tokens", path, "--window", "32", "--json"], names: path)) }
        do { let path = try file("bad-utf8.txt", Data([0x61, 0xff, 0xfe, 0x62]))
             cases.append(Case(label: "text utf8", args: ["tokenize", good, "--text", path, "--json"], names: path)) }
        // CLI options (the option is what must be named).
        let options: [([String], String)] = [
            (["eval", good, "--tokens", stream, "--window", "0"], "--window"), (["eval", good, "--tokens", stream, "--window", "-5"], "--window"),
            (["eval", good, "--tokens", stream, "--window", "abc"], "window"), (["eval", good, "--tokens", stream, "--max-tokens", "0"], "--max-tokens"),
            (["eval", good, "--tokens", stream, "--text", stream], "--text"), (["eval", good], "--text"),
            (["formats", "--group-size", "4611686018427387904"], "group size"), (["formats", "--group-size", "-1"], "group size"),
            (["distill", "--teacher", good, "--student", good, "--steps", "1", "-o", out, "--batch", "4611686018427387904", "--train", stream], "batch"),
            (["distill", "--teacher", good, "--student", good, "--steps", "1", "-o", out, "--temperature", "inf", "--train", stream], "temperature"),
            (["distill", "--teacher", good, "--student", good, "--steps", "1", "-o", out, "--kl-weight", "inf", "--train", stream], "kl weight"),
            (["distill", "--teacher", good, "--student", good, "--steps", "1", "-o", out, "--weight-decay", "inf", "--train", stream], "weight decay"),
            (["distill", "--teacher", good, "--student", good, "--steps", "1", "-o", out, "--groups", #"[{"match": "*", "lr": 1e308}]"#, "--train", stream], "lr"),
            (["distill", "--teacher", good, "--student", good, "--steps", "-3", "-o", out, "--train", stream], "steps"),
            (["drop-layers", good, "--drop", "0", "-o", ""], "output path is empty"),
            (["drop-layers", good, "--drop", "0", "-o", "/dev/null"], "/dev/null"),
            (["drop-layers", good, "--drop", "0", "-o", good], good),
            (["drop-layers", good, "--drop", "9", "-o", out], "--drop"),
            (["bench", "--layers", "1099511627776"], "--layers"),
        ]
        for (args, name) in options { cases.append(Case(label: "option \(args.dropFirst(2).joined(separator: " "))", args: args + ["--json"], names: name, outputDir: outDir.path)) }

        XCTAssertGreaterThanOrEqual(cases.count, 100)
        let start = Date()
        let lock = NSLock()
        var failures: [String] = []
        // Outputs are checked per case; run cases in parallel but those with an output directory one at a time
        // would race on the listing, so each case's listing is compared against the empty directory.
        DispatchQueue.concurrentPerform(iterations: cases.count) { i in
            let c = cases[i]
            var problems: [String] = []
            do {
                let r = try launchBounded(c.args, scratch: scratch)
                if r.timedOut { problems.append("hung") }
                if r.reason != .exit { problems.append("signal \(r.status)") }
                if r.status != 1 { problems.append("exit \(r.status)") }
                let lines = r.stdout.split(separator: "\n")
                let obj = lines.count == 1 ? (try? JSONSerialization.jsonObject(with: Data(lines[0].utf8))) as? [String: Any] : nil
                // The message, and the fields the error states (ErrorReport: file, stage, key, tensor, ...).
                let fields: Set<String> = ["error", "file", "stage", "stage_name", "key", "tensor", "expected", "found"]
                if let message = obj?["error"] as? String, Set(obj!.keys).isSubset(of: fields) {
                    if !message.contains(c.names) { problems.append("error does not name '\(c.names)': \(message)") }
                } else { problems.append("stdout is not one JSON error object: \(r.stdout.prefix(300)) / \(r.stderr.suffix(300))") }
            } catch { problems.append("launch failed: \(error)") }
            if !problems.isEmpty { lock.lock(); failures.append("\(c.label): \(problems.joined(separator: "; "))"); lock.unlock() }
        }
        let written = (try? FileManager.default.contentsOfDirectory(atPath: outDir.path)) ?? []
        XCTAssertEqual(written, [], "broken inputs wrote files")
        XCTAssertEqual(failures.sorted(), [], "\(failures.count) of \(cases.count) cases")
        print("corruption suite: \(cases.count) broken inputs in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
    }
}
