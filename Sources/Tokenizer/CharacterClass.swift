/// The character classes the pre-tokenizer regexes distinguish, one per scalar.
///
/// Values at or above `space` are `\s`. Continuation bytes of a multi-byte scalar carry the class
/// of their scalar, so runs of one class can be scanned byte by byte.
enum CharacterClass {
    static let letter: UInt8 = 0      // \p{L}
    static let number: UInt8 = 1      // \p{N}
    static let other: UInt8 = 2       // [^\s\p{L}\p{N}]
    static let space: UInt8 = 3       // U+0020
    static let newline: UInt8 = 4     // \r or \n
    static let whitespace: UInt8 = 5  // any other \s

    /// The newest Unicode version whose assignments the Hugging Face regex engine knows.
    ///
    /// `tokenizers` matches with Oniguruma, whose tables are Unicode 16.0; scalars assigned later
    /// (which Swift's tables already know) are unassigned there, so they count as `other`.
    static let unicodeVersion = (major: 16, minor: 0)

    /// The class of each ASCII byte.
    static let ascii: [UInt8] = (0..<128).map { classify(UInt32($0)) }

    /// The class of one scalar, as `\p{L}`, `\p{N}` and `\s` see it in Hugging Face's regexes.
    ///
    /// With `currentNumbers`, numbers from any Unicode version count as `number`: the `Digits`
    /// pre-tokenizer that SmolLM2 applies before its regex uses Rust's `char::is_numeric`, whose
    /// tables are as current as Swift's.
    static func classify(_ value: UInt32, currentNumbers: Bool = false) -> UInt8 {
        switch value {
        case 0x20: return space
        case 0x0A, 0x0D: return newline
        default: break
        }
        guard let scalar = Unicode.Scalar(value) else { return other }
        let properties = scalar.properties
        if properties.isWhitespace { return whitespace }
        let isNew = properties.age.map { ($0.major, $0.minor) > unicodeVersion } ?? false
        switch properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return isNew ? other : letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return isNew && !currentNumbers ? other : number
        default:
            return other
        }
    }

    /// Fills `classes` with the class of every byte of the valid UTF-8 text `bytes`.
    static func classify(_ bytes: UnsafeBufferPointer<UInt8>, into classes: UnsafeMutableBufferPointer<UInt8>,
                         currentNumbers: Bool) {
        ascii.withUnsafeBufferPointer { table in
            var index = 0
            let count = bytes.count
            while index < count {
                let lead = bytes[index]
                if lead < 0x80 {
                    classes[index] = table[Int(lead)]
                    index += 1
                    continue
                }
                let length = utf8Length(lead)
                var value = UInt32(lead) & (length == 2 ? 0x1F : length == 3 ? 0x0F : 0x07)
                let end = min(index + length, count)
                for position in index + 1 ..< end {
                    value = value << 6 | UInt32(bytes[position] & 0x3F)
                }
                let cls = classify(value, currentNumbers: currentNumbers)
                for position in index ..< end { classes[position] = cls }
                index = end
            }
        }
    }

    /// The number of bytes in the UTF-8 sequence that starts with `lead`.
    @inline(__always)
    static func utf8Length(_ lead: UInt8) -> Int {
        lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4
    }
}
