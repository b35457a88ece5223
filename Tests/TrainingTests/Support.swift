import Checkpoint
import Foundation
import Model
import TensorCore

/// The committed fixtures (Tests/Fixtures), made by tools/make_tiny_fixture.py and tools/make_grad_fixture.py.
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func model(_ name: String) throws -> DecoderModel { try Checkpoint.read(path("\(name).h5")).model }

    static func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path(name)))) as! [String: Any]
    }

    static func floats(_ name: String) throws -> [Float] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path(name)))
        return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }

    /// The reference gradients of a fixture, by tensor name.
    static func gradients(_ jsonName: String) throws -> [String: [Float]] {
        let j = try json(jsonName)
        let all = try floats(j["binary"] as! String)
        var out: [String: [Float]] = [:]
        for t in j["tensors"] as! [[String: Any]] {
            let offset = t["offset"] as! Int, count = t["count"] as! Int
            out[t["name"] as! String] = Array(all[offset..<(offset + count)])
        }
        return out
    }

    static func ids(_ batch: Any?) -> [Int32] { (batch as! [[Int]]).flatMap { $0.map(Int32.init) } }
}

/// max |a - b| / max |b|: the error of a tensor relative to the reference's scale.
func relativeError(_ a: [Float], _ b: [Float]) -> Double {
    precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
    let scale = max(b.map { abs(Double($0)) }.max() ?? 0, 1e-30)
    return zip(a, b).map { abs(Double($0) - Double($1)) }.max()! / scale
}
