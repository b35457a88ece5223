import Foundation
import JSONKeys

/// A JSON document as a Swift value: configs keep unknown keys verbatim, histories hold free-form reports.
public enum JSONValue: Codable, Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let i = try? c.decode(Int.self) { self = .int(i) }
        else if let d = try? c.decode(Double.self) { self = .double(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    /// Encodes the value; a non-finite `.double` has no JSON form and throws `EncodingError.invalidValue` under
    /// every encoder setting (never written as a string such as "nan", whatever the non-conforming float strategy).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d):
            guard d.isFinite else {
                let context = EncodingError.Context(codingPath: encoder.codingPath,
                                                    debugDescription: "\(d) is not a JSON number")
                throw EncodingError.invalidValue(d, context)
            }
            try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Parses UTF-8 JSON text; a key repeated within one object throws `DuplicateJSONKey`, a number past a
    /// 64-bit float's range `JSONNumberOverflow` (both naming the place). Files are read through
    /// `JSONKeys.strictText` first, which also refuses bytes that are not UTF-8.
    public static func parse(_ text: String) throws -> JSONValue {
        try JSONKeys.validate(text.utf8)
        return try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
    }

    /// Compact JSON text with sorted keys (deterministic). A non-finite double, which has no JSON form, is written
    /// `null` there (as in `prettyBytes`); the rest of the document is kept.
    public var text: String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: e.encode(self), as: UTF8.self))
            ?? (try? String(decoding: e.encode(nullingNonFinite()), as: UTF8.self)) ?? "null"
    }

    /// The value with every non-finite double replaced by `.null`.
    func nullingNonFinite() -> JSONValue {
        switch self {
        case .double(let d) where !d.isFinite: return .null
        case .array(let a): return .array(a.map { $0.nullingNonFinite() })
        case .object(let o): return .object(o.mapValues { $0.nullingNonFinite() })
        default: return self
        }
    }

    public var objectValue: [String: JSONValue]? { if case .object(let o) = self { return o }; return nil }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 1e15: return Int(d)
        default: return nil
        }
    }
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
}

/// The coding path ("stages.0.ppl") of the first non-finite floating-point number in `value`, or nil when every
/// number it holds is finite: JSON has no form for NaN or infinity, so a report holding one cannot be written.
public func firstNonFiniteNumber<T: Encodable>(in value: T) -> String? {
    do { _ = try JSONEncoder().encode(value) } catch EncodingError.invalidValue(let v, let context) {
        let path = context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        return (path.isEmpty ? "the value" : path) + " (\(v))"
    } catch {
        return nil
    }
    return nil
}

/// Encodes any Encodable value to a JSONValue (through JSON text). A non-finite number stays a `.double` (NaN or
/// ±infinity) in the result, so that writing it fails where it is written (`JSONValue.encode`) and
/// `firstNonFiniteNumber` finds it; it never turns into a string or nulls the whole value. Through the text an
/// integral double comes back `.int` (4.0 → 4); `JSONValue(encoding:)` keeps it a double (reports use that one).
public func jsonValue<T: Encodable>(_ value: T) -> JSONValue {
    let e = JSONEncoder()
    e.keyEncodingStrategy = .convertToSnakeCase
    let mark = JSONValue.sentinel
    e.nonConformingFloatEncodingStrategy = .convertToString(
        positiveInfinity: mark + "+inf", negativeInfinity: mark + "-inf", nan: mark + "nan")
    guard let data = try? e.encode(value), let v = try? JSONDecoder().decode(JSONValue.self, from: data) else {
        return .null
    }
    return v.restoringNonFinite()
}

extension JSONValue {
    /// Prefix of the strings `jsonValue` stands non-finite numbers in for on their way through JSON text.
    static let sentinel = "\u{0}non-finite:"

    /// The value with `jsonValue`'s stand-in strings turned back into non-finite doubles.
    func restoringNonFinite() -> JSONValue {
        switch self {
        case .string(let s) where s.hasPrefix(Self.sentinel):
            switch s.dropFirst(Self.sentinel.count) {
            case "+inf": return .double(.infinity)
            case "-inf": return .double(-.infinity)
            default: return .double(.nan)
            }
        case .array(let a): return .array(a.map { $0.restoringNonFinite() })
        case .object(let o): return .object(o.mapValues { $0.restoringNonFinite() })
        default: return self
        }
    }
}

extension JSONValue {
    /// Pretty JSON (2-space indent, sorted keys, slashes unescaped, UTF-8) in which every `.double` keeps a
    /// fraction or exponent: 4.0 is written `4.0`, never `4`. Readers in Python (`json`) then see a float,
    /// as Hugging Face configs and llama.cpp's converter expect (its DeciLM reader asserts `ffn_mult` is a
    /// float). Doubles use Swift's shortest round-trip form; a non-finite double has no JSON form and is
    /// written `null`.
    public var prettyBytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(1 << 12)
        write(to: &out, depth: 0)
        out.append(0x0A)
        return out
    }

    private func write(to out: inout [UInt8], depth: Int) {
        func newline(_ d: Int) { out.append(0x0A); out.append(contentsOf: repeatElement(0x20, count: 2 * d)) }
        switch self {
        case .null: out.append(contentsOf: Array("null".utf8))
        case .bool(let b): out.append(contentsOf: Array((b ? "true" : "false").utf8))
        case .int(let i): out.append(contentsOf: Array(String(i).utf8))
        case .double(let d):
            guard d.isFinite else { out.append(contentsOf: Array("null".utf8)); return }
            var s = "\(d)"
            if !s.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }) { s += ".0" }
            out.append(contentsOf: Array(s.utf8))
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .array(let a):
            guard !a.isEmpty else { out.append(contentsOf: Array("[]".utf8)); return }
            out.append(UInt8(ascii: "["))
            for (i, v) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                newline(depth + 1)
                v.write(to: &out, depth: depth + 1)
            }
            newline(depth)
            out.append(UInt8(ascii: "]"))
        case .object(let o):
            guard !o.isEmpty else { out.append(contentsOf: Array("{}".utf8)); return }
            out.append(UInt8(ascii: "{"))
            for (i, k) in o.keys.sorted().enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                newline(depth + 1)
                JSONValue.writeString(k, to: &out)
                out.append(contentsOf: Array(": ".utf8))
                o[k]!.write(to: &out, depth: depth + 1)
            }
            newline(depth)
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func writeString(_ s: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, b])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, b])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}

// MARK: - Encoding a Codable report as a JSONValue

extension JSONValue {
    /// Encodes `value` straight to a JSONValue, without going through JSON text, for reports that are Codable
    /// structs (a pass's diagnostics, a history entry):
    /// * an integer is `.int` (an unsigned one past `Int.max` `.double`), a `Double` or `Float` `.double`: 4.0
    ///   stays a double (`prettyBytes` writes it `4.0`), and a non-finite number stays a `.double` (NaN,
    ///   ±infinity) for the report's writer to refuse where it is written (`firstNonFiniteNumber` names it);
    /// * a struct's keys are its coding keys in snake case, by JSONEncoder's `.convertToSnakeCase` rule
    ///   (`snakeCase`: "bitsPerWeight" → "bits_per_weight", "kldP99" → "kld_p99"), so the struct reads the same
    ///   here as through `encodeJSON`; keys already in snake case are unchanged;
    /// * a `[String: V]` dictionary's keys are kept as they are (as JSONEncoder keeps them), and a JSONValue
    ///   member is kept as it is (its non-finite doubles included);
    /// * a nil optional encoded by a synthesized `encode(to:)` is left out (as JSONEncoder does); one encoded
    ///   explicitly (`Nullable`, `encodeNil`, an optional in an array) is `.null`.
    /// Objects are dictionaries: their key order is not kept (every writer sorts them).
    /// Throws only what `value.encode(to:)` itself throws.
    public init<T: Encodable>(encoding value: T) throws {
        let root = JSONNode()
        try JSONNode.encode(value, into: root, codingPath: [])
        self = root.value
    }

    /// JSONEncoder's `.convertToSnakeCase` rule: words split where a lowercase letter is followed by an uppercase
    /// one (a run of capitals is one word, its last capital starting the next word when a lowercase letter
    /// follows), joined by "_" and lowercased; leading and trailing underscores kept. "myURLProperty" →
    /// "my_url_property", "float32Bytes" → "float32_bytes".
    public static func snakeCase(_ key: String) -> String {
        guard !key.isEmpty else { return key }
        var words: [Range<String.Index>] = []
        var wordStart = key.startIndex
        var searchRange = key.index(after: wordStart)..<key.endIndex
        while let upper = key.rangeOfCharacter(from: .uppercaseLetters, options: [], range: searchRange) {
            words.append(wordStart..<upper.lowerBound)
            searchRange = upper.lowerBound..<searchRange.upperBound
            guard let lower = key.rangeOfCharacter(from: .lowercaseLetters, options: [], range: searchRange) else {
                wordStart = searchRange.lowerBound
                break
            }
            let afterCapital = key.index(after: upper.lowerBound)
            if lower.lowerBound == afterCapital {
                wordStart = upper.lowerBound
            } else {
                // A run of capitals: a word of its own, up to the capital before the lowercase letter.
                let beforeLower = key.index(before: lower.lowerBound)
                words.append(upper.lowerBound..<beforeLower)
                wordStart = beforeLower
            }
            searchRange = lower.upperBound..<searchRange.upperBound
        }
        words.append(wordStart..<searchRange.upperBound)
        return words.map { key[$0].lowercased() }.joined(separator: "_")
    }
}

/// A value encoded as null when nil, in a report whose other nil optionals are left out (a synthesized
/// `encode(to:)` leaves a nil optional out; this one keeps its key with `null`). Decodes null as nil.
public struct Nullable<Wrapped: Codable>: Codable {
    public var value: Wrapped?
    public init(_ value: Wrapped?) { self.value = value }
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        value = c.decodeNil() ? nil : try c.decode(Wrapped.self)
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}

extension Nullable: Equatable where Wrapped: Equatable {}

extension JSONValue {
    /// An unsigned integer as `.int`, or as `.double` past `Int.max`.
    fileprivate static func unsigned<U: UnsignedInteger>(_ value: U) -> JSONValue {
        Int(exactly: value).map { .int($0) } ?? .double(Double(value))
    }
}

/// A value under construction: a scalar (or a whole JSONValue), or a keyed or unkeyed container whose members
/// are filled later.
private final class JSONNode {
    var scalar: JSONValue?
    var object: [String: JSONNode]?
    var array: [JSONNode]?

    var value: JSONValue {
        if let object { return .object(object.mapValues(\.value)) }
        if let array { return .array(array.map(\.value)) }
        return scalar ?? .object([:])
    }

    /// Encodes `value` into `node`: a JSONValue as it is, a string-keyed dictionary with its keys as they are,
    /// anything else through its `encode(to:)`.
    static func encode<T: Encodable>(_ value: T, into node: JSONNode, codingPath: [CodingKey]) throws {
        if let json = value as? JSONValue {
            node.scalar = json
        } else if let dictionary = value as? StringKeyedEntries {
            try dictionary.encodeEntries(into: node, codingPath: codingPath)
        } else {
            try value.encode(to: NodeEncoder(node: node, codingPath: codingPath))
        }
    }
}

/// A `[String: V]` dictionary, whose keys the encoder keeps as they are.
private protocol StringKeyedEntries {
    func encodeEntries(into node: JSONNode, codingPath: [CodingKey]) throws
}

extension Dictionary: StringKeyedEntries where Key == String, Value: Encodable {
    fileprivate func encodeEntries(into node: JSONNode, codingPath: [CodingKey]) throws {
        if node.object == nil { node.object = [:] }
        for (key, member) in self {
            let child = JSONNode()
            node.object![key] = child
            try JSONNode.encode(member, into: child, codingPath: codingPath + [EntryKey(stringValue: key)])
        }
    }
}

/// A dictionary entry's key in a coding path.
private struct EntryKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

private struct NodeEncoder: Encoder {
    let node: JSONNode
    var codingPath: [CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if node.object == nil { node.object = [:] }
        return KeyedEncodingContainer(KeyedNode<Key>(node: node, codingPath: codingPath))
    }
    func unkeyedContainer() -> UnkeyedEncodingContainer {
        if node.array == nil { node.array = [] }
        return UnkeyedNode(node: node, codingPath: codingPath)
    }
    func singleValueContainer() -> SingleValueEncodingContainer { SingleNode(node: node, codingPath: codingPath) }
}

private struct KeyedNode<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: JSONNode
    var codingPath: [CodingKey]

    func child(_ key: Key) -> JSONNode {
        let c = JSONNode()
        node.object![JSONValue.snakeCase(key.stringValue)] = c
        return c
    }
    mutating func encodeNil(forKey key: Key) throws { child(key).scalar = .null }
    mutating func encode(_ value: Bool, forKey key: Key) throws { child(key).scalar = .bool(value) }
    mutating func encode(_ value: String, forKey key: Key) throws { child(key).scalar = .string(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws { child(key).scalar = .double(value) }
    mutating func encode(_ value: Float, forKey key: Key) throws { child(key).scalar = .double(Double(value)) }
    mutating func encode(_ value: Int, forKey key: Key) throws { child(key).scalar = .int(value) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { child(key).scalar = .unsigned(value) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { child(key).scalar = .unsigned(value) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try JSONNode.encode(value, into: child(key), codingPath: codingPath + [key])
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type,
                                                        forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        NodeEncoder(node: child(key), codingPath: codingPath + [key]).container(keyedBy: keyType)
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> UnkeyedEncodingContainer {
        NodeEncoder(node: child(key), codingPath: codingPath + [key]).unkeyedContainer()
    }
    mutating func superEncoder() -> Encoder { NodeEncoder(node: node, codingPath: codingPath) }
    mutating func superEncoder(forKey key: Key) -> Encoder {
        NodeEncoder(node: child(key), codingPath: codingPath + [key])
    }
}

private struct UnkeyedNode: UnkeyedEncodingContainer {
    let node: JSONNode
    var codingPath: [CodingKey]
    var count: Int { node.array!.count }

    func child() -> JSONNode {
        let c = JSONNode()
        node.array!.append(c)
        return c
    }
    mutating func encodeNil() throws { child().scalar = .null }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try JSONNode.encode(value, into: child(), codingPath: codingPath)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type)
        -> KeyedEncodingContainer<NestedKey> {
        NodeEncoder(node: child(), codingPath: codingPath).container(keyedBy: keyType)
    }
    mutating func nestedUnkeyedContainer() -> UnkeyedEncodingContainer {
        NodeEncoder(node: child(), codingPath: codingPath).unkeyedContainer()
    }
    mutating func superEncoder() -> Encoder { NodeEncoder(node: child(), codingPath: codingPath) }
}

private struct SingleNode: SingleValueEncodingContainer {
    let node: JSONNode
    var codingPath: [CodingKey]

    mutating func encodeNil() throws { node.scalar = .null }
    mutating func encode(_ value: Bool) throws { node.scalar = .bool(value) }
    mutating func encode(_ value: String) throws { node.scalar = .string(value) }
    mutating func encode(_ value: Double) throws { node.scalar = .double(value) }
    mutating func encode(_ value: Float) throws { node.scalar = .double(Double(value)) }
    mutating func encode(_ value: Int) throws { node.scalar = .int(value) }
    mutating func encode(_ value: Int8) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: Int16) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: Int32) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: Int64) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt) throws { node.scalar = .unsigned(value) }
    mutating func encode(_ value: UInt8) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt16) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt32) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt64) throws { node.scalar = .unsigned(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try JSONNode.encode(value, into: node, codingPath: codingPath)
    }
}
