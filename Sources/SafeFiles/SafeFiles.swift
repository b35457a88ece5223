import Diagnostics
import Foundation

/// Why a file could not be used: the file (`file`; nil when the path is empty), what is wrong with it (`problem`)
/// and, where the caller said, what was expected there (`expected`, "a checkpoint (HDF5)"). Rendered
/// "FILE: PROBLEM (expected EXPECTED)".
public struct FileError: ContextualError, Sendable {
    public let file: String?
    public let problem: String
    public let expected: String?
    /// What the message names first: the file, or the role of a file whose path is empty.
    let subject: String

    /// An error about the file at `path`; `subject` replaces the path at the head of the message (an empty path
    /// is named by its role).
    public init(_ path: String?, _ problem: String, expected: String? = nil, subject: String? = nil) {
        file = path
        self.problem = problem
        self.expected = expected
        self.subject = subject ?? path ?? ""
    }

    public var description: String { "\(subject): \(problem)" + (expected.map { " (expected \($0))" } ?? "") }
    /// The file, what was expected and the problem found.
    public var context: ErrorContext {
        ErrorContext(file: file, expected: expected, found: expected.map { _ in problem })
    }
}

/// The one door through which every reader and writer checks its files: only regular files are read or
/// replaced (a FIFO would block forever, a device node would be replaced by a regular file), outputs are
/// checked before any work starts, and temporary files of dead processes are removed.
public enum SafeFiles {
    /// The size of `path`, which must exist and be a regular file (symbolic links are followed).
    @discardableResult
    public static func regularFile(_ path: String, role: String) throws -> Int {
        guard !path.isEmpty else {
            throw FileError(nil, "the path is empty", expected: "a file name", subject: role)
        }
        var st = stat()
        guard stat(path, &st) == 0 else {
            let reason = errno == ENOENT ? "no such file" : String(cString: strerror(errno))
            throw FileError(path, reason, expected: "a \(role)")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw FileError(path, "is \(kind(st.st_mode)), not a regular file", expected: "a \(role)")
        }
        return Int(st.st_size)
    }

    /// Reads a whole regular file of at most `limit` bytes (the file is opened without blocking and checked
    /// again after opening, so a file swapped for a FIFO meanwhile is refused too).
    public static func read(_ path: String, role: String, limit: Int = 1 << 32) throws -> Data {
        try regularFile(path, role: role)
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            throw FileError(path, "cannot open: \(String(cString: strerror(errno)))", expected: "a \(role)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw FileError(path, "not a regular file", expected: "a \(role)")
        }
        let size = Int(st.st_size)
        guard size <= limit else {
            throw FileError(path, "\(size) bytes, more than the \(limit) bytes a \(role) may have")
        }
        var data = Data(count: size)
        var done = 0
        try data.withUnsafeMutableBytes { (buffer: UnsafeMutableRawBufferPointer) in
            while done < size {
                let n = Foundation.read(fd, buffer.baseAddress! + done, size - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw FileError(
                        path, "read failed after \(done) of \(size) bytes "
                            + "(\(n < 0 ? String(cString: strerror(errno)) : "file shrank"))")
                }
                done += n
            }
        }
        return data
    }

    /// Checks that `path` may be written as a `role`: a non-empty name that fits the file system (`checkName`), an
    /// existing writable directory (`checkDirectory`), and, if something is already there, a regular file (never
    /// a device, FIFO or directory).
    public static func checkOutput(_ path: String, role: String) throws {
        guard !path.isEmpty else {
            throw FileError(nil, "the output path is empty", expected: "a file name", subject: role)
        }
        try checkName(path, role: role)
        var st = stat()
        if lstat(path, &st) == 0 {
            let mode = st.st_mode & S_IFMT
            if mode == S_IFLNK {
                guard stat(path, &st) == 0 else {
                    throw FileError(path, "a dangling symbolic link", expected: "a \(role) to write")
                }
            }
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                throw FileError(
                    path, "is \(kind(st.st_mode)); refusing to replace it",
                    expected: "a regular file or a new name for the \(role)")
            }
        } else if errno != ENOENT && errno != ENOTDIR {
            throw FileError(path, String(cString: strerror(errno)), expected: "a name for the \(role)")
        }
        try checkDirectory(of: path, role: role)
    }

    /// The longest file name most file systems take (NAME_MAX), and what the temporary name `.NAME.tmp-PID`
    /// adds to an output's name (a PID has at most 7 digits on Linux).
    public static let maxNameBytes = 255
    static let temporaryNameOverhead = ".".utf8.count + ".tmp-".utf8.count + 7

    /// Refuses a path with a component longer than `maxNameBytes`, or whose last component leaves no room for the
    /// temporary name written first: "file name too long" (ENAMETOOLONG), naming the path and the limit.
    /// `temporary: false` for a name written directly (a directory): then the last component may take all of
    /// `maxNameBytes`.
    public static func checkName(_ path: String, role: String, temporary: Bool = true) throws {
        let parts = path.split(separator: "/")
        for (i, part) in parts.enumerated() {
            let limit = i == parts.count - 1 && temporary ? maxNameBytes - temporaryNameOverhead : maxNameBytes
            guard part.utf8.count <= limit else {
                let why =
                    i == parts.count - 1 && temporary
                    ? "at most \(limit) bytes: the \(role) is first written as '.NAME.tmp-PID'"
                    : "at most \(limit) bytes per directory name"
                throw FileError(
                    path, "file name too long ('\(part.prefix(40))…' is \(part.utf8.count) bytes; \(why))")
            }
        }
    }

    /// Checks that the directory `path` is to be written in exists, is a directory and is writable. A missing
    /// directory, and one whose path runs through a regular file ("'<x>' is not a directory"), are told apart.
    public static func checkDirectory(of path: String, role: String) throws {
        let dir = directory(of: path)
        var ds = stat()
        if stat(dir, &ds) != 0 || (ds.st_mode & S_IFMT) != S_IFDIR {
            if let blocker = firstNonDirectory(dir) {
                throw FileError(
                    path, "'\(blocker)' is not a directory (it is \(describe(blocker)); expected a directory for "
                        + "the \(role))")
            }
            throw FileError(
                path, "directory '\(dir)' does not exist", expected: "an existing directory for the \(role)")
        }
        guard access(dir, W_OK) == 0 else {
            throw FileError(
                path, "directory '\(dir)' is not writable (\(String(cString: strerror(errno)))); the \(role) could "
                    + "not be written")
        }
    }

    /// The first existing path on the way to `dir` (itself included) that is not a directory, if any.
    public static func firstNonDirectory(_ dir: String) -> String? {
        var prefixes: [String] = []
        var url = URL(fileURLWithPath: dir)
        while url.path != "/" && !url.path.isEmpty {
            prefixes.append(url.path)
            url = url.deletingLastPathComponent()
        }
        for p in prefixes.reversed() {
            var st = stat()
            guard stat(p, &st) == 0 else { return nil }
            if (st.st_mode & S_IFMT) != S_IFDIR { return p }
        }
        return nil
    }

    static func describe(_ path: String) -> String {
        var st = stat()
        guard stat(path, &st) == 0 else { return "missing" }
        return (st.st_mode & S_IFMT) == S_IFREG ? "a regular file" : kind(st.st_mode)
    }

    /// Refuses an output that is the same file as one of the inputs (unless `force`): writing it would
    /// replace an input the run may still need, or lose it for good.
    public static func checkDistinct(output: String, inputs: [(role: String, path: String)], force: Bool) throws {
        guard !force else { return }
        var out = stat()
        guard stat(output, &out) == 0 else { return }
        for (role, path) in inputs {
            var st = stat()
            if stat(path, &st) == 0, st.st_dev == out.st_dev, st.st_ino == out.st_ino {
                throw FileError(
                    output, "is the \(role) '\(path)'; refusing to overwrite an input (choose another output, or "
                        + "pass --force)")
            }
        }
    }

    /// The temporary name beside `path` that this process writes before renaming: `.NAME.tmp-PID`.
    public static func temporaryPath(for path: String) -> String {
        let url = URL(fileURLWithPath: path)
        return url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())").path
    }

    /// Removes `.NAME.tmp-PID` files beside `path` left by processes that no longer exist (killed runs).
    public static func removeStaleTemporaries(for path: String) {
        let url = URL(fileURLWithPath: path)
        let prefix = ".\(url.lastPathComponent).tmp-"
        let dir = url.deletingLastPathComponent().path
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for name in names where name.hasPrefix(prefix) {
            guard let pid = Int32(name.dropFirst(prefix.count)), pid > 0, pid != getpid() else { continue }
            if kill(pid, 0) != 0 && errno == ESRCH { unlink(dir + "/" + name) }
        }
    }

    static func directory(of path: String) -> String {
        let d = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return d.isEmpty ? "." : d
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFDIR: return "a directory"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }
}
