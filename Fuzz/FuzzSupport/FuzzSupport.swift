// What every fuzz harness shares: the input as a file (our readers take paths and memory-map them), the
// repository's fixtures, and the replay entry point of a build without the fuzzer.
//
// A harness is built two ways (README, "Fuzzing"):
// - `tools/fuzz.sh` (release, `--sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING`):
//   the harness exports `LLVMFuzzerTestOneInput` and libFuzzer supplies `main`.
// - any other build (e.g. `swift build`, `swift test`): `main` replays the files and directories named on the
//   command line through the same function, so a crash found by the fuzzer reproduces in a debugger.
// A harness must return normally for every input: a thrown error is the reader doing its job; a trap, a hang,
// a leak or an out-of-bounds access is a finding.
import Foundation

public enum FuzzSupport {
    /// A directory private to this process (in /dev/shm when it exists: the inputs never touch the disk).
    public static let scratch: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let dir = base + "/compress-fuzz-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: FuzzSupport.scratch) }
        return dir
    }()

    /// Writes `bytes` to `scratch/name` (replacing it) and returns the path.
    public static func file(_ name: String, _ bytes: UnsafeRawBufferPointer) -> String {
        let path = scratch + "/" + name
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0, "fuzz scratch file \(path): \(String(cString: strerror(errno)))")
        defer { close(fd) }
        var done = 0
        while done < bytes.count {
            let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
            precondition(n > 0, "fuzz scratch file \(path): short write")
            done += n
        }
        return path
    }

    /// The repository's root (this file sits at Fuzz/FuzzSupport/FuzzSupport.swift).
    public static let repository: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
    }()

    /// A test fixture's path: Tests/Fixtures/<name>.
    public static func fixture(_ name: String) -> String { repository + "/Tests/Fixtures/" + name }

    /// Splits an input at NUL bytes into at most `parts` pieces (the last keeps any further NULs): how the
    /// structured harnesses read several fields from one input.
    public static func split(_ bytes: UnsafeRawBufferPointer, parts: Int) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var current: [UInt8] = []
        for b in bytes {
            if b == 0, out.count < parts - 1 { out.append(current); current = [] } else { current.append(b) }
        }
        out.append(current)
        return out
    }

    /// The replay entry point: runs `body` on every file named in `arguments` (directories: every file in
    /// them, sorted), printing one line per input, and exits 0. Used when the fuzzer is not linked.
    public static func replay(_ arguments: [String], _ body: (UnsafeRawBufferPointer) -> Void) {
        var files: [String] = []
        for a in arguments {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: a, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("\(a): no such file or directory\n".utf8)); exit(1)
            }
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: a)) ?? []
                files += names.sorted().map { a + "/" + $0 }
            } else {
                files.append(a)
            }
        }
        if files.isEmpty { print("usage: \(CommandLine.arguments[0]) FILE_OR_DIRECTORY..."); exit(2) }
        for f in files {
            guard let data = FileManager.default.contents(atPath: f) else { continue }
            data.withUnsafeBytes { body($0) }
            print("ok \(f) (\(data.count) bytes)")
        }
    }
}
