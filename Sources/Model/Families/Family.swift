/// A model family: everything that differs between Llama, Qwen2, Qwen3, ... lives in one file per family
/// (Families/<Name>.swift) plus one line in `ModelFamilies.all`. The decoder, the passes and the trainer read
/// only the architecture spec (`ModelConfig`: per-block heads, widths, which projections carry a bias, q/k
/// norm, norm kind, activation, tied head); a family translates that spec to and from its files:
///   - Hugging Face: `model_type` values, config.json in both directions, tensor names;
///   - GGUF: `general.architecture`, tensor names, whether q/k rows are stored in llama.cpp's rotary order;
///   - the tokenizer's pre-tokenizer when a file does not name one.
///
/// Adding a family (mlx-swift-lm's `Models/Qwen2.swift` + one `LLMModelFactory` line is the model): write
/// `config(hf:)` with the shared decoder `ModelConfig(decoding:family:...)` and the family's own keys, then add
/// the type to `ModelFamilies.all`. A feature no spec field expresses yet goes into the spec and the three
/// forwards (TransformerDecoder, its backward, ReferenceForward) once, as one `switch` or optional.
public protocol ModelFamily {
    /// Registry key, stored in `ModelConfig.family`.
    static var name: String { get }
    /// Hugging Face `model_type` values this family reads; the first is written.
    static var hfModelTypes: [String] { get }
    /// Hugging Face `architectures` entry written on export.
    static var hfArchitecture: String { get }
    /// GGUF `general.architecture` values this family reads; the first is written for homogeneous models.
    static var ggufArchitectures: [String] { get }
    /// Whether GGUF files of this family hold q/k rows permuted into llama.cpp's interleaved rotary order
    /// (convert_hf_to_gguf.py permutes for Llama; Qwen2/Qwen3 use NEOX rotary on unpermuted rows).
    static var ggufPermutesQK: Bool { get }
    /// The pre-tokenizer (GGUF `tokenizer.ggml.pre` spelling) of this family's tokenizers when a file names none.
    static var defaultPreTokenizer: String { get }
    /// Whether a server format holds this family's heterogeneous models (per-layer heads or widths, removed
    /// sublayers): Llama's DeciLM / GGUF `deci`. When false, such models are refused on export (and a recipe
    /// that would export one is refused when it is checked).
    static var perLayerExport: Bool { get }
    /// What GGUF files of this family add to every stored norm weight (llama.cpp's converter stores Gemma's
    /// 1 + w, and runs a plain RMSNorm): subtracted on import, added on export. 0 for the others.
    static var ggufNormShift: Float { get }

    /// The spec of a Hugging Face config.json object whose `model_type` is one of `hfModelTypes`.
    /// Errors: `ConfigError` naming the key, what was expected and what was found.
    static func config(hf: [String: JSONValue]) throws -> ModelConfig
    /// The config.json object of a spec (the shared keys, `model_type`, and the family's own keys).
    static func hfConfig(_ c: ModelConfig) -> [String: JSONValue]
    /// Hugging Face tensor name of a weight.
    static func hfName(_ id: WeightID) -> String
    /// GGUF tensor name of a weight.
    static func ggufName(_ id: WeightID) -> String
}

extension ModelFamily {
    public static var ggufNormShift: Float { 0 }
    public static func hfName(_ id: WeightID) -> String { StandardNames.hfName(id) }
    public static func ggufName(_ id: WeightID) -> String { StandardNames.ggufName(id) }
    public static func hfConfig(_ c: ModelConfig) -> [String: JSONValue] { c.sharedHFKeys(modelType: hfModelTypes[0]) }
}

/// The registry: every family the workbench knows. Adding a family is one line here.
public enum ModelFamilies {
    public static let all: [any ModelFamily.Type] = [
        LlamaFamily.self, Qwen2Family.self, Qwen3Family.self, Gemma3Family.self
    ]

    /// The family registered under `name` (`ModelConfig.family`).
    public static func named(_ name: String) -> (any ModelFamily.Type)? { all.first { $0.name == name } }
    /// The family reading Hugging Face `model_type`.
    public static func forHFModelType(_ t: String) -> (any ModelFamily.Type)? {
        all.first { $0.hfModelTypes.contains(t) }
    }
    /// The family reading GGUF `general.architecture`.
    public static func forGGUFArchitecture(_ a: String) -> (any ModelFamily.Type)? {
        all.first { $0.ggufArchitectures.contains(a) }
    }
    public static var hfModelTypes: [String] { all.flatMap { $0.hfModelTypes } }

    /// A family's optional true/false config key: nil when absent or null; `ConfigError` naming it otherwise.
    static func bool(_ o: [String: JSONValue], _ key: String) throws -> Bool? {
        guard let v = o[key], v != .null else { return nil }
        guard let b = v.boolValue else {
            throw ConfigError("config: key '\(key)' must be true or false, found \(v.text)")
        }
        return b
    }
    public static var ggufArchitectures: [String] { all.flatMap { $0.ggufArchitectures } }
}

/// Tensor names of the Llama-lineage module tree (transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM`,
/// `Qwen3ForCausalLM`; llama.cpp's `llama`, `qwen2`, `qwen3` tensor names), which these families share.
/// A family whose names differ overrides `hfName` / `ggufName` in its own file.
public enum StandardNames {
    /// The Hugging Face module of a projection inside a layer ("self_attn.q_proj", "mlp.down_proj", ...).
    public static func hfModule(_ k: LinearKind) -> String {
        switch k {
        case .q: "self_attn.q_proj"
        case .k: "self_attn.k_proj"
        case .v: "self_attn.v_proj"
        case .o: "self_attn.o_proj"
        case .gate: "mlp.gate_proj"
        case .up: "mlp.up_proj"
        case .down: "mlp.down_proj"
        }
    }
    static func hfNorm(_ s: NormSite) -> String {
        switch s {
        case .attentionIn: "input_layernorm"
        case .mlpIn: "post_attention_layernorm"
        case .q: "self_attn.q_norm"
        case .k: "self_attn.k_norm"
        // No Llama-lineage model has post-sublayer norms; these names are the Gemma family's own spelling
        // only where it does not collide with Llama's (Gemma3Family overrides all four sublayer norm names).
        case .attentionOut: "post_self_attn_layernorm"
        case .mlpOut: "post_feedforward_layernorm"
        }
    }
    static func ggufModule(_ k: LinearKind) -> String {
        switch k {
        case .q: "attn_q"
        case .k: "attn_k"
        case .v: "attn_v"
        case .o: "attn_output"
        case .gate: "ffn_gate"
        case .up: "ffn_up"
        case .down: "ffn_down"
        }
    }
    static func ggufNorm(_ s: NormSite) -> String {
        switch s {
        case .attentionIn: "attn_norm"
        case .mlpIn: "ffn_norm"
        case .q: "attn_q_norm"
        case .k: "attn_k_norm"
        case .attentionOut: "post_attention_norm"
        case .mlpOut: "post_ffw_norm"
        }
    }

    public static func hfName(_ id: WeightID) -> String {
        switch id {
        case .embedTokens: "model.embed_tokens.weight"
        case .norm(let l, let s): "model.layers.\(l).\(hfNorm(s)).weight"
        case .linear(let id): "model.layers.\(id.layer).\(hfModule(id.kind)).weight"
        case .bias(let id): "model.layers.\(id.layer).\(hfModule(id.kind)).bias"
        case .finalNorm: "model.norm.weight"
        case .lmHead: "lm_head.weight"
        }
    }

    public static func ggufName(_ id: WeightID) -> String {
        switch id {
        case .embedTokens: "token_embd.weight"
        case .norm(let l, let s): "blk.\(l).\(ggufNorm(s)).weight"
        case .linear(let id): "blk.\(id.layer).\(ggufModule(id.kind)).weight"
        case .bias(let id): "blk.\(id.layer).\(ggufModule(id.kind)).bias"
        case .finalNorm: "output_norm.weight"
        case .lmHead: "output.weight"
        }
    }

    /// The inverse of `hfName` (nil for a name no weight has).
    public static func weightID(hfName name: String) -> WeightID? {
        switch name {
        case "model.embed_tokens.weight": return .embedTokens
        case "model.norm.weight": return .finalNorm
        case "lm_head.weight": return .lmHead
        default: break
        }
        let parts = name.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let l = Int(parts[2]), l >= 0,
            String(l) == parts[2]
        else { return nil }
        let rest = parts[3]
        if let s = NormSite.allCases.first(where: { hfNorm($0) + ".weight" == rest }) { return .norm(layer: l, s) }
        for k in LinearKind.allCases {
            if rest == hfModule(k) + ".weight" { return .linear(LinearID(layer: l, kind: k)) }
            if rest == hfModule(k) + ".bias" { return .bias(LinearID(layer: l, kind: k)) }
        }
        return nil
    }
}
