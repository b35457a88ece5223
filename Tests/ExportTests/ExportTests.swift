import Checkpoint
import Foundation
import GGUF
import Import
import Model
import Quantization
import Recipes
import Safetensors
import TensorCore
import Workbench
import XCTest
@testable import Export

/// Exports read back by our own importers (Importer.fromHuggingFace / fromGGUF) must give the source's
/// logits, bit for bit where the export is lossless; repacks are checked against a reference packer written
/// here from ggml's block definitions; the DeciLM padding against the reference forward; bad input refused.
/// Shared setup and helpers of the export tests: a temporary directory, the tiny fixture, logits, exports.
class ExportTestCase: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("export-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// The tiny fixture (V 256, C 64, 4 q / 2 kv heads of 16, MLP 160, 2 layers, untied) with its tokenizer.
    static func fixture() throws -> Checkpoint { try Checkpoint.read(fixtures.appendingPathComponent("tiny-llama.h5").path) }

    static func random(_ config: ModelConfig, seed: UInt64, tokenizer: TokenizerSpec?) -> Checkpoint {
        Checkpoint(model: DecoderModel.random(config: config, seed: seed), tokenizer: tokenizer)
    }

    static let ids: [Int32] = [1, 17, 200, 3, 99, 45, 45, 250, 8, 0, 31, 77, 128, 5, 6, 19]

    func logits(_ m: DecoderModel) -> [Float] {
        let t = TransformerDecoder(model: m, window: Self.ids.count).logits(Self.ids)
        return Array(UnsafeBufferPointer(start: t.data, count: t.count))
    }

    func assertBitEqual(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        if let i = (0..<min(a.count, b.count)).first(where: { a[$0].bitPattern != b[$0].bitPattern }) {
            XCTFail("\(what): first difference at \(i): \(a[i]) vs \(b[i])", file: file, line: line)
        }
    }

    func export(_ ckpt: Checkpoint, _ format: ExportFormat, _ name: String, dtype: ExportDType = .f32,
                requantize: RequantizeType? = nil, force: Bool = false) throws -> (ExportReport, String) {
        var o = ExportOptions(format: format, output: path(name))
        o.dtype = dtype
        o.requantize = requantize
        o.force = force
        return (try Exporter.export(ckpt, source: path("source.h5"), options: o), o.output)
    }

}

final class ExportTests: ExportTestCase {
    /// Every linear weight (embedding and head too) quantized in `format`.
    static func quantized(_ m: DecoderModel, _ format: (WeightID) -> QuantFormat?) throws -> DecoderModel {
        var out = m
        for (id, w) in m.weights {
            guard case .matrix(let lw) = w, let f = format(id) else { continue }
            let t = lw.dequantized()
            let q = try QuantizedTensor(weights: Array(UnsafeBufferPointer(start: t.data, count: t.count)), shape: t.shape, format: f)
            out = try out.replacing(id, with: .quantized(QuantizedWeight(q)))
        }
        return out
    }

    // MARK: Hugging Face

    func testHFDenseRoundTripIsBitExact() throws {
        let base = try Self.fixture()
        for tied in [false, true] {
            var c = base.config
            c.tieWordEmbeddings = tied
            let src = Self.random(c, seed: 7, tokenizer: base.tokenizer)
            let (r, out) = try export(src, .hf, "hf-\(tied)")
            XCTAssertEqual(r.architecture, "LlamaForCausalLM")
            XCTAssertTrue(r.lossy.isEmpty, "\(r.lossy)")
            XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: out)),
                           ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"])
            let back = try Importer.fromHuggingFace(directory: out)
            XCTAssertEqual(back.config.tieWordEmbeddings, tied)
            XCTAssertEqual(back.tokenizer?.tokens, src.tokenizer?.tokens)
            XCTAssertEqual(back.tokenizer?.merges, src.tokenizer?.merges)
            XCTAssertEqual(back.tokenizer?.pre, src.tokenizer?.pre)
            for ((a, x), (b, y)) in zip(src.model.namedTensors, back.model.namedTensors) {
                XCTAssertEqual(a, b)
                assertBitEqual(Array(UnsafeBufferPointer(start: x.data, count: x.count)), Array(UnsafeBufferPointer(start: y.data, count: y.count)), a)
            }
            assertBitEqual(logits(src.model), logits(back.model), "logits, tied \(tied)")
        }
    }

    func testHFHalfPrecisionReportsTheRoundingError() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 3, tokenizer: base.tokenizer)
        for dtype in [ExportDType.f16, .bf16] {
            let (r, out) = try export(src, .hf, "hf-\(dtype)", dtype: dtype)
            let back = try Importer.fromHuggingFace(directory: out)
            // The reported error is the real one: recompute it from what was read back.
            for (t, (name, x)) in zip(r.tensors, back.model.namedTensors) {
                XCTAssertEqual(t.name, name)
                let ours = src.model.namedTensors.first { $0.name == name }!.tensor
                var maxErr: Double = 0
                for i in 0..<x.count { maxErr = max(maxErr, abs(Double(x[i]) - Double(ours[i]))) }
                XCTAssertEqual(t.maxAbsError ?? 0, maxErr, "\(name) \(dtype)")
                XCTAssertEqual(t.lossless, maxErr == 0)
                XCTAssertLessThan(maxErr, dtype == .f16 ? 1e-3 : 1e-2)
            }
            XCTAssertFalse(r.lossy.isEmpty)
        }
    }

    func testHFSparseWeightsAreDenseValuesWithSparsityConfig() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 11, tokenizer: base.tokenizer)
        var m = src.model
        for (id, w) in m.linearWeights where id.layer == 0 {
            let t = w.dequantized()
            let mask = try SparsityMask(pattern: .nm(n: 2, m: 4), rows: t.shape[0], cols: t.shape[1]) { i in
                // keep the two largest of each four
                let g = i / 4 * 4, a = (g..<(g + 4)).sorted { abs(t[$0]) > abs(t[$1]) }
                return a.prefix(2).contains(i)
            }
            m = try m.replacing(.linear(id), with: .sparse(SparseWeight(masking: t, mask: mask)))
        }
        let ckpt = Checkpoint(model: m, tokenizer: src.tokenizer)
        let (r, out) = try export(ckpt, .hf, "hf-sparse")
        XCTAssertTrue(r.lossy.isEmpty)
        let config = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/config.json")), as: UTF8.self))
        let sc = config.objectValue?["quantization_config"]?.objectValue?["sparsity_config"]?.objectValue
        XCTAssertEqual(sc?["format"], .string("dense"))
        XCTAssertEqual(sc?["sparsity_structure"], .string("2:4"))
        XCTAssertEqual(sc?["targets"]?.arrayValue?.count, 7)
        XCTAssertEqual(sc?["global_sparsity"]?.doubleValue ?? 0, 0.5, accuracy: 1e-12)
        let back = try Importer.fromHuggingFace(directory: out)
        assertBitEqual(logits(m), logits(back.model), "sparse logits")
    }

    /// compressed-tensors' int32 packing, written independently: word k of a row holds codes 32/b·k ... with
    /// element i at bits b·(i mod 32/b); the signed value is word field − 2^(b−1).
    func testHFPackQuantizedHoldsOurCodesExactly() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 5, tokenizer: base.tokenizer)
        let formats: [LinearKind: QuantFormat] = [.q: try QuantFormat(bits: 4, groupSize: 32, symmetric: true),
                                                  .k: try QuantFormat(bits: 8, groupSize: 16, symmetric: true),
                                                  .v: try QuantFormat(bits: 4, groupSize: 32, symmetric: false),
                                                  .gate: try QuantFormat(bits: 5, groupSize: 32, symmetric: true),
                                                  .down: .float16]
        let m = try Self.quantized(src.model) { id in if case .linear(let l) = id { return formats[l.kind] }; return nil }
        let (r, out) = try export(Checkpoint(model: m, tokenizer: src.tokenizer), .hf, "hf-quant")
        let file = try SafetensorsFile(path: out + "/model.safetensors")
        for (id, w) in m.linearWeights {
            let module = String(WeightID.linear(id).hfName.dropLast(".weight".count))
            guard case .quantized(let qw) = w else { continue }
            let q = qw.packed, f = q.format
            if f.symmetric && [4, 8].contains(f.bits) {
                let info = try file.info(module + ".weight_packed")
                XCTAssertEqual(info.dtype, .i32)
                XCTAssertEqual(info.shape, [q.shape[0], q.shape[1] * f.bits / 32])
                let words = try file.rawBytes(module + ".weight_packed").withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
                let perWord = 32 / f.bits, cols = q.shape[1]
                let values = (0..<q.count).map { i -> Int in
                    let row = i / cols, col = i % cols
                    let word = UInt32(bitPattern: words[row * (cols / perWord) + col / perWord])
                    return Int((word >> UInt32(f.bits * (col % perWord))) & UInt32((1 << f.bits) - 1)) - (1 << (f.bits - 1))
                }
                let scales = try file.floats(module + ".weight_scale")
                XCTAssertEqual(try file.info(module + ".weight_scale").shape, [q.shape[0], cols / f.groupSize])
                // x = q · scale must be our dequantized weight, bit for bit.
                let ours = q.dequantized()
                for i in 0..<q.count {
                    let x = scales[(i / cols) * (cols / f.groupSize) + (i % cols) / f.groupSize] * Float(values[i])
                    XCTAssertEqual(x.bitPattern, ours[i].bitPattern, "\(module) element \(i)")
                    if x.bitPattern != ours[i].bitPattern { break }
                }
                XCTAssertEqual(try file.rawBytes(module + ".weight_shape").withUnsafeBytes { Array($0.bindMemory(to: Int64.self)) }, [Int64(q.shape[0]), Int64(cols)])
            } else {
                // Not packable: dequantized, float32 exactly.
                XCTAssertNil(file.tensors[module + ".weight_packed"])
                XCTAssertEqual(try file.floats(module + ".weight").map(\.bitPattern), q.dequantized().map(\.bitPattern))
            }
        }
        XCTAssertTrue(r.lossy.isEmpty, "float32 export of dequantized weights is exact: \(r.lossy)")
        let config = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/config.json")), as: UTF8.self))
        let qc = config.objectValue?["quantization_config"]?.objectValue
        XCTAssertEqual(qc?["format"], .string("pack-quantized"))
        XCTAssertEqual(qc?["quant_method"], .string("compressed-tensors"))
        let groups = qc?["config_groups"]?.objectValue?.values.compactMap(\.objectValue) ?? []
        XCTAssertEqual(Set(groups.compactMap { $0["weights"]?.objectValue?["num_bits"]?.intValue }), [4, 8])
        XCTAssertEqual(groups.flatMap { $0["targets"]?.arrayValue ?? [] }.count, 4)  // q and k of 2 layers
        // Our importer reads the packed weights back as the same quantized weights: logits bit for bit.
        let back = try Importer.fromHuggingFace(directory: out)
        XCTAssertNil(back.config.extra["quantization_config"])
        for (id, w) in m.linearWeights where id.kind == .q || id.kind == .k {
            guard case .quantized(let a) = w, case .quantized(let b)? = back.model.linear(id) else { return XCTFail("\(id) not read back quantized") }
            XCTAssertEqual(a.packed, b.packed, "\(id)")
        }
        assertBitEqual(logits(m), logits(back.model), "pack-quantized logits")
    }

    // MARK: GGUF

    func testGGUFDenseRoundTripIsBitExactAndPermutesQK() throws {
        let base = try Self.fixture()
        for tied in [false, true] {
            var c = base.config
            c.tieWordEmbeddings = tied
            let src = Self.random(c, seed: 9, tokenizer: base.tokenizer)
            let (r, out) = try export(src, .gguf, "f32-\(tied).gguf")
            XCTAssertEqual(r.architecture, "llama")
            XCTAssertTrue(r.lossy.isEmpty)
            let file = try GGUFFile(path: out)
            XCTAssertEqual(file.version, 3)
            XCTAssertEqual(file.tensor(named: "output.weight") == nil, tied)
            // q rows are in llama.cpp's rotary order: GGUF row 2i + j of head h is HF row j·half + i.
            let q = src.model.layers[1].attention!.q.dequantized(), stored = try file.dequantize(file.tensor(named: "blk.1.attn_q.weight")!)
            let D = c.headDim, half = D / 2, C = c.hiddenSize
            for h in 0..<c.numAttentionHeads { for i in 0..<half { for j in 0..<2 { for col in 0..<C {
                XCTAssertEqual(stored[(h * D + 2 * i + j) * C + col], q[(h * D + j * half + i) * C + col])
            } } } }
            let back = try Importer.fromGGUF(path: out)
            XCTAssertEqual(back.tokenizer, src.tokenizer)
            assertBitEqual(logits(src.model), logits(back.model), "GGUF logits, tied \(tied)")
        }
    }

    /// ggml's block layouts written from their C struct definitions, one element at a time.
    func referenceBlocks(_ q: QuantizedTensor) -> [UInt8] {
        let f = q.format
        let codes = unpackCodes(q.codes, bits: f.bits, count: q.count)
        var out: [UInt8] = []
        func f16(_ h: Float16) { out += [UInt8(h.bitPattern & 0xFF), UInt8(h.bitPattern >> 8)] }
        for g in 0..<(q.count / 32) {
            let c = Array(codes[(g * 32)..<(g * 32 + 32)])
            f16(q.scales[g])
            if !f.symmetric { f16(q.mins[g]) }
            if f.bits == 8 { out += c.map { UInt8(bitPattern: Int8(Int($0) - 128)) }; continue }
            if f.bits == 5 {
                var qh: UInt32 = 0
                for j in 0..<32 { qh += UInt32((c[j] >> 4) & 1) * (1 << UInt32(j)) }
                out += [0, 8, 16, 24].map { UInt8((qh >> UInt32($0)) & 0xFF) }
            }
            for j in 0..<16 { out.append((c[j] % 16) + (c[j + 16] % 16) * 16) }
        }
        return out
    }

    func testGGUFLosslessRepacksAreBitExact() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 13, tokenizer: base.tokenizer)
        let cases: [(QuantFormat, GGMLType)] = [
            (try QuantFormat(bits: 4, groupSize: 32, symmetric: true), .q4_0), (try QuantFormat(bits: 5, groupSize: 32, symmetric: true), .q5_0),
            (try QuantFormat(bits: 8, groupSize: 32, symmetric: true), .q8_0), (try QuantFormat(bits: 4, groupSize: 32, symmetric: false), .q4_1),
            (try QuantFormat(bits: 5, groupSize: 32, symmetric: false), .q5_1), (.float16, .f16),
        ]
        // A mixed model (as CPTQuant makes): each projection kind in another format.
        let kinds = LinearKind.allCases
        let m = try Self.quantized(src.model) { id in
            switch id {
            case .linear(let l): return cases[(kinds.firstIndex(of: l.kind)! + l.layer) % cases.count].0
            case .embedTokens: return cases[2].0
            case .lmHead: return cases[3].0
            default: return nil
            }
        }
        let (r, out) = try export(Checkpoint(model: m, tokenizer: src.tokenizer), .gguf, "mixed.gguf")
        XCTAssertTrue(r.lossy.isEmpty, "\(r.lossy)")
        let file = try GGUFFile(path: out)
        var seen = Set<GGMLType>()
        for (id, w) in m.weights {
            guard case .matrix(.quantized(let qw)) = w else { continue }
            let q = qw.packed
            let info = file.tensor(named: LlamaFamily.ggufName(id))!
            XCTAssertEqual(info.type, cases.first { $0.0 == q.format }!.1, id.hfName)
            seen.insert(info.type)
            var expected = q.format.isFloat16 ? q.codes : referenceBlocks(q)
            if case .linear(let l) = id, l.kind == .q || l.kind == .k {
                let heads = l.kind == .q ? m.config.numAttentionHeads : m.config.numKeyValueHeads
                let rowBytes = expected.count / q.shape[0], half = q.shape[0] / heads / 2
                var p = expected
                for h in 0..<heads { for i in 0..<half { for j in 0..<2 {
                    let to = h * 2 * half + 2 * i + j, from = h * 2 * half + j * half + i
                    p.replaceSubrange((to * rowBytes)..<((to + 1) * rowBytes), with: expected[(from * rowBytes)..<((from + 1) * rowBytes)])
                } } }
                expected = p
            }
            XCTAssertEqual(try file.withRawBytes(of: info) { Array($0) }, expected, id.hfName)
        }
        XCTAssertEqual(seen, Set(cases.map(\.1)))
        // ggml's dequantization (our GGUF reader's kernels) gives our weights bit for bit, hence the logits.
        let back = try Importer.fromGGUF(path: out)
        for (a, b) in zip(m.namedTensors, back.model.namedTensors) {
            assertBitEqual(Array(UnsafeBufferPointer(start: a.tensor.data, count: a.tensor.count)), Array(UnsafeBufferPointer(start: b.tensor.data, count: b.tensor.count)), a.name)
        }
        assertBitEqual(logits(m), logits(back.model), "mixed-precision GGUF logits")
    }

    func testGGUFRefusesFormatsWithoutALosslessTypeUnlessRequantized() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 17, tokenizer: base.tokenizer)
        let g64 = try QuantFormat(bits: 4, groupSize: 64, symmetric: false), q3 = try QuantFormat(bits: 3, groupSize: 32, symmetric: true)
        let m = try Self.quantized(src.model) { id in
            if case .linear(let l) = id { return l.kind == .up ? g64 : l.kind == .v ? q3 : nil }
            return nil
        }
        let ckpt = Checkpoint(model: m, tokenizer: src.tokenizer)
        XCTAssertThrowsError(try export(ckpt, .gguf, "refused.gguf")) { e in
            let text = "\(e)"
            XCTAssertTrue(text.contains("blk.0.ffn_up.weight (q4_g64_asym)") && text.contains("blk.1.attn_v.weight (q3_g32_sym)") && text.contains("--requantize"), text)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), [], "a refused export leaves nothing")
        let (r, out) = try export(ckpt, .gguf, "requant.gguf", requantize: .q8_0)
        let file = try GGUFFile(path: out)
        XCTAssertEqual(file.tensor(named: "blk.0.ffn_up.weight")?.type, .q8_0)
        // The reported error is the real difference between llama.cpp's weights and ours.
        let up = r.tensors.first { $0.name == "blk.0.ffn_up.weight" }!
        XCTAssertFalse(up.lossless)
        let ours = m.linear(LinearID(layer: 0, kind: .up))!.dequantized(), theirs = try file.dequantize(file.tensor(named: "blk.0.ffn_up.weight")!)
        let maxErr = (0..<ours.count).map { abs(Double(theirs[$0]) - Double(ours[$0])) }.max()!
        XCTAssertEqual(up.maxAbsError!, maxErr)
        XCTAssertGreaterThan(maxErr, 0)
        XCTAssertTrue(r.warnings.contains { $0.contains("re-quantized to Q8_0") })
    }

    // MARK: Heterogeneous models

    /// Layer 0: 2 of 4 query heads over 1 kv head, MLP 100 wide; layer 1: no attention, MLP 160; layer 2:
    /// attention only; layer 3: plain.
    static func heterogeneous(_ base: Checkpoint, seed: UInt64) throws -> Checkpoint {
        var c = base.config
        c.numHiddenLayers = 4
        let plain = BlockConfig(numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 160)
        c.blocks = [BlockConfig(numAttentionHeads: 2, numKeyValueHeads: 1, intermediateSize: 100),
                    BlockConfig(attention: false, numAttentionHeads: 4, numKeyValueHeads: 2, intermediateSize: 160),
                    BlockConfig(numAttentionHeads: 4, numKeyValueHeads: 2, mlp: false, intermediateSize: 160), plain]
        let config = try ModelConfig(json: c.json)
        XCTAssertFalse(config.isHomogeneous)
        return random(config, seed: seed, tokenizer: base.tokenizer)
    }

    func testDeciLMExportPadsExactly() throws {
        let src = try Self.heterogeneous(try Self.fixture(), seed: 21)
        let (r, out) = try export(src, .hf, "deci-hf")
        XCTAssertEqual(r.architecture, "DeciLMForCausalLM")
        XCTAssertTrue(r.warnings.contains { $0.contains("layer 0: 2 → 4 query heads") && $0.contains("layer 0: MLP 100 → 256") }, "\(r.warnings)")
        let config = try JSONValue.parse(String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/config.json")), as: UTF8.self)).objectValue!
        XCTAssertEqual(config["architectures"], .array([.string("DeciLMForCausalLM")]))
        let blocks = config["block_configs"]!.arrayValue!.map { $0.objectValue! }
        XCTAssertEqual(blocks[0]["attention"]?.objectValue?["n_heads_in_group"], .int(4))
        XCTAssertEqual(blocks[1]["attention"]?.objectValue?["no_op"], .bool(true))
        XCTAssertEqual(blocks[1]["attention"]?.objectValue?["n_heads_in_group"], .null)
        XCTAssertEqual(blocks[2]["ffn"]?.objectValue?["ffn_mult"], .null)
        XCTAssertEqual(blocks[3]["attention"]?.objectValue?["n_heads_in_group"], .int(2))
        // ffn_mult maps back to the padded width by the readers' formula.
        let m0 = blocks[0]["ffn"]!.objectValue!["ffn_mult"]!.doubleValue!
        XCTAssertEqual((Int(2 * m0 * 64 / 3) + 255) / 256 * 256, 256)
        // Python readers must see a float: llama.cpp's DeciLM converter asserts isinstance(ffn_mult, float),
        // so an integral multiplier is written "4.0", never "4".
        let raw = String(decoding: try Data(contentsOf: URL(fileURLWithPath: out + "/config.json")), as: UTF8.self)
        let mults = raw.components(separatedBy: "\"ffn_mult\": ").dropFirst().map { String($0.prefix { $0 != "," && $0 != "\n" }) }
        XCTAssertEqual(mults.count, blocks.count)
        for m in mults where m != "null" { XCTAssertTrue(m.contains(".") || m.contains("e"), "ffn_mult written as \(m)") }
        let back = try Importer.fromHuggingFace(directory: out)
        XCTAssertEqual(back.config.blocks[0].numAttentionHeads, 4)
        XCTAssertEqual(back.config.blocks[0].intermediateSize, 256)
        XCTAssertFalse(back.config.blocks[1].attention)
        XCTAssertFalse(back.config.blocks[2].mlp)
        // The padding changes nothing: the reference forward (plain loops, float64 sums, to which the added
        // zero terms add exactly 0) gives the same logits bit for bit.
        let ids = Array(Self.ids.prefix(8))
        let a = src.model.referenceLogits(ids), b = back.model.referenceLogits(ids)
        assertBitEqual(Array(UnsafeBufferPointer(start: a.data, count: a.count)), Array(UnsafeBufferPointer(start: b.data, count: b.count)), "padded DeciLM reference logits")
        // And the fast forward agrees within float32 summation order.
        let fa = logits(src.model), fb = logits(back.model)
        XCTAssertLessThan(zip(fa, fb).map { abs($0 - $1) }.max()!, 1e-4)
    }

    func testDeciGGUFHasPerLayerSizesAndReadsBackBitExact() throws {
        let src = try Self.heterogeneous(try Self.fixture(), seed: 23)
        let (r, out) = try export(src, .gguf, "deci.gguf")
        XCTAssertEqual(r.architecture, "deci")
        let file = try GGUFFile(path: out)
        XCTAssertEqual(file.metadata["general.architecture"], .string("deci"))
        XCTAssertEqual(file.metadata["deci.attention.head_count"], .array([2, 0, 4, 4].map { .int32($0) }))
        XCTAssertEqual(file.metadata["deci.attention.head_count_kv"], .array([1, 0, 2, 2].map { .int32($0) }))
        // Layer 2 kept its attention but lost its MLP: llama.cpp would skip the whole layer at feed_forward_length
        // 0, so it gets an all-zero MLP of width 32.
        XCTAssertEqual(file.metadata["deci.feed_forward_length"], .array([100, 160, 32, 160].map { .int32($0) }))
        XCTAssertNil(file.tensor(named: "blk.1.attn_q.weight"))
        XCTAssertNil(file.tensor(named: "blk.1.attn_norm.weight"))
        XCTAssertEqual(try file.dequantize(file.tensor(named: "blk.2.ffn_up.weight")!).allSatisfy { $0 == 0 }, true)
        XCTAssertTrue(r.warnings.contains { $0.contains("layers 2 (attention kept, MLP removed)") }, "\(r.warnings)")
        let back = try Importer.fromGGUF(path: out)
        XCTAssertTrue(back.config.blocks[2].mlp)
        XCTAssertEqual(back.config.blocks[2].intermediateSize, 32)
        // What exists matches (a removed sublayer's sizes are placeholders, never used).
        for (a, b) in zip(back.config.blocks, src.config.blocks) {
            XCTAssertEqual(a.attention, b.attention)
            XCTAssertEqual(a.mlp, b.mlp || b.attention)
            if b.attention { XCTAssertEqual([a.numAttentionHeads, a.numKeyValueHeads], [b.numAttentionHeads, b.numKeyValueHeads]) }
            if b.mlp { XCTAssertEqual(a.intermediateSize, b.intermediateSize) }
        }
        assertBitEqual(logits(src.model), logits(back.model), "deci GGUF logits")
    }

    // MARK: Bad input and atomicity

    /// Factorized weights with quantized factors (cptquant after dsformer) export multiplied out, D̂ · Ŝ, in
    /// float32 to both formats, with a warning naming the factors' formats.
    func testFactorizedWeightsWithQuantizedFactorsExportMultipliedOut() throws {
        let base = try Self.fixture()
        var m = base.model
        var rng = SplitMix64(seed: 12)
        for (id, sparseBits) in [(LinearID(layer: 0, kind: .gate), nil as Int?), (LinearID(layer: 1, kind: .down), 4)] {
            let (OC, C) = (m.linear(id)!.outFeatures, m.linear(id)!.inFeatures), k = 16
            let d = Tensor(shape: [OC, k]), sv = Tensor(shape: [k, C])
            d.fillUniform(scale: 0.3, rng: &rng); sv.fillUniform(scale: 0.3, rng: &rng)
            let mask = try SparsityMask(pattern: .unstructured, rows: k, cols: C) { i in (i / C + i % C) % 4 == 0 }
            var f = try FactorizedWeight(dense: d, sparse: SparseWeight(masking: sv, mask: mask))
            f = try f.quantizingDense(try QuantizedTensor(weights: FactorizedWeight.transpose(d.array, rows: OC, cols: k), shape: [k, OC],
                                                          format: try QuantFormat(bits: 4, groupSize: 32, symmetric: true)))
            if let b = sparseBits {
                f = try f.quantizingSparseValues(try QuantizedTensor(weights: f.keptValues, shape: [1, mask.nonzeros], format: try QuantFormat(bits: b, groupSize: 32, symmetric: true)))
            }
            m = try m.replacing(.linear(id), with: .factorized(f))
        }
        let src = Checkpoint(model: m, tokenizer: base.tokenizer)
        let (g, gOut) = try export(src, .gguf, "fq.gguf")
        let (h, hOut) = try export(src, .hf, "fq-hf")
        for r in [g, h] {
            XCTAssertTrue(r.warnings.contains { $0.contains("2 of them hold quantized factors (D q4_g32_sym, S values q4_g32_sym)") }, "\(r.warnings)")
        }
        let gguf = try GGUFFile(path: gOut), st = try SafetensorsFile(path: hOut + "/model.safetensors")
        for (id, ggufName) in [(LinearID(layer: 0, kind: .gate), "blk.0.ffn_gate.weight"), (LinearID(layer: 1, kind: .down), "blk.1.ffn_down.weight")] {
            let w = m.linear(id)!.dequantized().array, scale = w.map(abs).max()!
            for (what, stored) in [("gguf", try gguf.dequantize(gguf.tensor(named: ggufName)!)), ("hf", try st.floats(WeightID.linear(id).hfName))] {
                XCTAssertEqual(stored.count, w.count)
                XCTAssertLessThanOrEqual(zip(stored, w).map { abs($0 - $1) }.max()!, 1e-6 * scale, "\(what) \(id)")
            }
        }
    }

    func testOutputsThatMustBeRefused() throws {
        let base = try Self.fixture()
        let src = Self.random(base.config, seed: 1, tokenizer: base.tokenizer)
        let input = path("source.h5")
        try src.write(to: input)
        func attempt(_ format: ExportFormat, _ output: String, force: Bool = false) throws -> ExportReport {
            var o = ExportOptions(format: format, output: output)
            o.force = force
            return try Exporter.export(checkpoint: input, options: o)
        }
        func refuses(_ format: ExportFormat, _ output: String, force: Bool = false, _ words: [String], line: UInt = #line) {
            XCTAssertThrowsError(try attempt(format, output, force: force), line: line) { e in
                for w in words { XCTAssertTrue("\(e)".contains(w), "'\(e)' lacks '\(w)'", line: line) }
            }
        }
        refuses(.gguf, input, force: true, ["is the checkpoint", "refusing"])            // the input itself, even forced
        refuses(.hf, dir.path, force: true, ["contains the checkpoint"])                  // a directory holding the input
        refuses(.gguf, path("missing/x.gguf"), ["does not exist"])
        refuses(.hf, "", ["empty"])
        // A non-empty directory: refused, then replaced with --force (nothing of the old content left).
        let existing = path("existing")
        try FileManager.default.createDirectory(atPath: existing, withIntermediateDirectories: false)
        try Data("old".utf8).write(to: URL(fileURLWithPath: existing + "/stale.txt"))
        refuses(.hf, existing, ["non-empty directory", "--force"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: existing), ["stale.txt"])
        _ = try attempt(.hf, existing, force: true)
        XCTAssertFalse(FileManager.default.fileExists(atPath: existing + "/stale.txt"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: existing + "/model.safetensors"))
        refuses(.gguf, existing, force: true, ["is a directory"])
        // An existing file: refused without --force.
        _ = try attempt(.gguf, path("a.gguf"))
        refuses(.gguf, path("a.gguf"), ["already exists", "--force"])
        _ = try attempt(.gguf, path("a.gguf"), force: true)
        // An unwritable directory (root ignores permissions; skip that part then).
        let locked = path("locked")
        try FileManager.default.createDirectory(atPath: locked, withIntermediateDirectories: false)
        chmod(locked, 0o500)
        defer { chmod(locked, 0o700) }
        if access(locked, W_OK) != 0 { refuses(.gguf, locked + "/x.gguf", ["not writable"]) }
        // Nothing temporary left anywhere.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }
        XCTAssertEqual(leftovers, [])
    }

    func testExportStageMustEndTheRecipe() throws {
        var registry = StageRegistry()
        try registry.register(ExportStage.self)
        try registry.register(EvalStage.self)
        func recipe(_ stages: String) throws -> Recipe {
            try Recipe(json: JSONValue.parse(#"{"format": 1, "stages": [\#(stages)]}"#), path: "r.json", registry: registry)
        }
        let ok = try recipe(#"{"stage": "eval"}, {"stage": "export", "format": "hf", "output": "a"}, {"stage": "export", "format": "gguf", "output": "b.gguf", "dtype": "f16", "requantize": "q8_0"}"#)
        XCTAssertEqual(ok.stages.count, 3)
        XCTAssertEqual((ok.stages[2].stage as? ExportStage)?.options.requantize, .q8_0)
        XCTAssertThrowsError(try recipe(#"{"stage": "export", "format": "hf", "output": "a"}, {"stage": "eval"}"#)) { e in
            XCTAssertTrue("\(e)".contains("stage 2 (eval): comes after the 'export' stage 1"), "\(e)")
        }
        XCTAssertThrowsError(try recipe(#"{"stage": "export", "format": "onnx", "output": "a"}"#)) { e in XCTAssertTrue("\(e)".contains("'format'"), "\(e)") }
        XCTAssertThrowsError(try recipe(#"{"stage": "export", "format": "hf"}"#)) { e in XCTAssertTrue("\(e)".contains("'output'"), "\(e)") }
        XCTAssertThrowsError(try recipe(#"{"stage": "export", "format": "hf", "output": "a", "requantize": "q4_0"}"#)) { e in XCTAssertTrue("\(e)".contains("gguf only"), "\(e)") }
        XCTAssertThrowsError(try recipe(#"{"stage": "export", "format": "hf", "output": "a", "level": 3}"#)) { e in XCTAssertTrue("\(e)".contains("level"), "\(e)") }
    }
}
