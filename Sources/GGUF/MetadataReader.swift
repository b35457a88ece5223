/// GGUF metadata value type ids and their decoding.
enum MetadataReader {
    static let typeNames = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                            "bool", "string", "array", "uint64", "int64", "float64"]
    static let maxArrayDepth = 16

    /// Smallest encoded size of one value of type `id` (used to reject absurd array counts).
    static func minBytes(_ id: UInt32) -> Int {
        switch id {
        case 0, 1, 7: 1
        case 2, 3: 2
        case 4, 5, 6: 4
        case 8, 10, 11, 12: 8
        default: 12  // array: element type + count
        }
    }

    static func readValue(_ c: inout ByteCursor, type id: UInt32, key: String, depth: Int = 0) throws -> GGUFValue {
        let what = "metadata '\(key)'"
        switch id {
        case 0: return .uint8(try c.read(UInt8.self, what))
        case 1: return .int8(try c.read(Int8.self, what))
        case 2: return .uint16(try c.read(UInt16.self, what))
        case 3: return .int16(try c.read(Int16.self, what))
        case 4: return .uint32(try c.read(UInt32.self, what))
        case 5: return .int32(try c.read(Int32.self, what))
        case 6: return .float32(Float(bitPattern: try c.read(UInt32.self, what)))
        case 7:
            let b = try c.read(UInt8.self, what)
            guard b <= 1 else { throw c.error("\(what): expected bool 0 or 1, found \(b) at offset \(c.offset - 1)") }
            return .bool(b == 1)
        case 8: return .string(try c.readString(what))
        case 9:
            guard depth < maxArrayDepth else { throw c.error("\(what): arrays nested deeper than \(maxArrayDepth)") }
            let elementType = try c.read(UInt32.self, "element type of \(what)")
            guard Int(elementType) < typeNames.count else { throw typeError(elementType, c, key: key) }
            let count = try c.readCount("element count of \(what)", minElementBytes: minBytes(elementType))
            var items: [GGUFValue] = []
            items.reserveCapacity(count)
            for _ in 0..<count {
                items.append(try readValue(&c, type: elementType, key: key, depth: depth + 1))
            }
            return .array(items)
        case 10: return .uint64(try c.read(UInt64.self, what))
        case 11: return .int64(try c.read(Int64.self, what))
        case 12: return .float64(Double(bitPattern: try c.read(UInt64.self, what)))
        default: throw typeError(id, c, key: key)
        }
    }

    /// Error for a type id just read (so it sits at `offset - 4`).
    static func typeError(_ id: UInt32, _ c: ByteCursor, key: String) -> GGUFError {
        c.error(
            "metadata '\(key)': expected value type 0...\(typeNames.count - 1) (\(typeNames.joined(separator: ", "))), "
                + "found \(id) at offset \(c.offset - 4)")
    }
}
