import Diagnostics

/// A key that occurs twice in one JSON object: JSON parsers disagree on which value wins (Python keeps the
/// last, Foundation's decoder the first), so every JSON file we read is checked and a repeat is an error.
/// What the strict reading step refuses (`JSONKeys.strictText`, `JSONKeys.validate`): each error says where; a reader
/// catches them as one kind and adds its file.
public protocol StrictJSONError: ContextualError {}

extension StrictJSONError {
    public var context: ErrorContext { ErrorContext() }
}

public struct DuplicateJSONKey: StrictJSONError, Equatable {
    /// The repeated key.
    public let key: String
    /// Where the object holding it sits, as a path of keys and indices (`$` is the document root).
    public let path: String

    public init(key: String, path: String) { self.key = key; self.path = path }

    public var description: String { "key '\(key)' appears twice in the object at \(path) (expected each key once)" }
    public var context: ErrorContext { ErrorContext(key: "\(path).\(key)", expected: "each key once", found: "twice") }
}

/// JSON nested deeper than we read (arrays and objects within each other), at the path where the limit is reached.
public struct JSONNestingTooDeep: StrictJSONError, Equatable {
    public let path: String
    public let limit: Int
    public var description: String {
        let place = path.count <= 80 ? path : path.prefix(40) + "…" + path.suffix(20)
        return "\(place): nested deeper than \(limit) arrays and objects (expected at most \(limit))"
    }
}

/// Scans JSON text for repeated keys without building any values.
///
/// Syntax errors are left to the parser that reads the text afterwards: the scan stops quietly at anything
/// it cannot follow, so it never reports a duplicate that a real parser would not see.
public enum JSONKeys {
    /// Throws `DuplicateJSONKey` for the first object (in document order) that repeats a key.
    public static func checkUnique<Bytes: Collection>(_ text: Bytes) throws where Bytes.Element == UInt8 {
        let bytes = Array(text)
        var scanner = Scanner(bytes: bytes)
        try scanner.value(path: "$", depth: 0)
    }

    struct Scanner {
        let bytes: [UInt8]
        /// Also throw `JSONNumberOverflow` for a number literal past Double's range.
        var checkNumbers = false
        var index = 0
        /// Deeper nesting is refused (`JSONNestingTooDeep`): the decoders recurse once per level, and 1,000 levels
        /// of `[` overflowed the stack (found by fuzz-recipe). No file we read nests beyond about 10.
        static let maxDepth = 128

        mutating func skipSpace() {
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        }

        /// Reads the value at `index`; returns false where the text stops being JSON.
        @discardableResult
        mutating func value(path: String, depth: Int) throws -> Bool {
            skipSpace()
            guard index < bytes.count else { return false }
            guard depth < Self.maxDepth else { throw JSONNestingTooDeep(path: path, limit: Self.maxDepth) }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try object(path: path, depth: depth)
            case UInt8(ascii: "["): return try array(path: path, depth: depth)
            case UInt8(ascii: "\""): return string() != nil
            default:
                // Numbers, true, false, null: everything up to the next delimiter.
                let start = index
                while index < bytes.count, !",]} \t\r\n".utf8.contains(bytes[index]) { index += 1 }
                if checkNumbers, bytes[start] == UInt8(ascii: "-") || (0x30...0x39).contains(bytes[start]) {
                    let literal = String(decoding: bytes[start..<index], as: UTF8.self)
                    if let x = Double(literal), !x.isFinite { throw JSONNumberOverflow(literal: literal, path: path) }
                }
                return index > start
            }
        }

        mutating func object(path: String, depth: Int) throws -> Bool {
            index += 1
            var seen = Set<[UInt8]>()
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") { index += 1; return true }
            while true {
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\""), let key = string() else { return false }
                let name = Self.unescape(key)
                guard seen.insert(Array(name.utf8)).inserted else { throw DuplicateJSONKey(key: name, path: path) }
                skipSpace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return false }
                index += 1
                guard try value(path: "\(path).\(name)", depth: depth + 1) else { return false }
                skipSpace()
                guard index < bytes.count else { return false }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "}") { index += 1; return true }
                return false
            }
        }

        mutating func array(path: String, depth: Int) throws -> Bool {
            index += 1
            skipSpace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { index += 1; return true }
            var element = 0
            while true {
                guard try value(path: "\(path)[\(element)]", depth: depth + 1) else { return false }
                element += 1
                skipSpace()
                guard index < bytes.count else { return false }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                if bytes[index] == UInt8(ascii: "]") { index += 1; return true }
                return false
            }
        }

        /// The raw bytes between the quotes of the string at `index` (escapes kept), or nil if unterminated.
        mutating func string() -> ArraySlice<UInt8>? {
            let start = index + 1
            var i = start
            while i < bytes.count {
                if bytes[i] == UInt8(ascii: "\\") { i += 2; continue }
                if bytes[i] == UInt8(ascii: "\"") { index = i + 1; return bytes[start..<i] }
                i += 1
            }
            return nil
        }

        /// A key's text with JSON escapes resolved, so `"a"` and `"\u0061"` are the same key.
        static func unescape(_ raw: ArraySlice<UInt8>) -> String {
            guard raw.contains(UInt8(ascii: "\\")) else { return String(decoding: raw, as: UTF8.self) }
            var units: [UInt16] = []
            var out = ""
            func flush() { out += String(decoding: units, as: UTF16.self); units.removeAll() }
            var i = raw.startIndex
            var plain: [UInt8] = []
            func flushPlain() { out += String(decoding: plain, as: UTF8.self); plain.removeAll() }
            while i < raw.endIndex {
                let b = raw[i]
                guard b == UInt8(ascii: "\\"), i + 1 < raw.endIndex else { flush(); plain.append(b); i += 1; continue }
                flushPlain()
                let e = raw[i + 1]
                if e == UInt8(ascii: "u"), i + 6 <= raw.endIndex,
                   let u = UInt16(String(decoding: raw[(i + 2)..<(i + 6)], as: UTF8.self), radix: 16) {
                    units.append(u)
                    i += 6
                    continue
                }
                flush()
                switch e {
                case UInt8(ascii: "n"): out += "\n"
                case UInt8(ascii: "t"): out += "\t"
                case UInt8(ascii: "r"): out += "\r"
                case UInt8(ascii: "b"): out += "\u{8}"
                case UInt8(ascii: "f"): out += "\u{c}"
                default: out += String(UnicodeScalar(e))
                }
                i += 2
            }
            flush()
            flushPlain()
            return out
        }
    }
}
