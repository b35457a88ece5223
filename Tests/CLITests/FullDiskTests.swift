import Foundation
import XCTest

/// Writes that run out of space: every command that writes a file (import, apply, distill, sweep's collect
/// summary) is run where the write fails part-way, and must exit with status 1 and one JSON error naming the
/// output, leave no partial output and no temporary file behind, and leave its inputs untouched.
///
/// Two ways of running out: a file-size limit (`ulimit -f` with SIGXFSZ ignored, so write(2) fails with EFBIG:
/// works everywhere, no privileges), and, when the test runs as root and may mount, a real 256 KiB tmpfs
/// (write(2) fails with ENOSPC, the case users meet).
extension CLITests {
    /// Runs the binary under a shell that ignores SIGXFSZ and sets `ulimit -f` (1 KiB blocks) when given.
    func launchLimited(_ args: [String], fileBlocks: Int?) throws -> Outcome {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        let limit = fileBlocks.map { "ulimit -f \($0); " } ?? ""
        p.arguments = ["-c", "trap '' XFSZ; \(limit)exec \"$0\" \"$@\"", binary.path] + args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Outcome(reason: p.terminationReason, status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                       stderr: String(decoding: e, as: UTF8.self), timedOut: false)
    }

    /// Mounts a tmpfs of `kib` KiB at a new directory; nil when this process may not mount (not root, no
    /// mount(8), a container without the capability).
    func smallFilesystem(kib: Int) -> URL? {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/bin/mount") else { return nil }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("full-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/mount")
        p.arguments = ["-t", "tmpfs", "-o", "size=\(kib)k", "tmpfs", dir.path]
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { try? FileManager.default.removeItem(at: dir); return nil }
        addTeardownBlock {
            let u = Process()
            u.executableURL = URL(fileURLWithPath: "/bin/umount")
            u.arguments = [dir.path]
            try? u.run(); u.waitUntilExit()
            try? FileManager.default.removeItem(at: dir)
        }
        return dir
    }

    func assertCleanFailure(_ r: Outcome, output: String, directory: URL, before: [String], _ label: String, cause: String,
                            file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.reason, .exit, "\(label): died of a signal\n\(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, 1, "\(label): \(r.stderr)", file: file, line: line)
        let objects = r.stdout.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(objects.count, 1, "\(label): expected one JSON object, got \(r.stdout)", file: file, line: line)
        let json = objects.first.flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let message = (json?["error"] as? String) ?? ""
        XCTAssertTrue(message.contains((output as NSString).lastPathComponent), "\(label): error names no output: \(r.stdout)", file: file, line: line)
        XCTAssertTrue(message.hasPrefix(output) && message.contains(cause), "\(label): expected '\(output): … \(cause)', got \(message)", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: output), "\(label): a partial output was left", file: file, line: line)
        let after = (try? FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()) ?? []
        XCTAssertEqual(after, before, "\(label): files left behind", file: file, line: line)
    }

    func testWritesThatRunOutOfSpaceLeaveNothing() throws {
        let (dir, text) = try makeRecipeDirectory()
        let outDir = dir.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
        let source = try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.h5"))

        // (label, arguments given the output path)
        let cases: [(String, (String) throws -> [String])] = [
            ("import", { ["import", self.fixture("tiny-llama.gguf"), "-o", $0, "--json"] }),
            ("apply", { ["apply", try self.recipe(dir, "r-\(UUID().uuidString).json", text, stages: #"{"stage": "finercut", "remove": 1}"#),
                         "-o", $0, "--no-cache", "--json"] }),
            ("distill", { ["distill", "--teacher", self.fixture("tiny-llama.h5"), "--student", self.fixture("tiny-llama.h5"), "--train", text,
                           "--steps", "1", "--batch", "1", "--window", "16", "--warmup", "0", "--eval-tokens", "0", "--save-every", "0",
                           "-o", $0, "--json"] }),
        ]
        // The file-size limit: 64 KiB, well below the fixture's size.
        for (label, args) in cases {
            let output = outDir.appendingPathComponent("\(label).h5").path
            let before = try FileManager.default.contentsOfDirectory(atPath: outDir.path).sorted()
            let r = try launchLimited(try args(output), fileBlocks: 64)
            assertCleanFailure(r, output: output, directory: outDir, before: before, "\(label) under ulimit -f",
                               cause: String(cString: strerror(EFBIG)))
            XCTAssertEqual(try Data(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama.h5")), source, "\(label) changed its input")
        }
        // The same commands without the limit succeed (the failure above was the limit, not the arguments).
        let ok = try launchLimited(try cases[0].1(outDir.appendingPathComponent("ok.h5").path), fileBlocks: nil)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        try FileManager.default.removeItem(at: outDir.appendingPathComponent("ok.h5"))

        // A real full filesystem, where this machine allows mounting one.
        guard let small = smallFilesystem(kib: 256) else { return }
        for (label, args) in cases {
            let output = small.appendingPathComponent("\(label).h5").path
            let before = try FileManager.default.contentsOfDirectory(atPath: small.path).sorted()
            let r = try launchLimited(try args(output), fileBlocks: nil)
            assertCleanFailure(r, output: output, directory: small, before: before, "\(label) on a full tmpfs",
                               cause: String(cString: strerror(ENOSPC)))
        }
    }
}
