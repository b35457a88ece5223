import Diagnostics
import XCTest

/// Errors keep their fields and are wrapped at most once: context added by outer layers extends one wrapper.
final class ErrorContextTests: XCTestCase {
    struct TensorError: ContextualError {
        var context: ErrorContext { ErrorContext(file: "a.h5", tensor: "w", expected: "[2, 3]", found: "[3, 2]") }
        var description: String { "a.h5: tensor 'w': expected shape [2, 3], found [3, 2]" }
    }

    func testAddingPrefixesPlacesAndAppendsNotesOnce() {
        let inner = TensorError()
        let once = inner.adding(ErrorContext(file: "r.json", stage: 2, stageName: "gptq"),
                                place: "r.json, stage 2 (gptq)", note: "base b.h5")
        let twice = once.adding(place: "sweep point p001 (bits=4)", advice: "nothing was written")
        XCTAssertEqual("\(twice)", "sweep point p001 (bits=4): r.json, stage 2 (gptq): "
            + "a.h5: tensor 'w': expected shape [2, 3], found [3, 2] (base b.h5); nothing was written")
        // One wrapper around the error as thrown, whose fields win over the outer ones.
        XCTAssertFalse(twice.underlying is ErrorInContext)
        XCTAssertTrue(twice.rootError is TensorError)
        XCTAssertEqual(twice.errorContext, ErrorContext(file: "a.h5", stage: 2, stageName: "gptq", tensor: "w",
                                                        expected: "[2, 3]", found: "[3, 2]"))
    }

    func testPlainErrorsHaveNoFieldsAndKeepTheirText() {
        struct Plain: Error, CustomStringConvertible { var description: String { "plain" } }
        XCTAssertTrue(Plain().errorContext.isEmpty)
        let e = Plain().adding(ErrorContext(file: "x.txt"), place: "x.txt")
        XCTAssertEqual("\(e)", "x.txt: plain")
        XCTAssertEqual(e.errorContext, ErrorContext(file: "x.txt"))
        XCTAssertEqual(ErrorContext(file: "f").prefixingFile("m"), "f: m")
        XCTAssertEqual(ErrorContext().prefixingFile("m"), "m")
    }
}
