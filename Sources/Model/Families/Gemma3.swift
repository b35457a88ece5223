import Foundation

/// Gemma 3 text decoders (transformers `Gemma3ForCausalLM`, config `gemma3_text`; llama.cpp `gemma3`).
/// Source: Gemma Team, "Gemma 3 Technical Report" (2025), §2; transformers 5.25 modeling_gemma3.py; llama.cpp
/// src/models/gemma3.cpp. What differs from Llama, each a spec field the shared decoder implements:
///   - embedding × √hidden_size (`embeddingScale`; transformers rounds the scale to float32);
///   - RMSNorm x / rms(x) ⊙ (1 + w) everywhere (`normKind = .rmsUnitOffset`), eps 1e-6;
///   - four norms per block: before and after attention, before and after the MLP (`postNorms`):
///       x += postnorm_att(attn(norm_att(x)));  x += postnorm_mlp(mlp(norm_mlp(x)));
///   - per-head RMSNorm of q and k (`qkNorm`) before rotary;
///   - attention scores × query_pre_attn_scalar^(−1/2) (`attentionScale`);
///   - sliding-window attention (`sliding_window` keys, itself included) on the layers `layer_types` marks
///     "sliding_attention" (5 of every 6), with their own rotary base (`rope_parameters.sliding_attention`,
///     10,000) while full layers use `rope_parameters.full_attention` (1,000,000);
///   - GeGLU MLP with GELU's tanh form (`hidden_activation: gelu_pytorch_tanh`);
///   - tied LM head (a separate one is accepted).
/// Refused, naming the key: logit soft-capping (`attn_logit_softcapping`, `final_logit_softcapping`; null in
/// Gemma 3), bidirectional attention, rope scaling (the 4B+ models' linear factor 8), another activation.
///
/// Names: Hugging Face calls the post-attention norm `post_attention_layernorm` (Llama's pre-MLP norm name) and
/// the pre-MLP norm `pre_feedforward_layernorm`; GGUF uses `post_attention_norm`, `ffn_norm`, `post_ffw_norm`.
/// llama.cpp's converter stores every norm weight as 1 + w (plain RMSNorm at run time): `ggufNormShift` = 1.
/// GGUF keeps q/k rows unpermuted (NEOX rotary). llama.cpp scales scores by 1/√head_dim (1/√(hidden/heads) for
/// the 27B), so only configs where query_pre_attn_scalar is that value export to GGUF.
public enum Gemma3Family: ModelFamily {
    public static let name = "gemma3"
    public static let hfModelTypes = ["gemma3_text"]
    public static let hfArchitecture = "Gemma3ForCausalLM"
    public static let ggufArchitectures = ["gemma3"]
    public static let ggufPermutesQK = false
    public static let defaultPreTokenizer = "default"
    public static let perLayerExport = false
    public static let ggufNormShift: Float = 1

    /// The keys this family reads itself (kept out of `extra`).
    static let ownKeys: Set<String> = [
        "hidden_activation", "layer_types", "sliding_window", "sliding_window_pattern", "_sliding_window_pattern",
        "query_pre_attn_scalar", "rope_parameters", "rope_local_base_freq", "attn_logit_softcapping",
        "final_logit_softcapping", "attention_bias", "use_bidirectional_attention", "rope_scaling",
    ]

    public static func config(hf o: [String: JSONValue]) throws -> ModelConfig {
        var o = o
        // The activation: `hidden_activation` (Gemma's key), or `hidden_act` as older configs and our GGUF reader
        // write it.
        for key in ["hidden_activation", "hidden_act"] {
            if let v = o[key], v != .null, v.stringValue != GatedActivation.geluTanh.rawValue {
                throw ConfigError(
                    "config: \(key) \(v.text) is not supported for \(name) (supported: \"gelu_pytorch_tanh\")")
            }
        }
        o["hidden_act"] = nil
        for key in ["attn_logit_softcapping", "final_logit_softcapping", "rope_scaling"] {
            if let v = o[key], v != .null {
                throw ConfigError("config: \(key) \(v.text) is not supported for \(name) (expected null)")
            }
        }
        if let v = o["use_bidirectional_attention"], v != .null, v.boolValue != false {
            throw ConfigError(
                "config: use_bidirectional_attention \(v.text) is not supported for \(name) (expected false)")
        }
        let bias = try ModelFamilies.bool(o, "attention_bias") ?? false
        let (full, sliding) = try ropeThetas(o)
        o["rope_parameters"] = nil
        o["rope_theta"] = .double(full)
        if o["head_dim"] == nil || o["head_dim"] == .null { o["head_dim"] = .int(256) }  // Gemma3TextConfig's default

        var c = try ModelConfig(decoding: o, family: name, biases: bias ? [.q, .k, .v, .o] : [], qkNorm: true,
                                activation: .geluTanh, familyKeys: ownKeys)
        c.normKind = .rmsUnitOffset
        c.postNorms = true
        c.embeddingScale = Double(Float(Double(c.hiddenSize).squareRoot()))
        c.slidingRopeTheta = sliding

        let scalar: Double
        if let v = o["query_pre_attn_scalar"], v != .null {
            guard let x = v.doubleValue, x > 0, x.isFinite else {
                throw ConfigError("config: query_pre_attn_scalar is \(v.text) (expected a positive number)")
            }
            scalar = x
        } else {
            scalar = 256  // Gemma3TextConfig's default
        }
        c.attentionScale = 1 / scalar.squareRoot()

        let types = try layerTypes(o, numHiddenLayers: c.numHiddenLayers)
        for (l, t) in types.enumerated() { c.blocks[l].layerType = t }
        // The window is checked whether or not a layer slides (it is written back either way).
        if let v = o["sliding_window"], v != .null {
            guard let w = v.intValue, (1...(1 << 24)).contains(w) else {
                throw ConfigError("config: sliding_window is \(v.text) (expected an integer in 1...\(1 << 24))")
            }
            c.slidingWindow = w
        } else if types.contains(.sliding) {
            throw ConfigError("config: missing key 'sliding_window' (layer_types has sliding_attention layers)")
        }
        return c
    }

    /// Rotary bases (full, sliding): transformers 5's rope_parameters per layer type, or the older rope_theta /
    /// rope_local_base_freq; 1e6 and 1e4 when absent.
    private static func ropeThetas(_ o: [String: JSONValue]) throws -> (full: Double, sliding: Double) {
        var full = 1_000_000.0, sliding = 10_000.0
        let range = ModelConfig.numberRanges["rope_theta"]!
        func theta(_ v: JSONValue, _ key: String) throws -> Double {
            guard let t = v.doubleValue, range.contains(t) else {
                throw ConfigError(
                    "config: \(key) is \(v.text) (expected a number in \(range.lowerBound)...\(range.upperBound))")
            }
            return t
        }
        if let v = o["rope_theta"], v != .null { full = try theta(v, "rope_theta") }
        if let v = o["rope_local_base_freq"], v != .null { sliding = try theta(v, "rope_local_base_freq") }
        if let rp = o["rope_parameters"], rp != .null {
            guard let p = rp.objectValue else {
                throw ConfigError("config: rope_parameters must be an object, found \(rp.text)")
            }
            for (type, entry) in p.sorted(by: { $0.key < $1.key }) {
                guard let t = AttentionLayerType(rawValue: type) else {
                    throw ConfigError(
                        "config: rope_parameters has key '\(type)' (expected full_attention, sliding_attention)")
                }
                guard let e = entry.objectValue else {
                    throw ConfigError("config: rope_parameters.\(type) must be an object, found \(entry.text)")
                }
                if let rt = e["rope_type"], rt != .string("default") {
                    throw ConfigError(
                        "config: rope_parameters.\(type).rope_type \(rt.text) is not supported (supported: \"default\")"
                    )
                }
                if let unknown = e.keys.sorted().first(where: { !["rope_type", "rope_theta"].contains($0) }) {
                    throw ConfigError(
                        "config: rope_parameters.\(type) has key '\(unknown)' (supported: rope_type, rope_theta)")
                }
                if let v = e["rope_theta"] {
                    let x = try theta(v, "rope_parameters.\(type).rope_theta")
                    if t == .full { full = x } else { sliding = x }
                }
            }
        }
        return (full, sliding)
    }

    /// Layer types: `layer_types`, else the pattern (every n-th layer full, as Gemma3TextConfig derives it).
    private static func layerTypes(_ o: [String: JSONValue], numHiddenLayers: Int) throws -> [AttentionLayerType] {
        let types: [AttentionLayerType]
        if let lt = o["layer_types"], lt != .null {
            guard let list = lt.arrayValue, list.count == numHiddenLayers else {
                throw ConfigError(
                    "config: layer_types must be an array of num_hidden_layers=\(numHiddenLayers) strings, found "
                        + "\(lt.text)")
            }
            types = try list.enumerated().map { i, v in
                guard let s = v.stringValue, let t = AttentionLayerType(rawValue: s) else {
                    throw ConfigError(
                        "config: layer_types[\(i)] is \(v.text) (expected \"full_attention\" or \"sliding_attention\")")
                }
                return t
            }
        } else {
            let key = o["sliding_window_pattern"] != nil ? "sliding_window_pattern" : "_sliding_window_pattern"
            var pattern = 6
            if let v = o[key], v != .null {
                guard let n = v.intValue, n >= 1 else {
                    throw ConfigError("config: \(key) is \(v.text) (expected a positive integer)")
                }
                pattern = n
            }
            types = (0..<numHiddenLayers).map { ($0 + 1) % pattern == 0 ? .full : .sliding }
        }
        return types
    }

    public static func hfConfig(_ c: ModelConfig) -> [String: JSONValue] {
        var o = c.sharedHFKeys(modelType: hfModelTypes[0])
        o["rope_theta"] = nil
        o["rope_parameters"] = .object([
            AttentionLayerType.full.rawValue: .object([
                "rope_type": .string("default"), "rope_theta": .double(c.ropeTheta)
            ]),
            AttentionLayerType.sliding.rawValue: .object([
                "rope_type": .string("default"),
                "rope_theta": .double(c.slidingRopeTheta ?? c.ropeTheta)
            ]),
        ])
        o["layer_types"] = .array(c.blocks.map { .string($0.layerType.rawValue) })
        o["sliding_window"] = c.slidingWindow.map { .int($0) } ?? .null
        let scale = c.attentionScale ?? 1 / Double(c.headDim).squareRoot()
        // 1 / scale² of a scale read as 1/√24 is 23.999999999999993: an integer within rounding is written as one
        // (reading it back gives the same scale).
        let scalar = 1 / (scale * scale), whole = scalar.rounded()
        o["query_pre_attn_scalar"] = abs(scalar - whole) <= 1e-9 * whole ? .int(Int(whole)) : .double(scalar)
        o["hidden_activation"] = .string(c.activation.rawValue)
        o["attention_bias"] = .bool(c.biases.contains(.q))
        o["attn_logit_softcapping"] = .null
        o["final_logit_softcapping"] = .null
        o["use_bidirectional_attention"] = .bool(false)
        return o
    }

    public static func hfName(_ id: WeightID) -> String {
        guard case .norm(let l, let site) = id else { return StandardNames.hfName(id) }
        switch site {
        case .attentionIn: return "model.layers.\(l).input_layernorm.weight"
        case .attentionOut: return "model.layers.\(l).post_attention_layernorm.weight"
        case .mlpIn: return "model.layers.\(l).pre_feedforward_layernorm.weight"
        case .mlpOut: return "model.layers.\(l).post_feedforward_layernorm.weight"
        case .q, .k: return StandardNames.hfName(id)
        }
    }
}
