import Diagnostics
import Foundation
import XCTest
@testable import Checkpoint

/// A checkpoint's read errors state the file, the tensor or attribute, and what was expected and found, as fields.
extension CheckpointTests {
    func testReadErrorsStateFileTensorExpectedAndFound() throws {
        let tensor = "model.layers.0.self_attn.k_proj.weight"
        try writeRaw(path("s.h5"), tensors: specs.map { $0.0 == tensor ? ($0.0, [16, 16], false) : $0 })
        XCTAssertThrowsError(try Checkpoint.read(path("s.h5"))) { error in
            XCTAssertEqual("\(error)", "\(path("s.h5")): tensor '\(tensor)': expected shape [8, 16], found [16, 16]")
            XCTAssertEqual(error.errorContext, ErrorContext(file: path("s.h5"), tensor: tensor, expected: "[8, 16]",
                                                            found: "[16, 16]"))
        }
        try writeRaw(path("v.h5"), version: 4, tensors: specs)
        XCTAssertThrowsError(try Checkpoint.read(path("v.h5"))) { error in
            XCTAssertEqual(error.errorContext.file, path("v.h5"))
            XCTAssertEqual(error.errorContext.key, "format_version")
            XCTAssertEqual(error.errorContext.found, "4")
        }
        XCTAssertThrowsError(try Checkpoint.read(path("nope.h5"))) { error in
            XCTAssertEqual(error.errorContext, ErrorContext(file: path("nope.h5"), expected: "a checkpoint",
                                                            found: "no such file"))
        }
    }
}
