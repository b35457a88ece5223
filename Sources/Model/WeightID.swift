/// Where a norm vector stands in a decoder layer (shape: C for the sublayer norms, D for the per-head q/k
/// norms).
///   attentionIn: before attention (Hugging Face `input_layernorm`)
///   mlpIn:       before the MLP (Hugging Face Llama's `post_attention_layernorm`)
///   q, k:        RMSNorm over each head's D channels of q and k, before rotary (Qwen3, Gemma 3 `q_norm` / `k_norm`)
///   attentionOut: on the attention's output before the residual add (Gemma 3 `post_attention_layernorm`)
///   mlpOut:      on the MLP's output before the residual add (Gemma 3 `post_feedforward_layernorm`)
public enum NormSite: String, CaseIterable, Codable, Sendable, Comparable {
    case attentionIn, mlpIn, q, k, attentionOut, mlpOut

    /// Attention-side norms belong to sublayer 2·layer, the MLP's to 2·layer + 1.
    public var isAttention: Bool { self != .mlpIn && self != .mlpOut }
    public static func < (a: NormSite, b: NormSite) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// Every weight of a decoder, typed: the embedding, each layer's norms, linear weights and their biases,
/// the final norm and an untied LM head. File names are made from these by the family
/// (`ModelFamily.hfName` / `ggufName`); `hfName` here is the checkpoint's and users' glob patterns' name.
public enum WeightID: Hashable, Sendable, Comparable, CustomStringConvertible {
    case embedTokens
    case norm(layer: Int, NormSite)
    case linear(LinearID)
    /// The bias (out) added to linear weight `id`'s output.
    case bias(LinearID)
    case finalNorm
    case lmHead

    /// The name our checkpoints store and parameter-group globs match: the Hugging Face name under the
    /// Llama-lineage module tree (`StandardNames`).
    public var hfName: String { StandardNames.hfName(self) }

    /// The inverse of `hfName`.
    public init?(hfName name: String) {
        guard let id = StandardNames.weightID(hfName: name) else { return nil }
        self = id
    }

    public var description: String { hfName }

    /// The decoder layer this weight belongs to (nil: embedding, final norm, LM head).
    public var layer: Int? {
        switch self {
        case .norm(let l, _): l
        case .linear(let id), .bias(let id): id.layer
        case .embedTokens, .finalNorm, .lmHead: nil
        }
    }

    /// Canonical order: embedding; per layer the attention's norm, projections with biases and q/k norms,
    /// then the MLP's norm and projections with biases; final norm; LM head.
    var order: (Int, Int, Int) {
        func kindIndex(_ k: LinearKind) -> Int { LinearKind.allCases.firstIndex(of: k)! }
        switch self {
        case .embedTokens: return (0, 0, 0)
        case .norm(let l, let site):
            switch site {
            case .attentionIn: return (1, l, 0)
            case .q: return (1, l, 20)
            case .k: return (1, l, 21)
            case .attentionOut: return (1, l, 22)
            case .mlpIn: return (1, l, 30)
            case .mlpOut: return (1, l, 50)
            }
        case .linear(let id): return (1, id.layer, (id.kind.isAttention ? 1 : 31) + 2 * kindIndex(id.kind))
        case .bias(let id): return (1, id.layer, (id.kind.isAttention ? 2 : 32) + 2 * kindIndex(id.kind))
        case .finalNorm: return (2, 0, 0)
        case .lmHead: return (3, 0, 0)
        }
    }
    public static func < (a: WeightID, b: WeightID) -> Bool { a.order < b.order }
}
