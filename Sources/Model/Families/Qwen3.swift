/// Qwen3 (transformers `Qwen3ForCausalLM`, llama.cpp `qwen3`): Llama's block with RMSNorm of q and k over each
/// head's D channels (`q_norm`, `k_norm`, weights of shape D) after the projections and before rotary; biases on
/// q, k, v and o only when `attention_bias` is true (false in every released Qwen3); `head_dim` defaults to
/// 128 (Qwen3Config), not hidden / heads. GGUF keeps q/k rows unpermuted (NEOX rotary).
public enum Qwen3Family: ModelFamily {
    public static let name = "qwen3"
    public static let hfModelTypes = ["qwen3"]
    public static let hfArchitecture = "Qwen3ForCausalLM"
    public static let ggufArchitectures = ["qwen3"]
    public static let ggufPermutesQK = false
    public static let defaultPreTokenizer = "qwen2"
    public static let perLayerExport = false

    public static func config(hf o: [String: JSONValue]) throws -> ModelConfig {
        try QwenShared.checkFullAttention(o, family: name)
        var o = o
        if o["head_dim"] == nil || o["head_dim"] == .null { o["head_dim"] = .int(128) }
        let bias = try ModelFamilies.bool(o, "attention_bias") ?? false
        return try ModelConfig(decoding: o, family: name, biases: bias ? [.q, .k, .v, .o] : [], qkNorm: true,
                               familyKeys: ["layer_types", "attention_bias"])
    }

    public static func hfConfig(_ c: ModelConfig) -> [String: JSONValue] {
        var o = c.sharedHFKeys(modelType: hfModelTypes[0])
        o["attention_bias"] = .bool(c.biases.contains(.q))
        return o
    }
}
