import Foundation
import Model

/// Calibration statistics on disk, so that repeating a recipe with another target does not recompute them.
///
/// An entry is keyed by its scope — the base checkpoint's content hash, the calibration settings and the
/// stages before the pass (everything the pass's input model and data depend on) — plus the statistic's name
/// and the settings it was computed with. Targets are never part of a key. Each file repeats its full key,
/// which is checked on read, so a hash collision reads as a miss. Files are written to a temporary name and
/// renamed.
public final class StatsCache {
    /// Where entries are kept on disk (nil: only in the session's memory).
    public let directory: String?
    /// Entries computed or read earlier in this session (shared by every stage and run of one `Session`).
    public let memo: AnalysisMemo?
    /// Everything the pass's input depends on, as canonical JSON text.
    public let scope: String
    /// Names of the entries read from and written to disk, in order.
    public private(set) var hits: [String] = []
    public private(set) var misses: [String] = []
    /// Disk writes that failed (the value is still used; a cache never fails a run).
    public private(set) var warnings: [String] = []

    public init(directory: String?, scope: JSONValue, memo: AnalysisMemo? = nil) {
        self.directory = directory
        self.scope = scope.text
        self.memo = memo
    }

    func key(_ name: String, _ settings: JSONValue) -> String { scope + "\n" + name + "\n" + settings.text }

    func path(_ name: String, _ settings: JSONValue) -> String? {
        guard let directory else { return nil }
        let key = String(format: "%016llx", fnv1a64(key(name, settings)))
        return (directory as NSString).appendingPathComponent("\(name)-\(key).json")
    }

    /// The cached value of `name` computed with `settings` (from this session's memory, then from disk), or nil.
    public func load<T: Codable>(_ name: String, settings: JSONValue, as: T.Type = T.self) -> T? {
        if let v = memo?.entries[key(name, settings)] as? T { hits.append(name); return v }
        guard let path = path(name, settings), let data = FileManager.default.contents(atPath: path),
              let entry = try? JSONDecoder().decode(Entry<T>.self, from: data),
              entry.scope == scope, entry.name == name, entry.settings == settings.text else { return nil }
        memo?.entries[key(name, settings)] = entry.value
        hits.append(name)
        return entry.value
    }

    /// Stores `value` in the session's memory and on disk (atomically, under a per-process temporary name).
    /// A failure to write the disk entry is recorded in `warnings`, never thrown: the cache never fails a run.
    public func store<T: Codable>(_ name: String, settings: JSONValue, value: T) {
        memo?.entries[key(name, settings)] = value
        misses.append(name)
        guard let target = path(name, settings), let directory else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            let data = try e.encode(Entry(scope: scope, name: name, settings: settings.text, value: value))
            let tmp = target + ".tmp-\(getpid())"
            try data.write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, target) == 0 else {
                try? FileManager.default.removeItem(atPath: tmp)
                throw RecipeError("\(target): cannot rename the cache file into place")
            }
        } catch {
            warnings.append("\(directory): cache entry '\(name)' not written (\(error)); the value is used all the " +
                            "same")
        }
    }

    /// The cached value, or `compute()`'s, which is then stored.
    public func value<T: Codable>(_ name: String, settings: JSONValue, compute: () throws -> T) throws -> T {
        if let v = load(name, settings: settings, as: T.self) { return v }
        let v = try compute()
        store(name, settings: settings, value: v)
        return v
    }

    struct Entry<T: Codable>: Codable {
        var scope: String
        var name: String
        var settings: String
        var value: T
    }
}

/// Analysis results of one session, by full cache key: a second target (or sweep point) on the same base
/// reuses them without recomputing, with or without a disk cache.
public final class AnalysisMemo {
    var entries: [String: Any] = [:]
    public init() {}
    public var count: Int { entries.count }
}

/// 64-bit FNV-1a of a string's UTF-8 bytes.
public func fnv1a64(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

/// A 64-bit hash of a file's bytes (FNV-1a over 8-byte words, then the tail bytes), hex: identifies a base
/// checkpoint by content, not by name or date. Reads the file in 4 MiB blocks.
public func fileContentHash(_ path: String) throws -> String {
    guard let fh = FileHandle(forReadingAtPath: path) else { throw RecipeError("\(path): cannot open to hash it") }
    defer { try? fh.close() }
    var h: UInt64 = 0xcbf2_9ce4_8422_2325, total = 0
    while true {
        let block = fh.readData(ofLength: 4 << 20)
        if block.isEmpty { break }
        total += block.count
        block.withUnsafeBytes { raw in
            let words = raw.count / 8
            for i in 0..<words {
                h = (h ^ raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0x100_0000_01b3
            }
            for i in (words * 8)..<raw.count { h = (h ^ UInt64(raw[i])) &* 0x100_0000_01b3 }
        }
    }
    return String(format: "%016llx-%d", h, total)
}
