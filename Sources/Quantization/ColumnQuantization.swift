// Single-group / single-weight access to the quantizer's grid, for column-by-column quantizers (GPTQ, in
// Passes/GPTQ.swift) that fix a group's scale when its first column is reached and then quantize one weight at
// a time. These forward to the functions `QuantizedTensor.init(weights:…)` itself uses, so such a quantizer
// follows whatever the stored format is.

extension QuantizedTensor {
    /// The float16 (scale, minimum) round-to-nearest picks for one group's values (minimum 0 for symmetric
    /// formats); nil when the range overflows float16. Not for float16 formats.
    public static func roundToNearestGrid(_ group: UnsafeBufferPointer<Float>, format f: QuantFormat) -> (scale: Float16, min: Float16)? {
        precondition(!f.isFloat16, "float16 has no grid")
        guard let (s, lo) = grid(group, format: f, alpha: 1) else { return nil }
        return (s, lo)
    }

    /// The stored code of weight x on a group's grid.
    public static func storedCode(_ x: Float, scale: Float16, min: Float16, format f: QuantFormat) -> UInt8 {
        UInt8(code(x, s: Float(scale), lo: f.symmetric ? 0 : Float(min), format: f))
    }

    /// The value a stored code stands for (what `dequantized()` gives for it).
    public static func value(ofCode q: UInt8, scale: Float16, min: Float16, format f: QuantFormat) -> Float {
        let offset = f.symmetric ? 1 << (f.bits - 1) : 0
        return (f.symmetric ? 0 : Float(min)) + Float(scale) * Float(Int(q) - offset)
    }
}
