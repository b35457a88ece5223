import Diagnostics
import Checkpoint
import Foundation
import SafeFiles
import JSONKeys
import GGUF
import Model
import Quantization
import Safetensors
import TensorCore

/// Why an import failed: names the source and what was found versus what is supported.
public struct ImportError: ContextualError {
    /// What is wrong; the file, when `context` names one, is prefixed when rendered.
    public let message: String
    /// Where and what: the file, key, tensor, expected and found value, as far as the thrower knows them.
    public let context: ErrorContext
    /// An error whose message says everything (it names its file itself, if any).
    public init(_ description: String) { message = description; context = ErrorContext() }
    /// An error with fields; `description` is "FILE: MESSAGE" when `context` names a file.
    public init(_ message: String, _ context: ErrorContext) { self.message = message; self.context = context }
    public var description: String { context.prefixingFile(message) }
}

/// Turns foreign checkpoints (GGUF files, Hugging Face safetensors directories) into our format.
/// Everything is built in memory and verified before anything is written, so a failed import writes nothing.
public enum Importer {
    /// Imports a GGUF file or a Hugging Face model directory. `preTokenizer` (a pre-tokenizer such as "gpt2", or for a
    /// SentencePiece tokenizer a spacing rule such as "prefix-first") replaces the one the source describes, which is
    /// then not checked (`compress import --pre-tokenizer`); the history records it as a warning.
    public static func load(_ source: String, preTokenizer: String? = nil) throws -> Checkpoint {
        var st = stat()
        guard !source.isEmpty, stat(source, &st) == 0 else {
            throw ImportError("no such file or directory (expected a GGUF file or a Hugging Face directory)",
                ErrorContext(file: source))
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            return try fromHuggingFace(directory: source, preTokenizer: preTokenizer)
        }
        try SafeFiles.regularFile(source, role: "GGUF file or Hugging Face directory")
        return try fromGGUF(path: source, preTokenizer: preTokenizer)
    }

    /// The warning an import with `--pre-tokenizer` records.
    static func overrideWarning(_ name: String, source: String) -> String {
        "pre-tokenizer set to '\(name)' by --pre-tokenizer; \(source)'s own tokenizer settings for it were not checked"
    }

    /// A history entry describing an import of `source` (its file name is kept) in `format`, dated now; the
    /// format's own details are filled in by the caller.
    static func historyEntry(source: String, format: String) -> ImportHistoryEntry {
        ImportHistoryEntry(kind: "import", source: URL(fileURLWithPath: source).lastPathComponent,
                           sourceFormat: format, date: ISO8601DateFormatter().string(from: Date()))
    }

    // MARK: GGUF

    /// Reads a GGUF of any registered family: `general.architecture` picks the family, whose reader turns the
    /// `<arch>.*` metadata into the spec; tensors are dequantized to Float32 under the family's GGUF names
    /// (q/k rows un-permuted for families stored in llama.cpp's rotary order); tokenizer from `tokenizer.ggml.*`.
    public static func fromGGUF(path: String, preTokenizer: String? = nil) throws -> Checkpoint {
        let file = try GGUFFile(path: path)
        var ggufConfig = try GGUFConfig(gguf: file, supported: ModelFamilies.ggufArchitectures)
        guard let family = ModelFamilies.forGGUFArchitecture(ggufConfig.architecture) else {
            preconditionFailure("GGUFConfig accepted an unregistered architecture")
        }
        ggufConfig.modelType = family.hfModelTypes[0]
        ggufConfig.architectures = [family.hfArchitecture]
        let config: ModelConfig
        do {
            config = try ModelConfig(json: JSONValue.parse(String(decoding: try ggufConfig.jsonData(), as: UTF8.self)))
        } catch {
            let keys = ggufConfig.ropeScalingKeys
            throw error.adding(ErrorContext(file: path), place: path,
                               note: keys.isEmpty ? nil : "from \(keys.joined(separator: ", "))")
        }
        // Every weight the spec holds, under the family's GGUF name.
        let ids = Dictionary(
            uniqueKeysWithValues: DecoderModel.weightSpecs(config).map { (family.ggufName($0.id), $0.id) })
        var tensors: [String: Tensor] = [:]
        var typeCounts: [String: Int] = [:]
        for info in file.tensors {
            guard let id = ids[info.name] else {
                throw ImportError(
                    "\(path): tensor '\(info.name)' has no counterpart in a \(family.hfArchitecture) of this config "
                        + "(rope scaling and extra tensors are not supported)")
            }
            var rotaryHeads: Int? = nil
            if family.ggufPermutesQK, case .linear(let lid) = id, lid.kind == .q || lid.kind == .k {
                let b = config.blocks[lid.layer]
                rotaryHeads = lid.kind == .q ? b.numAttentionHeads : b.numKeyValueHeads
            }
            let t = try GGUFTensors.hfTensor(info, in: file, name: config.name(id), rotaryHeads: rotaryHeads)
            var values = t.values
            if family.ggufNormShift != 0, id == .finalNorm || { if case .norm = id { true } else { false } }() {
                // llama.cpp stores Gemma's norm weights, the final one (output_norm) too, as shift + w.
                for i in values.indices { values[i] -= family.ggufNormShift }
            }
            tensors[t.name] = Tensor(shape: t.shape, values: values)
            typeCounts[info.type.name, default: 0] += 1
        }
        let model = try buildModel(config: config, tensors: tensors, source: path)
        let tokenizer = try ggufTokenizer(file, family: family, preTokenizer: preTokenizer)
        if let problem = tokenizer?.problem(vocabSize: config.vocabSize) {
            throw ImportError("tokenizer.ggml.*: \(problem)", ErrorContext(file: path))
        }
        var entry = historyEntry(source: path, format: "gguf")
        if let preTokenizer, tokenizer != nil { entry.warnings = [overrideWarning(preTokenizer, source: path)] }
        entry.ggufVersion = file.version
        entry.ggufArchitecture = ggufConfig.architecture
        entry.tensorTypes = typeCounts
        entry.note = "dequantized to float32"
            + (family.ggufPermutesQK ? "; q/k rows un-permuted from llama.cpp's rotary order" : "")
            + (family.ggufNormShift != 0
                ? "; \(family.ggufNormShift) subtracted from every norm weight (llama.cpp stores 1 + w)" : "")
        return Checkpoint(model: model, tokenizer: tokenizer, history: [try JSONValue(encoding: entry)])
    }

    // MARK: Hugging Face directory

    /// A JSON file read strictly (`JSONKeys.strictText`: UTF-8, no repeated key, no number past a 64-bit float),
    /// every error naming the file and, where it has one, the key path.
    static func readJSON(_ path: String, role: String, limit: Int) throws -> JSONValue {
        let data: Data
        data = try SafeFiles.read(path, role: role, limit: limit)
        return try parseJSON(data, path: path)
    }

    /// Reads config.json, safetensors weights (single file or sharded; F32, F16, BF16) and tokenizer.json.
    public static func fromHuggingFace(directory: String, preTokenizer: String? = nil) throws -> Checkpoint {
        let dir = URL(fileURLWithPath: directory, isDirectory: true)
        let configPath = dir.appendingPathComponent("config.json").path
        var config: ModelConfig
        let json = try deciLMAsLlama(readJSON(configPath, role: "config.json", limit: 1 << 24), path: configPath)
        do { config = try ModelConfig(json: json) } catch {
            throw error.adding(ErrorContext(file: configPath), place: configPath)
        }
        try HFConfigKeys.check(config.extra, path: configPath)
        let weights = try SafetensorsDirectory(path: directory)
        var warnings: [String] = []
        if config.tieWordEmbeddings, case .object(var o) = json, let untie = try storedHeadDiffers(weights) {
            // transformers keeps a stored lm_head.weight even when the config says the embeddings are tied.
            o["tie_word_embeddings"] = .bool(false)
            do { config = try ModelConfig(json: .object(o)) } catch {
                throw error.adding(ErrorContext(file: configPath), place: configPath)
            }
            warnings.append(
                "\(configPath) says tie_word_embeddings: true, but lm_head.weight differs from "
                    + "model.embed_tokens.weight (\(untie)); imported untied with the stored lm_head.weight, as "
                    + "transformers loads it")
        }
        // compressed-tensors: `pack-quantized` weights become our quantized weights; the storage description
        // itself is not part of the model.
        let packed = try packQuantizedFormats(json, path: configPath)
        config.extra["quantization_config"] = nil
        // The family's Hugging Face names of every weight the spec holds, and our checkpoint name for each.
        let family = config.familyType
        let ours = Dictionary(
            uniqueKeysWithValues: DecoderModel.weightSpecs(config).map { (family.hfName($0.id), config.name($0.id)) })
        let expected = Set(ours.keys)
        var tensors: [String: Tensor] = [:]
        var quantized: [String: QuantizedTensor] = [:]
        var dtypes: [String: Int] = [:]
        let packedSuffixes = [".weight_packed", ".weight_scale", ".weight_shape"]
        for name in weights.tensorNames {
            if let suffix = packedSuffixes.first(where: { name.hasSuffix($0) }) {
                let module = String(name.dropLast(suffix.count))
                guard let our = ours[module + ".weight"] else {
                    throw ImportError(
                        "\(directory): unexpected tensor '\(name)' for a \(family.hfArchitecture) with this config")
                }
                guard suffix == ".weight_packed" else { continue }
                quantized[our] = try packedWeight(module, weights, formats: packed, directory: directory)
                dtypes["pack-quantized", default: 0] += 1
                continue
            }
            guard expected.contains(name) else {
                // A tied model may still carry a copy of the embedding as lm_head (equal, or it would have been
                // imported untied above); rotary buffers are derived.
                if (name == "lm_head.weight" && config.tieWordEmbeddings) || name.hasSuffix("rotary_emb.inv_freq") {
                    continue
                }
                throw ImportError(
                    "\(directory): unexpected tensor '\(name)' for a \(family.hfArchitecture) with this config")
            }
            let info = try weights.info(name)
            tensors[ours[name]!] = Tensor(shape: info.shape, values: try weights.floats(name))
            dtypes[info.dtype.rawValue, default: 0] += 1
        }
        let model = try buildModel(config: config, tensors: tensors, quantized: quantized, source: directory)
        let tokenizerPath = dir.appendingPathComponent("tokenizer.json").path
        let tokenizer =
            FileManager.default.fileExists(atPath: tokenizerPath)
            ? try HFTokenizerJSON.read(tokenizerPath, preTokenizer: preTokenizer) : nil
        if let preTokenizer, tokenizer != nil { warnings.append(overrideWarning(preTokenizer, source: tokenizerPath)) }
        if let problem = tokenizer?.problem(vocabSize: config.vocabSize) {
            throw ImportError("\(problem)", ErrorContext(file: tokenizerPath))
        }
        var entry = historyEntry(source: directory, format: "safetensors")
        entry.files = weights.files.count
        entry.dtypes = dtypes
        if !warnings.isEmpty { entry.warnings = warnings }
        return Checkpoint(model: model, tokenizer: tokenizer, history: [try JSONValue(encoding: entry)])
    }

    /// A `DeciLMForCausalLM` (Nemotron-NAS) config.json in our Llama form with per-layer `block_configs`; any
    /// other config unchanged. Per layer: attention `no_op` → no attention; `n_heads_in_group` g →
    /// num_attention_heads query heads and num_attention_heads / g key/value heads; ffn `no_op` → no MLP;
    /// `ffn_mult` m → width find_multiple(int(2 · m · hidden_size / 3), 256) (as vLLM and llama.cpp compute
    /// it). `replace_with_linear` layers are refused.
    static func deciLMAsLlama(_ json: JSONValue, path: String) throws -> JSONValue {
        do { return try deciLMAsLlama(json) } catch { throw error.adding(ErrorContext(file: path), place: path) }
    }

    static func deciLMAsLlama(_ json: JSONValue) throws -> JSONValue {
        guard var o = json.objectValue else { return json }
        let isDeci =
            o["model_type"]?.stringValue == "nemotron-nas"
            || (o["architectures"]?.arrayValue ?? []).contains(.string("DeciLMForCausalLM"))
        guard isDeci else { return json }
        guard let blocks = o["block_configs"]?.arrayValue, let C = o["hidden_size"]?.intValue, C > 0,
            let H = o["num_attention_heads"]?.intValue, H > 0
        else {
            throw ConfigError("config: a DeciLM config needs block_configs, hidden_size and num_attention_heads")
        }
        var ours: [JSONValue] = []
        for (i, b) in blocks.enumerated() {
            guard let a = b.objectValue?["attention"]?.objectValue, let f = b.objectValue?["ffn"]?.objectValue else {
                throw ConfigError("config: block_configs[\(i)]: expected 'attention' and 'ffn' objects")
            }
            if a["replace_with_linear"]?.boolValue == true || f["replace_with_linear"]?.boolValue == true {
                throw ConfigError(
                    "config: block_configs[\(i)]: replace_with_linear is not supported (expected attention and MLP "
                        + "blocks or no_op)")
            }
            var entry: [String: JSONValue] = ["num_attention_heads": .int(H)]
            if a["no_op"]?.boolValue == true || a["n_heads_in_group"] == nil || a["n_heads_in_group"] == .null {
                entry["attention"] = .bool(false)
            } else {
                guard let g = a["n_heads_in_group"]?.intValue, g > 0, H % g == 0 else {
                    throw ConfigError(
                        "config: block_configs[\(i)].attention.n_heads_in_group must divide num_attention_heads \(H), "
                            + "found \(a["n_heads_in_group"]!.text)")
                }
                entry["num_key_value_heads"] = .int(H / g)
            }
            if f["no_op"]?.boolValue == true || f["ffn_mult"] == nil || f["ffn_mult"] == .null {
                entry["mlp"] = .bool(false)
            } else {
                guard let m = f["ffn_mult"]?.doubleValue, m > 0, m < 1e4 else {
                    throw ConfigError(
                        "config: block_configs[\(i)].ffn.ffn_mult must be a positive number, found "
                            + "\(f["ffn_mult"]!.text)")
                }
                let n = Int(2 * m * Double(C) / 3)
                entry["intermediate_size"] = .int(n % 256 == 0 ? n : n + 256 - n % 256)
            }
            ours.append(.object(entry))
        }
        let widths = ours.compactMap { $0.objectValue?["intermediate_size"]?.intValue }
        let kvs = ours.compactMap { $0.objectValue?["num_key_value_heads"]?.intValue }
        // Removed sublayers carry the global sizes (never used).
        ours = ours.map { e in
            var e = e.objectValue!
            if e["intermediate_size"] == nil { e["intermediate_size"] = .int(widths.first ?? 1) }
            if e["num_key_value_heads"] == nil { e["num_key_value_heads"] = .int(kvs.first ?? H) }
            return .object(e)
        }
        o["model_type"] = .string("llama")
        o["architectures"] = .array([.string("LlamaForCausalLM")])
        o["intermediate_size"] = .int(widths.first ?? 1)
        o["num_key_value_heads"] = .int(kvs.first ?? H)
        o["block_configs"] = .array(ours)
        return .object(o)
    }

    /// How a stored `lm_head.weight` differs from `model.embed_tokens.weight`, or nil if it is absent or equal.
    static func storedHeadDiffers(_ weights: SafetensorsDirectory) throws -> String? {
        guard weights.tensorNames.contains("lm_head.weight"), weights.tensorNames.contains("model.embed_tokens.weight")
        else { return nil }
        let head = try weights.info("lm_head.weight"), embedding = try weights.info("model.embed_tokens.weight")
        if head.shape != embedding.shape { return "shape \(head.shape) vs \(embedding.shape)" }
        let a = try weights.floats("lm_head.weight"), b = try weights.floats("model.embed_tokens.weight")
        guard let i = a.indices.first(where: { a[$0].bitPattern != b[$0].bitPattern }) else { return nil }
        return "first at element \(i): \(a[i]) vs \(b[i])"
    }

    /// The group format of every module a compressed-tensors `pack-quantized` config names (by module name;
    /// "Linear" targets every linear module not in `ignore`, under the key "*"). Only symmetric integer
    /// weights with group strategy are ours; anything else is refused.
    static func packQuantizedFormats(_ json: JSONValue, path: String) throws -> [String: QuantFormat] {
        guard let qc = json.objectValue?["quantization_config"]?.objectValue,
            qc["format"]?.stringValue == "pack-quantized"
        else { return [:] }
        guard qc["quant_method"]?.stringValue == "compressed-tensors" else {
            throw ImportError("quantization_config: pack-quantized without quant_method compressed-tensors",
                ErrorContext(file: path))
        }
        var out: [String: QuantFormat] = [:]
        for (gname, g) in (qc["config_groups"]?.objectValue ?? [:]).sorted(by: { $0.key < $1.key }) {
            guard let w = g.objectValue?["weights"]?.objectValue, let bits = w["num_bits"]?.intValue,
                let G = w["group_size"]?.intValue,
                w["type"]?.stringValue == "int", w["symmetric"]?.boolValue == true,
                w["strategy"]?.stringValue == "group",
                g.objectValue?["input_activations"] ?? .null == .null
            else {
                throw ImportError(
                    "\(path): quantization_config.config_groups.\(gname): only weight-only symmetric int group "
                        + "quantization is supported, found \(g.text.prefix(300))")
            }
            let format: QuantFormat
            do { format = try QuantFormat(bits: bits, groupSize: G, symmetric: true) } catch {
                throw ImportError("quantization_config.config_groups.\(gname): \(error)", ErrorContext(file: path))
            }
            for t in g.objectValue?["targets"]?.arrayValue?.compactMap(\.stringValue) ?? [] {
                guard !t.hasPrefix("re:") else {
                    throw ImportError(
                        "\(path): quantization_config.config_groups.\(gname): regex target '\(t)' is not supported "
                            + "(give module names or Linear)")
                }
                out[t == "Linear" ? "*" : t] = format
            }
        }
        return out
    }

    /// A compressed-tensors packed weight as our quantized weight: `weight_packed` (int32 words, 32 / b codes
    /// each, element i at bits b·(i mod 32/b), c = q + 2^(b−1)) is our little-endian code stream when every row
    /// fills whole words; `weight_scale` must be float16-exact (our scales are float16).
    static func packedWeight(
        _ module: String, _ weights: SafetensorsDirectory, formats: [String: QuantFormat], directory: String
    ) throws -> QuantizedTensor {
        guard let f = formats[module] ?? formats["*"] else {
            throw ImportError("'\(module).weight_packed' has no quantization_config group",
                ErrorContext(file: directory))
        }
        let shapeInfo = try weights.info(module + ".weight_shape"), raw = try weights.rawBytes(module + ".weight_shape")
        let shape: [Int] = raw.withUnsafeBytes { b in
            shapeInfo.dtype == .i64
                ? b.bindMemory(to: Int64.self).map { Int($0) }
                : shapeInfo.dtype == .i32 ? b.bindMemory(to: Int32.self).map { Int($0) } : []
        }
        let packedInfo = try weights.info(module + ".weight_packed")
        guard shape.count == 2, shape[0] > 0, shape[1] > 0, 32 % f.bits == 0, (shape[1] * f.bits) % 32 == 0,
            packedInfo.dtype == .i32,
            packedInfo.shape == [shape[0], shape[1] * f.bits / 32]
        else {
            throw ImportError(
                "\(directory): '\(module)': weight_packed \(packedInfo.dtype.rawValue) \(packedInfo.shape) does not "
                    + "hold \(shape) at \(f.bits) bits (supported: 2, 4 or 8 bits, rows of whole int32 words)")
        }
        let scales = try weights.floats(module + ".weight_scale")
        let halves = scales.map { Float16($0) }
        // Symmetric scales may be negative (the largest-magnitude weight on code −2^(b−1), as Q4_0 does).
        if let i = halves.indices.first(where: { Float(halves[$0]) != scales[$0] || !halves[$0].isFinite }) {
            throw ImportError(
                "\(directory): '\(module).weight_scale'[\(i)] = \(scales[i]) is not a finite float16 value (our scales "
                    + "are float16)")
        }
        do {
            return try QuantizedTensor(
                format: f, shape: shape, codes: try weights.rawBytes(module + ".weight_packed"), scales: halves,
                mins: [])
        } catch { throw ImportError("'\(module)': \(error)", ErrorContext(file: directory)) }
    }

    /// Assembles the model; DecoderModel verifies every name and shape against the config.
    static func buildModel(
        config: ModelConfig, tensors: [String: Tensor], quantized: [String: QuantizedTensor] = [:], source: String
    ) throws -> DecoderModel {
        for (name, t) in tensors.sorted(by: { $0.key < $1.key }) {
            let p = t.data
            if let i = (0..<t.count).first(where: { !p[$0].isFinite }) {
                throw ImportError(
                    "tensor '\(name)' holds \(p[i]) at element \(i) (expected finite values only)",
                    ErrorContext(file: source, tensor: name, expected: "finite values", found: "\(p[i])"))
            }
        }
        var weights = tensors.mapValues { ModelWeight.dense($0) }
        for (name, q) in quantized {
            guard weights[name] == nil else {
                throw ImportError("'\(name)' is stored both packed and unpacked", ErrorContext(file: source))
            }
            weights[name] = .matrix(.quantized(QuantizedWeight(q)))
        }
        do { return try DecoderModel(config: config, weights: weights) } catch {
            throw error.adding(ErrorContext(file: source), place: source)
        }
    }
}

/// The history entry of an imported checkpoint: where it came from and when, what the source held, and what the
/// import did to it.
public struct ImportHistoryEntry: Codable, Equatable {
    /// "import".
    public var kind: String
    /// The source's file or directory name, and "gguf" or "safetensors".
    public var source: String
    public var sourceFormat: String
    /// ISO 8601, UTC.
    public var date: String
    /// What the import could not check (`--pre-tokenizer`) or left out.
    public var warnings: [String]?
    /// GGUF: the file's version, its `general.architecture`, the tensors by ggml type, and the conversions made.
    public var ggufVersion: Int?
    public var ggufArchitecture: String?
    public var tensorTypes: [String: Int]?
    public var note: String?
    /// Safetensors: the weight files, and the tensors by dtype ("pack-quantized": compressed-tensors weights).
    public var files: Int?
    public var dtypes: [String: Int]?
}
