import Foundation
import Model
import Quantization
import TensorCore
import XCTest
@testable import Checkpoint

/// Quantized tensors in checkpoints: packed codes with float16 scales and minimums (or float16 values),
/// format per tensor, dequantized on load.
extension CheckpointTests {
    /// A model whose listed weights are quantized (the packed codes are the weights).
    func quantizedSample() throws -> Checkpoint {
        var model = DecoderModel.random(config: config, seed: 5)
        let formats: [String: QuantFormat] = [
            "model.layers.0.self_attn.q_proj.weight": try QuantFormat(bits: 3, groupSize: 8, symmetric: false),
            "model.layers.0.self_attn.k_proj.weight": try QuantFormat(bits: 5, groupSize: 16, symmetric: true),
            "model.layers.0.mlp.down_proj.weight": try QuantFormat(bits: 2, groupSize: 8, symmetric: false),
            "model.layers.1.mlp.up_proj.weight": .float16,
            "model.layers.1.self_attn.o_proj.weight": try QuantFormat(bits: 8, groupSize: 4, symmetric: true),
        ]
        for (name, f) in formats.sorted(by: { $0.key < $1.key }) {
            let id = try XCTUnwrap(WeightID(hfName: name)), w = try XCTUnwrap(model.namedTensors.first { $0.name == name }?.tensor)
            model = try model.replacing(id, with: .quantized(QuantizedWeight(try QuantizedTensor(weights: w.array, shape: w.shape, format: f))))
        }
        return Checkpoint(model: model)
    }

    /// The packed form of every quantized weight, by name.
    func packed(_ m: DecoderModel) -> [String: QuantizedTensor] {
        Dictionary(uniqueKeysWithValues: m.quantizedWeights.map { ($0.id.hfName, $0.packed) })
    }

    func testQuantizedCheckpointRoundTrips() throws {
        let c = try quantizedSample()
        XCTAssertEqual(packed(c.model).count, 5)
        try c.write(to: path("q.h5"))
        let r = try Checkpoint.read(path("q.h5"))
        XCTAssertEqual(packed(r.model), packed(c.model))
        for ((n1, t1), (n2, t2)) in zip(c.model.namedTensors, r.model.namedTensors) {
            XCTAssertEqual(n1, n2)
            XCTAssertEqual(t1.array, t2.array, n1)
        }
        let file = try H5File.openReadOnly(path("q.h5"))
        XCTAssertEqual(try file.int("format_version"), 3)
        XCTAssertFalse(file.exists("tensors/model.layers.0.self_attn.q_proj.weight"), "a quantized tensor is stored only packed")
        let codes = try file.datasetInfo("quantized/model.layers.0.self_attn.q_proj.weight/codes")
        XCTAssertEqual(codes.shape, [(16 * 16 * 3 + 7) / 8])
        XCTAssertEqual(try file.datasetInfo("quantized/model.layers.0.self_attn.q_proj.weight/scales").shape, [16, 2])
        XCTAssertEqual(try file.datasetInfo("quantized/model.layers.1.mlp.up_proj.weight/values").typeSize, 2)
        // Written again from what was read: the same stored forms.
        try r.write(to: path("q2.h5"))
        XCTAssertEqual(packed(try Checkpoint.read(path("q2.h5")).model), packed(c.model))
    }

    /// Sparse (N:M and unstructured) and factorized weights are stored natively in version 3: kept values with
    /// packed mask bits (a 2:4 weight costs 17 of dense's 32 bits per element), D with S's values and row
    /// indices; they read back to the same representation, values and bytes.
    func testSparseAndFactorizedWeightsRoundTripNatively() throws {
        var model = DecoderModel.random(config: config, seed: 6)
        let q = LinearID(layer: 0, kind: .q), up = LinearID(layer: 1, kind: .up), down = LinearID(layer: 0, kind: .down)
        let wq = model.linear(q)!.denseView!, wup = model.linear(up)!.denseView!
        let nm = try SparsityMask(pattern: .nm(n: 2, m: 4), rows: wq.shape[0], cols: wq.shape[1]) { i in
            let g = i / 4 * 4, mags = (g..<(g + 4)).sorted { abs(wq[$0]) > abs(wq[$1]) || (abs(wq[$0]) == abs(wq[$1]) && $0 < $1) }
            return mags.prefix(2).contains(i)
        }
        var rng = SplitMix64(seed: 3)
        let unstructured = try SparsityMask(pattern: .unstructured, rows: wup.shape[0], cols: wup.shape[1]) { _ in rng.next() % 3 == 0 }
        model = try model.replacing(.linear(q), with: .sparse(SparseWeight(masking: wq, mask: nm)))
        model = try model.replacing(.linear(up), with: .sparse(SparseWeight(masking: wup, mask: unstructured)))
        let (OC, C) = (model.linear(down)!.outFeatures, model.linear(down)!.inFeatures), k = 6, s = 2
        let d = Tensor(shape: [OC, k]), sv = Tensor(shape: [k, C])
        d.fillUniform(scale: 0.5, rng: &rng); sv.fillUniform(scale: 0.5, rng: &rng)
        // Rows r ≡ -c (mod 3) of column c: s = 2 of k = 6 in every column.
        let sMask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + i % C) % 3 == 0 }
        let factor = try FactorizedWeight(dense: d, sparse: SparseWeight(masking: sv, mask: sMask))
        model = try model.replacing(.linear(down), with: .factorized(factor))
        XCTAssertEqual(model.weightKinds, [.dense, .sparse, .factorized])
        try Checkpoint(model: model).write(to: path("s.h5"))
        let r = try Checkpoint.read(path("s.h5")).model
        XCTAssertEqual(r.storageBytes, model.storageBytes)
        XCTAssertEqual(r.parameterCount, model.parameterCount)
        for ((a, b)) in zip(model.weights, r.weights) {
            XCTAssertEqual(a.id, b.id)
            XCTAssertEqual(a.weight.matrix?.kind, b.weight.matrix?.kind, a.id.hfName)
            XCTAssertEqual(a.weight.storageBytes, b.weight.storageBytes, a.id.hfName)
            if let ma = a.weight.matrix, let mb = b.weight.matrix { XCTAssertEqual(ma.dequantized().array, mb.dequantized().array, a.id.hfName) }
        }
        guard case .sparse(let back)? = r.linear(q) else { return XCTFail("q_proj is not sparse after reading") }
        XCTAssertEqual(back.mask, nm)
        XCTAssertEqual(model.linear(q)!.storageBytes, 4 * wq.count / 2 + wq.count / 8, "2:4: half the values plus one bit per element")
        XCTAssertLessThan(model.linear(q)!.storageBytes, wq.bytes)
        guard case .factorized(let f)? = r.linear(down) else { return XCTFail("down_proj is not factorized after reading") }
        XCTAssertEqual(f.dense.array, d.array)
        XCTAssertEqual(f.sparse.mask, sMask)
        XCTAssertEqual(f.nonzerosPerColumn, s)
        // The file's sizes: 2:4 values are half the elements; mask bits one per element.
        let file = try H5File.openReadOnly(path("s.h5"))
        XCTAssertEqual(try file.datasetInfo("sparse/model.layers.0.self_attn.q_proj.weight/values").shape, [wq.count / 2])
        XCTAssertEqual(try file.datasetInfo("sparse/model.layers.0.self_attn.q_proj.weight/mask").shape, [(wq.count + 7) / 8])
        XCTAssertEqual(try file.datasetInfo("factorized/model.layers.0.mlp.down_proj.weight/indices").typeSize, 1)
        // A float32 D is stored as before (version 3 as first written): 'dense', and no 'dense_format' in the entry.
        XCTAssertEqual(try file.datasetInfo("factorized/model.layers.0.mlp.down_proj.weight/dense").shape, [OC, k])
        XCTAssertFalse(try file.string("factorization").contains("dense_format"))
    }

    /// A factorized weight whose D is stored quantized (CPTQuant after DSFormer): /factorized/<name>/dense_quantized
    /// holds Dᵀ's codes, scales (and minimums), the entry names the format; it reads back bit for bit (codes,
    /// scales, D̂, S), with the same bytes, and is written again identically.
    func testFactorizedWeightWithQuantizedDenseRoundTrips() throws {
        var model = DecoderModel.random(config: config, seed: 8)
        var rng = SplitMix64(seed: 4)
        var expected: [LinearID: FactorizedWeight] = [:]
        for (id, format) in [(LinearID(layer: 0, kind: .down), try QuantFormat(bits: 4, groupSize: 8, symmetric: true)),
                             (LinearID(layer: 1, kind: .up), try QuantFormat(bits: 3, groupSize: 4, symmetric: false))] {
            let (OC, C) = (model.linear(id)!.outFeatures, model.linear(id)!.inFeatures), k = 6
            let d = Tensor(shape: [OC, k]), sv = Tensor(shape: [k, C])
            d.fillUniform(scale: 0.5, rng: &rng); sv.fillUniform(scale: 0.5, rng: &rng)
            let sMask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + i % C) % 3 == 0 }
            let plain = try FactorizedWeight(dense: d, sparse: SparseWeight(masking: sv, mask: sMask))
            var f = try plain.quantizingDense(try QuantizedTensor(weights: FactorizedWeight.transpose(d.array, rows: OC, cols: k), shape: [k, OC], format: format))
            if id.kind == .down {  // S's 2 × 24 kept values too, in groups of 8
                f = try f.quantizingSparseValues(try QuantizedTensor(weights: plain.keptValues, shape: [1, 2 * C], format: try QuantFormat(bits: 5, groupSize: 8, symmetric: false)))
            }
            expected[id] = f
            model = try model.replacing(.linear(id), with: .factorized(f))
        }
        XCTAssertEqual(model.weightKinds, [.dense, .factorized, .quantized])
        try Checkpoint(model: model).write(to: path("fq.h5"))
        let r = try Checkpoint.read(path("fq.h5")).model
        XCTAssertEqual(r.storageBytes, model.storageBytes)
        XCTAssertEqual(r.weightKinds, model.weightKinds)
        for (id, f) in expected {
            guard case .factorized(let g)? = r.linear(id) else { return XCTFail("\(id) is not factorized after reading") }
            XCTAssertEqual(g.quantizedDense, f.quantizedDense, "\(id): codes, scales and minimums")
            XCTAssertEqual(g.quantizedSparse, f.quantizedSparse, "\(id): S's codes")
            XCTAssertEqual(g.dense.array, f.dense.array, "\(id): D̂")
            XCTAssertEqual(g.sparse.values.array, f.sparse.values.array)
            XCTAssertEqual(g.sparse.mask, f.sparse.mask)
            XCTAssertEqual(r.linear(id)!.storageBytes, f.quantizedDense!.bytes + (f.quantizedSparse?.bytes ?? 4 * f.sparse.mask.nonzeros) + f.sparse.mask.nonzeros)
        }
        let file = try H5File.openReadOnly(path("fq.h5"))
        let g = "factorized/model.layers.0.mlp.down_proj.weight/"
        XCTAssertFalse(file.exists(g + "dense"), "a quantized D is stored only as codes")
        XCTAssertEqual(try file.datasetInfo(g + "dense_quantized/codes").shape, [(6 * 16 * 4 + 7) / 8])
        XCTAssertEqual(try file.datasetInfo(g + "dense_quantized/scales").shape, [6, 2])
        XCTAssertFalse(file.exists(g + "dense_quantized/mins"))
        XCTAssertEqual(try file.datasetInfo("factorized/model.layers.1.mlp.up_proj.weight/dense_quantized/mins").shape, [6, 6])
        let entry = try JSONValue.parse(try file.string("factorization")).objectValue?["model.layers.0.mlp.down_proj.weight"]?.objectValue
        XCTAssertEqual(entry?["dense_format"]?.stringValue, "q4_g8_sym")
        XCTAssertEqual(entry?["sparse_format"]?.stringValue, "q5_g8_asym")
        XCTAssertFalse(file.exists(g + "values"), "quantized S values are stored only as codes")
        XCTAssertEqual(try file.datasetInfo(g + "values_quantized/codes").shape, [(48 * 5 + 7) / 8])
        XCTAssertEqual(try file.datasetInfo(g + "values_quantized/mins").shape, [1, 6])
        XCTAssertTrue(file.exists("factorized/model.layers.1.mlp.up_proj.weight/values"))
        try file.close()
        // Written again from what was read: the same stored forms.
        try Checkpoint(model: r).write(to: path("fq2.h5"))
        guard case .factorized(let again)? = try Checkpoint.read(path("fq2.h5")).model.linear(LinearID(layer: 0, kind: .down)) else { return XCTFail() }
        XCTAssertEqual(again.quantizedDense, expected[LinearID(layer: 0, kind: .down)]!.quantizedDense)
        XCTAssertEqual(again.quantizedSparse, expected[LinearID(layer: 0, kind: .down)]!.quantizedSparse)
    }

    /// A version 1 file with a float32 mask beside its weight still loads, as an unstructured sparse weight.
    func testVersion1MasksLoadAsSparseWeights() throws {
        let model = DecoderModel.random(config: config, seed: 8)
        let name = "model.layers.1.mlp.gate_proj.weight"
        let w = model.namedTensors.first { $0.name == name }!.tensor
        let mask = Tensor(shape: w.shape)
        for i in 0..<w.count where i % 3 != 0 { mask[i] = 1 }
        for i in 0..<w.count where mask[i] == 0 { w[i] = 0 }
        let f = try H5File.create(path("v1.h5"))
        try f.setString("format", CheckpointFormat.name)
        try f.setInt("format_version", 1)
        try f.setString("config", config.json.text)
        try f.createGroup("tensors")
        for (n, t) in model.namedTensors { try f.write("tensors/" + n, shape: t.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: t.data) }
        try f.createGroup("masks")
        try f.write("masks/" + name, shape: w.shape, fileType: H5Types.float32File, memType: H5Types.float32, data: mask.data)
        try f.close()
        let r = try Checkpoint.read(path("v1.h5")).model
        guard case .sparse(let s)? = r.linear(LinearID(layer: 1, kind: .gate)) else { return XCTFail("not sparse") }
        XCTAssertEqual(s.mask.floatMask().array, mask.array)
        XCTAssertEqual(s.values.array, w.array)
    }

    /// Symmetric codes written before issue 19's full-range change (2^b − 1 levels, code 0 unused, scales ≥ 0):
    /// Tests/Fixtures/tiny-llama-sym-before-full-range.h5 was written by `compress apply` at commit db474fb from
    /// tiny-llama.h5 (recipe beside it: decoder weights q3_g16_sym, embedding q8_g16_sym, LM head q5_g16_sym,
    /// round to nearest). It still loads, and every weight is s·(c − 2^(b−1)) computed here from the raw
    /// datasets, within s/2 of the float32 fixture it was made from (the old quantizer's bound).
    func testSymmetricCheckpointsWrittenBeforeFullRangeCodesMeanTheSameWeights() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
        let old = fixtures.appendingPathComponent("tiny-llama-sym-before-full-range.h5").path
        let loaded = try Checkpoint.read(old).model
        let base = try Checkpoint.read(fixtures.appendingPathComponent("tiny-llama.h5").path).model
        let file = try H5File.openReadOnly(old)
        let map = try XCTUnwrap(JSONValue.parse(try file.string("quantization")).objectValue)
        XCTAssertEqual(map.count, 16, "14 decoder weights, the embedding and the LM head")
        let values = Dictionary(uniqueKeysWithValues: loaded.namedTensors.map { ($0.name, $0.tensor.array) })
        let original = Dictionary(uniqueKeysWithValues: base.namedTensors.map { ($0.name, $0.tensor.array) })
        for (name, entry) in map {
            let format = try QuantFormat(name: try XCTUnwrap(entry.objectValue?["format"]?.stringValue))
            XCTAssertTrue(format.symmetric, name)
            let n = try XCTUnwrap(original[name]).count, G = format.groupSize, offset = 1 << (format.bits - 1)
            var packed = [UInt8](repeating: 0, count: try file.datasetInfo("quantized/\(name)/codes").shape[0])
            try packed.withUnsafeMutableBytes { try file.read("quantized/\(name)/codes", memType: H5Types.uint8, into: $0.baseAddress!) }
            var scales = [Float16](repeating: 0, count: n / G)
            try scales.withUnsafeMutableBytes { try file.read("quantized/\(name)/scales", memType: H5Types.float16, into: $0.baseAddress!) }
            let codes = unpackCodes(packed, bits: format.bits, count: n)
            XCTAssertFalse(codes.contains(0), "\(name): the old format left code 0 unused")
            XCTAssertTrue(scales.allSatisfy { $0 >= 0 }, name)
            let got = try XCTUnwrap(values[name]), w = original[name]!
            for i in 0..<n {
                let s = Float(scales[i / G])
                XCTAssertEqual(got[i], s * Float(Int(codes[i]) - offset), "\(name) weight \(i)")
                XCTAssertLessThanOrEqual(abs(w[i] - got[i]), s / 2 * (1 + 1e-5) + 1e-7, "\(name) weight \(i)")
            }
        }
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
