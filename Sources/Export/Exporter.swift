import Diagnostics
import Checkpoint
import Foundation
import Model
import SafeFiles

/// Writes a checkpoint for an inference server: a Hugging Face directory (`HFExport`) or a GGUF file
/// (`GGUFExport`). Everything is built in memory and checked first; then it is written beside the output
/// (`.NAME.tmp-PID`, a file or a directory), flushed and renamed into place, so a failed export leaves
/// nothing at the output and nothing beside it.
public enum Exporter {
    /// Checks, before any work, that `output` may be written: a name in an existing writable directory; not
    /// one of `inputs` and not a directory holding one (never, not even with --force); an existing file or
    /// non-empty directory only with `force`; a GGUF output never replaces a directory, an HF one never a file
    /// unless forced.
    public static func checkOutput(
        _ output: String, format: ExportFormat, inputs: [(role: String, path: String)], force: Bool
    ) throws {
        guard !output.isEmpty else {
            throw ExportError("the output path is empty (expected a \(format == .hf ? "directory" : "file") name)")
        }
        let out = URL(fileURLWithPath: output).standardizedFileURL.path
        // The same checks as every other output: a name too long (its temporary name included) and a path through
        // a regular file are told apart from a missing or read-only directory.
        do {
            try SafeFiles.checkName(out, role: "export")
            try SafeFiles.checkDirectory(of: out, role: "export")
        } catch { throw error.adding(advice: "nothing was exported") }
        let outReal = realpath(out)
        for (role, path) in inputs {
            guard let r = realpath(path) else { continue }
            if let o = outReal, r == o || r.hasPrefix(o.hasSuffix("/") ? o : o + "/") {
                throw ExportError(
                    "\(output): \(r == o ? "is" : "contains") the \(role) '\(path)'; refusing to replace an input "
                        + "(choose another output)")
            }
        }
        var st = stat()
        guard lstat(out, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFLNK {
            throw ExportError("is a symbolic link; refusing to replace it (give a plain path)",
                ErrorContext(file: output))
        }
        let isDir = (st.st_mode & S_IFMT) == S_IFDIR
        switch (format, isDir) {
        case (.hf, true):
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: out)) ?? []
            if !entries.isEmpty && !force {
                throw ExportError(
                    "\(output): an existing non-empty directory (\(entries.count) entries); refusing to replace it "
                        + "(pass --force to replace it)")
            }
        case (.gguf, true):
            throw ExportError("is a directory (expected a GGUF file name)", ErrorContext(file: output))
        case (_, false):
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw ExportError("exists and is not a regular file; refusing to replace it",
                    ErrorContext(file: output))
            }
            if !force {
                throw ExportError("already exists; refusing to replace it (pass --force to replace it)",
                    ErrorContext(file: output))
            }
        }
    }

    /// Reads a checkpoint and exports it.
    public static func export(checkpoint path: String, options: ExportOptions) throws -> ExportReport {
        try checkOutput(options.output, format: options.format, inputs: [("checkpoint", path)], force: options.force)
        return try export(try Checkpoint.read(path), source: path, options: options)
    }

    /// Exports a checkpoint held in memory (the output is checked again, as for `export(checkpoint:)`).
    public static func export(_ ckpt: Checkpoint, source: String, options: ExportOptions) throws -> ExportReport {
        let start = Date()
        try checkOutput(options.output, format: options.format, inputs: [("checkpoint", source)], force: options.force)
        if options.format == .hf, options.requantize != nil {
            throw ExportError(
                "--requantize applies to GGUF only (a Hugging Face export dequantizes what compressed-tensors cannot "
                    + "hold, and reports the loss)")
        }
        let built =
            try options.format == .hf
            ? HFExport.build(ckpt, options: options) : GGUFExport.build(ckpt, options: options)
        let bytes = built.files.reduce(0) { $0 + $1.bytes.count }
        try write(built.files, to: options.output, directory: options.format == .hf)
        let lossy = built.tensors.filter { !$0.lossless }.map { t in
            "\(t.name): \(t.source) → \(t.type), max |error| \(String(format: "%.3g", t.maxAbsError ?? 0)), relative "
                + "RMS \(String(format: "%.3g", t.relativeRMSError ?? 0))"
        }
        return ExportReport(
            checkpoint: source, output: options.output, format: options.format.rawValue,
            architecture: built.architecture,
            dtype: options.dtype.rawValue,
            files: built.files.map {
                $0.name.isEmpty ? URL(fileURLWithPath: options.output).lastPathComponent : $0.name
            },
            bytes: bytes, tensors: built.tensors, lossy: lossy, warnings: built.warnings,
            seconds: Date().timeIntervalSince(start))
    }

    /// Writes the files into a temporary file or directory beside `output`, fsyncs them and renames it over
    /// `output` (an existing directory is first moved aside, then removed). On failure nothing is left.
    static func write(_ files: [(name: String, bytes: [UInt8])], to output: String, directory: Bool) throws {
        let out = URL(fileURLWithPath: output).standardizedFileURL.path
        SafeFiles.removeStaleTemporaries(for: out)
        let tmp = SafeFiles.temporaryPath(for: out)
        let fm = FileManager.default
        do {
            if directory {
                try fm.createDirectory(atPath: tmp, withIntermediateDirectories: false)
                for f in files { try writeFile(f.bytes, to: tmp + "/" + f.name) }
            } else {
                guard files.count == 1 else { preconditionFailure("a file export has one file") }
                try writeFile(files[0].bytes, to: tmp)
            }
            var st = stat()
            if directory, lstat(out, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
                let old = URL(fileURLWithPath: out).deletingLastPathComponent().appendingPathComponent(
                    ".\(URL(fileURLWithPath: out).lastPathComponent).old-\(getpid())"
                ).path
                guard rename(out, old) == 0 else {
                    throw ExportError(
                        "\(output): cannot move the existing directory aside (\(String(cString: strerror(errno))))")
                }
                guard rename(tmp, out) == 0 else {
                    let reason = String(cString: strerror(errno))
                    _ = rename(old, out)
                    throw ExportError("cannot rename the export into place (\(reason))", ErrorContext(file: output))
                }
                try? fm.removeItem(atPath: old)
            } else {
                if directory, lstat(out, &st) == 0 { try fm.removeItem(atPath: out) }  // a file, replaced under --force
                guard rename(tmp, out) == 0 else {
                    throw ExportError(
                        "\(output): cannot rename the export into place (\(String(cString: strerror(errno))))")
                }
            }
        } catch {
            try? fm.removeItem(atPath: tmp)
            throw error
        }
    }

    static func writeFile(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ExportError("cannot create (\(String(cString: strerror(errno))))", ErrorContext(file: path))
        }
        defer { close(fd) }
        var done = 0
        try bytes.withUnsafeBytes { raw in
            while done < raw.count {
                let n = Foundation.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw ExportError(
                        "\(path): write failed after \(done) of \(raw.count) bytes "
                            + "(\(String(cString: strerror(errno))))")
                }
                done += n
            }
        }
        guard fsync(fd) == 0 else {
            throw ExportError("fsync failed (\(String(cString: strerror(errno))))", ErrorContext(file: path))
        }
    }

    private static func realpath(_ path: String) -> String? {
        guard let p = Foundation.realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}
