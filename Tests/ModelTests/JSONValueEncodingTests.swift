import Foundation
import Model
import XCTest

/// `JSONValue(encoding:)`: a Codable report as a JSONValue, with ints and doubles kept apart and keys as
/// `encodeJSON` writes them.
final class JSONValueEncodingTests: XCTestCase {
    struct Sample: Codable {
        struct Entry: Codable { var layerIndex: Int; var score: Float }
        var bitsPerWeight: Double
        var groupSize: Int
        var kldP99: Double
        var float32Bytes: UInt8
        var note: String
        var flags: [Bool]
        var entries: [Entry]
        var byName: [String: Int]
        var optionalAbsent: Int?
        var optionalPresent: Double?
        var nullable: Nullable<Int>
        var nullablePresent: Nullable<[Double?]>
        var raw: JSONValue
    }

    func sample() -> Sample {
        Sample(bitsPerWeight: 4.0, groupSize: 32, kldP99: 0.25, float32Bytes: 8, note: "n", flags: [true, false],
               entries: [.init(layerIndex: 2, score: 0.1)], byName: ["lm_head.weight": 1, "camelKey": 2],
               optionalAbsent: nil, optionalPresent: 3.0, nullable: Nullable(nil),
               nullablePresent: Nullable([1.0, nil]),
               raw: .object(["keptAsIs": .double(.nan), "n": .int(1)]))
    }

    /// Every member as the hand-built dictionaries had it: `.int` for integers, `.double` for floating point
    /// (4.0 and 3.0 stay doubles; a Float widened exactly), snake-case struct keys, dictionary keys and JSONValue
    /// members untouched, a nil optional left out and a `Nullable` nil written null.
    func testEncodesIntsAndDoublesApartWithSnakeCaseKeys() throws {
        let v = try JSONValue(encoding: sample())
        let o = try XCTUnwrap(v.objectValue)
        XCTAssertEqual(Set(o.keys), ["bits_per_weight", "group_size", "kld_p99", "float32_bytes", "note", "flags",
                                     "entries", "by_name", "optional_present", "nullable", "nullable_present", "raw"])
        XCTAssertEqual(o["bits_per_weight"], .double(4.0))
        XCTAssertEqual(o["group_size"], .int(32))
        XCTAssertEqual(o["kld_p99"], .double(0.25))
        XCTAssertEqual(o["float32_bytes"], .int(8))
        XCTAssertEqual(o["note"], .string("n"))
        XCTAssertEqual(o["flags"], .array([.bool(true), .bool(false)]))
        XCTAssertEqual(o["entries"], .array([.object(["layer_index": .int(2), "score": .double(Double(Float(0.1)))])]))
        XCTAssertEqual(o["by_name"], .object(["lm_head.weight": .int(1), "camelKey": .int(2)]))
        XCTAssertEqual(o["optional_present"], .double(3.0))
        XCTAssertEqual(o["nullable"], .null)
        XCTAssertEqual(o["nullable_present"], .array([.double(1.0), .null]))
        let raw = try XCTUnwrap(o["raw"]?.objectValue)
        XCTAssertEqual(Set(raw.keys), ["keptAsIs", "n"])
        XCTAssertTrue(try XCTUnwrap(raw["keptAsIs"]?.doubleValue).isNaN)
        // The rendering keeps the difference: an integral double is written with a fraction, an int without.
        let pretty = String(decoding: JSONValue.object(["a": o["bits_per_weight"]!, "b": o["group_size"]!])
            .prettyBytes, as: UTF8.self)
        XCTAssertEqual(pretty, "{\n  \"a\": 4.0,\n  \"b\": 32\n}\n")
    }

    /// The same text as `JSONEncoder` with `.convertToSnakeCase` (what `encodeJSON` and `jsonValue` use), for every
    /// value without integral doubles or JSONValue members.
    func testTextMatchesJSONEncoderWithSnakeCaseKeys() throws {
        struct Plain: Codable {
            var bitsPerWeight: Double
            var groupSize: Int
            var kldP99After: Double?
            var sameTopP: Double
            var names: [String: Int]
            var list: [[Int]]
            var absent: String?
        }
        let value = Plain(bitsPerWeight: 4.5, groupSize: 16, kldP99After: 0.125, sameTopP: 0.75,
                          names: ["aB": 1], list: [[1, 2], []], absent: nil)
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        XCTAssertEqual(try JSONValue(encoding: value).text, String(decoding: try e.encode(value), as: UTF8.self))
        XCTAssertEqual(try JSONValue(encoding: value), jsonValue(value))
    }

    /// `snakeCase` is JSONEncoder's `.convertToSnakeCase`, acronyms, digits and underscores included.
    func testSnakeCaseIsJSONEncodersRule() throws {
        struct Key: CodingKey {
            var stringValue: String
            init(stringValue: String) { self.stringValue = stringValue }
            var intValue: Int? { nil }
            init?(intValue: Int) { nil }
        }
        struct Keys: Encodable {
            var names: [String]
            func encode(to encoder: Encoder) throws {
                var c = encoder.container(keyedBy: Key.self)
                for n in names { try c.encode(n, forKey: Key(stringValue: n)) }
            }
        }
        let names = ["bitsPerWeight", "myURLProperty", "kldP99", "float32Bytes", "sameTopP", "_oneTwo_", "a1B2",
                     "URL", "x", "aBC", "abcDEFgh", "already_snake", "obsLoss", "bosTokenId", "", "ÉtéÀ"]
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        let foundation = try XCTUnwrap(try JSONValue.parse(String(decoding: try e.encode(Keys(names: names)),
                                                                  as: UTF8.self)).objectValue)
        for n in names {
            XCTAssertEqual(foundation[JSONValue.snakeCase(n)], .string(n), "\(n) → \(JSONValue.snakeCase(n))")
        }
        XCTAssertEqual(JSONValue.snakeCase("myURLProperty"), "my_url_property")
        XCTAssertEqual(JSONValue.snakeCase("float32Bytes"), "float32_bytes")
    }

    /// A non-finite number stays a `.double` where it is (for `firstNonFiniteNumber` to name), and an unsigned
    /// integer past `Int.max` becomes a double rather than trapping.
    func testNonFiniteAndLargeUnsigned() throws {
        struct R: Codable { var stages: [Double]; var big: UInt64 }
        let v = try JSONValue(encoding: R(stages: [1, .infinity], big: .max))
        let stages = try XCTUnwrap(v.objectValue?["stages"]?.arrayValue)
        XCTAssertEqual(stages[0], .double(1))
        XCTAssertEqual(stages[1], .double(.infinity))
        XCTAssertEqual(v.objectValue?["big"], .double(Double(UInt64.max)))
        XCTAssertEqual(firstNonFiniteNumber(in: v).map { $0.hasPrefix("stages.1") }, true)
    }

    /// A `Nullable` decodes null as nil and round-trips through JSON text.
    func testNullableRoundTrips() throws {
        let text = #"[null, 3]"#
        let decoded = try JSONDecoder().decode([Nullable<Int>].self, from: Data(text.utf8))
        XCTAssertEqual(decoded, [Nullable(nil), Nullable(3)])
        XCTAssertEqual(try JSONValue(encoding: decoded), .array([.null, .int(3)]))
    }
}
