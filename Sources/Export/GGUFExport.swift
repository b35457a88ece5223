import Checkpoint
import Foundation
import GGUF
import Import
import Model
import Quantization
import TensorCore

/// A GGUF v3 file for llama.cpp: the family's architecture (`llama`, `qwen2`, `qwen3`, `gemma3`) for homogeneous
/// models,
/// `deci` for heterogeneous Llama ones
/// (per-layer `deci.attention.head_count`, `deci.attention.head_count_kv` with 0 for a removed attention and
/// `deci.feed_forward_length` with 0 for a removed MLP; llama.cpp then skips that sublayer, and reads each
/// layer's own sizes, so no padding is needed), the tokenizer as `tokenizer.ggml.*`, and per-tensor types:
/// - norms F32;
/// - quantized weights repacked without loss where a ggml type holds them (`GGMLRepack`), else re-quantized to
///   the `--requantize` type with the error reported, else refused (every such tensor named);
/// - dense, sparse (their values) and factorized (multiplied out, with a warning) weights in --dtype.
/// For families stored that way (`ggufPermutesQK`: Llama), q and k rows are permuted into llama.cpp's rotary order
/// (convert_hf_to_gguf.py `LlamaModel.permute`, per head for q, per key/value head for k), whole rows at a time.
/// Families whose converter stores norm weights shifted (`ggufNormShift`, Gemma 3: 1 + w) get every norm weight so.
/// Sliding-window layers (Gemma 3): `attention.sliding_window`, `rope.freq_base_swa`, and
/// `attention.sliding_window_pattern` as per-layer flags when llama.cpp's default period 6 does not give them.
/// Refused, naming the setting: a spec llama.cpp would compute differently (`ServerSpec`: e.g. an embedding scale
/// other than √hidden_size, or a Gemma 3 query_pre_attn_scalar other than llama.cpp's 1/√key_length rule).
enum GGUFExport {
    /// Width of the zero MLP a `deci` layer gets when it keeps its attention but lost its MLP.
    static let zeroMLPWidth = 32

    /// The tokenizer as `tokenizer.ggml.*`. Byte-level BPE: model `gpt2`, the pre-tokenizer, tokens, types and merges.
    /// SentencePiece: model `llama` with scores and token types, `add_space_prefix` from the spacing rule, and no
    /// merges (llama.cpp merges by score; transformers derives merges from the scores). A SentencePiece tokenizer read
    /// from tokenizer.json has merges but no scores: each token gets minus the rank of the first merge that makes it,
    /// and tokens no merge makes get a score below all of those, so merging by score follows the merge order.
    /// Returns warnings: where transformers would build another tokenizer from the file than the checkpoint's.
    static func addTokenizer(
        _ spec: TokenizerSpec, architecture: String, to writer: inout GGUFWriter
    ) throws -> [String] {
        var warnings: [String] = []
        switch spec.model {
        case "gpt2":
            writer.add("tokenizer.ggml.model", .string("gpt2"))
            // llama.cpp spells these "llama-bpe" and "gpt-2" (an unknown pre-tokenizer name is a load error there).
            writer.add("tokenizer.ggml.pre", .string(["llama3": "llama-bpe", "gpt2": "gpt-2"][spec.pre] ?? spec.pre))
            if let n = spec.normalizer {
                warnings.append(
                    "tokenizer normalizer \(n): GGUF has no key for it and llama.cpp applies none; texts that are "
                                + "not already \(n) may tokenize differently")
            }
        case "llama":
            guard !spec.pre.hasSuffix("+split") else {
                throw ExportError(
                    "tokenizer spacing '\(spec.pre)' (Metaspace split) has no GGUF form (llama.cpp never splits at "
                        + "spaces)")
            }
            writer.add("tokenizer.ggml.model", .string("llama"))
            writer.add("tokenizer.ggml.pre", .string("default"))
            let rule = Importer.sentencePieceRule(architecture: architecture)
            if spec.pre != rule.spacing {
                warnings.append(
                    "tokenizer spacing '\(spec.pre)': transformers builds a '\(architecture)' GGUF tokenizer with "
                        + "'\(rule.spacing)' (add_space_prefix is written as \(!spec.pre.hasPrefix("no-prefix"))); "
                        + "texts that start with a space or hold special tokens may tokenize differently")
            }
            if !spec.merges.isEmpty || (spec.mergeOrder ?? "scores") != rule.mergeOrder {
                warnings.append(
                    "tokenizer merges: GGUF keeps scores, not merges; transformers derives a '\(architecture)' "
                        + "tokenizer's merges by \(rule.mergeOrder == "gemma" ? "vocabulary order" : "score"), not by "
                        + "this checkpoint's "
                                + "\(spec.merges.isEmpty ? "\(spec.mergeOrder ?? "scores") order" : "listed merges"), "
                                + "so some texts may tokenize differently")
            }
        default:
            throw ExportError("tokenizer model '\(spec.model)' cannot be exported (supported: gpt2, llama)")
        }
        writer.add("tokenizer.ggml.tokens", .array(spec.tokens.map { .string($0) }))
        if spec.model == "llama" {
            writer.add("tokenizer.ggml.scores", .array((spec.scores ?? scoresFromMerges(spec)).map { .float32($0) }))
        }
        if let types = spec.tokenTypes { writer.add("tokenizer.ggml.token_type", .array(types.map { .int32($0) })) }
        if spec.model == "gpt2", !spec.merges.isEmpty {
            writer.add("tokenizer.ggml.merges", .array(spec.merges.map { .string($0) }))
        }
        if let b = spec.bosTokenID { writer.add("tokenizer.ggml.bos_token_id", .uint32(UInt32(b))) }
        if let e = spec.eosTokenID { writer.add("tokenizer.ggml.eos_token_id", .uint32(UInt32(e))) }
        writer.add("tokenizer.ggml.add_bos_token", .bool(spec.addBosToken))
        if spec.model == "llama" {
            if let unk = TokenizerFiles.unknownToken(spec) {
                writer.add("tokenizer.ggml.unknown_token_id", .uint32(UInt32(unk)))
            }
            if let pad = TokenizerFiles.paddingToken(spec) {
                writer.add("tokenizer.ggml.padding_token_id", .uint32(UInt32(pad)))
            }
            writer.add("tokenizer.ggml.add_eos_token", .bool(spec.addEosToken ?? false))
            writer.add("tokenizer.ggml.add_space_prefix", .bool(!spec.pre.hasPrefix("no-prefix")))
        }
        return warnings
    }

    /// Scores that make merging by score follow the listed merge order: minus the rank of the first merge making a
    /// token, and minus the merge count minus one for tokens no merge makes.
    static func scoresFromMerges(_ spec: TokenizerSpec) -> [Float] {
        var ids: [[UInt8]: Int] = [:]  // by bytes: String equality would merge canonically equivalent tokens
        for (i, t) in spec.tokens.enumerated() { ids[Array(t.utf8)] = i }
        var scores = [Float](repeating: -Float(spec.merges.count + 1), count: spec.tokens.count)
        var made = [Bool](repeating: false, count: spec.tokens.count)
        for (rank, merge) in spec.merges.enumerated() {
            guard let id = ids[merge.utf8.filter { $0 != UInt8(ascii: " ") }], !made[id] else { continue }
            made[id] = true
            scores[id] = -Float(rank)
        }
        return scores
    }

    static func build(_ ckpt: Checkpoint, options: ExportOptions) throws -> BuiltExport {
        let model = ckpt.model, c = model.config, family = c.familyType
        guard c.isHomogeneous || family.perLayerExport else {
            throw ExportError(heterogeneousRefusal(c, format: "GGUF"))
        }
        let arch = c.isHomogeneous ? family.ggufArchitectures[0] : "deci"
        let problems = ServerSpec.configDrift(c) + (arch == "gemma3" ? ServerSpec.gemma3GGUFProblems(c) : [])
        guard problems.isEmpty else {
            throw ExportError(
                "llama.cpp's '\(arch)' would compute another model from this GGUF: \(problems.joined(separator: "; "))")
        }
        var writer = GGUFWriter()
        var tensors: [ExportedTensor] = [], warnings: [String] = [], refused: [String] = [],
            factorized: [(name: String, weight: FactorizedWeight)] = []

        warnings += try addMetadata(ckpt, architecture: arch, name: options.name, to: &writer)

        // llama.cpp's deci graph skips the rest of a layer whose feed_forward_length is 0 before adding the
        // attention's residual (`if (n_ff == 0) continue;`, meant for layers with neither sublayer), so a layer
        // that keeps its attention but lost its MLP is written with a zero MLP of width 32: all-zero gate, up
        // and down weights give silu(0) · 0 = 0, and adding 0 changes nothing.
        let zeroMLPs = zeroMLPLayers(c, architecture: arch)
        if !zeroMLPs.isEmpty {
            warnings.append(
                "llama.cpp's deci graph drops a layer's attention when its feed-forward length is 0; layers "
                    + "\(zeroMLPs.keys.sorted().map(String.init).joined(separator: ", ")) (attention kept, MLP "
                    + "removed) get an all-zero MLP of width \(Self.zeroMLPWidth) instead (exact: it adds 0)")
        }
        try writeTensors(
            model, architecture: arch, options: options, zeroMLPs: zeroMLPs, to: &writer, tensors: &tensors,
            warnings: &warnings, refused: &refused, factorized: &factorized)
        if !refused.isEmpty {
            throw ExportError(
                "\(refused.count) quantized weight(s) have no lossless ggml type (GGUF holds group-32 q4/q5/q8 "
                    + "symmetric → Q4_0/Q5_0/Q8_0, q4/q5 asymmetric → Q4_1/Q5_1, and f16): "
                    + "\(refused.prefix(6).joined(separator: ", "))\(refused.count > 6 ? ", …" : ""); re-quantize "
                    + "them with --requantize q4_0|q4_1|q5_0|q5_1|q8_0|f16|f32 (the error is reported), or "
                    + "export --format hf")
        }
        warnings += factorizedWarnings(factorized, hf: false)
        return BuiltExport(
            files: [("", try writer.encoded())], architecture: arch, tensors: tensors, warnings: warnings)
    }

    /// The general.* and `<arch>.*` metadata keys, and the tokenizer's (`addTokenizer`); returns the warnings.
    private static func addMetadata(
        _ ckpt: Checkpoint, architecture arch: String, name: String?, to writer: inout GGUFWriter
    ) throws -> [String] {
        let c = ckpt.model.config
        var warnings: [String] = []
        writer.add("general.architecture", .string(arch))
        writer.add("general.name", .string(name ?? "compress export"))
        func k(_ s: String) -> String { "\(arch).\(s)" }
        writer.add(k("vocab_size"), .uint32(UInt32(c.vocabSize)))
        writer.add(k("context_length"), .uint32(UInt32(c.maxPositionEmbeddings)))
        writer.add(k("embedding_length"), .uint32(UInt32(c.hiddenSize)))
        writer.add(k("block_count"), .uint32(UInt32(c.numHiddenLayers)))
        if c.isHomogeneous {
            writer.add(k("feed_forward_length"), .uint32(UInt32(c.intermediateSize)))
            writer.add(k("attention.head_count"), .uint32(UInt32(c.numAttentionHeads)))
            writer.add(k("attention.head_count_kv"), .uint32(UInt32(c.numKeyValueHeads)))
        } else {
            writer.add(
                k("feed_forward_length"),
                .array(
                    c.blocks.map { .int32(Int32($0.mlp ? $0.intermediateSize : $0.attention ? Self.zeroMLPWidth : 0)) })
            )
            writer.add(
                k("attention.head_count"),
                .array(c.blocks.map { .int32(Int32($0.attention ? $0.numAttentionHeads : 0)) }))
            writer.add(
                k("attention.head_count_kv"),
                .array(c.blocks.map { .int32(Int32($0.attention ? $0.numKeyValueHeads : 0)) }))
        }
        writer.add(k("attention.key_length"), .uint32(UInt32(c.headDim)))
        writer.add(k("attention.value_length"), .uint32(UInt32(c.headDim)))
        writer.add(k("rope.dimension_count"), .uint32(UInt32(c.headDim)))
        writer.add(k("rope.freq_base"), .float32(Float(c.ropeTheta)))
        writer.add(k("attention.layer_norm_rms_epsilon"), .float32(Float(c.rmsNormEps)))
        if c.blocks.contains(where: { $0.layerType == .sliding }) {
            // llama.cpp (load_swa_pattern): a per-layer array of flags, else a period n (layer i sliding unless
            // (i + 1) % n == 0; default 6, Gemma 3's). The array only where the period rule does not give the layers
            // (after depth pruning), so unpruned models get llama.cpp's converter's keys.
            guard let window = c.slidingWindow else {
                preconditionFailure("sliding layers without slidingWindow (checked when the config was read)")
            }
            writer.add(k("attention.sliding_window"), .uint32(UInt32(window)))
            let sliding = c.blocks.map { $0.layerType == .sliding }
            if sliding != (0..<c.numHiddenLayers).map({ ($0 + 1) % 6 != 0 }) {
                writer.add(k("attention.sliding_window_pattern"), .array(sliding.map { .bool($0) }))
            }
            writer.add(k("rope.freq_base_swa"), .float32(Float(c.slidingRopeTheta ?? c.ropeTheta)))
        }
        if let spec = ckpt.tokenizer {
            warnings += try addTokenizer(spec, architecture: arch, to: &writer)
        } else {
            warnings.append(
                "the checkpoint carries no tokenizer: no tokenizer.ggml.* metadata (llama.cpp needs one to run the "
                    + "file)")
        }
        return warnings
    }

    /// The zero MLP (norm weight 1, gate, up and down all zero) of every deci layer that kept its attention but
    /// lost its MLP, by layer: (GGUF name, shape) of each tensor.
    private static func zeroMLPLayers(_ c: ModelConfig, architecture arch: String) -> [Int: [(String, [Int])]] {
        let family = c.familyType
        var zeroMLPs: [Int: [(String, [Int])]] = [:]
        for (l, b) in c.blocks.enumerated() where arch == "deci" && b.attention && !b.mlp {
            let F = Self.zeroMLPWidth, C = c.hiddenSize
            func lin(_ k: LinearKind) -> String { family.ggufName(.linear(LinearID(layer: l, kind: k))) }
            zeroMLPs[l] = [
                (family.ggufName(.norm(layer: l, .mlpIn)), [C]), (lin(.gate), [F, C]), (lin(.up), [F, C]),
                (lin(.down), [C, F])
            ]
        }
        return zeroMLPs
    }

    /// Writes every weight of `model` under its GGUF name (ggml's lossless type for quantized ones, or re-quantized
    /// to `options.requantize`), each layer followed by its zero MLP if it has one; quantized weights with no
    /// lossless type and no `requantize` target are collected in `refused`.
    private static func writeTensors(
        _ model: DecoderModel, architecture arch: String, options: ExportOptions, zeroMLPs: [Int: [(String, [Int])]],
        to writer: inout GGUFWriter, tensors: inout [ExportedTensor], warnings: inout [String],
        refused: inout [String], factorized: inout [(name: String, weight: FactorizedWeight)]
    ) throws {
        let c = model.config, family = c.familyType
        func addZeroMLP(_ l: Int) {
            for (name, shape) in zeroMLPs[l] ?? [] {
                let n = shape.reduce(1, *)
                let values = [Float](repeating: shape.count == 1 ? 1 : 0, count: n)
                writer.tensors.append(
                    .init(name: name, shape: shape, type: .f32, data: values.withUnsafeBytes { Array($0) }))
                tensors.append(
                    ExportedTensor(
                        name: name, source: "zero MLP for llama.cpp (MLP removed)", type: "F32", shape: shape,
                        bytes: 4 * n, lossless: true))
            }
        }
        var lastLayer = -1
        for (id, w) in model.weights {
            let name = family.ggufName(id)
            let layer: Int? = id == .embedTokens ? nil : id.layer ?? c.numHiddenLayers
            if let layer, layer != lastLayer {
                if lastLayer >= 0 { addZeroMLP(lastLayer) }
                lastLayer = layer
            }
            var rotaryHeads: Int? = nil
            if family.ggufPermutesQK, case .linear(let lid) = id {
                let b = c.blocks[lid.layer]
                if lid.kind == .q { rotaryHeads = b.numAttentionHeads }
                if lid.kind == .k { rotaryHeads = b.numKeyValueHeads }
            }
            func add(_ type: GGMLType, _ data: [UInt8], _ shape: [Int], _ err: ConversionError, note: String? = nil)
                throws
            {
                let bytes = try rotaryHeads.map { try GGMLRepack.permuteRows(data, rows: shape[0], heads: $0) } ?? data
                writer.tensors.append(.init(name: name, shape: shape, type: type, data: bytes))
                var r = report(name, w, type: type.name, shape: shape, bytes: bytes.count, error: err)
                if let note { r.source += " (\(note))" }
                tensors.append(r)
            }
            func addFloats(_ t: Tensor, _ d: ExportDType) throws {
                let (bytes, err) = try FloatEncoding.encode(
                    UnsafeBufferPointer(start: t.data, count: t.count), as: d, what: name)
                try add(d == .f32 ? .f32 : d == .f16 ? .f16 : .bf16, bytes, t.shape, err)
            }
            switch w {
            case .vector(let t)
            where family.ggufNormShift != 0 && (id == .finalNorm || { if case .norm = id { true } else { false } }()):
                // llama.cpp runs a plain RMSNorm on weights its converter stored as shift + w (Gemma: 1 + w). That
                // float32 sum is the factor our kernels, transformers and llama.cpp all multiply by, so nothing is
                // lost; the importer subtracts the shift again.
                let shift = family.ggufNormShift
                let stored = (0..<t.count).map { t[$0] + shift }
                try add(
                    .f32, stored.withUnsafeBytes { Array($0) }, t.shape, ConversionError(),
                    note: "stored as \(shift) + w")
            case .vector(let t): try addFloats(t, .f32)
            case .matrix(.dense(let t)): try addFloats(t, options.dtype)
            case .matrix(.sparse(let s)): try addFloats(s.values, options.dtype)
            case .matrix(.factorized(let f)):
                try addFloats(LinearWeight.factorized(f).dequantized(), options.dtype)
                factorized.append((name, f))
            case .matrix(.quantized(let qw)):
                let q = qw.packed
                if let (type, data) = GGMLRepack.repack(q) {
                    try add(type, data, q.shape, ConversionError())
                    continue
                }
                guard let target = options.requantize else {
                    refused.append("\(name) (\(q.format))")
                    continue
                }
                let values = qw.cache
                let src = UnsafeBufferPointer(start: values.data, count: values.count)
                switch target {
                case .f32, .f16:
                    let (bytes, err) = try FloatEncoding.encode(src, as: target == .f32 ? .f32 : .f16, what: name)
                    try add(target == .f32 ? .f32 : .f16, bytes, q.shape, err, note: "dequantized from \(q.format)")
                default:
                    guard q.shape[1] % 32 == 0 else {
                        throw ExportError(
                            "\(name): \(q.shape[1]) input columns are not a multiple of 32, which "
                                + "\(target.rawValue.uppercased()) blocks need")
                    }
                    let bits = target == .q8_0 ? 8 : (target == .q5_0 || target == .q5_1) ? 5 : 4
                    let symmetric = target == .q4_0 || target == .q5_0 || target == .q8_0
                    let re = try QuantizedTensor(
                        weights: Array(src), shape: q.shape,
                        format: QuantFormat(bits: bits, groupSize: 32, symmetric: symmetric))
                    guard let (type, data) = GGMLRepack.repack(re) else {
                        preconditionFailure("\(re.format) has a lossless ggml type")
                    }
                    var err = ConversionError()
                    for (a, b) in zip(re.dequantized(), src) { err.add(exported: a, ours: b) }
                    try add(type, data, q.shape, err, note: "re-quantized from \(q.format)")
                    warnings.append(
                        "\(name): \(q.format) has no lossless ggml type; re-quantized to \(type.name) (max |error| "
                            + "\(String(format: "%.3g", err.maxAbs)), relative RMS error "
                            + "\(String(format: "%.3g", err.relativeRMS)))")
                }
            }
        }
    }
}
