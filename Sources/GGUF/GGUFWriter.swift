import Foundation

/// Serializes a GGUF version 3 file (the layout `GGUFFile` reads): the header (magic "GGUF", version,
/// tensor count, metadata count), the metadata key/value pairs, the tensor infos (name, dimension count,
/// dimensions fastest-varying first, ggml type id, data offset relative to the data section), padding to
/// `alignment`, then each tensor's bytes at its aligned offset. Everything is little-endian.
public struct GGUFWriter {
    /// One tensor to write: name, row-major shape (slowest dimension first, e.g. (out, in) for a linear
    /// weight; written reversed, as ggml's `ne`), ggml type and its encoded bytes.
    public struct Tensor {
        public let name: String
        public let shape: [Int]
        public let type: GGMLType
        public let data: [UInt8]
        public init(name: String, shape: [Int], type: GGMLType, data: [UInt8]) {
            self.name = name; self.shape = shape; self.type = type; self.data = data
        }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [Tensor] = []
    /// Data alignment; written as `general.alignment` only when it differs from the default 32.
    public var alignment = 32

    public init() {}

    /// Adds a metadata pair (keys must be unique; checked by `encoded()`).
    public mutating func add(_ key: String, _ value: GGUFValue) { metadata.append((key, value)) }

    /// The whole file. Throws when a key or tensor name repeats, an array is empty or mixes element types,
    /// or a tensor's byte count does not match its shape and type.
    public func encoded() throws -> [UInt8] {
        var out: [UInt8] = []
        var meta = metadata
        if alignment != 32 { meta.append(("general.alignment", .uint32(UInt32(alignment)))) }
        var seen = Set<String>()
        for (k, _) in meta where !seen.insert(k).inserted {
            throw GGUFError("<writer>", "metadata key '\(k)' given twice")
        }
        seen = []
        for t in tensors where !seen.insert(t.name).inserted {
            throw GGUFError("<writer>", "tensor '\(t.name)' given twice")
        }

        out.append(contentsOf: Array("GGUF".utf8))
        Self.put(UInt32(3), &out)
        Self.put(UInt64(tensors.count), &out)
        Self.put(UInt64(meta.count), &out)
        for (k, v) in meta {
            Self.putString(k, &out)
            Self.put(try Self.typeID(v, key: k), &out)
            try Self.putValue(v, key: k, &out)
        }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            guard let layout = BlockLayout.table[t.type], !t.shape.isEmpty, t.shape.allSatisfy({ $0 > 0 }) else {
                throw GGUFError(
                    "<writer>", "tensor '\(t.name)': shape \(t.shape) or type \(t.type.name) cannot be written")
            }
            let n = t.shape.reduce(1, *)
            guard t.shape.last! % layout.elements == 0, t.data.count == n / layout.elements * layout.bytes else {
                throw GGUFError(
                    "<writer>",
                    "tensor '\(t.name)': \(t.data.count) bytes for shape \(t.shape) in \(t.type.name) (expected "
                        + "\(n / max(layout.elements, 1) * layout.bytes), rows a multiple of \(layout.elements))")
            }
            Self.putString(t.name, &out)
            Self.put(UInt32(t.shape.count), &out)
            for d in t.shape.reversed() { Self.put(UInt64(d), &out) }
            Self.put(t.type.rawValue, &out)
            Self.put(UInt64(offset), &out)
            offsets.append(offset)
            offset += (t.data.count + alignment - 1) / alignment * alignment
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment))
        let dataStart = out.count
        out.reserveCapacity(dataStart + offset)
        for (t, o) in zip(tensors, offsets) {
            out.append(contentsOf: [UInt8](repeating: 0, count: dataStart + o - out.count))
            out.append(contentsOf: t.data)
        }
        out.append(contentsOf: [UInt8](repeating: 0, count: dataStart + offset - out.count))
        return out
    }

    static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) }
    }

    static func putString(_ s: String, _ out: inout [UInt8]) {
        let bytes = Array(s.utf8)
        put(UInt64(bytes.count), &out)
        out.append(contentsOf: bytes)
    }

    /// The value type id (the numbering `MetadataReader.typeNames` follows).
    static func typeID(_ v: GGUFValue, key: String) throws -> UInt32 {
        switch v {
        case .uint8: 0
        case .int8: 1
        case .uint16: 2
        case .int16: 3
        case .uint32: 4
        case .int32: 5
        case .float32: 6
        case .bool: 7
        case .string: 8
        case .array: 9
        case .uint64: 10
        case .int64: 11
        case .float64: 12
        }
    }

    static func putValue(_ v: GGUFValue, key: String, _ out: inout [UInt8]) throws {
        switch v {
        case .uint8(let x): put(x, &out)
        case .int8(let x): put(x, &out)
        case .uint16(let x): put(x, &out)
        case .int16(let x): put(x, &out)
        case .uint32(let x): put(x, &out)
        case .int32(let x): put(x, &out)
        case .float32(let x): put(x.bitPattern, &out)
        case .bool(let b): out.append(b ? 1 : 0)
        case .string(let s): putString(s, &out)
        case .uint64(let x): put(x, &out)
        case .int64(let x): put(x, &out)
        case .float64(let x): put(x.bitPattern, &out)
        case .array(let items):
            guard let first = items.first else {
                throw GGUFError("<writer>", "metadata '\(key)': an empty array has no element type")
            }
            let id = try typeID(first, key: key)
            for item in items where try typeID(item, key: key) != id {
                throw GGUFError("<writer>", "metadata '\(key)': array mixes \(first.typeName) and \(item.typeName)")
            }
            put(id, &out)
            put(UInt64(items.count), &out)
            for item in items { try putValue(item, key: key, &out) }
        }
    }
}
