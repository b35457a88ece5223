import Foundation
import Passes
import Recipes
import XCTest

/// A recipe that repeats a key is refused, naming the file and the key (bug case 05): Foundation's decoder
/// would keep the first value and Python the last, so neither reading can be trusted.
final class DuplicateKeyRecipeTests: XCTestCase {
    func testRepeatedKeyInARecipe() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("recipe-dup-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data(#"{"format": 1, "base": "b.h5", "stages": [{"stage": "eval", "window": 8, "window": 16}]}"#.utf8).write(to: file)
        XCTAssertThrowsError(try Recipe.read(file.path, registry: .passes())) { error in
            for f in [file.path, "key 'window' appears twice in the object at $.stages[0]"] {
                XCTAssertTrue("\(error)".contains(f), "missing '\(f)' in: \(error)")
            }
        }
    }
}
