import MappedIO

/// Element types defined by the safetensors format.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8"
    case u64 = "U64", u32 = "U32", u16 = "U16", u8 = "U8", bool = "BOOL"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: 8
        case .f32, .i32, .u32: 4
        case .f16, .bf16, .i16, .u16: 2
        case .i8, .u8, .bool, .f8e4m3, .f8e5m2: 1
        }
    }

    /// Converters to `Float` for the supported dtypes.
    static let converters: [SafetensorsDType: @Sendable (UnsafeRawPointer, UnsafeMutablePointer<Float>, Int) -> Void] =
        [
            .f32: convertFloats, .f16: convertHalfs, .bf16: convertBFloat16s,
        ]

    /// Dtypes `floats(_:)` can convert, in a stable order.
    public static let convertible: [SafetensorsDType] = allCases.filter { converters[$0] != nil }

    /// Comma-separated list of convertible dtypes, for error messages.
    static var convertibleList: String { convertible.map(\.rawValue).joined(separator: ", ") }
}
