import Foundation
import Model
import Quantization
import TensorCore
import XCTest
@testable import Checkpoint

/// Quantized tensors in checkpoints: packed codes with float16 scales and minimums (or float16 values),
/// format per tensor, dequantized on load.
extension CheckpointTests {
    /// A model whose listed tensors are replaced by their quantized values, with the stored forms.
    func quantizedSample() throws -> Checkpoint {
        let base = LlamaModel.random(config: config, seed: 5)
        let formats: [String: QuantFormat] = [
            "model.layers.0.self_attn.q_proj.weight": try QuantFormat(bits: 3, groupSize: 8, symmetric: false),
            "model.layers.0.self_attn.k_proj.weight": try QuantFormat(bits: 5, groupSize: 16, symmetric: true),
            "model.layers.0.mlp.down_proj.weight": try QuantFormat(bits: 2, groupSize: 8, symmetric: false),
            "model.layers.1.mlp.up_proj.weight": .float16,
            "model.layers.1.self_attn.o_proj.weight": try QuantFormat(bits: 8, groupSize: 4, symmetric: true),
        ]
        var tensors = Dictionary(uniqueKeysWithValues: base.namedTensors.map { ($0.name, $0.tensor) })
        var quantized: [String: QuantizedTensor] = [:]
        for (name, f) in formats {
            let w = tensors[name]!
            let q = try QuantizedTensor(weights: w.array, shape: w.shape, format: f)
            quantized[name] = q
            tensors[name] = Tensor(shape: w.shape, values: q.dequantized())
        }
        return Checkpoint(model: try LlamaModel(config: config, tensors: tensors), quantized: quantized)
    }

    func testQuantizedCheckpointRoundTrips() throws {
        let c = try quantizedSample()
        try c.write(to: path("q.h5"))
        let r = try Checkpoint.read(path("q.h5"))
        XCTAssertEqual(r.quantized, c.quantized)
        for ((n1, t1), (n2, t2)) in zip(c.model.namedTensors, r.model.namedTensors) {
            XCTAssertEqual(n1, n2)
            XCTAssertEqual(t1.array, t2.array, n1)
        }
        let file = try H5File.openReadOnly(path("q.h5"))
        XCTAssertEqual(try file.int("format_version"), 2)
        XCTAssertFalse(file.exists("tensors/model.layers.0.self_attn.q_proj.weight"), "a quantized tensor is stored only packed")
        let codes = try file.datasetInfo("quantized/model.layers.0.self_attn.q_proj.weight/codes")
        XCTAssertEqual(codes.shape, [(16 * 16 * 3 + 7) / 8])
        XCTAssertEqual(try file.datasetInfo("quantized/model.layers.0.self_attn.q_proj.weight/scales").shape, [16, 2])
        XCTAssertEqual(try file.datasetInfo("quantized/model.layers.1.mlp.up_proj.weight/values").typeSize, 2)
        // Written again from what was read: the same stored forms.
        try r.write(to: path("q2.h5"))
        XCTAssertEqual(try Checkpoint.read(path("q2.h5")).quantized, c.quantized)
        // Without quantized tensors the file stays at version 1.
        try Checkpoint(model: r.model).write(to: path("plain.h5"))
        XCTAssertEqual(try H5File.openReadOnly(path("plain.h5")).int("format_version"), 1)
    }

    func testWritingRefusesAWeightChangedAfterQuantization() throws {
        let c = try quantizedSample()
        c.model.layers[0].attention!.q[3] += 0.5
        XCTAssertThrowsError(try c.write(to: path("bad.h5"))) {
            XCTAssertTrue("\($0)".contains("tensor 'model.layers.0.self_attn.q_proj.weight' no longer equals its quantized form"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path("bad.h5")))
    }

    /// Writes a file by hand: every tensor float32 except `name`, stored under /quantized with `datasets`.
    func writeBroken(_ p: String, name: String, entry: String, datasets: [(String, [Int], Bool)]) throws {
        let c = try quantizedSample()
        let f = try H5File.create(p)
        try f.setString("format", CheckpointFormat.name)
        try f.setInt("format_version", 2)
        try f.setString("config", config.json.text)
        try f.createGroup("tensors")
        for (n, t) in c.model.namedTensors where n != name {
            try f.write("tensors/" + n, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data)
        }
        try f.createGroup("quantized")
        try f.createGroup("quantized/" + name)
        for (key, shape, half) in datasets {
            let bytes = [UInt8](repeating: 0, count: shape.reduce(1, *) * (half ? 2 : 1))
            try bytes.withUnsafeBytes {
                try f.write("quantized/\(name)/\(key)", shape: shape, fileType: half ? H5Types.float16 : H5Types.uint8File,
                            memType: half ? H5Types.float16 : H5Types.uint8, data: $0.baseAddress!)
            }
        }
        try f.setString("quantization", "{\"\(name)\": \(entry)}")
        try f.close()
    }

    func testBrokenQuantizedEntriesAreNamedErrors() throws {
        let q = "model.layers.0.self_attn.q_proj.weight"
        let cases: [(String, [(String, [Int], Bool)], String)] = [
            (#"{"format": "q3_g8_asym", "shape": [16, 16]}"#, [("codes", [96], false), ("scales", [16, 2], true)], "'mins' is missing"),
            (#"{"format": "q3_g8_asym", "shape": [16, 16]}"#, [("codes", [95], false), ("scales", [16, 2], true), ("mins", [16, 2], true)], "95 code bytes, expected 96"),
            (#"{"format": "q7_g8_asym", "shape": [16, 16]}"#, [("codes", [96], false)], "bits 7 is not supported"),
            (#"{"format": "q4_g8_sym", "shape": [16, 8]}"#, [("codes", [64], false)], "shape [16, 8], expected [16, 16]"),
            (#"{"format": "q4_g8_sym"}"#, [("codes", [128], false)], "needs 'format' (string) and 'shape'"),
            (#"{"format": "q4_g8_sym", "shape": [16, 16]}"#, [("codes", [128], true), ("scales", [16, 2], true)], "'codes' must be a 1-D uint8 dataset"),
        ]
        for (i, (entry, datasets, expected)) in cases.enumerated() {
            try writeBroken(path("b\(i).h5"), name: q, entry: entry, datasets: datasets)
            XCTAssertThrowsError(try Checkpoint.read(path("b\(i).h5")), "case \(i)") {
                XCTAssertTrue("\($0)".contains(path("b\(i).h5")) && "\($0)".contains(q) && "\($0)".contains(expected), "case \(i): \($0)")
            }
        }
    }
}
