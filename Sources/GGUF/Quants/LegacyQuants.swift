// 32-element blocks. In each, byte j of `qs` holds element j (low nibble) and element j + 16 (high nibble);
// the 5-bit types keep bit 4 of element i in bit i of the 32-bit `qh`.

/// `{ f16 d; u8 qs[16] }`: x = d * (q - 8).
enum Q4_0 {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 18, y = dst + b &* 32
            let d = half(p, 0)
            for j in 0..<16 {
                let q = byte(p, 2 &+ j)
                y[j] = d * Float(Int32(q & 0xF) &- 8)
                y[j &+ 16] = d * Float(Int32(q >> 4) &- 8)
            }
        }
    }
}

/// `{ f16 d; f16 m; u8 qs[16] }`: x = d * q + m.
enum Q4_1 {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 20, y = dst + b &* 32
            let d = half(p, 0), m = half(p, 2)
            for j in 0..<16 {
                let q = byte(p, 4 &+ j)
                y[j] = d * Float(q & 0xF) + m
                y[j &+ 16] = d * Float(q >> 4) + m
            }
        }
    }
}

/// `{ f16 d; u32 qh; u8 qs[16] }`: x = d * (q - 16), q 5-bit.
enum Q5_0 {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 22, y = dst + b &* 32
            let d = half(p, 0), qh = word(p, 2)
            for j in 0..<16 {
                let q = UInt32(byte(p, 6 &+ j))
                let lo = (q & 0xF) | (((qh >> UInt32(j)) & 1) << 4)
                let hi = (q >> 4) | (((qh >> UInt32(j &+ 16)) & 1) << 4)
                y[j] = d * Float(Int32(lo) &- 16)
                y[j &+ 16] = d * Float(Int32(hi) &- 16)
            }
        }
    }
}

/// `{ f16 d; f16 m; u32 qh; u8 qs[16] }`: x = d * q + m, q 5-bit.
enum Q5_1 {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 24, y = dst + b &* 32
            let d = half(p, 0), m = half(p, 2), qh = word(p, 4)
            for j in 0..<16 {
                let q = UInt32(byte(p, 8 &+ j))
                let lo = (q & 0xF) | (((qh >> UInt32(j)) & 1) << 4)
                let hi = (q >> 4) | (((qh >> UInt32(j &+ 16)) & 1) << 4)
                y[j] = d * Float(lo) + m
                y[j &+ 16] = d * Float(hi) + m
            }
        }
    }
}

/// `{ f16 d; i8 qs[32] }`: x = d * q.
enum Q8_0 {
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ blocks: Int) {
        for b in 0..<blocks {
            let p = src + b &* 34, y = dst + b &* 32
            let d = half(p, 0)
            for j in 0..<32 {
                y[j] = d * Float(Int8(bitPattern: byte(p, 2 &+ j)))
            }
        }
    }
}
