import Foundation
import TensorCore

/// A plain HDF5 archive of named float32 tensors plus one JSON metadata attribute, for files that are not
/// model checkpoints (training state: optimizer moments, learned maps, step counter). Layout:
///   root attributes: format (the caller's name), format_version, meta (JSON text)
///   /tensors/<name>: float32 datasets (names must not contain '/')
/// Written atomically like checkpoints (temporary file, fsync, rename).
public enum TensorArchive {
    public static func write(to path: String, format: String, version: Int, meta: String, tensors: [(String, Tensor)]) throws {
        try writeAtomically(path) { tmp in
            let file = try H5File.create(tmp)
            try file.setString("format", format)
            try file.setInt("format_version", version)
            try file.setString("meta", meta)
            try file.createGroup("tensors")
            for (name, t) in tensors {
                precondition(!name.contains("/"), "archive tensor names must not contain '/': \(name)")
                try file.write("tensors/" + name, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data)
            }
            try file.close()
        }
    }

    /// Reads an archive written by `write`, checking its format name and version.
    public static func read(_ path: String, format: String, version: Int) throws -> (meta: String, tensors: [String: Tensor]) {
        guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.notFound(path: path) }
        guard H5File.isHDF5(path) else { throw CheckpointError.unreadable(path: path, detail: "not an HDF5 file (expected a \(format) file)") }
        do {
            let file = try H5File.openReadOnly(path)
            let found = try file.string("format")
            guard found == format else { throw CheckpointError.wrongFormat(path: path, found: found) }
            let v = try file.int("format_version")
            guard v == version else { throw CheckpointError.unsupportedVersion(path: path, found: v) }
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
func writeAtomically(_ path: String, _ body: (String) throws -> Void) throws {
    let url = URL(fileURLWithPath: path)
    let tmp = url.deletingLastPathComponent()
        .appendingPathComponent(".\(url.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)").path
    do {
        try body(tmp)
        let fd = open(tmp, O_RDONLY)
        if fd >= 0 { fsync(fd); close(fd) }
        guard rename(tmp, path) == 0 else {
            throw CheckpointError.writeFailed(path: path, detail: "rename failed: \(String(cString: strerror(errno)))")
        }
    } catch {
        unlink(tmp)
        if let e = error as? CheckpointError { throw e }
        throw CheckpointError.writeFailed(path: path, detail: (error as? HDF5Failure)?.message ?? "\(error)")
    }
}
