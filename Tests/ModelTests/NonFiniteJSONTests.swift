import Foundation
import Model
import XCTest

/// JSON numbers are always numbers: a non-finite double is never written as a string ("nan"), never silently nulls
/// a whole value, and its place in a report can be named.
final class NonFiniteJSONTests: XCTestCase {
    struct Report: Codable {
        var name = "eval"
        var stages: [Stage]
        struct Stage: Codable { var ppl: Double }
    }

    /// Before: under a convert-to-string strategy (as `encodeJSON` had), `.double(.nan)` became the string "nan".
    func testNonFiniteJSONValueNeverEncodesAsAString() throws {
        let e = JSONEncoder()
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf",
                                                                nan: "nan")
        for bad in [Double.nan, .infinity, -.infinity] {
            XCTAssertThrowsError(try e.encode(JSONValue.object(["ppl": .double(bad)])), "\(bad)") { error in
                guard case EncodingError.invalidValue = error else { return XCTFail("\(error)") }
            }
        }
        let finite = try e.encode(JSONValue.object(["ppl": .double(2.5)]))
        XCTAssertEqual(String(decoding: finite, as: UTF8.self), #"{"ppl":2.5}"#)
    }

    /// Before: `jsonValue` of a report holding NaN was `.null` as a whole, and `.text` of such a value was "null".
    func testJSONValueKeepsNonFiniteNumbersFindableInPlace() throws {
        let v = jsonValue(Report(stages: [.init(ppl: 3), .init(ppl: .nan)]))
        let stages = try XCTUnwrap(v.objectValue?["stages"]?.arrayValue)
        XCTAssertEqual(v.objectValue?["name"], .string("eval"))
        XCTAssertEqual(stages[0].objectValue?["ppl"]?.doubleValue, 3)
        XCTAssertTrue(try XCTUnwrap(stages[1].objectValue?["ppl"]?.doubleValue).isNaN)
        let found = firstNonFiniteNumber(in: v)
        XCTAssertEqual(found.map { $0.hasPrefix("stages.1.ppl") }, true, "\(String(describing: found))")
        let infinite = firstNonFiniteNumber(in: Report(stages: [.init(ppl: .infinity)]))
        XCTAssertEqual(infinite.map { $0.hasPrefix("stages.0.ppl") }, true, "\(String(describing: infinite))")
        XCTAssertNil(firstNonFiniteNumber(in: Report(stages: [.init(ppl: 1)])))
        XCTAssertEqual(JSONValue.object(["a": .int(1), "b": .double(.nan)]).text, #"{"a":1,"b":null}"#)
    }
}
