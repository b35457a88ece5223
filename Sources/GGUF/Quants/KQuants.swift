// 256-element super-blocks split into sub-blocks (ggml "k-quants").

/// Unpacks the 12-byte field holding eight 6-bit scales and eight 6-bit mins (Q4_K, Q5_K).
/// Bytes 0-3 hold scales 0-3, bytes 4-7 mins 0-3 (low 6 bits each); their top 2 bits plus
/// bytes 8-11 (low nibble: scale, high nibble: min) make scales and mins 4-7.
@inline(__always)
func scaleAndMin(_ s: UnsafeRawPointer, _ i: Int) -> (scale: Float, min: Float) {
    if i < 4 {
        return (Float(byte(s, i) & 63), Float(byte(s, i &+ 4) & 63))
    }
    let packed = byte(s, i &+ 4)
    let scale = (packed & 0xF) | ((byte(s, i &- 4) >> 6) << 4)
    let min = (packed >> 4) | ((byte(s, i) >> 6) << 4)
    return (Float(scale), Float(min))
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`, eight sub-blocks of 32:
/// x = (d * scale) * q - (dmin * min). qs byte 32c + l holds sub-block 2c (low nibble) and 2c + 1 (high).
enum Q4_K {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 144, y = dst + b &* 256
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4, qs = p + 16
            for c in 0..<4 {
                let (s0, m0) = scaleAndMin(scales, 2 &* c), (s1, m1) = scaleAndMin(scales, 2 &* c &+ 1)
                let d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1
                let q = qs + 32 &* c, out = y + 64 &* c
                for l in 0..<32 {
                    let v = byte(q, l)
                    out[l] = d0 * Float(v & 0xF) - o0
                    out[l &+ 32] = d1 * Float(v >> 4) - o1
                }
            }
        }
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`: like Q4_K with a fifth bit;
/// bit s of qh[l] is bit 4 of element l of sub-block s.
enum Q5_K {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 176, y = dst + b &* 256
            let d = half(p, 0), dmin = half(p, 2)
            let scales = p + 4, qh = p + 16, qs = p + 48
            for c in 0..<4 {
                let (s0, m0) = scaleAndMin(scales, 2 &* c), (s1, m1) = scaleAndMin(scales, 2 &* c &+ 1)
                let d0 = d * s0, o0 = dmin * m0, d1 = d * s1, o1 = dmin * m1
                let q = qs + 32 &* c, out = y + 64 &* c
                let shift0 = UInt8(2 &* c), shift1 = UInt8(2 &* c &+ 1)
                for l in 0..<32 {
                    let v = byte(q, l), h = byte(qh, l)
                    out[l] = d0 * Float((v & 0xF) | (((h >> shift0) & 1) << 4)) - o0
                    out[l &+ 32] = d1 * Float((v >> 4) | (((h >> shift1) & 1) << 4)) - o1
                }
            }
        }
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`, sixteen sub-blocks of 16:
/// x = (d * scale) * (q - 32), q 6-bit. Per 128-element half h and l < 32, ql[64h + l] and
/// ql[64h + 32 + l] give the low nibbles (low then high) and qh[32h + l] the 2-bit tops of
/// elements l, l + 32, l + 64, l + 96.
enum Q6_K {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 210, y = dst + b &* 256
            let d = half(p, 208)
            for h in 0..<2 {
                let ql = p + 64 &* h, qh = p + (128 &+ 32 &* h), sc = p + (192 &+ 8 &* h), out = y + 128 &* h
                for s in 0..<2 {
                    let d0 = d * Float(Int8(bitPattern: byte(sc, s))),
                        d1 = d * Float(Int8(bitPattern: byte(sc, s &+ 2)))
                    let d2 = d * Float(Int8(bitPattern: byte(sc, s &+ 4))),
                        d3 = d * Float(Int8(bitPattern: byte(sc, s &+ 6)))
                    for l in (16 &* s)..<(16 &* s &+ 16) {
                        let a = byte(ql, l), c = byte(ql, l &+ 32), t = byte(qh, l)
                        out[l] = d0 * Float(Int32((a & 0xF) | ((t & 3) << 4)) &- 32)
                        out[l &+ 32] = d1 * Float(Int32((c & 0xF) | (((t >> 2) & 3) << 4)) &- 32)
                        out[l &+ 64] = d2 * Float(Int32((a >> 4) | (((t >> 4) & 3) << 4)) &- 32)
                        out[l &+ 96] = d3 * Float(Int32((c >> 4) | ((t >> 6) << 4)) &- 32)
                    }
                }
            }
        }
    }
}
