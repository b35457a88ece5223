import Checkpoint
import Foundation
import Model
import Quantization
import Safetensors
import TensorCore

/// A Hugging Face model directory built in memory: file name → bytes, plus what was written.
struct BuiltExport {
    var files: [(name: String, bytes: [UInt8])]
    var architecture: String
    var tensors: [ExportedTensor]
    var warnings: [String]
}

/// Our representation of a weight, as the report names it.
func sourceName(_ w: ModelWeight) -> String {
    switch w {
    case .vector: return "norm"
    case .matrix(.dense): return "dense"
    case .matrix(.sparse(let s)): return "sparse \(s.mask.pattern)"
    case .matrix(.quantized(let q)): return q.packed.format.description
    case .matrix(.factorized(let f)):
        return "factorized rank \(f.rank)" + (f.quantizedDense.map { ", D \($0.format)" } ?? "")
            + (f.quantizedSparse.map { ", S values \($0.format)" } ?? "")
    }
}

/// The warnings for factorized weights written multiplied out (D · S, or D̂ · S when D is stored quantized).
/// Why a heterogeneous model (per-layer heads or widths, removed sublayers) of a family other than Llama cannot be
/// exported: transformers' and llama.cpp's per-layer formats (DeciLM, `deci`) are Llama's and hold no biases or q/k
/// norms, and the family's own classes have one size for every layer.
func heterogeneousRefusal(_ c: ModelConfig, format: String) -> String {
    var why: [String] = []
    if !c.blocks.allSatisfy({ $0.attention && $0.mlp }) { why.append("removed sublayers") }
    if Set(c.blocks.map(\.numAttentionHeads)).count > 1 || Set(c.blocks.map(\.numKeyValueHeads)).count > 1 {
        why.append("per-layer head counts")
    }
    if Set(c.blocks.map(\.intermediateSize)).count > 1 { why.append("per-layer MLP widths") }
    let family = c.familyType
    // What the spec has that Llama's per-layer formats cannot hold.
    var lacks: [String] = []
    if !c.biases.isEmpty { lacks.append("biases") }
    if c.qkNorm { lacks.append("q/k norms") }
    if c.normKind != .rms { lacks.append("(1 + w) norms") }
    if c.postNorms { lacks.append("post-sublayer norms") }
    if c.activation != .silu { lacks.append("\(c.activation.rawValue) MLPs") }
    if c.blocks.contains(where: { $0.layerType == .sliding }) { lacks.append("sliding-window layers") }
    if c.embeddingScale != 1 { lacks.append("an embedding scale") }
    return "a heterogeneous \(family.name) model (\(why.joined(separator: ", "))) has no \(format) form: "
        + "\(family.hfArchitecture) and GGUF '\(family.ggufArchitectures[0])' hold one size for every layer, and the "
        + "per-layer formats "
        + "(DeciLMForCausalLM, GGUF 'deci') are Llama's, without "
        + "\(lacks.isEmpty ? "this family's features" : lacks.joined(separator: ", ")); "
        + "only our checkpoint holds it (compress eval, distill, apply run on it). Export a homogeneous model: "
        + "Minitron depth "
        + "pruning removes whole layers, width pruning keeps every layer's sizes equal"
}

func factorizedWarnings(_ factorized: [(name: String, weight: FactorizedWeight)], hf: Bool) -> [String] {
    guard !factorized.isEmpty else { return [] }
    let names = factorized.map(\.name)
    var out = [
        "\(names.count) factorized weight(s) written multiplied out\(hf ? " as dense" : "") (D · S): their size "
            + "advantage is lost (\(names.prefix(3).joined(separator: ", "))\(names.count > 3 ? ", …" : ""))"
    ]
    let quantized = factorized.filter { $0.weight.isQuantized }
    if !quantized.isEmpty {
        let formats = Set(quantized.flatMap { w in
                [
                    w.weight.quantizedDense.map { "D \($0.format)" },
                    w.weight.quantizedSparse.map { "S values \($0.format)" }
                ].compactMap { $0 }
        }).sorted().joined(separator: ", ")
        out.append(
            "\(quantized.count) of them hold quantized factors (\(formats)): written as the product of the dequantized "
                + "factors, so the codes are not kept "
                + "(\(quantized.prefix(3).map(\.name).joined(separator: ", "))\(quantized.count > 3 ? ", …" : ""))")
    }
    return out
}

func report(
    _ name: String, _ w: ModelWeight, type: String, shape: [Int], bytes: Int, error: ConversionError
) -> ExportedTensor {
    ExportedTensor(
        name: name, source: sourceName(w), type: type, shape: shape, bytes: bytes, lossless: error.isExact,
        maxAbsError: error.isExact ? nil : error.maxAbs, relativeRMSError: error.isExact ? nil : error.relativeRMS)
}

extension SafetensorsDType {
    init(_ d: ExportDType) {
        switch d {
        case .f32: self = .f32
        case .f16: self = .f16
        case .bf16: self = .bf16
        }
    }
}

/// Hugging Face directory: config.json, generation_config.json, tokenizer.json, tokenizer_config.json and
/// model.safetensors.
///
/// - Homogeneous models → the family's class (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`) and
///   config.json (`ModelFamily.hfConfig`); heterogeneous Llama ones → `DeciLMForCausalLM` (`DeciLayout`);
///   heterogeneous models of other families are refused (`heterogeneousRefusal`).
/// - Sparse weights: their dense values (zeros where the mask drops), and in config.json
///   `quantization_config.sparsity_config` as compressed-tensors writes it for the "dense" sparsity format
///   (`format`, `sparsity_structure` "2:4" or "unstructured", `global_sparsity`, `targets`, `ignore`).
/// - Quantized weights, symmetric integer of 2, 4 or 8 bits (whose int32 packing is the same in every
///   compressed-tensors version: 32 / b codes per word, element i in bits b·(i mod 32/b)), in `pack-quantized`
///   form: `weight_packed` (int32, (out, in·b/32)) holding c = q + 2^(b−1) for the signed code q, `weight_scale`
///   ((out, in/G), the export dtype) and `weight_shape` (int64 [out, in]); compressed-tensors computes
///   x = q · scale, exactly our s·(c − 2^(b−1)). This needs float32 or float16 scales (our scales are
///   float16); with --dtype bf16, and for every other format, the weight is dequantized to the dtype and the
///   loss (none for float32) reported. The embedding and LM head are never packed (compressed-tensors
///   quantizes Linear modules; the tied head is the embedding).
/// - Factorized weights: D · S multiplied out, with a warning that the size advantage is lost.
enum HFExport {
    static let packableBits: Set<Int> = [2, 4, 8]

    static func build(_ ckpt: Checkpoint, options: ExportOptions) throws -> BuiltExport {
        let model = ckpt.model, config = model.config, dtype = options.dtype, family = config.familyType
        guard config.isHomogeneous || family.perLayerExport else {
            throw ExportError(heterogeneousRefusal(config, format: "Hugging Face"))
        }
        let drift = ServerSpec.configDrift(config)
        guard drift.isEmpty else {
            throw ExportError(
                "\(family.hfArchitecture) would compute another model from this config.json: "
                    + "\(drift.joined(separator: "; ")); only our checkpoint holds it (compress eval, distill, apply "
                    + "run on it)")
        }
        let deci = config.isHomogeneous ? nil : try DeciLayout(config: config)
        let written = try writeTensors(model, family: family, deci: deci, dtype: dtype)
        var warnings = written.warnings + factorizedWarnings(written.factorized, hf: true)
        let (o, architecture) = try configJSON(
            config, options: options, deci: deci, quantGroups: written.quantGroups, sparse: written.sparse,
            warnings: &warnings)
        let st = written.st, tensors = written.tensors
        // Doubles keep their ".0" (Python readers must see ffn_mult 4.0 as a float).
        func jsonBytes(_ v: JSONValue) -> [UInt8] { v.prettyBytes }
        var files: [(String, [UInt8])] = [("config.json", jsonBytes(.object(o)))]
        var generation: [String: JSONValue] = ["_from_model_config": .bool(true)]
        if let b = config.bosTokenID ?? ckpt.tokenizer?.bosTokenID.map(Int.init) {
            generation["bos_token_id"] = .int(b)
        }
        if let e = config.eosTokenID ?? ckpt.tokenizer?.eosTokenID.map(Int.init) {
            generation["eos_token_id"] = .int(e)
        }
        files.append(("generation_config.json", jsonBytes(.object(generation))))
        if let spec = ckpt.tokenizer {
            files.append(("tokenizer.json", try TokenizerFiles.tokenizerJSON(spec)))
            files.append(
                (
                    "tokenizer_config.json",
                    jsonBytes(TokenizerFiles.tokenizerConfig(spec, maxLength: config.maxPositionEmbeddings))
                ))
        } else {
            warnings.append("the checkpoint carries no tokenizer: no tokenizer.json written")
        }
        files.append(("model.safetensors", try st.encoded()))
        return BuiltExport(files: files, architecture: architecture, tensors: tensors, warnings: warnings)
    }

    /// The tensor phase of `build`: the safetensors file's contents, one report row per written tensor, and what
    /// config.json needs to know about them (packed quantization groups, sparse and factorized modules).
    private struct WrittenTensors {
        var st: SafetensorsWriter
        var tensors: [ExportedTensor], warnings: [String]
        var quantGroups: [String: (format: QuantFormat, targets: [String])]
        var sparse: [(module: String, pattern: String, zeros: Int, count: Int)]
        var factorized: [(name: String, weight: FactorizedWeight)]
    }

    /// Writes every weight of `model` under its Hugging Face name: packed (`pack-quantized`) where possible,
    /// otherwise in `dtype`, zero-padded where DeciLM needs it.
    private static func writeTensors(
        _ model: DecoderModel, family: any ModelFamily.Type, deci: DeciLayout?, dtype: ExportDType
    ) throws -> WrittenTensors {
        let config = model.config
        var st = SafetensorsWriter()
        var tensors: [ExportedTensor] = [], warnings: [String] = []
        var quantGroups: [String: (format: QuantFormat, targets: [String])] = [:]
        var sparse: [(module: String, pattern: String, zeros: Int, count: Int)] = []
        var factorized: [(name: String, weight: FactorizedWeight)] = []

        func addFloat(
            _ name: String, _ w: ModelWeight, _ values: UnsafeBufferPointer<Float>, shape: [Int], dtype d: ExportDType
        ) throws {
            let (bytes, err) = try FloatEncoding.encode(values, as: d, what: name)
            st.tensors.append(.init(name: name, dtype: SafetensorsDType(d), shape: shape, data: bytes))
            tensors.append(
                report(name, w, type: SafetensorsDType(d).rawValue, shape: shape, bytes: bytes.count, error: err))
        }

        for (id, w) in model.weights {
            let name = family.hfName(id)
            switch w {
            case .vector(let t):
                try addFloat(name, w, UnsafeBufferPointer(start: t.data, count: t.count), shape: t.shape, dtype: dtype)
            case .matrix(let m):
                if case .linear(let lid) = id, let deci, deci.needsPadding(lid, block: config.blocks[lid.layer]) {
                    let (values, shape) = deci.padded(m, id: lid, block: config.blocks[lid.layer])
                    try values.withUnsafeBufferPointer { try addFloat(name, w, $0, shape: shape, dtype: dtype) }
                    tensors[tensors.count - 1].source += ", zero-padded \(m.shape) → \(shape) for DeciLM"
                    if case .quantized = m {
                        warnings.append(
                            "\(name): padded for DeciLM, so written dequantized (\(dtype.rawValue)), not packed")
                    }
                    continue
                }
                switch m {
                case .quantized(let qw):
                    let q = qw.packed, f = q.format
                    let module = String(name.dropLast(".weight".count))
                    if case .linear = id, !f.isFloat16, f.symmetric, packableBits.contains(f.bits),
                        (q.shape[1] * f.bits) % 32 == 0, dtype != .bf16
                    {
                        let scaleType: SafetensorsDType = dtype == .f16 ? .f16 : .f32
                        let scaleBytes: [UInt8] = scaleType == .f16
                            ? q.scales.withUnsafeBytes { Array($0) }
                            : q.scales.map { Float($0) }.withUnsafeBytes { Array($0) }
                        let groupShape = [q.shape[0], q.shape[1] / f.groupSize]
                        st.tensors.append(
                            .init(
                                name: module + ".weight_packed", dtype: .i32,
                                shape: [q.shape[0], q.shape[1] * f.bits / 32], data: q.codes))
                        st.tensors.append(
                            .init(name: module + ".weight_scale", dtype: scaleType, shape: groupShape, data: scaleBytes)
                        )
                        st.tensors.append(
                            .init(
                                name: module + ".weight_shape", dtype: .i64, shape: [2],
                                data: [Int64(q.shape[0]), Int64(q.shape[1])].withUnsafeBytes { Array($0) }))
                        tensors.append(
                            ExportedTensor(
                                name: module + ".weight_packed", source: f.description,
                                type: "pack-quantized int\(f.bits) g\(f.groupSize) (scales \(scaleType.rawValue))",
                                shape: q.shape, bytes: q.codes.count + scaleBytes.count + 16, lossless: true))
                        let key = f.description
                        quantGroups[key, default: (f, [])].targets.append(module)
                    } else {
                        let values = qw.cache
                        try addFloat(
                            name, w, UnsafeBufferPointer(start: values.data, count: values.count), shape: m.shape,
                            dtype: dtype)
                    }
                case .sparse(let s):
                    try addFloat(
                        name, w, UnsafeBufferPointer(start: s.values.data, count: s.values.count), shape: m.shape,
                        dtype: dtype)
                    sparse.append(
                        (
                            String(name.dropLast(".weight".count)), s.mask.pattern.description,
                            s.mask.count - s.mask.nonzeros, s.mask.count
                        ))
                case .dense(let t):
                    try addFloat(
                        name, w, UnsafeBufferPointer(start: t.data, count: t.count), shape: m.shape, dtype: dtype)
                case .factorized(let f):
                    let t = m.dequantized()
                    try addFloat(
                        name, w, UnsafeBufferPointer(start: t.data, count: t.count), shape: m.shape, dtype: dtype)
                    factorized.append((name, f))
                }
            }
        }
        return WrittenTensors(
            st: st, tensors: tensors, warnings: warnings, quantGroups: quantGroups, sparse: sparse,
            factorized: factorized)
    }

    /// config.json: the checkpoint's config with the export dtype, the architecture (DeciLM's layout when
    /// `deci` is given, warning about padded shapes) and compressed-tensors' `quantization_config`.
    private static func configJSON(
        _ config: ModelConfig, options: ExportOptions, deci: DeciLayout?,
        quantGroups: [String: (format: QuantFormat, targets: [String])],
        sparse: [(module: String, pattern: String, zeros: Int, count: Int)], warnings: inout [String]
    ) throws -> (object: [String: JSONValue], architecture: String) {
        let dtype = options.dtype, family = config.familyType
        guard var o = config.json.objectValue else { throw ExportError("config is not an object") }
        o["quantization_config"] = nil  // describes a file's storage, never carried over
        o["torch_dtype"] = .string(dtype.torchName)
        o["_name_or_path"] = options.name.map { .string($0) } ?? o["_name_or_path"]
        let architecture: String
        if let deci {
            architecture = "DeciLMForCausalLM"
            o["architectures"] = .array([.string(architecture)])
            o["model_type"] = .string("nemotron-nas")
            o["num_attention_heads"] = .int(deci.heads)
            o["num_key_value_heads"] = nil
            o["intermediate_size"] = nil
            o["head_dim"] = .int(deci.headDim)
            o["block_configs"] = deci.blockConfigs
            var padded: [String] = []
            for (l, b) in config.blocks.enumerated() {
                if deci.padsAttention(l, b) {
                    padded.append("layer \(l): \(b.numAttentionHeads) → \(deci.heads) query heads")
                }
                if deci.padsMLP(l, b) {
                    padded.append("layer \(l): MLP \(b.intermediateSize) → \(deci.layers[l].mlp!.width)")
                }
            }
            if !padded.isEmpty {
                warnings.append(
                    "DeciLM cannot express these shapes; zero rows/columns added (exact: they change no output): "
                        + padded.joined(separator: "; "))
            }
        } else {
            architecture = family.hfArchitecture
            o["architectures"] = .array([.string(architecture)])
        }
        if !quantGroups.isEmpty || !sparse.isEmpty {
            var q: [String: JSONValue] = [
                "quant_method": .string("compressed-tensors"), "quantization_status": .string("compressed")
            ]
            if !quantGroups.isEmpty {
                var groups: [String: JSONValue] = [:]
                for (i, key) in quantGroups.keys.sorted().enumerated() {
                    let g = quantGroups[key]!
                    groups["group_\(i)"] = .object([
                        "targets": .array(g.targets.map { .string($0) }), "input_activations": .null,
                        "output_activations": .null,
                        "weights": .object([
                            "num_bits": .int(g.format.bits), "type": .string("int"), "symmetric": .bool(true),
                            "strategy": .string("group"),
                            "group_size": .int(g.format.groupSize), "dynamic": .bool(false), "actorder": .null,
                            "observer": .string("minmax"),
                            "block_structure": .null, "observer_kwargs": .object([:]),
                        ]),
                    ])
                }
                q["config_groups"] = .object(groups)
                q["format"] = .string("pack-quantized")
                q["ignore"] = .array([.string("lm_head")])
                q["kv_cache_scheme"] = .null
                q["global_compression_ratio"] = .null
            } else {
                q["format"] = .string("dense")
            }
            if !sparse.isEmpty {
                let patterns = Set(sparse.map(\.pattern))
                let zeros = sparse.reduce(0) { $0 + $1.zeros }, count = sparse.reduce(0) { $0 + $1.count }
                q["sparsity_config"] = .object([
                    "format": .string("dense"),
                    "sparsity_structure": .string(patterns.count == 1 ? patterns.first! : "unstructured"),
                    "global_sparsity": .double(Double(zeros) / Double(max(count, 1))),
                    "targets": .array(sparse.map { .string($0.module) }),
                    "ignore": .array([]), "registry_requires_subclass": .bool(false),
                ])
            }
            o["quantization_config"] = .object(q)
        }
        return (o, architecture)
    }
}
