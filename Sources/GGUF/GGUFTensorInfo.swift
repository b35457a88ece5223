/// Name, shape, type and data offset of one tensor in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    public let name: String
    /// Dimensions in GGUF order: `ne[0]` (fastest-varying) first.
    public let shape: [Int]
    /// Element type.
    public let type: GGMLType
    /// Byte offset of the data relative to the start of the data section.
    public let offset: Int
    /// Product of `shape`.
    public let elementCount: Int
    /// Size of the tensor data in bytes.
    public let byteCount: Int

    /// Row-major shape (slowest dimension first), e.g. `(out, in)` for a linear weight.
    public var rowMajorShape: [Int] { shape.reversed() }
}
