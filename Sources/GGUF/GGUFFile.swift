import MappedIO

/// A memory-mapped GGUF (version 2 or 3) file: metadata, tensor directory and dequantization.
public final class GGUFFile: @unchecked Sendable {  // immutable after init; the mapping is read-only
    /// Path the file was opened from.
    public let path: String
    /// Format version (2 or 3).
    public let version: Int
    /// All metadata key/value pairs.
    public let metadata: [String: GGUFValue]
    /// Tensor directory in file order.
    public let tensors: [GGUFTensorInfo]
    /// Data alignment (`general.alignment`, default 32).
    public let alignment: Int
    /// Absolute file offset of the tensor data section.
    public let dataOffset: Int

    private let file: MappedFile
    private let index: [String: Int]

    static let maxDimensions = 4

    /// Opens and validates `path`: header, metadata, tensor infos and that all tensor data lies inside the file.
    public init(path: String) throws {
        do { file = try MappedFile(path: path) } catch let e as MappedFileError { throw GGUFError(path, e.reason) }
        self.path = path
        var c = ByteCursor(file.bytes, path: path)
        let magic = try c.read(UInt32.self, "magic")
        guard magic == 0x4655_4747 else {
            let found = withUnsafeBytes(of: magic.littleEndian) {
                $0.map { String($0, radix: 16) }.joined(separator: " ")
            }
            throw c.error("expected magic 'GGUF' (47 47 55 46), found bytes \(found)")
        }
        let version = try c.read(UInt32.self, "version")
        guard version == 2 || version == 3 else { throw c.error("expected GGUF version 2 or 3, found \(version)") }
        self.version = Int(version)
        let tensorCount = try c.readCount("tensor count", minElementBytes: 8 + 4 + 4 + 8)
        let kvCount = try c.readCount("metadata count", minElementBytes: 8 + 4 + 1)

        var metadata: [String: GGUFValue] = [:]
        metadata.reserveCapacity(kvCount)
        for i in 0..<kvCount {
            let key = try c.readString("key of metadata entry \(i)")
            let type = try c.read(UInt32.self, "value type of metadata '\(key)'")
            guard metadata[key] == nil else { throw c.error("metadata key '\(key)' appears twice") }
            metadata[key] = try MetadataReader.readValue(&c, type: type, key: key)
        }
        self.metadata = metadata
        alignment = try Self.alignment(metadata, c)

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(tensorCount)
        var index: [String: Int] = [:]
        for i in 0..<tensorCount {
            let info = try Self.readTensorInfo(&c, number: i)
            guard index[info.name] == nil else { throw c.error("tensor '\(info.name)' appears twice") }
            index[info.name] = i
            tensors.append(info)
        }
        c.align(to: alignment)
        dataOffset = c.offset
        self.tensors = tensors
        self.index = index
        for info in tensors { try checkPlacement(info) }
    }

    /// The tensor called `name`, if present.
    public func tensor(named name: String) -> GGUFTensorInfo? {
        index[name].map { tensors[$0] }
    }

    /// Dequantizes a tensor to `Float`s in storage (row-major) order; count is the product of `shape`.
    public func dequantize(_ info: GGUFTensorInfo) throws -> [Float] {
        guard let layout = BlockLayout.table[info.type], let kernel = layout.dequantize else {
            let supported = GGMLType.dequantizable.map(\.name).joined(separator: ", ")
            throw GGUFError(
                path,
                "tensor '\(info.name)': cannot dequantize type \(info.type.name) (id \(info.type.rawValue)); "
                    + "supported: \(supported)")
        }
        return try withRawBytes(of: info) { raw in
            [Float](unsafeUninitializedCapacity: info.elementCount) { out, initialized in
                if let src = raw.baseAddress, let dst = out.baseAddress {
                    kernel(src, dst, info.elementCount / layout.elements)
                }
                initialized = info.elementCount
            }
        }
    }

    /// Calls `body` with the tensor's raw bytes; the pointer is valid only inside `body`.
    public func withRawBytes<R>(of info: GGUFTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let i = index[info.name], tensors[i] == info else {
            throw GGUFError(path, "tensor '\(info.name)' is not a tensor of this file")
        }
        let start = dataOffset + info.offset
        return try withExtendedLifetime(file) {
            try body(UnsafeRawBufferPointer(rebasing: file.bytes[start..<(start + info.byteCount)]))
        }
    }

    private static func alignment(_ metadata: [String: GGUFValue], _ c: ByteCursor) throws -> Int {
        guard let value = metadata["general.alignment"] else { return 32 }
        guard let a = value.intValue, a > 0, a.nonzeroBitCount == 1, a <= 1 << 20 else {
            throw c.error("general.alignment: expected a power of two integer, found \(value)")
        }
        return a
    }

    private static func readTensorInfo(_ c: inout ByteCursor, number: Int) throws -> GGUFTensorInfo {
        let name = try c.readString("name of tensor \(number)")
        let dims = try c.read(UInt32.self, "dimension count of tensor '\(name)'")
        guard dims <= maxDimensions else {
            throw c.error("tensor '\(name)': expected at most \(maxDimensions) dimensions, found \(dims)")
        }
        var shape: [Int] = []
        var count = 1
        for d in 0..<Int(dims) {
            let raw = try c.read(UInt64.self, "dimension \(d) of tensor '\(name)'")
            let (product, overflow) = count.multipliedReportingOverflow(by: Int(truncatingIfNeeded: raw))
            guard raw <= UInt64(Int32.max), !overflow, product <= 1 << 48 else {
                throw c.error("tensor '\(name)': dimension \(d) is \(raw), making an absurd element count")
            }
            shape.append(Int(raw))
            count = product
        }
        let typeID = try c.read(UInt32.self, "type of tensor '\(name)'")
        guard let type = GGMLType(rawValue: typeID), let layout = BlockLayout.table[type] else {
            let known = GGMLType.allCases.map { "\($0.name)=\($0.rawValue)" }.joined(separator: ", ")
            throw c.error("tensor '\(name)': unknown ggml type id \(typeID); known: \(known)")
        }
        let offset = try c.read(UInt64.self, "data offset of tensor '\(name)'")
        guard offset <= UInt64(Int.max / 2) else { throw c.error("tensor '\(name)': absurd data offset \(offset)") }
        guard (shape.first ?? 1) % layout.elements == 0 else {
            throw c.error(
                "tensor '\(name)': \(type.name) needs the first dimension to be a multiple of \(layout.elements), "
                    + "found \(shape.first ?? 1)")
        }
        return GGUFTensorInfo(name: name, shape: shape, type: type, offset: Int(offset),
                              elementCount: count, byteCount: count / layout.elements * layout.bytes)
    }

    private func checkPlacement(_ info: GGUFTensorInfo) throws {
        guard info.offset % alignment == 0 else {
            throw GGUFError(
                path,
                "tensor '\(info.name)': data offset \(info.offset) is not a multiple of the alignment \(alignment)",
                tensor: info.name)
        }
        let end = dataOffset + info.offset + info.byteCount
        guard end <= file.bytes.count else {
            throw GGUFError(
                path,
                "truncated: tensor '\(info.name)' data ends at byte \(end), but the file has \(file.bytes.count) bytes",
                tensor: info.name, expected: "\(end) bytes", found: "\(file.bytes.count) bytes")
        }
    }
}
