import MappedIO

/// Dequantizes `blocks` consecutive blocks from `src` into `dst` (`blocks * elements` floats).
typealias DequantKernel = @Sendable (_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) -> Void

/// Storage layout of one GGML type: the single table every size and kernel lookup goes through.
struct BlockLayout: Sendable {
    let elements: Int
    let bytes: Int
    let dequantize: DequantKernel?

    init(_ elements: Int, _ bytes: Int, _ dequantize: DequantKernel? = nil) {
        self.elements = elements
        self.bytes = bytes
        self.dequantize = dequantize
    }

    /// Sizes follow ggml's block structs; `bytes` is the sum of the struct fields.
    static let table: [GGMLType: BlockLayout] = [
        .f32: BlockLayout(1, 4, convertFloats),
        .f16: BlockLayout(1, 2, convertHalfs),
        .bf16: BlockLayout(1, 2, convertBFloat16s),
        .q4_0: BlockLayout(32, 2 + 16, Q4_0.dequantize),
        .q4_1: BlockLayout(32, 2 + 2 + 16, Q4_1.dequantize),
        .q5_0: BlockLayout(32, 2 + 4 + 16, Q5_0.dequantize),
        .q5_1: BlockLayout(32, 2 + 2 + 4 + 16, Q5_1.dequantize),
        .q8_0: BlockLayout(32, 2 + 32, Q8_0.dequantize),
        .q4_K: BlockLayout(256, 2 + 2 + 12 + 128, Q4_K.dequantize),
        .q5_K: BlockLayout(256, 2 + 2 + 12 + 32 + 128, Q5_K.dequantize),
        .q6_K: BlockLayout(256, 128 + 64 + 16 + 2, Q6_K.dequantize),
        // Known but not dequantized: sizes only, so offsets and truncation can still be checked.
        .q8_1: BlockLayout(32, 4 + 4 + 32),
        .q2_K: BlockLayout(256, 2 + 2 + 16 + 64),
        .q3_K: BlockLayout(256, 32 + 64 + 12 + 2),
        .q8_K: BlockLayout(256, 4 + 256 + 32),
        .iq2_xxs: BlockLayout(256, 2 + 64),
        .iq2_xs: BlockLayout(256, 2 + 64 + 8),
        .iq3_xxs: BlockLayout(256, 2 + 64 + 32),
        .iq1_s: BlockLayout(256, 2 + 32 + 16),
        .iq4_nl: BlockLayout(32, 2 + 16),
        .iq3_s: BlockLayout(256, 2 + 64 + 32 + 8 + 4),
        .iq2_s: BlockLayout(256, 2 + 64 + 16),
        .iq4_xs: BlockLayout(256, 2 + 2 + 128 + 4),
        .i8: BlockLayout(1, 1),
        .i16: BlockLayout(1, 2),
        .i32: BlockLayout(1, 4),
        .i64: BlockLayout(1, 8),
        .f64: BlockLayout(1, 8),
        .iq1_m: BlockLayout(256, 32 + 16 + 8),
        .tq1_0: BlockLayout(256, 48 + 4 + 2),
        .tq2_0: BlockLayout(256, 64 + 2),
        .mxfp4: BlockLayout(32, 1 + 16),
    ]
}

@inline(__always) func byte(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
    p.load(fromByteOffset: offset, as: UInt8.self)
}

@inline(__always) func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    floatFromHalf(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

@inline(__always) func word(_ p: UnsafeRawPointer, _ offset: Int) -> UInt32 {
    UInt32(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
}
