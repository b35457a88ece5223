import Foundation
import Model
import Quantization
import TensorCore
import XCTest
@testable import Checkpoint

/// Every file is consistent or refused: a quantized entry's datasets fit its format, the datasets fit the config,
/// and a checkpoint with a NaN or infinite value is never written.
extension CheckpointTests {
    /// Datasets that do not belong to the format, or whose shapes do not fit the group size and tensor shape.
    func testQuantizedDatasetsMustFitTheirFormat() throws {
        let q = "model.layers.0.self_attn.q_proj.weight"
        let sym = #"{"format": "q4_g8_sym", "shape": [16, 16]}"#, asym = #"{"format": "q4_g8_asym", "shape": [16, 16]}"#
        let f16 = #"{"format": "f16", "shape": [16, 16]}"#
        let cases: [(String, [(String, [Int], Bool)], String)] = [
            (sym, [("codes", [128], false), ("scales", [16, 2], true), ("mins", [16, 2], true)],
             "holds 'mins', which does not belong to format q4_g8_sym (a symmetric format has no minimums)"),
            (asym, [("codes", [128], false), ("scales", [16, 2], true)], "'mins' is missing"),
            (sym, [("codes", [128], false), ("scales", [32], true)], "'scales' has shape [32], expected [16, 2]"),
            (sym, [("codes", [128], false), ("scales", [2, 16], true)], "'scales' has shape [2, 16], expected [16, 2]"),
            (asym, [("codes", [128], false), ("scales", [16, 2], true), ("mins", [16, 1], true)],
             "'mins' has shape [16, 1], expected [16, 2]"),
            (f16, [("values", [16, 16], true), ("codes", [128], false)], "holds 'codes', which does not belong to format f16"),
            (f16, [("values", [256], true)], "'values' has shape [256], expected [16, 16]"),
            (sym, [("codes", [128], false), ("scales", [16, 2], true), ("extra", [1], false)], "holds 'extra'"),
            (#"{"format": "q9_g8_sym", "shape": [16, 16]}"#, [("codes", [144], false)], "bits"),
            (#"{"format": "q4_g0_sym", "shape": [16, 16]}"#, [("codes", [128], false)], "group size"),
            (#"{"format": "q4_g32_sym", "shape": [16, 16]}"#, [("codes", [128], false), ("scales", [16, 0], true)],
             "not a whole number of groups of 32"),
        ]
        for (i, (entry, datasets, expected)) in cases.enumerated() {
            try writeBroken(path("qc\(i).h5"), name: q, entry: entry, datasets: datasets)
            XCTAssertThrowsError(try Checkpoint.read(path("qc\(i).h5")), "case \(i)") {
                XCTAssertTrue("\($0)".contains(path("qc\(i).h5")) && "\($0)".contains(q) && "\($0)".contains(expected), "case \(i): \($0)")
            }
        }
        // The same datasets with the right shapes read.
        try writeBroken(path("good.h5"), name: q, entry: sym, datasets: [("codes", [128], false), ("scales", [16, 2], true)])
        XCTAssertNoThrow(try Checkpoint.read(path("good.h5")))
    }

    /// The datasets must fit the config: the embedding's rows are the vocabulary, and the layers are exactly
    /// num_hidden_layers (a tensor of a layer past them is unknown; a missing layer's tensors are missing).
    func testDatasetsMustFitTheConfig() throws {
        let rows = specs.map { $0.0 == "model.embed_tokens.weight" ? ($0.0, [33, 16], false) : $0 }
        try writeRaw(path("vocab.h5"), tensors: rows)
        assertReadError(path("vocab.h5"), .shapeMismatch(path: path("vocab.h5"), tensor: "model.embed_tokens.weight",
                                                         expected: [32, 16], found: [33, 16]))
        var three = config
        three.numHiddenLayers = 3
        three.blocks.append(three.blocks[0])
        let extra = DecoderModel.tensorSpecs(three).map { ($0.name, $0.shape, false) }
        try writeRaw(path("layers.h5"), tensors: extra)
        XCTAssertThrowsError(try Checkpoint.read(path("layers.h5"))) {
            XCTAssertTrue("\($0)".contains("unknown tensor 'model.layers.2."), "\($0)")
        }
        try writeRaw(path("fewer.h5"), config: three.json, tensors: specs)
        XCTAssertThrowsError(try Checkpoint.read(path("fewer.h5"))) {
            XCTAssertTrue("\($0)".contains("missing tensor 'model.layers.2."), "\($0)")
        }
        var implied = config.json.objectValue!
        implied["head_dim"] = nil
        implied["num_attention_heads"] = .int(128)
        implied["num_key_value_heads"] = .int(128)
        try writeRaw(path("headdim.h5"), config: .object(implied), tensors: specs)
        XCTAssertThrowsError(try Checkpoint.read(path("headdim.h5"))) {
            XCTAssertTrue("\($0)".contains(path("headdim.h5")) && "\($0)".contains("not a multiple of num_attention_heads 128"), "\($0)")
        }
    }

    /// A NaN or infinity anywhere refuses the write, naming the tensor and its first bad element; nothing is
    /// written and an earlier file at the path is untouched.
    func testNonFiniteValuesAreNeverWritten() throws {
        let good = sample()
        try good.write(to: path("out.h5"))
        let before = try Data(contentsOf: URL(fileURLWithPath: path("out.h5")))
        func assertRefused(_ model: DecoderModel, _ expected: String, line: UInt = #line) {
            XCTAssertThrowsError(try Checkpoint(model: model).write(to: path("out.h5")), line: line) {
                XCTAssertTrue("\($0)".contains(path("out.h5")) && "\($0)".contains(expected), "\($0)", line: line)
            }
            XCTAssertEqual(try? Data(contentsOf: URL(fileURLWithPath: path("out.h5"))), before, line: line)
            let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: dir.path))?.filter { $0.contains(".tmp-") } ?? []
            XCTAssertEqual(leftovers, [], line: line)
        }
        // Dense matrix, norm vector.
        var m = DecoderModel.random(config: config, seed: 3)
        m.linear(LinearID(layer: 1, kind: .up))!.denseView![37] = .nan
        assertRefused(m, "tensor 'model.layers.1.mlp.up_proj.weight' holds nan at element 37")
        m = DecoderModel.random(config: config, seed: 3)
        try XCTUnwrap(m.namedTensors.first { $0.name == "model.norm.weight" }?.tensor)[5] = -.infinity
        assertRefused(m, "tensor 'model.norm.weight' holds -inf at element 5")
        // Sparse kept values.
        m = DecoderModel.random(config: config, seed: 3)
        let k = LinearID(layer: 0, kind: .k), wk = m.linear(k)!.denseView!.copy()
        wk[3] = .infinity
        let mask = try SparsityMask(pattern: .unstructured, rows: wk.shape[0], cols: wk.shape[1]) { $0 % 2 == 1 }
        m = try m.replacing(.linear(k), with: .sparse(SparseWeight(masking: wk, mask: mask)))
        assertRefused(m, "tensor 'model.layers.0.self_attn.k_proj.weight' holds inf at element 3")
        // A factor of a factorized weight.
        m = DecoderModel.random(config: config, seed: 3)
        let down = LinearID(layer: 0, kind: .down), d = Tensor(shape: [16, 4]), s = Tensor(shape: [4, 24])
        d[9] = .nan
        let sMask = try SparsityMask(pattern: .unstructured, rows: 4, cols: 24) { $0 < 24 }
        m = try m.replacing(.linear(down), with: .factorized(FactorizedWeight(dense: d, sparse: SparseWeight(masking: s, mask: sMask))))
        assertRefused(m, "tensor 'model.layers.0.mlp.down_proj.weight' (D) holds nan at element 9")
    }

    /// A damaged object size in a global heap collection (where variable-length string attributes live) is refused
    /// before libhdf5 reads the file: its `H5HG_read` copies that many bytes (found by fuzz-state as a crash).
    /// Training states go through the same open, so the fuzz input is kept as Fuzz/corpus/state/regression-*.
    func testADamagedGlobalHeapIsRefusedBeforeTheLibraryReadsIt() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/tiny-llama-sym-before-full-range.h5")
        var bytes = try Data(contentsOf: fixture)
        XCTAssertNoThrow(try Checkpoint.read(fixture.path))
        let gcol = try XCTUnwrap(bytes.range(of: Data("GCOL".utf8))).lowerBound
        // Object 1 (19 bytes, padded to 24) then object 2: its size field sits 8 bytes into its header.
        let sizeField = gcol + 16 + 16 + 24 + 8
        XCTAssertEqual(bytes[sizeField..<(sizeField + 8)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }, 520)
        withUnsafeBytes(of: UInt64(0x6172_e515_deee_4f2a).littleEndian) { bytes.replaceSubrange(sizeField..<(sizeField + 8), with: $0) }
        let path = dir.appendingPathComponent("heap.h5").path
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path)) {
            XCTAssertTrue("\($0)".contains(path) && "\($0)".contains("global heap collection at byte \(gcol) is damaged"), "\($0)")
        }
        // A size just past the collection's end (4,096 bytes) is refused as well.
        withUnsafeBytes(of: UInt64(4200).littleEndian) { bytes.replaceSubrange(sizeField..<(sizeField + 8), with: $0) }
        try bytes.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path))
        // An empty free-space record: libhdf5 steps by its size and loops forever (found by fuzz-state as a hang).
        var loop = try Data(contentsOf: fixture)
        let freeSize = gcol + 4016 + 8  // objects of 24, 520, 2,144 and 1,248 bytes (+ headers), then the free space
        XCTAssertEqual(loop[freeSize..<(freeSize + 8)].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }, 80)
        loop.replaceSubrange(freeSize..<(freeSize + 8), with: [UInt8](repeating: 0, count: 8))
        try loop.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try Checkpoint.read(path)) {
            XCTAssertTrue("\($0)".contains("an empty free-space record at byte \(gcol + 4016)"), "\($0)")
        }
    }
}
