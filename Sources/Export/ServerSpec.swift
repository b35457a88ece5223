import Foundation
import Model

/// What a server computes from an exported file, compared with the spec we computed with. transformers and llama.cpp
/// derive some of the forward from other settings instead of reading it (Gemma's embedding scale √hidden_size from
/// hidden_size; llama.cpp's Gemma 3 attention scale from key_length), so a model a pass changed (width pruning
/// changes hidden_size but keeps the scale the model was trained with) can be written without error and still be
/// computed differently. These checks refuse such exports, naming the setting.
enum ServerSpec {
    /// The spec the family reads back from the config.json it writes (as transformers reads it), compared field by
    /// field wherever the forward depends on it. Empty when config.json reproduces the model.
    static func configDrift(_ c: ModelConfig) -> [String] {
        let family = c.familyType
        let back: ModelConfig
        do { back = try family.config(hf: family.hfConfig(c)) } catch {
            return ["\(family.name)'s config.json of this model does not read back (\(error))"]
        }
        var out: [String] = []
        func differs<T: Equatable>(_ what: String, _ ours: T, _ file: T, _ why: String = "") {
            if ours != file { out.append("\(what) \(ours), but a reader of the file computes \(file)\(why)") }
        }
        differs(
            "embedding scale", Float(c.embeddingScale), Float(back.embeddingScale),
            back.embeddingScale == 1
                ? ""
                : " (√hidden_size, hidden_size \(c.hiddenSize): width pruning changed hidden_size but kept the "
                    + "original scale)")
        differs("attention scale", attentionScale(c), attentionScale(back))
        differs("norm kind", c.normKind.rawValue, back.normKind.rawValue)
        differs("activation", c.activation.rawValue, back.activation.rawValue)
        differs("post-sublayer norms", c.postNorms, back.postNorms)
        differs("q/k norms", c.qkNorm, back.qkNorm)
        differs("biases on", c.biases.map(\.rawValue).sorted(), back.biases.map(\.rawValue).sorted())
        differs("RMSNorm eps", Float(c.rmsNormEps), Float(back.rmsNormEps))
        differs("tied head", c.tieWordEmbeddings, back.tieWordEmbeddings)
        differs("layer types", c.blocks.map(\.layerType.rawValue), back.blocks.map(\.layerType.rawValue))
        if c.blocks.contains(where: { $0.layerType == .sliding }) {
            differs("sliding window", c.slidingWindow, back.slidingWindow)
        }
        differs("rotary bases", (0..<c.numHiddenLayers).map { Float(c.ropeTheta(layer: $0)) },
                (0..<back.numHiddenLayers).map { Float(back.ropeTheta(layer: $0)) })
        return out
    }

    /// The attention score multiplier the kernels use (nil in the spec is 1/√head_dim).
    static func attentionScale(_ c: ModelConfig) -> Float { c.attentionScaleValue ?? 1 / Float(c.headDim).squareRoot() }

    /// llama.cpp's Gemma 3 attention scale (llama_model_gemma3::load_arch_hparams): 1/√key_length, except 1/√(hidden /
    /// heads) for a 62-layer model (the 27B), in float32; with the rule as a phrase.
    static func llamaCppGemma3Scale(_ c: ModelConfig) -> (scale: Float, rule: String) {
        if c.numHiddenLayers == 62 {
            let d = c.hiddenSize / c.numAttentionHeads
            return (
                1 / Float(d).squareRoot(),
                "1/√(hidden_size / num_attention_heads) = 1/√\(d), its rule for 62-layer models (the 27B)"
            )
        }
        return (1 / Float(c.headDim).squareRoot(), "1/√key_length = 1/√\(c.headDim) (head_dim)")
    }

    /// Why llama.cpp's `gemma3` graph would compute another model than this spec, beyond what config.json says:
    /// the attention scale it derives (query_pre_attn_scalar has no GGUF key) and biases (the graph has no output
    /// bias; no released Gemma 3 has any).
    static func gemma3GGUFProblems(_ c: ModelConfig) -> [String] {
        var out: [String] = []
        let (scale, rule) = llamaCppGemma3Scale(c)
        let ours = attentionScale(c)
        if abs(ours - scale) > 1e-6 * scale {
            let scalar = c.attentionScale.map { 1 / ($0 * $0) } ?? Double(c.headDim)
            out.append(
                "attention scale: llama.cpp's gemma3 scales attention scores by \(rule), but this model's "
                    + "query_pre_attn_scalar "
                       + "is \(String(format: "%.6g", scalar)) (scale \(ours), not \(scale)), and no GGUF key "
                       + "holds it; export --format hf instead (Gemma3ForCausalLM reads query_pre_attn_scalar)")
        }
        if !c.biases.isEmpty {
            out.append(
                "biases on \(c.biases.map(\.rawValue).sorted().joined(separator: ", ")) (attention_bias): llama.cpp's "
                    + "gemma3 graph has no output-projection bias")
        }
        return out
    }
}
