import Foundation
import SafeFiles
import TensorCore

/// A plain HDF5 archive of named float32 tensors plus one JSON metadata attribute, for files that are not
/// model checkpoints (training state: optimizer moments, learned maps, step counter). Layout:
///   root attributes: format (the caller's name), format_version, meta (JSON text)
///   /tensors/<name>: float32 datasets (names must not contain '/')
/// Written atomically like checkpoints (temporary file, fsync, rename).
public enum TensorArchive {
    public static func write(to path: String, format: String, version: Int, meta: String, tensors: [(String, Tensor)])
        throws
    {
        try writeAtomically(path) { tmp in
            let file = try H5File.create(tmp)
            try file.setString("format", format)
            try file.setInt("format_version", version)
            try file.setString("meta", meta)
            try file.createGroup("tensors")
            for (name, t) in tensors {
                precondition(!name.contains("/"), "archive tensor names must not contain '/': \(name)")
                try file.write(
                    "tensors/" + name, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32,
                    data: t.data)
            }
            try file.close()
        }
    }

    /// Reads an archive written by `write`, checking its format name and version.
    public static func read(
        _ path: String, format: String, version: Int
    ) throws -> (meta: String, tensors: [String: Tensor]) {
        try requireRegularFile(path)
        guard H5File.isHDF5(path) else {
            throw CheckpointError.unreadable(path: path, detail: "not an HDF5 file (expected a \(format) file)")
        }
        do {
            let file = try H5File.openReadOnly(path)
            let found = try file.string("format")
            guard found == format else { throw CheckpointError.wrongFormat(path: path, found: found, expected: format) }
            let v = try file.int("format_version")
            guard v == version else {
                throw CheckpointError.unsupportedVersion(path: path, found: v, supported: [version])
            }
            let meta = try file.string("meta")
            var tensors: [String: Tensor] = [:]
            for name in try file.members("tensors") {
                tensors[name] = try file.readFloat32("tensors/" + name, label: name)
            }
            return (meta, tensors)
        } catch let e as HDF5Failure {
            throw CheckpointError.unreadable(path: path, detail: e.message)
        }
    }
}

/// Runs `body` on a temporary path beside `path`, makes the bytes durable and renames the file over
/// `path`; on any failure the temporary file is removed and `path` is untouched.
/// `body` writes and closes `.NAME.tmp-PID` beside `path`; it is fsynced and renamed over `path`. On any failure
/// (a full disk included) the temporary file is removed and `path` is untouched. Only a regular file (or a new
/// name) is ever replaced; temporary files of processes that no longer exist are removed first.
func writeAtomically(_ path: String, _ body: (String) throws -> Void) throws {
    try SafeFiles.checkOutput(path, role: "checkpoint")  // a FileError names the path and what is wrong with it
    SafeFiles.removeStaleTemporaries(for: path)
    let tmp = SafeFiles.temporaryPath(for: path)
    do {
        try body(tmp)
        killIfTesting(path)
        let fd = open(tmp, O_RDONLY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            if fd >= 0 { close(fd) }
            throw CheckpointError.writeFailed(
                path: path, detail: "fsync of \(tmp) failed: \(String(cString: strerror(errno)))")
        }
        close(fd)
        guard rename(tmp, path) == 0 else {
            throw CheckpointError.writeFailed(path: path, detail: "rename failed: \(String(cString: strerror(errno)))")
        }
    } catch {
        unlink(tmp)
        if let e = error as? CheckpointError { throw e }
        throw CheckpointError.writeFailed(path: path, detail: (error as? HDF5Failure)?.message ?? "\(error)")
    }
}

/// Testing aid for the kill tests: with `COMPRESS_TEST_KILL_WRITING=SUFFIX#N` in the environment, the N-th
/// atomic write (counted from 1) of a path ending in SUFFIX SIGKILLs this process after the temporary file is
/// written and before it is renamed into place: a crash in the middle of a save.
private nonisolated(unsafe) var testKillWrites = 0
private func killIfTesting(_ path: String) {
    guard let spec = ProcessInfo.processInfo.environment["COMPRESS_TEST_KILL_WRITING"] else { return }
    let parts = spec.split(separator: "#")
    guard let suffix = parts.first, path.hasSuffix(suffix) else { return }
    testKillWrites += 1
    if testKillWrites == (parts.count > 1 ? Int(parts[1]) ?? 1 : 1) { kill(getpid(), SIGKILL) }
}

/// Checks that a checkpoint path names an existing regular file (never opens a FIFO or a device).
func requireRegularFile(_ path: String) throws {
    do { try SafeFiles.regularFile(path, role: "checkpoint (HDF5)") } catch let e as FileError {
        var st = stat()
        if stat(path, &st) != 0 && errno == ENOENT { throw CheckpointError.notFound(path: path) }
        throw CheckpointError.unreadable(
            path: path,
            detail: e.description.hasPrefix(path + ": ")
                ? String(e.description.dropFirst(path.count + 2)) : e.description)
    }
}
