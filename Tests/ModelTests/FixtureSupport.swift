import Foundation

/// Locations and contents of the committed reference fixtures (made by tools/make_tiny_fixture.py).
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    struct Reference: Decodable {
        struct PPL: Decodable {
            let window: Int
            let windows: Int
            let predicted_tokens: Int
            let total_nll: Double
            let ppl: Double
        }
        let batch: [[Int32]]
        let loss: Double
        let logits_shape: [Int]
        let perplexity: PPL
    }

    static func reference(_ model: String) throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: path("\(model).reference.json"))))
    }

    static func logits(_ model: String) throws -> [Float] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path("\(model).logits.f32")))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
}
