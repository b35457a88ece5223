import Diagnostics
import Quantization
import TensorCore

/// A tensor the model expects: its Hugging Face name and shape.
public struct TensorSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
}

/// Weights of one attention sublayer (its norms included). Shapes: norm (C), q (H·D, C), k and v (G·D, C),
/// o (C, H·D); biases (out) for the projections the spec lists; qNorm and kNorm (D) when the spec has q/k norm;
/// postNorm (C) on the output when the spec has post-sublayer norms.
public struct AttentionWeights: Sendable {
    public var norm: Tensor
    public var q, k, v, o: LinearWeight
    /// Bias vectors by projection (only those in `ModelConfig.biases`).
    public var biases: [LinearKind: Tensor]
    public var qNorm: Tensor?, kNorm: Tensor?
    public var postNorm: Tensor?
    public init(
        norm: Tensor, q: LinearWeight, k: LinearWeight, v: LinearWeight, o: LinearWeight,
        biases: [LinearKind: Tensor] = [:], qNorm: Tensor? = nil, kNorm: Tensor? = nil, postNorm: Tensor? = nil
    ) {
        self.norm = norm; self.q = q; self.k = k; self.v = v; self.o = o
        self.biases = biases; self.qNorm = qNorm; self.kNorm = kNorm; self.postNorm = postNorm
    }
    public subscript(kind: LinearKind) -> LinearWeight {
        get {
            switch kind {
            case .q: q
            case .k: k
            case .v: v
            case .o: o
            default: preconditionFailure("\(kind) is not an attention projection")
            }
        }
        set {
            switch kind {
            case .q: q = newValue
            case .k: k = newValue
            case .v: v = newValue
            case .o: o = newValue
            default: preconditionFailure("\(kind) is not an attention projection")
            }
        }
    }
    /// A deep copy.
    public func copy() -> AttentionWeights {
        AttentionWeights(
            norm: norm.copy(), q: q.copy(), k: k.copy(), v: v.copy(), o: o.copy(),
            biases: biases.mapValues { $0.copy() },
            qNorm: qNorm?.copy(), kNorm: kNorm?.copy(), postNorm: postNorm?.copy())
    }
}

/// Weights of one MLP sublayer (its norms included). Shapes: norm (C), gate and up (F, C), down (C, F);
/// biases (out) for the projections the spec lists; postNorm (C) when the spec has post-sublayer norms.
public struct MLPWeights: Sendable {
    public var norm: Tensor
    public var gate, up, down: LinearWeight
    public var biases: [LinearKind: Tensor]
    public var postNorm: Tensor?
    public init(
        norm: Tensor, gate: LinearWeight, up: LinearWeight, down: LinearWeight, biases: [LinearKind: Tensor] = [:],
        postNorm: Tensor? = nil
    ) {
        self.norm = norm; self.gate = gate; self.up = up; self.down = down; self.biases = biases
        self.postNorm = postNorm
    }
    public subscript(kind: LinearKind) -> LinearWeight {
        get {
            switch kind {
            case .gate: gate
            case .up: up
            case .down: down
            default: preconditionFailure("\(kind) is not an MLP projection")
            }
        }
        set {
            switch kind {
            case .gate: gate = newValue
            case .up: up = newValue
            case .down: down = newValue
            default: preconditionFailure("\(kind) is not an MLP projection")
            }
        }
    }
    /// A deep copy.
    public func copy() -> MLPWeights {
        MLPWeights(
            norm: norm.copy(), gate: gate.copy(), up: up.copy(), down: down.copy(),
            biases: biases.mapValues { $0.copy() },
            postNorm: postNorm?.copy())
    }
}

/// One decoder layer; an absent sublayer is nil and not computed.
public struct DecoderLayer: Sendable {
    public var attention: AttentionWeights?
    public var mlp: MLPWeights?
    public init(attention: AttentionWeights?, mlp: MLPWeights?) { self.attention = attention; self.mlp = mlp }
}

/// A decoder of any registered family: embedding, layers, final norm, LM head (the embedding itself when tied),
/// shaped by its spec (`config`).
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
    public init(
        config: ModelConfig, embedTokens: LinearWeight, layers: [DecoderLayer], norm: Tensor, lmHead: LinearWeight?
    ) throws {
        self.config = config
        self.embedTokens = embedTokens
        self.layers = layers
        self.norm = norm
        untiedLMHead = lmHead
        try validate()
    }

    /// Checks every shape against the config.
    public func validate() throws {
        let specs = Dictionary(uniqueKeysWithValues: Self.weightSpecs(config).map { ($0.id, $0.shape) })
        guard layers.count == config.blocks.count else {
            throw ConfigError("\(layers.count) layers for a config of \(config.blocks.count)")
        }
        guard config.tieWordEmbeddings == (untiedLMHead == nil) else {
            throw ConfigError(
                config.tieWordEmbeddings ? "tied config with a separate LM head" : "untied config without an LM head")
        }
        for (l, (layer, b)) in zip(layers, config.blocks).enumerated() {
            guard (layer.attention != nil) == b.attention, (layer.mlp != nil) == b.mlp else {
                throw ConfigError("layer \(l): sublayers present do not match the config")
            }
        }
        let present = weightShapes
        for (id, shape) in present {
            guard let expected = specs[id] else {
                throw ConfigError("unexpected tensor '\(config.name(id))' for this config")
            }
            guard expected == shape else {
                throw ConfigError("tensor '\(config.name(id))': expected shape \(expected), found \(shape)",
                                  ErrorContext(tensor: config.name(id), expected: "\(expected)", found: "\(shape)"))
            }
        }
        if present.count != specs.count,
            let missing = specs.keys.sorted().first(where: { id in !present.contains { $0.0 == id } })
        {
            throw ConfigError("missing tensor '\(config.name(missing))' (expected shape \(specs[missing]!))",
                              ErrorContext(tensor: config.name(missing), expected: "\(specs[missing]!)"))
        }
    }

    private var weightShapes: [(WeightID, [Int])] {
        weights.map { ($0.id, $0.weight.shape) }
    }

    /// The weights a model of this spec holds, with their shapes, in canonical order: the only list of weights
    /// (checkpoints, imports, exports and `validate` all read it).
    public static func weightSpecs(_ c: ModelConfig) -> [(id: WeightID, shape: [Int])] {
        let C = c.hiddenSize, D = c.headDim
        var specs: [(WeightID, [Int])] = [(.embedTokens, [c.vocabSize, C])]
        for (l, b) in c.blocks.enumerated() {
            func lin(_ k: LinearKind, _ shape: [Int]) {
                let id = LinearID(layer: l, kind: k)
                specs.append((.linear(id), shape))
                if c.biases.contains(k) { specs.append((.bias(id), [shape[0]])) }
            }
            if b.attention {
                let H = b.numAttentionHeads, G = b.numKeyValueHeads
                specs.append((.norm(layer: l, .attentionIn), [C]))
                lin(.q, [H * D, C]); lin(.k, [G * D, C]); lin(.v, [G * D, C]); lin(.o, [C, H * D])
                if c.qkNorm { specs += [(.norm(layer: l, .q), [D]), (.norm(layer: l, .k), [D])] }
                if c.postNorms { specs.append((.norm(layer: l, .attentionOut), [C])) }
            }
            if b.mlp {
                let F = b.intermediateSize
                specs.append((.norm(layer: l, .mlpIn), [C]))
                lin(.gate, [F, C]); lin(.up, [F, C]); lin(.down, [C, F])
                if c.postNorms { specs.append((.norm(layer: l, .mlpOut), [C])) }
            }
        }
        specs.append((.finalNorm, [C]))
        if !c.tieWordEmbeddings { specs.append((.lmHead, [c.vocabSize, C])) }
        return specs.sorted { $0.0 < $1.0 }
    }

    /// `weightSpecs` under checkpoint names (`ModelConfig.name`: the family's Hugging Face names).
    public static func tensorSpecs(_ c: ModelConfig) -> [TensorSpec] {
        weightSpecs(c).map { TensorSpec(name: c.name($0.id), shape: $0.shape) }
    }

    /// Assembles a dense model from named float32 tensors (a file boundary); names and shapes must match
    /// `tensorSpecs(config)` exactly.
    public init(config: ModelConfig, tensors: [String: Tensor]) throws {
        try self.init(config: config, weights: tensors.mapValues { ModelWeight.dense($0) })
    }

    /// Assembles a model from weights under checkpoint names (`ModelConfig.name`); names and shapes must match
    /// `tensorSpecs(config)` exactly.
    public init(config: ModelConfig, weights named: [String: ModelWeight]) throws {
        var byID: [WeightID: ModelWeight] = [:]
        let ids = Dictionary(uniqueKeysWithValues: Self.weightSpecs(config).map { (config.name($0.id), $0.id) })
        for name in named.keys.sorted() {
            guard let id = ids[name] else {
                throw ConfigError("unexpected tensor '\(name)' for this config", ErrorContext(tensor: name))
            }
            byID[id] = named[name]
        }
        try self.init(config: config, weights: byID)
    }

    /// Assembles a model from typed weights of any representation; ids and shapes must match
    /// `weightSpecs(config)` exactly (norms and biases `.vector`, matrices `.matrix`).
    public init(config: ModelConfig, weights byID: [WeightID: ModelWeight]) throws {
        let specs = Self.weightSpecs(config)
        for s in specs {
            let name = config.name(s.id)
            guard let t = byID[s.id] else {
                throw ConfigError("missing tensor '\(name)' (expected shape \(s.shape))",
                                  ErrorContext(tensor: name, expected: "\(s.shape)"))
            }
            guard t.shape == s.shape else {
                throw ConfigError("tensor '\(name)': expected shape \(s.shape), found \(t.shape)",
                                  ErrorContext(tensor: name, expected: "\(s.shape)", found: "\(t.shape)"))
            }
            guard (s.shape.count == 1) == (t.vector != nil) else {
                throw ConfigError(
                    "tensor '\(name)': "
                        + "\(s.shape.count == 1 ? "a norm or bias must be a float32 vector" : "expected a matrix")")
            }
        }
        let expected = Set(specs.map(\.id))
        if let extra = byID.keys.sorted().first(where: { !expected.contains($0) }) {
            throw ConfigError("unexpected tensor '\(config.name(extra))' for this config")
        }
        func m(_ id: WeightID) -> LinearWeight { byID[id]!.matrix! }
        func v(_ id: WeightID) -> Tensor { byID[id]!.vector! }
        let layers = config.blocks.enumerated().map { l, b in
            func lin(_ k: LinearKind) -> LinearWeight { m(.linear(LinearID(layer: l, kind: k))) }
            func biases(_ kinds: [LinearKind]) -> [LinearKind: Tensor] {
                Dictionary(
                    uniqueKeysWithValues: kinds.filter(config.biases.contains).map {
                        ($0, v(.bias(LinearID(layer: l, kind: $0))))
                    })
            }
            return DecoderLayer(
                attention: b.attention
                    ? AttentionWeights(
                        norm: v(.norm(layer: l, .attentionIn)), q: lin(.q), k: lin(.k), v: lin(.v), o: lin(.o),
                        biases: biases([.q, .k, .v, .o]),
                        qNorm: config.qkNorm ? v(.norm(layer: l, .q)) : nil,
                        kNorm: config.qkNorm ? v(.norm(layer: l, .k)) : nil,
                        postNorm: config.postNorms ? v(.norm(layer: l, .attentionOut)) : nil) : nil,
                mlp: b.mlp
                    ? MLPWeights(
                        norm: v(.norm(layer: l, .mlpIn)), gate: lin(.gate), up: lin(.up), down: lin(.down),
                        biases: biases([.gate, .up, .down]),
                        postNorm: config.postNorms ? v(.norm(layer: l, .mlpOut)) : nil) : nil)
        }
        try self.init(config: config, embedTokens: m(.embedTokens), layers: layers, norm: v(.finalNorm),
                      lmHead: config.tieWordEmbeddings ? nil : m(.lmHead))
    }

    /// Every weight with its typed id, in canonical order (a tied LM head appears once, as the embedding).
    public var weights: [(id: WeightID, weight: ModelWeight)] {
        var out: [(WeightID, ModelWeight)] = [(.embedTokens, .matrix(embedTokens))]
        for (l, layer) in layers.enumerated() {
            func lin(_ k: LinearKind, _ w: LinearWeight, _ biases: [LinearKind: Tensor]) {
                let id = LinearID(layer: l, kind: k)
                out.append((.linear(id), .matrix(w)))
                if let b = biases[k] { out.append((.bias(id), .vector(b))) }
            }
            if let a = layer.attention {
                out.append((.norm(layer: l, .attentionIn), .vector(a.norm)))
                for k in [LinearKind.q, .k, .v, .o] { lin(k, a[k], a.biases) }
                if let qn = a.qNorm { out.append((.norm(layer: l, .q), .vector(qn))) }
                if let kn = a.kNorm { out.append((.norm(layer: l, .k), .vector(kn))) }
                if let pn = a.postNorm { out.append((.norm(layer: l, .attentionOut), .vector(pn))) }
            }
            if let m = layer.mlp {
                out.append((.norm(layer: l, .mlpIn), .vector(m.norm)))
                for k in [LinearKind.gate, .up, .down] { lin(k, m[k], m.biases) }
                if let pn = m.postNorm { out.append((.norm(layer: l, .mlpOut), .vector(pn))) }
            }
        }
        out.append((.finalNorm, .vector(norm)))
        if let h = untiedLMHead { out.append((.lmHead, .matrix(h))) }
        return out.sorted { $0.0 < $1.0 }
    }

    /// The model's weights as float32 tensors under their checkpoint names (`ModelConfig.name`), in canonical order:
    /// the tensor itself for dense weights, the values of sparse ones, the dequantized cache of quantized ones (never
    /// write into those) and D · S multiplied out for factorized ones.
    public var namedTensors: [(name: String, tensor: Tensor)] {
        weights.map { w in
            switch w.weight {
            case .vector(let t): (config.name(w.id), t)
            case .matrix(let m): (config.name(w.id), m.denseView ?? m.dequantized())
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
        return id.kind.isAttention ? l.attention?[id.kind] : l.mlp?[id.kind]
    }

    /// A model with weight `id` replaced (same shape, checked).
    public func replacing(_ id: WeightID, with w: LinearWeight) throws -> DecoderModel {
        var m = self
        switch id {
        case .embedTokens: m.embedTokens = w
        case .lmHead:
            guard untiedLMHead != nil else {
                throw ConfigError("the LM head is tied to the embedding; replace the embedding")
            }
            m.untiedLMHead = w
        case .linear(let lid):
            guard lid.layer >= 0 && lid.layer < layers.count else { throw ConfigError("no layer \(lid.layer)") }
            var layer = m.layers[lid.layer]
            if lid.kind.isAttention {
                guard var a = layer.attention else { throw ConfigError("\(lid): the layer has no attention") }
                a[lid.kind] = w
                layer.attention = a
            } else {
                guard var f = layer.mlp else { throw ConfigError("\(lid): the layer has no MLP") }
                f[lid.kind] = w
                layer.mlp = f
            }
            m.layers[lid.layer] = layer
        case .norm, .bias, .finalNorm:
            throw ConfigError("'\(config.name(id))' is a vector, not a linear weight")
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
        m.layers = layers.map { DecoderLayer(attention: $0.attention?.copy(), mlp: $0.mlp?.copy()) }
        return m
    }

    /// The packed codes of every quantized weight, in canonical order.
    public var quantizedWeights: [(id: WeightID, packed: QuantizedTensor)] {
        weights.compactMap { w in
            if case .matrix(.quantized(let q)) = w.weight { return (w.id, q.packed) }; return nil
        }
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

    /// A model with random weights (uniform, scaled by 1/sqrt(fan-in); norms scaling by about 1), for tests and
    /// benchmarks.
    public static func random(config: ModelConfig, seed: UInt64) -> DecoderModel {
        var rng = SplitMix64(seed: seed)
        var tensors: [WeightID: ModelWeight] = [:]
        for s in weightSpecs(config) {
            let t = Tensor(shape: s.shape)
            if case .bias = s.id {
                for i in 0..<t.count { t[i] = 0.1 * (2 * rng.nextFloat() - 1) }
            } else if s.shape.count == 1 {
                for i in 0..<t.count { t[i] = 1 - config.normKind.weightOffset + 0.1 * (2 * rng.nextFloat() - 1) }
            } else {
                t.fillUniform(scale: 1 / Float(s.shape[1]).squareRoot(), rng: &rng)
            }
            tensors[s.id] = .dense(t)
        }
        do { return try DecoderModel(config: config, weights: tensors) } catch {
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
    /// Names of `trainableTensors` (for optimizer state and parameter-group globs): the checkpoint name
    /// (`config.name`, the family's Hugging Face name; `id.hfName` without a config), or for a factorized weight
    /// the name with ".dense" / ".sparse" in place of ".weight" (none when its dense factor is stored quantized:
    /// frozen).
    public func parameterNames(_ id: WeightID, config: ModelConfig? = nil) -> [String] {
        let n = config?.name(id) ?? id.hfName
        if trainableTensors.isEmpty { return [] }
        if case .matrix(.factorized) = self {
            let stem = String(n.dropLast(".weight".count)); return [stem + ".dense", stem + ".sparse"]
        }
        return trainableTensors.isEmpty ? [] : [n]
    }
}
