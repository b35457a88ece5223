import CHDF5
import Foundation
import Model
import TensorCore
import XCTest
@testable import Checkpoint

/// End-to-end: run the built `compress` binary and check its output and exit status.
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        var json: [String: Any]? { try? JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any] }
    }

    var binary: URL {
        // The executable sits in the build products directory, beside (or just above) the test bundle.
        let bundle = Bundle(for: CLITests.self).bundleURL
        let candidates = [bundle.appendingPathComponent("compress"), bundle.deletingLastPathComponent().appendingPathComponent("compress")]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) } ?? candidates[0]
    }

    /// Runs the binary (in `environment` when given); the process must exit (not die of a signal).
    func run(_ args: [String], environment: [String: String]? = nil) throws -> Result {
        let r = try launch(args, environment: environment)
        XCTAssertEqual(r.reason, .exit, "crashed: \(args)")
        return Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }

    /// Runs the binary and reports how it ended, signals included.
    func launch(_ args: [String], environment: [String: String]? = nil) throws -> (reason: Process.TerminationReason, status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        if let environment { p.environment = environment }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationReason, p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func fixture(_ name: String) -> String { Self.fixtures.appendingPathComponent(name).path }

    func tempFile(_ name: String, _ contents: Data) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)-\(name)")
        try contents.write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    func testEvalJSONMatchesReference() throws {
        let r = try run(["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(r.json)
        let ref = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.reference.json"))) as? [String: Any]
        let refPPL = try XCTUnwrap((ref?["perplexity"] as? [String: Any])?["ppl"] as? Double)
        XCTAssertEqual(try XCTUnwrap(j["ppl"] as? Double), refPPL, accuracy: refPPL * 1e-6)
        XCTAssertEqual(j["predicted_tokens"] as? Int, 5 * 31)
        XCTAssertEqual(j["window"] as? Int, 32)
        for key in ["nll", "seconds", "tokens_per_second"] { XCTAssertNotNil(j[key] as? Double, key) }
    }

    /// With OPENBLAS_CORETYPE unset the program picks the kernels for this CPU itself (Debian's OpenBLAS 0.3.21
    /// falls back to Prescott on recent CPUs); a value the user sets wins. Both show in the report.
    func testBLASKernelsChosenWithoutSetting() throws {
        let args = ["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"]
        var env = ProcessInfo.processInfo.environment
        env[BLASKernels.variable] = nil
        env[BLASKernels.marker] = nil
        let auto = try run(args, environment: env)
        XCTAssertEqual(auto.status, 0, auto.stderr)
        let core = try XCTUnwrap(auto.json?["blas_core"] as? String)
        let features = CPUFeatures.current
        guard let expected = BLASKernels.preferredCore(for: features) else {
            throw XCTSkip("no AVX2 + FMA on this CPU: OpenBLAS chooses (\(core))")
        }
        XCTAssertEqual(core, "\(expected) (automatic)")
        for generic in ["Prescott", "Core2", "Nehalem", "Sandybridge", "Katmai", "Coppermine", "Northwood", "Banias", "Atom"] {
            XCTAssertFalse(core.hasPrefix(generic), "generic kernels \(core) on a CPU with AVX2: \(features)")
        }

        env[BLASKernels.variable] = "Haswell"
        let user = try run(args, environment: env)
        XCTAssertEqual(user.status, 0, user.stderr)
        XCTAssertEqual(user.json?["blas_core"] as? String, "Haswell (OPENBLAS_CORETYPE)")
    }

    func testEvalMaxTokens() throws {
        let r = try run(["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--max-tokens", "70", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.json?["windows"] as? Int, 2)
        XCTAssertEqual(r.json?["predicted_tokens"] as? Int, 62)
    }

    func testInspect() throws {
        let r = try run(["inspect", fixture("tiny-llama-tied.h5"), "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(r.json)
        let tensors = try XCTUnwrap(j["tensors"] as? [[String: Any]])
        let total = tensors.reduce(0) { $0 + (($1["shape"] as? [Int]) ?? []).reduce(1, *) }
        XCTAssertEqual(j["parameters"] as? Int, total)
        XCTAssertEqual((j["layers"] as? [Any])?.count, 3)
        XCTAssertFalse(tensors.contains { $0["name"] as? String == "lm_head.weight" })  // tied
        XCTAssertEqual((j["history"] as? [Any])?.count, 1)
        let text = try run(["inspect", fixture("tiny-llama-tied.h5")])
        XCTAssertTrue(text.stdout.contains("model.layers.2.mlp.down_proj.weight [64, 96]"), text.stdout)
    }

    func testBadInputsFailCleanly() throws {
        let notHDF5 = try tempFile("x.h5", Data("hello".utf8))
        let full = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.h5"))
        let truncated = try tempFile("cut.h5", full.prefix(full.count / 2))
        let emptyTokens = try tempFile("empty.txt", Data("  \n".utf8))
        let badTokens = try tempFile("bad.txt", Data("1 2 x3".utf8))
        let stream = fixture("tiny-llama.stream.txt")
        let cases: [([String], String)] = [
            (["eval", notHDF5, "--tokens", stream], "not an HDF5 file"),
            (["eval", truncated, "--tokens", stream], "truncated file"),  // HDF5's own words
            (["eval", fixture("tiny-llama.h5"), "--tokens", emptyTokens], "token file is empty"),
            (["eval", fixture("tiny-llama.h5"), "--tokens", badTokens], "unexpected character 'x'"),
            (["eval", fixture("tiny-llama.h5"), "--tokens", stream, "--window", "1000"], "need at least one whole window"),
            (["eval", "/no/such.h5", "--tokens", stream], "no such file"),
            (["inspect", notHDF5], "not an HDF5 file"),
        ]
        for (args, message) in cases {
            let r = try run(args)
            XCTAssertNotEqual(r.status, 0, "\(args)")
            XCTAssertTrue(r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        // With --json the error is also one JSON object on standard output.
        let j = try run(["eval", notHDF5, "--tokens", stream, "--json"])
        XCTAssertEqual(j.status, 1)
        XCTAssertTrue((j.json?["error"] as? String)?.contains(notHDF5) ?? false, j.stdout)
    }

    /// A copy of tiny-llama.h5 written tensor by tensor with one change, to make a broken checkpoint.
    func brokenCheckpoint(_ name: String, version: Int = CheckpointFormat.version,
                          edit: (inout [(String, Tensor)]) -> Void) throws -> String {
        let model = try Checkpoint.read(fixture("tiny-llama.h5")).model
        var tensors = model.namedTensors.map { ($0.name, $0.tensor) }
        edit(&tensors)
        let path = try tempFile(name, Data())
        let f = try H5File.create(path)
        try f.setString("format", CheckpointFormat.name)
        try f.setInt("format_version", version)
        try f.setString("config", model.config.json.text)
        try f.createGroup("tensors")
        for (n, t) in tensors {
            try f.write("tensors/" + n, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data)
        }
        try f.close()
        return path
    }

    func testBrokenCheckpointsExitNonZeroWithTheirError() throws {
        let missing = try brokenCheckpoint("missing.h5") { $0.removeAll { $0.0 == "model.layers.1.mlp.up_proj.weight" } }
        let shape = try brokenCheckpoint("shape.h5") { ts in
            ts = ts.map { $0.0 == "model.norm.weight" ? ($0.0, Tensor(shape: [63])) : $0 }
        }
        let version = try brokenCheckpoint("version.h5", version: 99) { _ in }
        let stream = fixture("tiny-llama.stream.txt")
        let cases: [(String, String)] = [
            (missing, "missing tensor 'model.layers.1.mlp.up_proj.weight' (expected shape [160, 64])"),
            (shape, "tensor 'model.norm.weight': expected shape [64], found [63]"),
            (version, "root attribute 'format_version' is 99, which this build does not read (it reads versions 1, 2, 3)"),
        ]
        for (path, message) in cases {
            for args in [["eval", path, "--tokens", stream, "--window", "32"], ["inspect", path]] {
                let r = try run(args)
                XCTAssertEqual(r.status, 1, "\(args)")
                XCTAssertTrue(r.stderr.contains(path) && r.stderr.contains(message), "\(args): \(r.stderr)")
            }
        }
    }

    func testImportWritesNothingOnBadSource() throws {
        let gguf = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.gguf"))
        let cut = try tempFile("cut.gguf", gguf.prefix(gguf.count / 2))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString).h5").path
        let r = try run(["import", cut, "-o", out])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains(cut), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        // And a good import round-trips to the same logits as the original checkpoint.
        addTeardownBlock { try? FileManager.default.removeItem(atPath: out) }
        let ok = try run(["import", fixture("tiny-llama.gguf"), "-o", out, "--json"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertEqual(ok.json?["parameters"] as? Int, 119_104)
        let a = try run(["eval", out, "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"])
        let b = try run(["eval", fixture("tiny-llama.h5"), "--tokens", fixture("tiny-llama.stream.txt"), "--window", "32", "--json"])
        XCTAssertEqual(a.json?["total_nll"] as? Double, b.json?["total_nll"] as? Double)
    }

    func testTokenizeRoundTripsBytes() throws {
        // The fixture's tokenizer is byte-level with no merges: ids are the UTF-8 bytes.
        let text = "héllo 1990\n"
        let file = try tempFile("t.txt", Data(text.utf8))
        let r = try run(["tokenize", fixture("tiny-llama.h5"), "--text", file])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }, text.utf8.map { Int($0) })
    }

    func testArgumentValidation() throws {
        let r = try run(["eval", fixture("tiny-llama.h5")])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("exactly one of --text FILE or --tokens FILE"), r.stderr)
    }
}
