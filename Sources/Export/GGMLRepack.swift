import GGUF
import Quantization

/// Our group-wise quantized tensors written as ggml blocks without any loss, where a ggml type holds them.
///
/// Our formats store per group of G weights (along a row, the input dimension) a code c < 2^b, a float16
/// scale s and, when asymmetric, a float16 minimum lo; the weight is s·(c − 2^(b−1)) (symmetric) or lo + s·c
/// (asymmetric). ggml's 32-element blocks (ggml-common.h) store the same numbers:
///   Q4_0 {f16 d; u8 qs[16]}:          x = d·(q − 8)       → b = 4 symmetric, G = 32: d = s, q = c
///   Q5_0 {f16 d; u32 qh; u8 qs[16]}:  x = d·(q − 16)      → b = 5 symmetric
///   Q8_0 {f16 d; i8 qs[32]}:          x = d·q             → b = 8 symmetric: q = c − 128
///   Q4_1 {f16 d; f16 m; u8 qs[16]}:   x = d·q + m         → b = 4 asymmetric: d = s, m = lo, q = c
///   Q5_1 {f16 d; f16 m; u32 qh; u8 qs[16]}: x = d·q + m  → b = 5 asymmetric
/// In qs, byte j holds element j in its low nibble and element j + 16 in its high nibble; the 5-bit types keep
/// bit 4 of element i in bit i of qh. Because d, m are our float16 s, lo bit for bit and q our code shifted by
/// the same offset, ggml's dequantization computes the very floats ours does. Float16 weights are F16.
enum GGMLRepack {
    /// The lossless ggml type of a format, if there is one.
    static func losslessType(_ f: QuantFormat) -> GGMLType? {
        if f.isFloat16 { return .f16 }
        guard f.groupSize == 32 else { return nil }
        switch (f.bits, f.symmetric) {
        case (4, true): return .q4_0
        case (5, true): return .q5_0
        case (8, true): return .q8_0
        case (4, false): return .q4_1
        case (5, false): return .q5_1
        default: return nil
        }
    }

    /// The ggml blocks of `q` (row-major, blocks along each row), or nil when no ggml type holds it exactly.
    static func repack(_ q: QuantizedTensor) -> (type: GGMLType, data: [UInt8])? {
        guard let type = losslessType(q.format) else { return nil }
        if type == .f16 { return (.f16, q.codes) }
        let codes = unpackCodes(q.codes, bits: q.format.bits, count: q.count)
        let groups = q.count / 32
        var out = [UInt8](repeating: 0, count: groups * type.blockBytes)
        out.withUnsafeMutableBytes { raw in
            for g in 0..<groups {
                var o = g * type.blockBytes
                func half(_ h: Float16) {
                    raw.storeBytes(of: h.bitPattern.littleEndian, toByteOffset: o, as: UInt16.self); o += 2
                }
                let c = codes[(g * 32)..<(g * 32 + 32)].map { $0 }
                half(q.scales[g])
                if !q.format.symmetric { half(q.mins[g]) }
                if type == .q8_0 {
                    for j in 0..<32 { raw[o + j] = UInt8(bitPattern: Int8(Int(c[j]) - 128)) }
                    continue
                }
                if q.format.bits == 5 {
                    var qh: UInt32 = 0
                    for j in 0..<32 where c[j] & 0x10 != 0 { qh |= 1 << UInt32(j) }
                    raw.storeBytes(of: qh.littleEndian, toByteOffset: o, as: UInt32.self)
                    o += 4
                }
                for j in 0..<16 { raw[o + j] = (c[j] & 0xF) | ((c[j + 16] & 0xF) << 4) }
            }
        }
        return (type, out)
    }

    /// Applies llama.cpp's Hugging Face → GGUF rotary row order to a row-major tensor of `rows` rows of
    /// `rowBytes` bytes each: within each of `heads` heads of 2·half rows, GGUF row 2i + j is HF row j·half + i
    /// (convert_hf_to_gguf.py's `permute`: reshape (heads, 2, half, …), swap axes 1 and 2). Rows are moved
    /// whole, so quantized blocks (which never straddle rows) move with them.
    static func permuteRows(_ data: [UInt8], rows: Int, heads: Int) throws -> [UInt8] {
        guard heads > 0, rows % (2 * heads) == 0, data.count % rows == 0 else {
            throw ExportError("q/k permutation needs rows (\(rows)) divisible by 2 × heads (\(heads))")
        }
        let rowBytes = data.count / rows, half = rows / heads / 2
        var out = [UInt8](repeating: 0, count: data.count)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let gguf = h * half * 2 + 2 * i + j, hf = h * half * 2 + j * half + i
                    out.replaceSubrange(
                        (gguf * rowBytes)..<((gguf + 1) * rowBytes), with: data[(hf * rowBytes)..<((hf + 1) * rowBytes)]
                    )
                }
            }
        }
        return out
    }
}
