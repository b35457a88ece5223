/// Qwen2 / Qwen2.5 (transformers `Qwen2ForCausalLM`, llama.cpp `qwen2`): Llama's block with a bias on the q, k
/// and v projections (Qwen2Attention: `bias=True` on q/k/v, none on o). GGUF keeps q/k rows unpermuted (llama.cpp
/// runs NEOX rotary for qwen2). Sliding-window attention (`use_sliding_window`) is refused: no released Qwen2
/// config enables it. Tokenizer: byte-level BPE with the `qwen2` pre-tokenizer.
public enum Qwen2Family: ModelFamily {
    public static let name = "qwen2"
    public static let hfModelTypes = ["qwen2"]
    public static let hfArchitecture = "Qwen2ForCausalLM"
    public static let ggufArchitectures = ["qwen2"]
    public static let ggufPermutesQK = false
    public static let defaultPreTokenizer = "qwen2"
    public static let perLayerExport = false

    public static func config(hf o: [String: JSONValue]) throws -> ModelConfig {
        try QwenShared.checkFullAttention(o, family: name)
        return try ModelConfig(decoding: o, family: name, biases: [.q, .k, .v], familyKeys: ["layer_types"])
    }
}

/// What Qwen2 and Qwen3 configs share: full attention in every layer.
enum QwenShared {
    /// Refuses `use_sliding_window: true` and any `layer_types` entry other than "full_attention".
    static func checkFullAttention(_ o: [String: JSONValue], family: String) throws {
        if o["use_sliding_window"]?.boolValue == true {
            throw ConfigError("config: use_sliding_window=true is not supported for \(family) (expected false)")
        }
        if let lt = o["layer_types"], lt != .null {
            guard let list = lt.arrayValue, list.allSatisfy({ $0.stringValue == "full_attention" }) else {
                throw ConfigError(
                    "config: layer_types \(lt.text) is not supported for \(family) (expected only \"full_attention\")")
            }
        }
    }
}
