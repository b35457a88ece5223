/// GGML tensor element types with their stable on-disk ids.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30
    case tq1_0 = 34, tq2_0 = 35, mxfp4 = 39

    /// The ggml spelling, e.g. `Q4_K`.
    public var name: String { String(describing: self).uppercased() }

    /// Elements per block (1 for plain float and integer types).
    public var blockElements: Int { BlockLayout.table[self]?.elements ?? 1 }

    /// Bytes per block of `blockElements` elements.
    public var blockBytes: Int { BlockLayout.table[self]?.bytes ?? 0 }

    /// Whether `GGUFFile.dequantize` supports this type.
    public var isDequantizable: Bool { BlockLayout.table[self]?.dequantize != nil }

    /// All types that can be dequantized, by id.
    public static let dequantizable: [GGMLType] = allCases.filter(\.isDequantizable)
}
