import Diagnostics
import Foundation

/// A configuration problem: names the key, what was expected and what was found.
public struct ConfigError: ContextualError, Sendable {
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

/// What one decoder layer holds. Passes make layers differ: fewer heads, narrower MLPs, or a sublayer
/// that is gone altogether (then neither its norm nor its projections exist, and it is not computed).
public struct BlockConfig: Equatable, Sendable {
    public var attention: Bool
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var mlp: Bool
    public var intermediateSize: Int
    /// Full causal attention, or sliding-window attention with the model's `slidingWindow` and its rotary base
    /// (`ModelConfig.attentionWindow(layer:)`, `ropeTheta(layer:)`).
    public var layerType: AttentionLayerType

    public init(
        attention: Bool = true, numAttentionHeads: Int, numKeyValueHeads: Int, mlp: Bool = true, intermediateSize: Int,
        layerType: AttentionLayerType = .full
    ) {
        self.attention = attention
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.mlp = mlp
        self.intermediateSize = intermediateSize
        self.layerType = layerType
    }

    /// The same layer with another type (sizes unchanged).
    func with(layerType t: AttentionLayerType) -> BlockConfig { var b = self; b.layerType = t; return b }
}

/// A layer's attention pattern, spelled as Hugging Face's `layer_types` entries.
public enum AttentionLayerType: String, Codable, Sendable {
    case full = "full_attention", sliding = "sliding_attention"
}

/// How a norm normalises: `rms` is x / rms(x) ⊙ w (Llama, Qwen); `rmsUnitOffset` is x / rms(x) ⊙ (1 + w) (Gemma:
/// the stored weight is the offset from 1; transformers Gemma3RMSNorm).
public enum NormKind: String, Codable, Sendable {
    case rms, rmsUnitOffset
    /// What the kernels add to the stored weight before scaling (`rmsnormForward`'s `offset`).
    public var weightOffset: Float { self == .rms ? 0 : 1 }
}

/// The gated MLP's activation: `silu` is SwiGLU, silu(gate) ⊙ up (Llama, Qwen); `geluTanh` is GeGLU with
/// GELU's tanh approximation, gelu_tanh(gate) ⊙ up (Gemma: `gelu_pytorch_tanh`). Raw values are Hugging Face's
/// `hidden_act` spellings.
public enum GatedActivation: String, Codable, Sendable { case silu, geluTanh = "gelu_pytorch_tanh" }

/// The architecture spec of a decoder, family-neutral: what the forward, its backward, the reference forward,
/// the passes and the trainer read. Per block (`blocks`): attention with its heads and KV heads (head dim
/// shared), MLP with its width, either sublayer possibly absent. Model-wide: which projections carry a bias
/// (`biases`, Qwen2: q, k, v), per-head q/k RMSNorm (`qkNorm`, Qwen3), the norm kind and its eps, the MLP
/// activation, rotary base, tied or untied LM head. Its Hugging Face config.json form is the family's
/// (`ModelFamily.config(hf:)` / `hfConfig`); `family` names which one.
///
/// Keys we do not interpret are kept in `extra` and written back unchanged. Values that would change the
/// math in ways this engine does not implement (rope scaling, another activation) are rejected.
public struct ModelConfig: Equatable, Sendable {
    /// The family (`ModelFamilies` registry key) that translates this spec to and from files.
    public var family: String = LlamaFamily.name
    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var bosTokenID: Int?
    public var eosTokenID: Int?
    /// Every end-of-sequence id when config.json lists several (Llama 3.1's `eos_token_id: [128001, 128008, 128009]`);
    /// `eosTokenID` is the first. Kept so that the config is written back as it was read.
    public var eosTokenIDs: [Int]?
    /// Projections whose output carries a bias (in every layer that has the sublayer).
    public var biases: Set<LinearKind> = []
    /// RMSNorm of q and of k over each head's D channels (weights of shape D), after the projections' biases
    /// and before rotary.
    public var qkNorm: Bool = false
    public var normKind: NormKind = .rms
    public var activation: GatedActivation = .silu
    /// Norms on the sublayers' outputs before the residual add (Gemma 2/3: `post_attention_layernorm`,
    /// `post_feedforward_layernorm`; `NormSite.attentionOut`, `.mlpOut`).
    public var postNorms: Bool = false
    /// Multiplier of the embedding output (Gemma: √hidden_size, rounded to float32 as transformers does).
    public var embeddingScale: Double = 1
    /// Multiplier of the attention scores; nil is 1/√head_dim (Gemma 3: query_pre_attn_scalar^(-1/2)).
    public var attentionScale: Double?
    /// Keys a sliding-window layer sees (itself and the window − 1 before it); required when a block is sliding.
    public var slidingWindow: Int?
    /// Rotary base of sliding-window layers (Gemma 3: 10,000 while full layers use `ropeTheta`, 1,000,000).
    public var slidingRopeTheta: Double?
    /// One entry per layer (always `numHiddenLayers` long).
    public var blocks: [BlockConfig]
    /// Other config.json keys, kept verbatim.
    public var extra: [String: JSONValue]

    /// The attention window of layer l: `slidingWindow` on sliding layers, nil (full causal) otherwise.
    public func attentionWindow(layer l: Int) -> Int? { blocks[l].layerType == .sliding ? slidingWindow : nil }
    /// The rotary base of layer l.
    public func ropeTheta(layer l: Int) -> Double {
        blocks[l].layerType == .sliding ? slidingRopeTheta ?? ropeTheta : ropeTheta
    }
    /// The checkpoint's (and the family's Hugging Face) name of a weight.
    public func name(_ id: WeightID) -> String { familyType.hfName(id) }
    /// The attention score multiplier as the kernels take it (nil: their default 1/√D).
    public var attentionScaleValue: Float? { attentionScale.map { Float($0) } }

    /// The family's type (the registry holds every family a config can name).
    public var familyType: any ModelFamily.Type {
        guard let f = ModelFamilies.named(family) else {
            preconditionFailure("config of unregistered family '\(family)'")
        }
        return f
    }

    /// A homogeneous configuration of `family` (tests, benchmarks, fixtures).
    public init(
        vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
        numKeyValueHeads: Int, headDim: Int? = nil, rmsNormEps: Double = 1e-5, ropeTheta: Double = 10000,
        maxPositionEmbeddings: Int = 2048, tieWordEmbeddings: Bool = false, bosTokenID: Int? = nil,
        eosTokenID: Int? = nil,
        family: any ModelFamily.Type = LlamaFamily.self, biases: Set<LinearKind> = [], qkNorm: Bool = false
    ) {
        self.family = family.name
        self.biases = biases
        self.qkNorm = qkNorm
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.headDim = headDim ?? hiddenSize / numAttentionHeads
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.bosTokenID = bosTokenID
        self.eosTokenID = eosTokenID
        self.blocks = Array(
            repeating: BlockConfig(
                numAttentionHeads: numAttentionHeads, numKeyValueHeads: numKeyValueHeads,
                intermediateSize: intermediateSize), count: numHiddenLayers)
        self.extra = ["architectures": .array([.string(family.hfArchitecture)]), "hidden_act": .string("silu")]
    }

    /// Keys this type interprets; everything else goes to `extra`.
    static let knownKeys: Set<String> = [
        "model_type",
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
        "tie_word_embeddings", "bos_token_id", "eos_token_id", "block_configs", "rope_parameters",
    ]
    static let blockKeys: Set<String> = [
        "attention", "num_attention_heads", "num_key_value_heads", "mlp", "intermediate_size"
    ]

    /// Decodes and validates a config.json object: its `model_type` (default "llama") picks the family, which
    /// translates the rest (`ModelFamily.config(hf:)`).
    public init(json: JSONValue) throws {
        guard let o = json.objectValue else { throw ConfigError("config: expected a JSON object") }
        let type = o["model_type"]?.stringValue ?? LlamaFamily.hfModelTypes[0]
        guard let family = ModelFamilies.forHFModelType(type) else {
            throw ConfigError(
                "config: model_type '\(type)' is not supported (supported: "
                    + "\(ModelFamilies.hfModelTypes.joined(separator: ", ")))")
        }
        self = try family.config(hf: o)
    }

    /// The shared part of every family's config.json decoding: sizes, heads, norm eps, rotary base, tying,
    /// special tokens, per-layer `block_configs`, with every value range-checked and the model's size bounded.
    /// `family` is the registry name; `biases` and `qkNorm` are the family's features; `familyKeys` are keys the
    /// family has interpreted itself (not kept in `extra`).
    public init(decoding o: [String: JSONValue], family: String, biases: Set<LinearKind> = [], qkNorm: Bool = false,
                activation: GatedActivation = .silu, familyKeys: Set<String> = []) throws {
        self.family = family
        self.biases = biases
        self.qkNorm = qkNorm
        self.activation = activation
        func int(_ key: String, default d: Int? = nil) throws -> Int { try Self.int(key, in: o, default: d) }
        if let v = o["hidden_act"], v != .null, v.stringValue != activation.rawValue {
            throw ConfigError(
                "config: hidden_act \(v.text) is not supported for \(family) (supported: \(activation.rawValue))")
        }
        if let rs = o["rope_scaling"], rs != .null {
            throw ConfigError("config: rope_scaling \(rs.text) is not supported (expected null)")
        }
        vocabSize = try int("vocab_size")
        hiddenSize = try int("hidden_size")
        intermediateSize = try int("intermediate_size")
        numHiddenLayers = try int("num_hidden_layers")
        numAttentionHeads = try int("num_attention_heads")
        numKeyValueHeads = try int("num_key_value_heads", default: numAttentionHeads)
        if o["head_dim"] == nil || o["head_dim"] == .null, hiddenSize % numAttentionHeads != 0 {
            throw ConfigError(
                "config: no 'head_dim', and hidden_size \(hiddenSize) is not a multiple of num_attention_heads "
                    + "\(numAttentionHeads) (the implied head dim would be \(hiddenSize) / \(numAttentionHeads), "
                    + "rounded down to \(hiddenSize / numAttentionHeads)); give head_dim")
        }
        headDim = try int("head_dim", default: hiddenSize / numAttentionHeads)
        rmsNormEps = try Self.number("rms_norm_eps", in: o, default: 1e-6)
        ropeTheta = try Self.ropeTheta(o)
        maxPositionEmbeddings = try int("max_position_embeddings", default: 2048)
        tieWordEmbeddings = try ModelFamilies.bool(o, "tie_word_embeddings") ?? false
        let ids = try Self.tokenIDs(o, vocabSize: vocabSize)
        bosTokenID = ids.bos
        eosTokenID = ids.eos
        eosTokenIDs = ids.eosList
        guard headDim >= 2, headDim % 2 == 0 else {
            throw ConfigError("config: head_dim must be even and at least 2 for rotary embedding, found \(headDim)")
        }

        let base = BlockConfig(
            numAttentionHeads: numAttentionHeads, numKeyValueHeads: numKeyValueHeads, intermediateSize: intermediateSize
        )
        blocks = try Self.blocks(o, numHiddenLayers: numHiddenLayers, base: base)
        try Self.checkTensorSizes(blocks, vocabSize: vocabSize, hiddenSize: hiddenSize, headDim: headDim)
        extra = o.filter { !Self.knownKeys.contains($0.key) && !familyKeys.contains($0.key) }
    }

    /// An integer key of `obj`, in 1...`limits[key]` (Int32.max when unlisted); `d` when absent or null.
    private static func int(
        _ key: String, in obj: [String: JSONValue], ctx: String = "config", default d: Int? = nil
    ) throws -> Int {
        let limit = Self.limits[key] ?? Int(Int32.max)
        guard let v = obj[key], v != .null else {
            if let d { return d }
            throw ConfigError("\(ctx): missing required key '\(key)' (expected an integer in 1...\(limit))",
                              ErrorContext(key: key, expected: "an integer in 1...\(limit)", found: "nothing"))
        }
        guard let i = v.intValue else {
            throw ConfigError("\(ctx): key '\(key)' must be an integer, found \(v.text)",
                              ErrorContext(key: key, expected: "an integer", found: v.text))
        }
        guard (1...limit).contains(i) else {
            throw ConfigError("\(ctx): key '\(key)' is \(i) (expected an integer in 1...\(limit))",
                              ErrorContext(key: key, expected: "an integer in 1...\(limit)", found: "\(i)"))
        }
        return i
    }

    /// A positive number key of `o`, within `numberRanges[key]`; `d` when absent or null.
    private static func number(_ key: String, in o: [String: JSONValue], default d: Double) throws -> Double {
        guard let v = o[key], v != .null else { return d }
        let range = Self.numberRanges[key] ?? 0...Double.greatestFiniteMagnitude
        guard let x = v.doubleValue, x > 0, range.contains(x) else {
            let expected = "a positive number in \(range.lowerBound)...\(range.upperBound)"
            throw ConfigError("config: key '\(key)' is \(v.text) (expected \(expected))",
                              ErrorContext(key: key, expected: expected, found: v.text))
        }
        return x
    }

    /// The rotary base: `rope_parameters.rope_theta` if given, else `rope_theta`, else 10000.
    private static func ropeTheta(_ o: [String: JSONValue]) throws -> Double {
        // transformers ≥ 5 writes rope settings as rope_parameters {rope_type, rope_theta}; older versions rope_theta.
        var ropeTheta = try number("rope_theta", in: o, default: 10000)
        if let rp = o["rope_parameters"], rp != .null {
            guard let p = rp.objectValue else {
                throw ConfigError("config: rope_parameters must be an object, found \(rp.text)")
            }
            if let type = p["rope_type"], type != .string("default") {
                throw ConfigError(
                    "config: rope_parameters.rope_type \(type.text) is not supported (supported: \"default\")")
            }
            if let t = p["rope_theta"] {
                let range = Self.numberRanges["rope_theta"]!
                guard let theta = t.doubleValue, range.contains(theta) else {
                    throw ConfigError(
                        "config: rope_parameters.rope_theta is \(t.text) (expected a number in "
                            + "\(range.lowerBound)...\(range.upperBound))")
                }
                ropeTheta = theta
            }
        }
        return ropeTheta
    }

    /// `bos_token_id`, and `eos_token_id` (the first of the list, and the list, when it is one), each checked
    /// against `vocabSize`.
    private static func tokenIDs(
        _ o: [String: JSONValue], vocabSize: Int
    ) throws -> (bos: Int?, eos: Int?, eosList: [Int]?) {
        // A token id is an integer or null; eos_token_id may list several (all checked, the first used). Any other
        // value was read as "no id" before, silently.
        let vocab = vocabSize
        func tokenID(_ key: String, _ v: JSONValue?) throws -> Int? {
            guard let v, v != .null else { return nil }
            guard let id = v.intValue, (0..<vocab).contains(id) else {
                throw ConfigError("config: key '\(key)' is \(v.text) (expected a token id in 0..<vocab_size \(vocab))")
            }
            return id
        }
        let bos = try tokenID("bos_token_id", o["bos_token_id"])
        var eosList: [Int]? = nil
        let eos: Int?
        if let list = o["eos_token_id"]?.arrayValue {
            guard !list.isEmpty else {
                throw ConfigError("config: key 'eos_token_id' is an empty list (expected token ids)")
            }
            eosList = try list.enumerated().map { i, v in
                guard let id = try tokenID("eos_token_id[\(i)]", v) else {
                    throw ConfigError("config: key 'eos_token_id[\(i)]' is null (expected a token id)")
                }
                return id
            }
            eos = eosList?.first
        } else {
            eos = try tokenID("eos_token_id", o["eos_token_id"])
        }
        return (bos, eos, eosList)
    }

    /// `block_configs`: one per layer (each key defaulting to `base`), or `base` for every layer; checks that
    /// every attention's query heads are a multiple of its key/value heads.
    private static func blocks(
        _ o: [String: JSONValue], numHiddenLayers: Int, base: BlockConfig
    ) throws -> [BlockConfig] {
        let blocks: [BlockConfig]
        if let bc = o["block_configs"], bc != .null {
            guard let list = bc.arrayValue, list.count == numHiddenLayers else {
                throw ConfigError(
                    "config: block_configs must be an array of num_hidden_layers=\(numHiddenLayers) objects, found "
                        + "\(bc.arrayValue.map { "\($0.count) entries" } ?? bc.text)")
            }
            blocks = try list.enumerated().map { i, entry in
                let ctx = "config: block_configs[\(i)]"
                guard let b = entry.objectValue else { throw ConfigError("\(ctx): expected an object") }
                if let unknown = b.keys.sorted().first(where: { !Self.blockKeys.contains($0) }) {
                    throw ConfigError(
                        "\(ctx): unknown key '\(unknown)' (known: \(Self.blockKeys.sorted().joined(separator: ", ")))")
                }
                func flag(_ key: String) throws -> Bool {
                    guard let v = b[key] else { return true }
                    guard let f = v.boolValue else {
                        throw ConfigError("\(ctx): key '\(key)' must be true or false, found \(v.text)")
                    }
                    return f
                }
                return BlockConfig(
                    attention: try flag("attention"),
                    numAttentionHeads: try int("num_attention_heads", in: b, ctx: ctx, default: base.numAttentionHeads),
                    numKeyValueHeads: try int("num_key_value_heads", in: b, ctx: ctx, default: base.numKeyValueHeads),
                    mlp: try flag("mlp"),
                    intermediateSize: try int("intermediate_size", in: b, ctx: ctx, default: base.intermediateSize))
            }
        } else {
            blocks = Array(repeating: base, count: numHiddenLayers)
        }
        for (i, b) in blocks.enumerated() where b.attention && b.numAttentionHeads % b.numKeyValueHeads != 0 {
            throw ConfigError(
                "config: layer \(i): num_attention_heads \(b.numAttentionHeads) is not a multiple of "
                    + "num_key_value_heads \(b.numKeyValueHeads)")
        }
        return blocks
    }

    /// Every tensor's element count, and the whole model's, must stay far from Int overflow and within what a
    /// machine can hold: checked before anything is sized by these numbers.
    private static func checkTensorSizes(
        _ blocks: [BlockConfig], vocabSize: Int, hiddenSize: Int, headDim: Int
    ) throws {
        var total = 0
        func add(_ what: String, _ dims: Int...) throws {
            var n = 1
            for d in dims {
                let (p, o) = n.multipliedReportingOverflow(by: d)
                guard !o, p <= Self.maxTensorElements else {
                    throw ConfigError(
                        "config: \(what) would have more than \(Self.maxTensorElements) elements (dimensions \(dims))")
                }
                n = p
            }
            total += n
            guard total <= Self.maxParameters else {
                throw ConfigError(
                    "config: the model would have more than \(Self.maxParameters) parameters (at \(what))")
            }
        }
        try add(WeightID.embedTokens.hfName, vocabSize, hiddenSize)
        for (i, b) in blocks.enumerated() {
            if b.attention {
                try add(
                    "layer \(i) attention (num_attention_heads \(b.numAttentionHeads) × head_dim \(headDim) × "
                        + "hidden_size \(hiddenSize))",
                    2 * (b.numAttentionHeads + b.numKeyValueHeads), headDim, hiddenSize)
            }
            if b.mlp {
                try add(
                    "layer \(i) MLP (intermediate_size \(b.intermediateSize) × hidden_size \(hiddenSize))", 3,
                    b.intermediateSize, hiddenSize)
            }
        }
    }

    /// Upper bounds of the integer keys (far above any released model; they keep every product of sizes,
    /// and every allocation sized by them, in range).
    static let limits: [String: Int] = [
        "vocab_size": 1 << 22, "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "num_hidden_layers": 1 << 10,
        "num_attention_heads": 1 << 10, "num_key_value_heads": 1 << 10, "head_dim": 1 << 12,
        "max_position_embeddings": 1 << 24,
    ]
    /// Ranges of the real-valued keys: rotary bases below 1 or above 1e9 make no sense (and overflow the
    /// frequencies); the epsilon must be a small positive number.
    static let numberRanges: [String: ClosedRange<Double>] = ["rope_theta": 1...1e9, "rms_norm_eps": 1e-30...0.1]
    /// Largest tensor and model this engine will size (2^34 elements, 2^36 parameters).
    public static let maxTensorElements = 1 << 34
    public static let maxParameters = 1 << 36

    /// True when every layer holds both sublayers with the global sizes (layer types may differ: they are
    /// written as `layer_types`, not `block_configs`).
    public var isHomogeneous: Bool {
        blocks.allSatisfy {
            $0.with(layerType: .full)
                == BlockConfig(
                    numAttentionHeads: numAttentionHeads, numKeyValueHeads: numKeyValueHeads,
                    intermediateSize: intermediateSize)
        }
    }

    /// The config.json object, in the family's form (`ModelFamily.hfConfig`).
    public var json: JSONValue { .object(familyType.hfConfig(self)) }

    /// The keys every family writes: `extra`, the sizes and settings, `model_type`, and `block_configs` only
    /// when layers differ.
    public func sharedHFKeys(modelType: String) -> [String: JSONValue] {
        var o = extra
        o["model_type"] = .string(modelType)
        o["vocab_size"] = .int(vocabSize)
        o["hidden_size"] = .int(hiddenSize)
        o["intermediate_size"] = .int(intermediateSize)
        o["num_hidden_layers"] = .int(numHiddenLayers)
        o["num_attention_heads"] = .int(numAttentionHeads)
        o["num_key_value_heads"] = .int(numKeyValueHeads)
        o["head_dim"] = .int(headDim)
        o["rms_norm_eps"] = .double(rmsNormEps)
        o["rope_theta"] = .double(ropeTheta)
        o["rope_parameters"] = .object(["rope_type": .string("default"), "rope_theta": .double(ropeTheta)])
        o["max_position_embeddings"] = .int(maxPositionEmbeddings)
        o["tie_word_embeddings"] = .bool(tieWordEmbeddings)
        o["bos_token_id"] = bosTokenID.map { .int($0) } ?? .null
        o["eos_token_id"] = eosTokenIDs.map { .array($0.map { .int($0) }) } ?? eosTokenID.map { .int($0) } ?? .null
        if !isHomogeneous {
            o["block_configs"] = .array(blocks.map {
                .object(["attention": .bool($0.attention), "num_attention_heads": .int($0.numAttentionHeads),
                         "num_key_value_heads": .int($0.numKeyValueHeads), "mlp": .bool($0.mlp),
                         "intermediate_size": .int($0.intermediateSize)])
            })
        }
        return o
    }
}
