import Model

/// The config.json keys the importer accepts without interpreting them: every key the model decoding
/// (`ModelConfig`, the family) leaves in `extra` must be one of these, else the import is refused naming the
/// file and key. A key that could change the model's math is either checked (its one harmless value, or where
/// it is already checked) or not listed.
enum HFConfigKeys {
    /// Keys with no effect on the forward pass, whatever their value.
    static let metadata: Set<String> = [
        "architectures",  // checked against the family when the model is built
        "transformers_version", "torch_dtype", "dtype", "_name_or_path", "use_cache", "initializer_range",
        "pad_token_id", "cache_implementation",  // storage, provenance, training init, generation settings
        // transformers ≥ 4.3x computes the same products whatever the tensor-parallel degree of pre-training.
        "pretraining_tp",
        // Checked where the config is decoded (ModelConfig, the families): hidden_act must be the family's
        // activation, rope_scaling null, attention_bias / mlp_bias as the family implements them,
        // use_sliding_window false; quantization_config is read by `packQuantizedFormats`.
        "hidden_act", "rope_scaling", "attention_bias", "mlp_bias", "use_sliding_window", "quantization_config",
    ]

    /// Keys accepted only with the value that changes nothing: dropout is not applied (we implement none), and
    /// `rope_interleaved` (nanotron's name, in SmolLM2's config.json) true would pair rotary channels differently.
    static let noOpValues: [String: JSONValue] = [
        "attention_dropout": .int(0), "hidden_dropout": .int(0), "resid_pdrop": .int(0), "embd_pdrop": .int(0),
        "attn_pdrop": .int(0), "rope_interleaved": .bool(false), "is_llama_config": .bool(true),
    ]

    /// Keys of sliding-window attention, read by nobody when `use_sliding_window` is false (Qwen2's configs
    /// carry them so).
    static let slidingWindowKeys: Set<String> = ["sliding_window", "max_window_layers"]

    /// Refuses the first key of `extra` (sorted) the importer neither reads nor knows to be harmless.
    static func check(_ extra: [String: JSONValue], path: String) throws {
        let slidingOff = extra["use_sliding_window"] == .bool(false)
        for key in extra.keys.sorted() {
            let value = extra[key]!
            if metadata.contains(key) || (slidingOff && slidingWindowKeys.contains(key)) { continue }
            if let harmless = noOpValues[key] {
                guard value == harmless || value == .null || (harmless == .int(0) && value.doubleValue == 0) else {
                    throw ImportError(
                        "\(path): '\(key)' is \(value.text.prefix(80)) (supported: \(harmless.text), which changes "
                            + "nothing here)")
                }
                continue
            }
            throw ImportError(
                "\(path): unknown key '\(key)' = \(value.text.prefix(80)) (not read by this importer; a setting it "
                    + "does not know could change the model, so it is refused; accepted without reading: "
                    + "\(metadata.union(noOpValues.keys).sorted().joined(separator: ", ")))")
        }
    }
}
