import TensorCore

/// A tensor the model expects: its Hugging Face name and shape.
public struct TensorSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
}

/// Weights of one attention sublayer (its pre-norm included). Shapes: norm (C), q (H·D, C), k and v (G·D, C),
/// o (C, H·D).
public struct AttentionWeights: Sendable {
    public var norm, q, k, v, o: Tensor
}

/// Weights of one MLP sublayer (its pre-norm included). Shapes: norm (C), gate and up (F, C), down (C, F).
public struct MLPWeights: Sendable {
    public var norm, gate, up, down: Tensor
}

/// One decoder layer; an absent sublayer is nil and not computed.
public struct LlamaLayer: Sendable {
    public var attention: AttentionWeights?
    public var mlp: MLPWeights?
}

/// A Llama decoder: embedding, layers, final norm, LM head (the embedding itself when tied).
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let embedTokens: Tensor
    public let layers: [LlamaLayer]
    public let norm: Tensor
    public let lmHead: Tensor

    /// The tensors a checkpoint of this config must hold, in canonical order.
    public static func tensorSpecs(_ c: LlamaConfig) -> [TensorSpec] {
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

    /// Assembles a model from named tensors; names and shapes must match `tensorSpecs(config)` exactly.
    public init(config: LlamaConfig, tensors: [String: Tensor]) throws {
        let specs = Self.tensorSpecs(config)
        for s in specs {
            guard let t = tensors[s.name] else { throw ConfigError("missing tensor '\(s.name)' (expected shape \(s.shape))") }
            guard t.shape == s.shape else { throw ConfigError("tensor '\(s.name)': expected shape \(s.shape), found \(t.shape)") }
        }
        let expected = Set(specs.map(\.name))
        if let extra = tensors.keys.sorted().first(where: { !expected.contains($0) }) {
            throw ConfigError("unexpected tensor '\(extra)' for this config")
        }
        func w(_ name: String) throws -> Tensor {
            guard let t = tensors[name] else { throw ConfigError("missing tensor '\(name)'") }
            return t
        }
        self.config = config
        embedTokens = try w("model.embed_tokens.weight")
        norm = try w("model.norm.weight")
        lmHead = config.tieWordEmbeddings ? embedTokens : try w("lm_head.weight")
        layers = try config.blocks.enumerated().map { i, b in
            let p = "model.layers.\(i)."
            return LlamaLayer(
                attention: b.attention ? AttentionWeights(
                    norm: try w(p + "input_layernorm.weight"), q: try w(p + "self_attn.q_proj.weight"),
                    k: try w(p + "self_attn.k_proj.weight"), v: try w(p + "self_attn.v_proj.weight"),
                    o: try w(p + "self_attn.o_proj.weight")) : nil,
                mlp: b.mlp ? MLPWeights(
                    norm: try w(p + "post_attention_layernorm.weight"), gate: try w(p + "mlp.gate_proj.weight"),
                    up: try w(p + "mlp.up_proj.weight"), down: try w(p + "mlp.down_proj.weight")) : nil)
        }
    }

    /// The model's tensors under their Hugging Face names, in canonical order.
    public var namedTensors: [(name: String, tensor: Tensor)] {
        var out: [(String, Tensor)] = [("model.embed_tokens.weight", embedTokens)]
        for (i, l) in layers.enumerated() {
            let p = "model.layers.\(i)."
            if let a = l.attention {
                out += [(p + "input_layernorm.weight", a.norm), (p + "self_attn.q_proj.weight", a.q),
                        (p + "self_attn.k_proj.weight", a.k), (p + "self_attn.v_proj.weight", a.v), (p + "self_attn.o_proj.weight", a.o)]
            }
            if let m = l.mlp {
                out += [(p + "post_attention_layernorm.weight", m.norm), (p + "mlp.gate_proj.weight", m.gate),
                        (p + "mlp.up_proj.weight", m.up), (p + "mlp.down_proj.weight", m.down)]
            }
        }
        out.append(("model.norm.weight", norm))
        if !config.tieWordEmbeddings { out.append(("lm_head.weight", lmHead)) }
        return out
    }

    /// Number of parameters (a tied LM head counted once).
    public var parameterCount: Int { namedTensors.reduce(0) { $0 + $1.tensor.count } }

    /// A copy of the model without the given decoder layers (the rest renumbered in order). The tensors are
    /// copied, so training the result leaves this model untouched.
    public func removingLayers(_ drop: Set<Int>) throws -> LlamaModel {
        if let bad = drop.first(where: { !(0..<layers.count).contains($0) }) {
            throw ConfigError("layer \(bad) outside 0..<\(layers.count)")
        }
        guard drop.count < layers.count else { throw ConfigError("cannot remove all \(layers.count) layers") }
        return try removingSublayers(Set(drop.flatMap { [2 * $0, 2 * $0 + 1] }))
    }

    /// A model with random weights (uniform, scaled by 1/sqrt(fan-in); norms at 1), for tests and benchmarks.
    public static func random(config: LlamaConfig, seed: UInt64) -> LlamaModel {
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
        do { return try LlamaModel(config: config, tensors: tensors) } catch {
            preconditionFailure("random model does not match its own specs: \(error)")
        }
    }
}
