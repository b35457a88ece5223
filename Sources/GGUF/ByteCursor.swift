/// Bounds-checked little-endian reader over the mapped file; every failure names the file and offset.
struct ByteCursor {
    let bytes: UnsafeRawBufferPointer
    let path: String
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer, path: String) {
        self.bytes = bytes
        self.path = path
    }

    var remaining: Int { bytes.count - offset }

    func error(_ message: String, expected: String? = nil, found: String? = nil) -> GGUFError {
        GGUFError(path, message, expected: expected, found: found)
    }

    /// Throws unless `count` more bytes are available for `what`.
    func require(_ count: Int, for what: @autoclosure () -> String) throws {
        guard count >= 0, count <= remaining else {
            throw error(
                "truncated: \(what()) needs \(count) bytes at offset \(offset), found \(remaining) (file size "
                    + "\(bytes.count))", expected: "\(count) bytes", found: "\(remaining) bytes")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        let size = MemoryLayout<T>.size
        try require(size, for: what())
        guard let base = bytes.baseAddress else { throw error("empty file") }
        defer { offset += size }
        return T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Reads a u64 count and checks that `count * minElementBytes` bytes could still follow.
    mutating func readCount(_ what: @autoclosure () -> String, minElementBytes: Int) throws -> Int {
        let raw = try read(UInt64.self, what())
        guard raw <= UInt64(remaining / max(minElementBytes, 1)) else {
            throw error(
                "truncated or corrupt: \(what()) is \(raw), but only \(remaining) bytes remain at offset \(offset) "
                    + "(each element needs at least \(minElementBytes))")
        }
        return Int(raw)
    }

    mutating func readString(_ what: @autoclosure () -> String) throws -> String {
        let count = try readCount("length of \(what())", minElementBytes: 1)
        defer { offset += count }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + count)]), as: UTF8.self)
    }

    mutating func align(to alignment: Int) {
        offset = (offset + alignment - 1) / alignment * alignment
    }
}
