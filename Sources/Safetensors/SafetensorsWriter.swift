import Foundation

/// Serializes a `.safetensors` file: an 8-byte little-endian header length, a JSON header mapping each tensor
/// name to `{dtype, shape, data_offsets}` (plus a `__metadata__` map of strings), padded with spaces to a
/// multiple of 8 bytes, then the tensors' bytes back to back (sorted by name, as the reference writer does).
public struct SafetensorsWriter {
    public struct Tensor {
        public let name: String
        public let dtype: SafetensorsDType
        /// Row-major shape.
        public let shape: [Int]
        /// Little-endian element bytes.
        public let data: [UInt8]
        public init(name: String, dtype: SafetensorsDType, shape: [Int], data: [UInt8]) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
        }
    }

    public var tensors: [Tensor] = []
    public var metadata: [String: String] = ["format": "pt"]
    public init() {}

    /// The whole file; throws when a name repeats or a tensor's byte count does not match its shape and dtype.
    public func encoded() throws -> [UInt8] {
        let sorted = tensors.sorted { $0.name < $1.name }
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        var seen = Set<String>()
        for t in sorted {
            guard seen.insert(t.name).inserted, t.name != "__metadata__" else {
                throw SafetensorsError("<writer>", "tensor name '\(t.name)' given twice or reserved")
            }
            let n = t.shape.reduce(1, *)
            guard t.shape.allSatisfy({ $0 >= 0 }), t.data.count == n * t.dtype.byteSize else {
                throw SafetensorsError(
                    "<writer>", "tensor '\(t.name)': \(t.data.count) bytes for shape \(t.shape) of \(t.dtype.rawValue)")
            }
            header[t.name] =
                ["dtype": t.dtype.rawValue, "shape": t.shape, "data_offsets": [offset, offset + t.data.count]]
                as [String: Any]
            offset += t.data.count
        }
        var json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        json.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - json.count % 8) % 8))
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count + offset)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        for t in sorted { out.append(contentsOf: t.data) }
        return out
    }
}

extension SafetensorsFile {
    /// The tensor's stored bytes, whatever its dtype (for integer tensors such as packed quantized weights).
    public func rawBytes(_ name: String) throws -> [UInt8] {
        let info = try info(name)
        return withExtendedLifetime(self) { rawBytesUnchecked(info) }
    }
}
