import Diagnostics
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Failure to open or map a file; `description` names the path and the OS error.
public struct MappedFileError: ContextualError, Sendable {
    /// The file that could not be mapped.
    public let path: String
    /// What failed, without the path (e.g. `cannot open: No such file or directory`).
    public let reason: String
    /// `path: reason`.
    public var description: String { "\(path): \(reason)" }
    public var context: ErrorContext { ErrorContext(file: path) }

    init(_ path: String, _ reason: String) {
        self.path = path
        self.reason = reason
    }
}

/// A read-only memory map of a whole file, unmapped on deinit.
///
/// Immutable after init, so sharing it across threads is safe.
public final class MappedFile: @unchecked Sendable {
    /// Path the file was opened from.
    public let path: String
    /// The mapped bytes (empty for an empty file).
    public let bytes: UnsafeRawBufferPointer

    /// Maps `path` read-only.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)  // a FIFO must not block the open
        guard fd >= 0 else { throw Self.osError("cannot open", path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Self.osError("cannot stat", path) }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw MappedFileError(path, "expected a regular file")
        }
        let size = Int(st.st_size)
        if size == 0 {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let base, base != MAP_FAILED else { throw Self.osError("cannot map", path) }
        bytes = UnsafeRawBufferPointer(start: base, count: size)
    }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }

    private static func osError(_ what: String, _ path: String) -> MappedFileError {
        MappedFileError(path, "\(what): \(String(cString: strerror(errno)))")
    }
}
