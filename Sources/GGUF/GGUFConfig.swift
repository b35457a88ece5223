import Foundation

/// The Hugging Face `config.json` keys every family shares, built from GGUF `<arch>.*` metadata (for `deci`, with
/// per-layer `block_configs`). The caller (the importer) picks the family from `architecture` and sets
/// `modelType` / `architectures`; the family's own reader (`ModelFamily.config(hf:)`) adds what the family
/// implies (Qwen2's biases, Qwen3's q/k norms).
public struct GGUFConfig: Codable, Sendable, Equatable {
    /// `general.architecture` (not part of config.json).
    public var architecture: String = ""
    /// Model classes (set by the importer from the family).
    public var architectures = ["LlamaForCausalLM"]
    /// `model_type` (set by the importer from the family).
    public var modelType = "llama"
    /// `hidden_act`: SiLU gating, GELU-tanh for `gemma3`.
    public var hiddenAct = "silu"
    /// `vocab_size`: `<arch>.vocab_size`, else the tokenizer token count, else token_embd rows.
    public var vocabSize: Int
    /// `hidden_size`: `<arch>.embedding_length`.
    public var hiddenSize: Int
    /// `intermediate_size`: `<arch>.feed_forward_length`.
    public var intermediateSize: Int
    /// `num_hidden_layers`: `<arch>.block_count`.
    public var numHiddenLayers: Int
    /// `num_attention_heads`: `<arch>.attention.head_count`.
    public var numAttentionHeads: Int
    /// `num_key_value_heads`: `<arch>.attention.head_count_kv` (default: attention heads).
    public var numKeyValueHeads: Int
    /// `head_dim`: `<arch>.attention.key_length` (default: hidden size / heads).
    public var headDim: Int
    /// `rms_norm_eps`: `<arch>.attention.layer_norm_rms_epsilon` as its shortest decimal.
    public var rmsNormEps: Double
    /// `rope_theta`: `<arch>.rope.freq_base` (default 10000).
    public var ropeTheta: Double
    /// `max_position_embeddings`: `<arch>.context_length`.
    public var maxPositionEmbeddings: Int
    /// `tie_word_embeddings`: true when the file has no `output.weight`.
    public var tieWordEmbeddings: Bool
    /// `bos_token_id`: `tokenizer.ggml.bos_token_id`, if present.
    public var bosTokenId: Int?
    /// `eos_token_id`: `tokenizer.ggml.eos_token_id`, if present.
    public var eosTokenId: Int?
    /// `rope_scaling`: `<arch>.rope.scaling.type` and `.factor` (or the older `<arch>.rope.scale_linear`), read as
    /// llama.cpp reads them; nil when absent, type "none", or a factor of 0 or 1. Whether it is supported is for
    /// the config reader to decide, by the same rule as a Hugging Face `config.json`.
    public var ropeScaling: RopeScaling?
    /// The GGUF keys `ropeScaling` came from (for error messages; not part of the config).
    public var ropeScalingKeys: [String] = []

    /// `sliding_window`: `<arch>.attention.sliding_window` (gemma3).
    public var slidingWindow: Int?
    /// `layer_types` (gemma3): `<arch>.attention.sliding_window_pattern` as llama.cpp reads it, a per-layer bool
    /// array (true: sliding) or a period n (layer i sliding unless (i + 1) is a multiple of n; default 6).
    public var layerTypes: [String]?
    /// `rope_local_base_freq` (gemma3): `<arch>.rope.freq_base_swa`, llama.cpp's default 10000.
    public var ropeLocalBaseFreq: Double?
    /// `query_pre_attn_scalar` (gemma3): llama.cpp scales scores by 1/√key_length (1/√(hidden/heads) for 62 layers, the
    /// 27B).
    public var queryPreAttnScalar: Int?
    /// `final_logit_softcapping`, `attn_logit_softcapping`: `<arch>.final_logit_softcapping` /
    /// `.attn_logit_softcapping` when present and non-zero (the config reader refuses them).
    public var finalLogitSoftcapping: Double?
    public var attnLogitSoftcapping: Double?

    /// Per-layer sizes of a `deci` file (llama.cpp's Nemotron-NAS architecture), in our config.json's
    /// `block_configs` form; nil for `llama`. A head count of 0 is a removed attention, a feed-forward length
    /// of 0 a removed MLP.
    public var blockConfigs: [Block]?

    /// One layer of `block_configs`.
    public struct Block: Codable, Sendable, Equatable {
        public var attention: Bool
        public var numAttentionHeads: Int
        public var numKeyValueHeads: Int
        public var mlp: Bool
        public var intermediateSize: Int
        enum CodingKeys: String, CodingKey {
            case attention, numAttentionHeads = "num_attention_heads", numKeyValueHeads = "num_key_value_heads", mlp
            case intermediateSize = "intermediate_size"
        }
    }

    /// Hugging Face's `rope_scaling` object.
    public struct RopeScaling: Codable, Sendable, Equatable {
        public var ropeType: String
        public var factor: Double
        enum CodingKeys: String, CodingKey { case ropeType = "rope_type", factor }
    }

    enum CodingKeys: String, CodingKey {
        case architectures, modelType = "model_type", hiddenAct = "hidden_act", vocabSize = "vocab_size"
        case hiddenSize = "hidden_size", intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers", numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads", headDim = "head_dim", rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta", maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings", bosTokenId = "bos_token_id", eosTokenId = "eos_token_id"
        case ropeScaling = "rope_scaling", blockConfigs = "block_configs"
        case slidingWindow = "sliding_window", layerTypes = "layer_types", ropeLocalBaseFreq = "rope_local_base_freq"
        case queryPreAttnScalar = "query_pre_attn_scalar", finalLogitSoftcapping = "final_logit_softcapping"
        case attnLogitSoftcapping = "attn_logit_softcapping"
    }

    /// Reads `<arch>.*` and `tokenizer.ggml.*` metadata; embeddings are tied when there is no `output.weight`.
    /// `supported`: the `general.architecture` values the caller can read (others are refused, naming them).
    public init(gguf file: GGUFFile, supported: [String]) throws {
        let arch = try file.string("general.architecture")
        guard supported.contains(arch) else {
            let known = supported.joined(separator: ", ")
            throw GGUFError(file.path, "unsupported architecture '\(arch)'; supported: \(known)",
                            key: "general.architecture", expected: "one of \(known)", found: "'\(arch)'")
        }
        architecture = arch
        func key(_ name: String) -> String { "\(arch).\(name)" }
        hiddenSize = try file.int(key("embedding_length"))
        numHiddenLayers = try file.int(key("block_count"))
        if arch == "deci" {
            let d = try Self.deciLayers(file, arch: arch, layers: numHiddenLayers)
            numAttentionHeads = d.heads; numKeyValueHeads = d.kvHeads; intermediateSize = d.width
            blockConfigs = d.blocks
        } else {
            intermediateSize = try file.int(key("feed_forward_length"))
            numAttentionHeads = try file.int(key("attention.head_count"))
            numKeyValueHeads = try file.ifPresent(key("attention.head_count_kv"), file.int) ?? numAttentionHeads
        }
        guard numAttentionHeads > 0, numKeyValueHeads > 0 else {
            throw GGUFError(
                file.path,
                "\(key("attention.head_count")): expected positive head counts, found "
                    + "\(numAttentionHeads)/\(numKeyValueHeads)", key: key("attention.head_count"),
                expected: "positive head counts", found: "\(numAttentionHeads)/\(numKeyValueHeads)")
        }
        headDim = try file.ifPresent(key("attention.key_length"), file.int) ?? hiddenSize / numAttentionHeads
        rmsNormEps = Self.shortestDecimal(try file.float(key("attention.layer_norm_rms_epsilon")))
        ropeTheta = Self.shortestDecimal(try file.ifPresent(key("rope.freq_base"), file.float) ?? 10_000)
        maxPositionEmbeddings = try file.int(key("context_length"))
        if let vocab = try file.ifPresent(key("vocab_size"), file.int) {
            vocabSize = vocab
        } else if let tokens = file.metadata["tokenizer.ggml.tokens"]?.arrayValue {
            vocabSize = tokens.count
        } else {
            guard let embedding = file.tensor(named: "token_embd.weight"), embedding.shape.count == 2 else {
                throw GGUFError(
                    file.path,
                    "cannot infer vocab size: no \(key("vocab_size")), tokenizer.ggml.tokens or 2-D token_embd.weight")
            }
            vocabSize = embedding.shape[1]
        }
        tieWordEmbeddings = file.tensor(named: "output.weight") == nil
        bosTokenId = try file.ifPresent("tokenizer.ggml.bos_token_id", file.int)
        eosTokenId = try file.ifPresent("tokenizer.ggml.eos_token_id", file.int)
        try readRopeScaling(file, key: key)
        if arch == "gemma3" { try readGemma3(file, key: key) }
    }

    /// Gemma 3's keys, as llama.cpp's `llama_model_gemma3::load_arch_hparams` reads them.
    private mutating func readGemma3(_ file: GGUFFile, key: (String) -> String) throws {
        hiddenAct = "gelu_pytorch_tanh"
        queryPreAttnScalar = numHiddenLayers == 62 ? hiddenSize / numAttentionHeads : headDim
        for (name, slot) in [
            ("final_logit_softcapping", \GGUFConfig.finalLogitSoftcapping),
            ("attn_logit_softcapping", \.attnLogitSoftcapping)
        ] {
            if let v = try file.ifPresent(key(name), file.float), v != 0 { self[keyPath: slot] = Double(v) }
        }
        guard let window = try file.ifPresent(key("attention.sliding_window"), file.int), window > 0 else {
            layerTypes = Array(repeating: "full_attention", count: numHiddenLayers)
            return
        }
        slidingWindow = window
        ropeLocalBaseFreq = Self.shortestDecimal(try file.ifPresent(key("rope.freq_base_swa"), file.float) ?? 10_000)
        let patternKey = key("attention.sliding_window_pattern")
        var sliding: [Bool]
        if let v = file.metadata[patternKey], let a = v.arrayValue {
            let flags = a.compactMap(\.boolValue)
            guard flags.count == a.count, flags.count == numHiddenLayers else {
                throw GGUFError(
                    file.path, "\(patternKey): expected \(numHiddenLayers) booleans or a positive integer, found \(v)",
                    key: patternKey, expected: "\(numHiddenLayers) booleans or a positive integer", found: "\(v)")
            }
            sliding = flags
        } else {
            let n = try file.ifPresent(patternKey, file.int) ?? 6
            guard n >= 1 else {
                throw GGUFError(file.path, "\(patternKey): expected a positive integer, found \(n)", key: patternKey,
                                expected: "a positive integer", found: "\(n)")
            }
            sliding = (0..<numHiddenLayers).map { ($0 + 1) % n != 0 }
        }
        layerTypes = sliding.map { $0 ? "sliding_attention" : "full_attention" }
    }

    /// Per-layer arrays of a `deci` file (a scalar applies to every layer), as llama.cpp reads them.
    static func deciLayers(
        _ file: GGUFFile, arch: String, layers: Int
    ) throws -> (heads: Int, kvHeads: Int, width: Int, blocks: [Block]) {
        func perLayer(_ name: String, default d: [Int]? = nil) throws -> [Int] {
            let key = "\(arch).\(name)"
            guard let v = file.metadata[key] else {
                if let d { return d }
                throw GGUFError(file.path, "missing \(key)", key: key, found: "nothing")
            }
            if let i = v.intValue { return Array(repeating: i, count: layers) }
            guard let a = v.arrayValue, a.count == layers, case let ints = a.compactMap(\.intValue),
                ints.count == a.count, ints.allSatisfy({ $0 >= 0 })
            else {
                throw GGUFError(
                    file.path, "\(key): expected a non-negative integer or an array of \(layers), found \(v)", key: key,
                    expected: "a non-negative integer or an array of \(layers)", found: "\(v)")
            }
            return ints
        }
        let heads = try perLayer("attention.head_count"), ff = try perLayer("feed_forward_length")
        let kv = try perLayer("attention.head_count_kv", default: heads)
        let h = heads.first { $0 > 0 } ?? 1, g = kv.first { $0 > 0 } ?? 1, f = ff.first { $0 > 0 } ?? 1
        let blocks = try (0..<layers).map { l in
            if heads[l] > 0 && kv[l] == 0 {
                throw GGUFError(
                    file.path,
                    "layer \(l): \(heads[l]) heads without key/value heads is a linear-attention layer, which is not "
                        + "supported")
            }
            return Block(
                attention: heads[l] > 0, numAttentionHeads: heads[l] > 0 ? heads[l] : h,
                numKeyValueHeads: heads[l] > 0 ? kv[l] : g,
                mlp: ff[l] > 0, intermediateSize: ff[l] > 0 ? ff[l] : f)
        }
        return (h, g, f, blocks)
    }

    /// llama.cpp: factor from `rope.scaling.factor`, else `rope.scale_linear`; frequency scale = 1 / factor.
    private mutating func readRopeScaling(_ file: GGUFFile, key: (String) -> String) throws {
        let typeKey = key("rope.scaling.type"), factorKey = key("rope.scaling.factor"),
            linearKey = key("rope.scale_linear")
        let type = try file.ifPresent(typeKey, file.string)
        var factor = try file.ifPresent(factorKey, file.float).map(Double.init)
        var keys = [typeKey, factorKey].filter { file.metadata[$0] != nil }
        if factor == nil, let linear = try file.ifPresent(linearKey, file.float) {
            factor = Double(linear)
            keys.append(linearKey)
        }
        if type == "none" || (type == nil && (factor == nil || factor == 0 || factor == 1)) { return }
        ropeScaling = RopeScaling(
            ropeType: type ?? "linear", factor: factor.map { Self.shortestDecimal(Float($0)) } ?? 1)
        ropeScalingKeys = keys
    }

    /// Pretty-printed JSON with sorted snake_case keys, as in a Hugging Face `config.json`.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// GGUF stores these as float32; HF configs hold the decimal the float came from (1e-05, not 9.99999974e-06).
    static func shortestDecimal(_ value: Float) -> Double {
        Double("\(value)") ?? Double(value)
    }
}
