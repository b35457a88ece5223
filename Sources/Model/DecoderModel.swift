import Quantization
import TensorCore

/// A tensor the model expects: its Hugging Face name and shape.
public struct TensorSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
}

/// Every weight of a Llama model, typed. Hugging Face names are made here and only here (`hfName`), for the
/// file boundaries (checkpoints, imports, exports) and for users' glob patterns.
public enum WeightID: Hashable, Sendable, Comparable, CustomStringConvertible {
    case embedTokens
    case inputNorm(layer: Int)
    case linear(LinearID)
    case postAttentionNorm(layer: Int)
    case finalNorm
    case lmHead

    public var hfName: String {
        switch self {
        case .embedTokens: "model.embed_tokens.weight"
        case .inputNorm(let l): "model.layers.\(l).input_layernorm.weight"
        case .linear(let id): "model.layers.\(id.layer).\(id.kind.hfModule).weight"
        case .postAttentionNorm(let l): "model.layers.\(l).post_attention_layernorm.weight"
        case .finalNorm: "model.norm.weight"
        case .lmHead: "lm_head.weight"
        }
    }

    /// The inverse of `hfName`.
    public init?(hfName name: String) {
        switch name {
        case "model.embed_tokens.weight": self = .embedTokens; return
        case "model.norm.weight": self = .finalNorm; return
        case "lm_head.weight": self = .lmHead; return
        default: break
        }
        let parts = name.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]), l >= 0, String(l) == parts[2] else { return nil }
        switch parts[3] {
        case "input_layernorm.weight": self = .inputNorm(layer: l)
        case "post_attention_layernorm.weight": self = .postAttentionNorm(layer: l)
        default:
            guard let k = LinearKind.allCases.first(where: { $0.hfModule + ".weight" == parts[3] }) else { return nil }
            self = .linear(LinearID(layer: l, kind: k))
        }
    }

    public var description: String { hfName }

    /// Canonical order: embedding, then per layer its norms and projections, final norm, LM head.
    var order: (Int, Int, Int) {
        switch self {
        case .embedTokens: (0, 0, 0)
        case .inputNorm(let l): (1, l, 0)
        case .linear(let id): (1, id.layer, id.kind.isAttention ? 1 + LinearKind.allCases.firstIndex(of: id.kind)! : 6 + LinearKind.allCases.firstIndex(of: id.kind)!)
        case .postAttentionNorm(let l): (1, l, 5)
        case .finalNorm: (2, 0, 0)
        case .lmHead: (3, 0, 0)
        }
    }
    public static func < (a: WeightID, b: WeightID) -> Bool { a.order < b.order }
}


/// Weights of one attention sublayer (its pre-norm included). Shapes: norm (C), q (H·D, C), k and v (G·D, C),
/// o (C, H·D).
public struct AttentionWeights: Sendable {
    public var norm: Tensor
    public var q, k, v, o: LinearWeight
    public init(norm: Tensor, q: LinearWeight, k: LinearWeight, v: LinearWeight, o: LinearWeight) {
        self.norm = norm; self.q = q; self.k = k; self.v = v; self.o = o
    }
}

/// Weights of one MLP sublayer (its pre-norm included). Shapes: norm (C), gate and up (F, C), down (C, F).
public struct MLPWeights: Sendable {
    public var norm: Tensor
    public var gate, up, down: LinearWeight
    public init(norm: Tensor, gate: LinearWeight, up: LinearWeight, down: LinearWeight) {
        self.norm = norm; self.gate = gate; self.up = up; self.down = down
    }
}

/// One decoder layer; an absent sublayer is nil and not computed.
public struct DecoderLayer: Sendable {
    public var attention: AttentionWeights?
    public var mlp: MLPWeights?
    public init(attention: AttentionWeights?, mlp: MLPWeights?) { self.attention = attention; self.mlp = mlp }
}

/// A Llama decoder: embedding, layers, final norm, LM head (the embedding itself when tied).
///
/// A value: passes and stages build new models and never write into the tensors of one they were given;
/// training works on `copy()` and returns the trained copy (Training/Distillation.swift).
public struct DecoderModel: Sendable {
    public let config: ModelConfig
    public var embedTokens: LinearWeight
    public var layers: [DecoderLayer]
    public var norm: Tensor
    /// The LM head when untied; nil when the embedding is tied to it.
    public var untiedLMHead: LinearWeight?
    /// logits = h · lm_headᵀ: the untied head, or the embedding when tied.
    public var lmHead: LinearWeight { untiedLMHead ?? embedTokens }

    /// Assembles a model from its parts; shapes must follow the config (checked).
    public init(config: ModelConfig, embedTokens: LinearWeight, layers: [DecoderLayer], norm: Tensor, lmHead: LinearWeight?) throws {
        self.config = config
        self.embedTokens = embedTokens
        self.layers = layers
        self.norm = norm
        untiedLMHead = lmHead
        try validate()
    }

    /// Checks every shape against the config.
    public func validate() throws {
        let specs = Dictionary(uniqueKeysWithValues: Self.tensorSpecs(config).map { ($0.name, $0.shape) })
        guard layers.count == config.blocks.count else { throw ConfigError("\(layers.count) layers for a config of \(config.blocks.count)") }
        guard config.tieWordEmbeddings == (untiedLMHead == nil) else {
            throw ConfigError(config.tieWordEmbeddings ? "tied config with a separate LM head" : "untied config without an LM head")
        }
        for (l, (layer, b)) in zip(layers, config.blocks).enumerated() {
            guard (layer.attention != nil) == b.attention, (layer.mlp != nil) == b.mlp else {
                throw ConfigError("layer \(l): sublayers present do not match the config")
            }
        }
        for (id, shape) in weightShapes {
            guard let expected = specs[id.hfName] else { throw ConfigError("unexpected tensor '\(id.hfName)' for this config") }
            guard expected == shape else { throw ConfigError("tensor '\(id.hfName)': expected shape \(expected), found \(shape)") }
        }
    }

    private var weightShapes: [(WeightID, [Int])] {
        weights.map { ($0.id, $0.weight.shape) }
    }

    /// The tensors a checkpoint of this config must hold, in canonical order.
    public static func tensorSpecs(_ c: ModelConfig) -> [TensorSpec] {
        let C = c.hiddenSize, D = c.headDim
        var specs = [TensorSpec(name: "model.embed_tokens.weight", shape: [c.vocabSize, C])]
        for (i, b) in c.blocks.enumerated() {
            let p = "model.layers.\(i)."
            if b.attention {
                let H = b.numAttentionHeads, G = b.numKeyValueHeads
                specs += [
                    TensorSpec(name: p + "input_layernorm.weight", shape: [C]),
                    TensorSpec(name: p + "self_attn.q_proj.weight", shape: [H * D, C]),
                    TensorSpec(name: p + "self_attn.k_proj.weight", shape: [G * D, C]),
                    TensorSpec(name: p + "self_attn.v_proj.weight", shape: [G * D, C]),
                    TensorSpec(name: p + "self_attn.o_proj.weight", shape: [C, H * D]),
                ]
            }
            if b.mlp {
                let F = b.intermediateSize
                specs += [
                    TensorSpec(name: p + "post_attention_layernorm.weight", shape: [C]),
                    TensorSpec(name: p + "mlp.gate_proj.weight", shape: [F, C]),
                    TensorSpec(name: p + "mlp.up_proj.weight", shape: [F, C]),
                    TensorSpec(name: p + "mlp.down_proj.weight", shape: [C, F]),
                ]
            }
        }
        specs.append(TensorSpec(name: "model.norm.weight", shape: [C]))
        if !c.tieWordEmbeddings { specs.append(TensorSpec(name: "lm_head.weight", shape: [c.vocabSize, C])) }
        return specs
    }

    /// Assembles a dense model from named float32 tensors (a file boundary); names and shapes must match
    /// `tensorSpecs(config)` exactly.
    public init(config: ModelConfig, tensors: [String: Tensor]) throws {
        try self.init(config: config, weights: tensors.mapValues { ModelWeight.dense($0) })
    }

    /// Assembles a model from named weights of any representation; names and shapes must match
    /// `tensorSpecs(config)` exactly (1-D norms are `.vector`, matrices `.matrix`).
    public init(config: ModelConfig, weights named: [String: ModelWeight]) throws {
        let specs = Self.tensorSpecs(config)
        for s in specs {
            guard let t = named[s.name] else { throw ConfigError("missing tensor '\(s.name)' (expected shape \(s.shape))") }
            guard t.shape == s.shape else { throw ConfigError("tensor '\(s.name)': expected shape \(s.shape), found \(t.shape)") }
            guard (s.shape.count == 1) == (t.vector != nil) else { throw ConfigError("tensor '\(s.name)': a norm must be a float32 vector") }
        }
        let expected = Set(specs.map(\.name))
        if let extra = named.keys.sorted().first(where: { !expected.contains($0) }) {
            throw ConfigError("unexpected tensor '\(extra)' for this config")
        }
        func m(_ id: WeightID) throws -> LinearWeight {
            guard let w = named[id.hfName]?.matrix else { throw ConfigError("missing tensor '\(id.hfName)'") }
            return w
        }
        func v(_ id: WeightID) throws -> Tensor {
            guard let w = named[id.hfName]?.vector else { throw ConfigError("missing tensor '\(id.hfName)'") }
            return w
        }
        let layers = try config.blocks.enumerated().map { l, b in
            func lin(_ k: LinearKind) throws -> LinearWeight { try m(.linear(LinearID(layer: l, kind: k))) }
            return DecoderLayer(
                attention: b.attention ? AttentionWeights(norm: try v(.inputNorm(layer: l)), q: try lin(.q), k: try lin(.k), v: try lin(.v), o: try lin(.o)) : nil,
                mlp: b.mlp ? MLPWeights(norm: try v(.postAttentionNorm(layer: l)), gate: try lin(.gate), up: try lin(.up), down: try lin(.down)) : nil)
        }
        try self.init(config: config, embedTokens: try m(.embedTokens), layers: layers, norm: try v(.finalNorm),
                      lmHead: config.tieWordEmbeddings ? nil : try m(.lmHead))
    }

    /// Every weight with its typed id, in canonical order (a tied LM head appears once, as the embedding).
    public var weights: [(id: WeightID, weight: ModelWeight)] {
        var out: [(WeightID, ModelWeight)] = [(.embedTokens, .matrix(embedTokens))]
        for (l, layer) in layers.enumerated() {
            if let a = layer.attention {
                out.append((.inputNorm(layer: l), .vector(a.norm)))
                for (k, w) in [(LinearKind.q, a.q), (.k, a.k), (.v, a.v), (.o, a.o)] { out.append((.linear(LinearID(layer: l, kind: k)), .matrix(w))) }
            }
            if let m = layer.mlp {
                out.append((.postAttentionNorm(layer: l), .vector(m.norm)))
                for (k, w) in [(LinearKind.gate, m.gate), (.up, m.up), (.down, m.down)] { out.append((.linear(LinearID(layer: l, kind: k)), .matrix(w))) }
            }
        }
        out.append((.finalNorm, .vector(norm)))
        if let h = untiedLMHead { out.append((.lmHead, .matrix(h))) }
        return out
    }

    /// The model's weights as float32 tensors under their Hugging Face names, in canonical order: the tensor
    /// itself for dense weights, the values of sparse ones, the dequantized cache of quantized ones (never
    /// write into those) and D · S multiplied out for factorized ones.
    public var namedTensors: [(name: String, tensor: Tensor)] {
        weights.map { w in
            switch w.weight {
            case .vector(let t): (w.id.hfName, t)
            case .matrix(let m): (w.id.hfName, m.denseView ?? m.dequantized())
            }
        }
    }

    /// Decoder linear weights with their ids, in canonical order.
    public var linearWeights: [(id: LinearID, weight: LinearWeight)] {
        weights.compactMap { w in
            if case .linear(let id) = w.id, case .matrix(let m) = w.weight { return (id, m) }
            return nil
        }
    }

    /// The linear weight `id` (nil when its sublayer is absent).
    public func linear(_ id: LinearID) -> LinearWeight? {
        guard id.layer >= 0 && id.layer < layers.count else { return nil }
        let l = layers[id.layer]
        switch id.kind {
        case .q: return l.attention?.q
        case .k: return l.attention?.k
        case .v: return l.attention?.v
        case .o: return l.attention?.o
        case .gate: return l.mlp?.gate
        case .up: return l.mlp?.up
        case .down: return l.mlp?.down
        }
    }

    /// A model with weight `id` replaced (same shape, checked).
    public func replacing(_ id: WeightID, with w: LinearWeight) throws -> DecoderModel {
        var m = self
        switch id {
        case .embedTokens: m.embedTokens = w
        case .lmHead:
            guard untiedLMHead != nil else { throw ConfigError("the LM head is tied to the embedding; replace the embedding") }
            m.untiedLMHead = w
        case .linear(let lid):
            guard lid.layer >= 0 && lid.layer < layers.count else { throw ConfigError("no layer \(lid.layer)") }
            var layer = m.layers[lid.layer]
            switch lid.kind {
            case .q, .k, .v, .o:
                guard var a = layer.attention else { throw ConfigError("\(lid): the layer has no attention") }
                switch lid.kind { case .q: a.q = w; case .k: a.k = w; case .v: a.v = w; default: a.o = w }
                layer.attention = a
            case .gate, .up, .down:
                guard var f = layer.mlp else { throw ConfigError("\(lid): the layer has no MLP") }
                switch lid.kind { case .gate: f.gate = w; case .up: f.up = w; default: f.down = w }
                layer.mlp = f
            }
            m.layers[lid.layer] = layer
        case .inputNorm, .postAttentionNorm, .finalNorm:
            throw ConfigError("'\(id.hfName)' is a norm vector, not a linear weight")
        }
        try m.validate()
        return m
    }

    /// A deep copy: training the copy leaves this model untouched.
    public func copy() -> DecoderModel {
        var m = self
        m.embedTokens = embedTokens.copy()
        m.untiedLMHead = untiedLMHead?.copy()
        m.norm = norm.copy()
        m.layers = layers.map { l in
            DecoderLayer(
                attention: l.attention.map { AttentionWeights(norm: $0.norm.copy(), q: $0.q.copy(), k: $0.k.copy(), v: $0.v.copy(), o: $0.o.copy()) },
                mlp: l.mlp.map { MLPWeights(norm: $0.norm.copy(), gate: $0.gate.copy(), up: $0.up.copy(), down: $0.down.copy()) })
        }
        return m
    }

    /// The packed codes of every quantized weight, in canonical order.
    public var quantizedWeights: [(id: WeightID, packed: QuantizedTensor)] {
        weights.compactMap { w in if case .matrix(.quantized(let q)) = w.weight { return (w.id, q.packed) }; return nil }
    }

    /// Representations present among the linear weights (embedding and LM head included); a factorized
    /// weight with a quantized dense factor counts as both factorized and quantized.
    public var weightKinds: Set<WeightKind> {
        Set(weights.flatMap { $0.weight.matrix?.kinds ?? [] })
    }

    /// Bytes as stored: every weight in its representation (norms float32; a tied head once).
    public var storageBytes: Int { weights.reduce(0) { $0 + $1.weight.storageBytes } }

    /// Number of parameters (values stored: a sparse weight counts its kept values; a tied LM head once).
    public var parameterCount: Int { weights.reduce(0) { $0 + $1.weight.parameterCount } }

    /// A copy of the model without the given decoder layers (the rest renumbered in order).
    public func removingLayers(_ drop: Set<Int>) throws -> DecoderModel {
        if let bad = drop.first(where: { !(0..<layers.count).contains($0) }) {
            throw ConfigError("layer \(bad) outside 0..<\(layers.count)")
        }
        guard drop.count < layers.count else { throw ConfigError("cannot remove all \(layers.count) layers") }
        return try removingSublayers(Set(drop.flatMap { [2 * $0, 2 * $0 + 1] }))
    }

    /// A model with random weights (uniform, scaled by 1/sqrt(fan-in); norms at 1), for tests and benchmarks.
    public static func random(config: ModelConfig, seed: UInt64) -> DecoderModel {
        var rng = SplitMix64(seed: seed)
        var tensors: [String: Tensor] = [:]
        for s in tensorSpecs(config) {
            let t = Tensor(shape: s.shape)
            if s.shape.count == 1 {
                for i in 0..<t.count { t[i] = 1 + 0.1 * (2 * rng.nextFloat() - 1) }
            } else {
                t.fillUniform(scale: 1 / Float(s.shape[1]).squareRoot(), rng: &rng)
            }
            tensors[s.name] = t
        }
        do { return try DecoderModel(config: config, tensors: tensors) } catch {
            preconditionFailure("random model does not match its own specs: \(error)")
        }
    }
}

/// A weight of the model: a float32 vector (norms) or a linear weight in any representation.
public enum ModelWeight: Sendable {
    case vector(Tensor)
    case matrix(LinearWeight)

    public static func dense(_ t: Tensor) -> ModelWeight { t.shape.count == 1 ? .vector(t) : .matrix(.dense(t)) }
    public var vector: Tensor? { if case .vector(let t) = self { return t }; return nil }
    public var matrix: LinearWeight? { if case .matrix(let m) = self { return m }; return nil }
    public var shape: [Int] {
        switch self {
        case .vector(let t): t.shape
        case .matrix(let m): m.shape
        }
    }
    public var parameterCount: Int {
        switch self {
        case .vector(let t): t.count
        case .matrix(let m): m.parameterCount
        }
    }
    public var storageBytes: Int {
        switch self {
        case .vector(let t): t.bytes
        case .matrix(let m): m.storageBytes
        }
    }
    public var trainableTensors: [Tensor] {
        switch self {
        case .vector(let t): [t]
        case .matrix(let m): m.trainableTensors
        }
    }
    /// Names of `trainableTensors` (for optimizer state and parameter-group globs): the Hugging Face name,
    /// or for a factorized weight the name with ".dense" / ".sparse" in place of ".weight" (none when its
    /// dense factor is stored quantized: frozen).
    public func parameterNames(_ id: WeightID) -> [String] {
        let n = id.hfName
        if trainableTensors.isEmpty { return [] }
        if case .matrix(.factorized) = self { let stem = String(n.dropLast(".weight".count)); return [stem + ".dense", stem + ".sparse"] }
        return trainableTensors.isEmpty ? [] : [n]
    }
}
