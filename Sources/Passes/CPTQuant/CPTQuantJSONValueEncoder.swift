// An Encoder whose output is a JSONValue, for CPTQuant's Codable report (the runner takes reports as JSONValue).

import Model

/// Encodes an `Encodable` value straight to a `JSONValue`, without going through JSON text: an `Int` stays
/// `.int`, a `Double` stays `.double` (4.0 is not turned into the integer 4, so `prettyBytes` writes it `4.0`),
/// and a non-finite double stays a `.double` (NaN, ±infinity) for the report writer to refuse where it is written.
/// A nil optional encoded by a synthesized `encode(to:)` is left out (as JSONEncoder does); one encoded
/// explicitly (`encodeNil`, `Optional` in an array or as a single value) is `.null`. Keys are the property names
/// in snake case: each capital letter becomes "_" and its lowercase ("bitsPerWeight" → "bits_per_weight",
/// "float32Bytes" → "float32_bytes"); the names encoded here have no acronyms.
enum JSONValueEncoder {
    static func encode<T: Encodable>(_ value: T) throws -> JSONValue {
        let root = JSONNode()
        try value.encode(to: NodeEncoder(node: root, codingPath: []))
        return root.value
    }

    /// "bitsPerWeight" → "bits_per_weight".
    static func snakeCase(_ key: String) -> String {
        var out = ""
        for ch in key {
            if ch.isUppercase { out += "_" + ch.lowercased() } else { out.append(ch) }
        }
        return out
    }
}

/// A value under construction: a scalar, or a keyed or unkeyed container whose members are filled later.
private final class JSONNode {
    var scalar: JSONValue?
    var object: [String: JSONNode]?
    var array: [JSONNode]?

    var value: JSONValue {
        if let object { return .object(object.mapValues(\.value)) }
        if let array { return .array(array.map(\.value)) }
        return scalar ?? .object([:])
    }
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
        node.object![JSONValueEncoder.snakeCase(key.stringValue)] = c
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
    mutating func encode(_ value: UInt, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { child(key).scalar = .int(Int(value)) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try value.encode(to: NodeEncoder(node: child(key), codingPath: codingPath + [key]))
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
        try value.encode(to: NodeEncoder(node: child(), codingPath: codingPath))
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
    mutating func encode(_ value: UInt) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt8) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt16) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt32) throws { node.scalar = .int(Int(value)) }
    mutating func encode(_ value: UInt64) throws { node.scalar = .int(Int(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try value.encode(to: NodeEncoder(node: node, codingPath: codingPath))
    }
}
