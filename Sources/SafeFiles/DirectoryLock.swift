import Foundation

/// An exclusive kernel lock (flock) on a lock file inside a directory, held from `init` until `release()` or
/// deinit. The kernel drops it when the process ends, crashes included, so a stale lock file never blocks a
/// later run. The file holds the holder's PID, read back to name it when the lock is refused.
public final class DirectoryLock {
    /// The lock file.
    public let path: String
    private var fd: Int32

    /// Takes the lock on `directory` (which must exist) at once, or refuses: "DIR: in use by another ROLE (process
    /// PID holds DIR/NAME)". `role` names what uses the directory ("sweep").
    public init(directory: String, name: String, role: String) throws {
        path = (directory as NSString).appendingPathComponent(name)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw FileError(
                path, "cannot open the lock file of the \(role) directory (\(String(cString: strerror(errno))))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            let holder = Self.holder(fd)
            close(fd)
            fd = -1
            guard e == EWOULDBLOCK else {
                throw FileError(path, "cannot lock the \(role) directory (\(String(cString: strerror(e))))")
            }
            throw FileError(
                directory, "in use by another \(role) (\(holder.map { "process \($0)" } ?? "another process") holds "
                            + "\(path)); wait for it to end or use another directory")
        }
        let text = Array("\(getpid())\n".utf8)
        if ftruncate(fd, 0) == 0 { _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } }
    }

    /// The PID written in the lock file by its holder, if readable.
    static func holder(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Drops the lock (the lock file stays; it is harmless without a holder).
    public func release() {
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { release() }
}
