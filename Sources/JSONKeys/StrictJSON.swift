import Diagnostics

/// A number literal no 64-bit float holds (e.g. `1e400`): Foundation's decoder reads it as infinity and then
/// reports a misleading type mismatch somewhere above it, so every JSON text we read is checked first.
public struct JSONNumberOverflow: StrictJSONError, Equatable {
    /// The literal as written.
    public let literal: String
    /// Where it sits, as a path of keys and indices (`$` is the document root).
    public let path: String

    public init(literal: String, path: String) { self.literal = literal; self.path = path }

    public var description: String {
        "\(path): number \(literal) overflows a 64-bit float (expected a magnitude below 1.8e308)"
    }
    public var context: ErrorContext { ErrorContext(key: path, expected: "a magnitude below 1.8e308", found: literal) }
}

/// Bytes that are not UTF-8 (JSON text must be): names the offset of the first byte that breaks the encoding.
public struct InvalidUTF8: StrictJSONError, Equatable {
    /// Offset of the first byte of the broken sequence from the start of the text.
    public let offset: Int
    /// That byte.
    public let byte: UInt8

    public init(offset: Int, byte: UInt8) { self.offset = offset; self.byte = byte }

    public var description: String {
        let hex = String(byte, radix: 16, uppercase: true)
        return "not valid UTF-8 at byte offset \(offset) (byte 0x\(hex.count == 1 ? "0" + hex : hex))"
    }
}

extension JSONKeys {
    /// The one strict reading step every JSON file goes through before it is parsed: the bytes must be UTF-8
    /// (`InvalidUTF8` with the byte offset), no object may repeat a key (`DuplicateJSONKey`) and no number may
    /// overflow a 64-bit float (`JSONNumberOverflow`), each error naming where it is. Returns the text.
    public static func strictText<Bytes: Collection>(_ bytes: Bytes) throws -> String where Bytes.Element == UInt8 {
        let text = try utf8Text(bytes)
        try validate(text.utf8)
        return text
    }

    /// The checks that need no values, on text already known to be UTF-8: repeated keys and overflowing numbers.
    public static func validate<Bytes: Collection>(_ text: Bytes) throws where Bytes.Element == UInt8 {
        var scanner = Scanner(bytes: Array(text), checkNumbers: true)
        try scanner.value(path: "$", depth: 0)
    }

    /// The bytes as a String; throws `InvalidUTF8` at the first byte that is not well-formed UTF-8 (overlong
    /// forms, surrogates and code points past U+10FFFF included), where `String(decoding:)` would silently put
    /// U+FFFD.
    public static func utf8Text<Bytes: Collection>(_ bytes: Bytes) throws -> String where Bytes.Element == UInt8 {
        let b = Array(bytes)
        var i = 0
        while i < b.count {
            let n = sequenceLength(b, at: i)
            guard n > 0 else { throw InvalidUTF8(offset: i, byte: b[i]) }
            i += n
        }
        return String(decoding: b, as: UTF8.self)
    }

    /// Length of the well-formed UTF-8 sequence at `i` (Unicode Table 3-7), or 0.
    private static func sequenceLength(_ b: [UInt8], at i: Int) -> Int {
        let lead = b[i]
        if lead < 0x80 { return 1 }
        func cont(_ k: Int, _ range: ClosedRange<UInt8> = 0x80...0xBF) -> Bool {
            i + k < b.count && range.contains(b[i + k])
        }
        switch lead {
        case 0xC2...0xDF: return cont(1) ? 2 : 0
        case 0xE0: return cont(1, 0xA0...0xBF) && cont(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: return cont(1) && cont(2) ? 3 : 0
        case 0xED: return cont(1, 0x80...0x9F) && cont(2) ? 3 : 0
        case 0xF0: return cont(1, 0x90...0xBF) && cont(2) && cont(3) ? 4 : 0
        case 0xF1...0xF3: return cont(1) && cont(2) && cont(3) ? 4 : 0
        case 0xF4: return cont(1, 0x80...0x8F) && cont(2) && cont(3) ? 4 : 0
        default: return 0
        }
    }
}
