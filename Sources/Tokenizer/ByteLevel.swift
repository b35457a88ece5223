/// GPT-2's reversible mapping between raw bytes and printable Unicode scalars.
///
/// Printable Latin-1 bytes (`!`...`~`, `¡`...`¬`, `®`...`ÿ`) stand for themselves; the other 68
/// bytes are given the scalars U+0100, U+0101, ... in byte order (so space is `Ġ`, newline `Ċ`).
enum ByteLevel {
    /// The scalar that spells each byte, indexed by byte value.
    static let scalarForByte: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if isPrintable(UInt8(byte)) {
                table[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                table[byte] = Unicode.Scalar(next) ?? " "
                next += 1
            }
        }
        return table
    }()

    /// Whether GPT-2 lets this byte stand for itself.
    static func isPrintable(_ byte: UInt8) -> Bool {
        (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
    }

    /// The byte each alphabet scalar spells, indexed by scalar value (-1 outside the alphabet).
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 256 + 68)
        for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar.value)] = Int16(byte) }
        return table
    }()

    /// The byte a scalar spells, or nil when the scalar is outside the byte alphabet.
    static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        let value = Int(scalar.value)
        guard value < byteForScalar.count, byteForScalar[value] >= 0 else { return nil }
        return UInt8(byteForScalar[value])
    }

    /// The bytes a byte-level token spells, or nil if any scalar is outside the alphabet.
    static func decode(_ token: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            guard let byte = byte(for: scalar) else { return nil }
            bytes.append(byte)
        }
        return bytes
    }
}
