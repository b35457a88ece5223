/// Llama (transformers `LlamaForCausalLM`, llama.cpp `llama`), and Nemotron-NAS heterogeneous layers (GGUF
/// `deci`, read into per-layer `block_configs`). RMSNorm before each sublayer, SwiGLU MLP, no biases, rotary on
/// q/k rows stored in llama.cpp's interleaved order in GGUF (convert_hf_to_gguf.py `LlamaModel.permute`).
public enum LlamaFamily: ModelFamily {
    public static let name = "llama"
    public static let hfModelTypes = ["llama"]
    public static let hfArchitecture = "LlamaForCausalLM"
    public static let ggufArchitectures = ["llama", "deci"]
    public static let ggufPermutesQK = true
    public static let defaultPreTokenizer = "gpt2"
    public static let perLayerExport = true

    public static func config(hf o: [String: JSONValue]) throws -> ModelConfig {
        // transformers' attention_bias (q, k, v, o) and mlp_bias exist but no released Llama sets them.
        for key in ["attention_bias", "mlp_bias"] where o[key]?.boolValue == true {
            throw ConfigError("config: \(key)=true is not supported for llama (expected false)")
        }
        return try ModelConfig(decoding: o, family: name)
    }
}
