// Single-group / single-weight access to the quantizer's grid, for column-by-column quantizers (GPTQ, in
// Passes/GPTQ.swift) that fix a group's scale when its first column is reached and then quantize one weight at
// a time. The grid of a group comes from `QuantizedTensor.init(weights:…)` on that one group; these forward to
// the functions it uses for codes and `dequantized()` mirrors, so such a quantizer follows the stored format.

extension QuantizedTensor {
    /// The stored code of weight x on a group's grid.
    public static func storedCode(_ x: Float, scale: Float16, min: Float16, format f: QuantFormat) -> UInt8 {
        storedCode(x, scale: Float(scale), min: Float(min), format: f)
    }

    /// The value a stored code stands for (what `dequantized()` gives for it).
    public static func value(ofCode q: UInt8, scale: Float16, min: Float16, format f: QuantFormat) -> Float {
        value(ofCode: q, scale: Float(scale), min: Float(min), format: f)
    }

    /// `storedCode` with the group's float16 scale and minimum already widened to Float (exactly): for a loop over
    /// the weights of a group, which would otherwise widen them once per weight (a library call where the build
    /// targets x86-64 without F16C).
    public static func storedCode(_ x: Float, scale: Float, min: Float, format f: QuantFormat) -> UInt8 {
        UInt8(code(x, s: scale, lo: f.symmetric ? 0 : min, format: f))
    }

    /// `value(ofCode:)` with the scale and minimum widened to Float (see `storedCode(_:scale:min:format:)`).
    public static func value(ofCode q: UInt8, scale: Float, min: Float, format f: QuantFormat) -> Float {
        let offset = f.symmetric ? 1 << (f.bits - 1) : 0
        return (f.symmetric ? 0 : min) + scale * Float(Int(q) - offset)
    }
}
