import Foundation
import JSONKeys
import MappedIO

/// Dtype, shape and byte range of one tensor in a safetensors file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    /// Tensor name.
    public let name: String
    /// Element type.
    public let dtype: SafetensorsDType
    /// Row-major shape.
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let dataOffsets: Range<Int>
    /// Product of `shape`.
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped `.safetensors` file.
public final class SafetensorsFile: @unchecked Sendable {  // immutable after init; the mapping is read-only
    /// Path the file was opened from.
    public let path: String
    /// The `__metadata__` string map (empty if absent).
    public let metadata: [String: String]
    /// Tensors by name.
    public let tensors: [String: SafetensorsTensorInfo]
    /// Absolute file offset of the data section (8 + header length).
    public let dataOffset: Int

    private let file: MappedFile
    static let maxHeaderBytes = 100_000_000

    /// Tensor names, sorted.
    public var tensorNames: [String] { tensors.keys.sorted() }

    /// Opens and validates `path`: header JSON, dtypes, shapes and non-overlapping in-range offsets.
    public init(path: String) throws {
        do { file = try MappedFile(path: path) } catch let e as MappedFileError {
            throw SafetensorsError(path, e.reason)
        }
        self.path = path
        let bytes = file.bytes
        guard bytes.count >= 8, let base = bytes.baseAddress else {
            throw SafetensorsError(
                path, "truncated: expected an 8-byte header length, file has \(bytes.count) bytes",
                expected: "8 bytes", found: "\(bytes.count) bytes")
        }
        let headerLength = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard headerLength <= UInt64(min(bytes.count - 8, Self.maxHeaderBytes)) else {
            throw SafetensorsError(
                path,
                "header length \(headerLength) exceeds the file (\(bytes.count) bytes) or the "
                    + "\(Self.maxHeaderBytes)-byte limit")
        }
        dataOffset = 8 + Int(headerLength)
        let json = Data(bytes: base + 8, count: Int(headerLength))
        do { try JSONKeys.checkUnique(json) } catch let e as DuplicateJSONKey {
            throw SafetensorsError(path, "header: \(e.description)", expected: "each key once",
                                   found: "'\(e.key)' twice")
        }
        guard let header = try? JSONSerialization.jsonObject(with: json) as? [String: Any] else {
            throw SafetensorsError(path, "header is not a JSON object")
        }
        var metadata: [String: String] = [:]
        var tensors: [String: SafetensorsTensorInfo] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                guard let map = value as? [String: String] else {
                    throw SafetensorsError(path, "__metadata__: expected an object of strings")
                }
                metadata = map
            } else {
                tensors[name] = try Self.parseEntry(name, value, path: path)
            }
        }
        self.metadata = metadata
        self.tensors = tensors
        try checkOffsets()
    }

    /// The tensor called `name`, or an error naming the file and tensor.
    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        guard let info = tensors[name] else { throw SafetensorsError(path, "no tensor named '\(name)'", tensor: name) }
        return info
    }

    /// The stored bytes of `info` (a tensor of this file).
    func rawBytesUnchecked(_ info: SafetensorsTensorInfo) -> [UInt8] {
        withExtendedLifetime(file) {
            let start = dataOffset + info.dataOffsets.lowerBound
            return Array(file.bytes[start..<(start + info.dataOffsets.count)])
        }
    }

    /// The tensor's values as `Float`s in row-major order (F32, F16 and BF16 only).
    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        guard let convert = SafetensorsDType.converters[info.dtype] else {
            throw SafetensorsError(
                path,
                "tensor '\(name)': cannot convert dtype \(info.dtype.rawValue) to Float; supported: "
                    + "\(SafetensorsDType.convertibleList)")
        }
        let count = info.elementCount
        return withExtendedLifetime(file) {
            [Float](unsafeUninitializedCapacity: count) { out, initialized in
                if let base = file.bytes.baseAddress, let dst = out.baseAddress {
                    convert(base + dataOffset + info.dataOffsets.lowerBound, dst, count)
                }
                initialized = count
            }
        }
    }

    private static func parseEntry(_ name: String, _ value: Any, path: String) throws -> SafetensorsTensorInfo {
        func fail(_ message: String, expected: String? = nil, found: String? = nil) -> SafetensorsError {
            SafetensorsError(path, "tensor '\(name)': \(message)", tensor: name, expected: expected, found: found)
        }
        guard let entry = value as? [String: Any] else {
            throw fail("expected an object with dtype, shape, data_offsets")
        }
        guard let dtypeName = entry["dtype"] as? String else { throw fail("missing string 'dtype'") }
        guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
            let known = SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            throw fail(
                "unknown dtype '\(dtypeName)'; known: \(known); convertible to Float: "
                    + "\(SafetensorsDType.convertibleList)")
        }
        guard let shape = entry["shape"] as? [Int], shape.allSatisfy({ $0 >= 0 }) else {
            throw fail("expected 'shape' to be an array of non-negative integers, found \(entry["shape"] ?? "nothing")")
        }
        guard let offsets = entry["data_offsets"] as? [Int], offsets.count == 2, offsets[0] >= 0,
            offsets[0] <= offsets[1]
        else {
            throw fail(
                "expected 'data_offsets' to be [begin, end] with 0 <= begin <= end, found "
                    + "\(entry["data_offsets"] ?? "nothing")")
        }
        var count = 1
        for d in shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= 1 << 48 else { throw fail("absurd shape \(shape)") }
            count = product
        }
        guard offsets[1] - offsets[0] == count * dtype.byteSize else {
            throw fail(
                "shape \(shape) of \(dtypeName) needs \(count * dtype.byteSize) bytes, data_offsets span "
                    + "\(offsets[1] - offsets[0])", expected: "\(count * dtype.byteSize) bytes",
                found: "\(offsets[1] - offsets[0]) bytes")
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: offsets[0]..<offsets[1])
    }

    private func checkOffsets() throws {
        let dataSize = file.bytes.count - dataOffset
        let sorted = tensors.values.sorted {
            ($0.dataOffsets.lowerBound, $0.name) < ($1.dataOffsets.lowerBound, $1.name)
        }
        var previous: SafetensorsTensorInfo?
        for info in sorted {
            guard info.dataOffsets.upperBound <= dataSize else {
                throw SafetensorsError(
                    path,
                    "truncated: tensor '\(info.name)' data_offsets end at \(info.dataOffsets.upperBound), but the data "
                        + "section has \(dataSize) bytes", tensor: info.name,
                    expected: "\(info.dataOffsets.upperBound) bytes", found: "\(dataSize) bytes")
            }
            if let p = previous, p.dataOffsets.upperBound > info.dataOffsets.lowerBound, !info.dataOffsets.isEmpty {
                throw SafetensorsError(
                    path, "tensors '\(p.name)' \(p.dataOffsets) and '\(info.name)' \(info.dataOffsets) overlap")
            }
            if !info.dataOffsets.isEmpty { previous = info }
        }
    }
}
