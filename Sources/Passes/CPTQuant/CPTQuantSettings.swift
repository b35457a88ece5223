// CPTQuant's recipe settings: decoded strictly, in pieces (formats, targets, estimators, GPTQ and the search, the
// checks across keys); the keys and their meaning are in CPTQuant.swift's header and on the properties.

import Diagnostics
import Model
import Quantization
import Recipes
import TensorCore

extension CPTQuantPass {
    /// Reads every setting of the stage; unknown keys are refused by the caller (`StrictObject.finish`).
    /// Throws `RecipeError` naming the key, in the order the keys are read here.
    mutating func decode(_ s: StrictObject) throws {
        estimator = try s.choice("estimator", default: estimator)
        allocation = try s.choice("allocation", default: allocation)
        granularity = try s.choice("granularity", default: granularity)
        method = try s.choice("method", default: method)
        bitsPerWeight = try s.optionalDouble("bits_per_weight", in: 1...32)
        budgetBytes = try s.optionalInt("bytes", in: 1...Int.max)
        symmetric = try s.bool("symmetric", default: symmetric)
        try decodeFormats(s)
        try decodeTargets(s)
        try decodeEstimators(s)
        try decodeQuantizer(s)
        try checkAcrossKeys(s)
    }

    /// `formats`, or `group_size` and `widths` (the ladder at one group size and symmetry).
    private mutating func decodeFormats(_ s: StrictObject) throws {
        if let a = try s.array("formats") {
            guard !s.has("widths") else {
                throw RecipeError("\(s.location): give 'widths' (with 'symmetric' and 'group_size') or 'formats', "
                    + "not both")
            }
            let named = try a.map { v -> QuantFormat in
                guard let name = v.stringValue else {
                    throw s.fail("formats", "expected format names such as \"q4_g32_sym\", "
                        + "found \(v.text)")
                }
                do { return try QuantFormat(name: name) } catch {
                    var c = s.context
                    c.key = s.keyPath("formats")
                    throw error.adding(c, place: "\(s.location): 'formats'")
                }
            }
            guard !named.isEmpty, Set(named).count == named.count else {
                throw s.fail("formats", "give distinct formats, found \(named.map(\.description))")
            }
            candidates = named.sorted {
                ($0.bitsPerWeight, $0.bits, $0.description) < ($1.bitsPerWeight, $1.bits, $1.description)
            }
            explicitFormats = true
            // `group_size` (for the embedding, LM head and S's values) defaults to the candidates' when they share one.
            let sizes = Set(candidates.filter { !$0.isFloat16 }.map(\.groupSize))
            if sizes.count == 1 { groupSize = sizes.first! }
        }
        groupSize = try s.int("group_size", default: groupSize, in: 1...1 << 20)
        if let w = try Self.ints(s, "widths") {
            guard !w.isEmpty, Set(w).count == w.count else {
                throw s.fail("widths", "give distinct widths, found \(w)")
            }
            widths = try w.map { try Self.width(s, "widths", $0) }.sorted()
        }
    }

    /// `targets`, `exclude_layers`, the fixed widths (`embedding`, `lm_head`, `embedding_symmetric`,
    /// `sparse_factor_bits`).
    private mutating func decodeTargets(_ s: StrictObject) throws {
        targets = try s.linearKinds(default: targets, repeats: true,
                                    hint: "the embedding and LM head have their own keys 'embedding' and 'lm_head'")
        excludeLayers = try Self.ints(s, "exclude_layers") ?? []
        if let bad = excludeLayers.first(where: { $0 < 0 }) {
            throw s.fail("exclude_layers", "\(bad) is negative")
        }
        embeddingBits = try s.optionalInt("embedding").map { try Self.width(s, "embedding", $0) }
        lmHeadBits = try s.optionalInt("lm_head").map { try Self.width(s, "lm_head", $0) }
        if s.has("embedding_symmetric") {
            guard embeddingBits != nil || lmHeadBits != nil else {
                throw RecipeError("\(s.location): 'embedding_symmetric' needs 'embedding' or 'lm_head' (a fixed width "
                    + "to apply to)")
            }
            embeddingSymmetric = try s.bool("embedding_symmetric")
        }
        sparseFactorBits = try s.optionalInt("sparse_factor_bits").map { try Self.width(s, "sparse_factor_bits", $0) }
    }

    /// The estimators' settings (PMPQ's fraction, CMPQ's pooling and CCA), measured damage, `estimator_windows`,
    /// `fixed_in_budget`, and the checks between them.
    private mutating func decodeEstimators(_ s: StrictObject) throws {
        pruneFraction = try s.double("prune_fraction", default: pruneFraction, in: 0...1)
        guard pruneFraction > 0 && pruneFraction < 1 else {
            throw s.fail("prune_fraction", "\(pruneFraction) must lie strictly between 0 and 1")
        }
        poolTokens = try s.int("pool_tokens", default: poolTokens, in: 1...1 << 20)
        ccaDims = try s.int("cca_dims", default: ccaDims, in: 1...4096)
        ridge = try s.double("ridge", default: ridge, in: 0...1e6)
        damage = try s.choice("damage", default: damage)
        damageWindows = try s.int("damage_windows", default: damageWindows, in: 1...1 << 16)
        damageTokens = try s.int("damage_tokens", default: damageTokens, in: 2...1 << 20)
        estimatorWindows = try s.optionalInt("estimator_windows", in: 1...1 << 16)
        if estimatorWindows != nil && estimator != .pmpq && estimator != .tdmpq {
            throw RecipeError("\(s.location): 'estimator_windows' applies to the estimators 'pmpq' and 'tdmpq' "
                + "(estimator is '\(estimator.rawValue)')")
        }
        fixedInBudget = try s.bool("fixed_in_budget", default: fixedInBudget)
        if fixedInBudget && embeddingBits == nil && lmHeadBits == nil {
            throw RecipeError("\(s.location): 'fixed_in_budget' counts the fixed-width 'embedding' / 'lm_head' in the "
                + "budget; set at least one of them")
        }
        if damage == .measured && sparseFactorBits != nil {
            throw RecipeError("\(s.location): 'sparse_factor_bits' with 'damage': 'measured' is not supported (the "
                + "damage probe varies D only, so its totals would leave out S's quantization)")
        }
        if damage == .measured && allocation == .clusters {
            throw s.fail("damage", "'measured' is for allocation 'budget' (or 'uniform', to report "
                + "it); 'clusters' uses the sensitivities")
        }
        if fixedInBudget && allocation == .clusters {
            throw RecipeError("\(s.location): 'fixed_in_budget' needs a budget (allocation 'budget' or 'uniform')")
        }
    }

    /// GPTQ's `damp`, `block_size`, `act_order`, `clip_search`, `static_groups`, `hessian_precision`; the search's
    /// `search_weights`.
    private mutating func decodeQuantizer(_ s: StrictObject) throws {
        let gptqKeys = ["damp", "block_size", "act_order", "clip_search", "static_groups", "hessian_precision"]
        for key in gptqKeys where s.has(key) && method != .gptq {
            throw RecipeError("\(s.location): '\(key)' applies to method 'gptq' only (method is '\(method.rawValue)')")
        }
        damp = try s.double("damp", default: damp, in: 0...1e6)
        guard damp > 0 else {
            throw s.fail("damp", "must be positive (relative damping, e.g. 0.01)")
        }
        blockSize = try s.int("block_size", default: blockSize, in: 1...1 << 20)
        actOrder = try s.bool("act_order", default: actOrder)
        clipSearch = try s.bool("clip_search", default: clipSearch)
        staticGroups = try s.bool("static_groups", default: staticGroups)
        hessianPrecision = try s.choice("hessian_precision", default: hessianPrecision)
        if s.has("search_weights") && method != .search {
            throw RecipeError("\(s.location): 'search_weights' applies to method 'search' only (method is "
                + "'\(method.rawValue)')")
        }
        searchWeights = try s.choice("search_weights", default: searchWeights)
    }

    /// The budget against the allocation mode, estimator `none`, and the candidate formats (valid for the group
    /// size, checked now rather than after the calibration work).
    private mutating func checkAcrossKeys(_ s: StrictObject) throws {
        switch allocation {
        case .budget, .uniform:
            guard (bitsPerWeight == nil) != (budgetBytes == nil) else {
                throw RecipeError("\(s.location): allocation '\(allocation.rawValue)' needs exactly one of "
                    + "'bits_per_weight' (average storage bits per weight, scales included) and 'bytes' (storage of "
                    + "the allocated tensors)")
            }
        case .clusters:
            guard bitsPerWeight == nil, budgetBytes == nil else {
                throw RecipeError("\(s.location): allocation 'clusters' sets widths by sensitivity cluster and takes "
                    + "no budget; use allocation 'budget' to meet 'bits_per_weight' or 'bytes'")
            }
        }
        guard estimator != .none || allocation == .uniform || damage == .measured else {
            throw RecipeError("\(s.location): estimator 'none' is only for allocation 'uniform' or 'damage': "
                + "'measured'")
        }
        if !explicitFormats {
            candidates = try widths.map {
                try Self.format($0, groupSize: groupSize, symmetric: symmetric, at: s.location)
            }
        }
        let oneWidthEach = Set(candidates.map(\.bits)).count == candidates.count
        if allocation == .clusters && explicitFormats && !oneWidthEach {
            throw RecipeError("\(s.location): allocation 'clusters' maps sensitivity clusters onto a ladder of widths; "
                + "'formats' \(candidates.map(\.description)) has two formats of one width")
        }
        if let b = sparseFactorBits {
            _ = try Self.format(b, groupSize: groupSize, symmetric: symmetric,
                                at: s.location + ": 'sparse_factor_bits'")
        }
    }

    /// The integers of the array at `key`, or nil when the key is absent.
    private static func ints(_ s: StrictObject, _ key: String) throws -> [Int]? {
        guard let a = try s.array(key) else { return nil }
        return try a.map { v in
            guard let i = v.intValue else {
                throw RecipeError("\(s.location): '\(key)': expected integers, found \(v.text)")
            }
            return i
        }
    }

    /// `b` when it is a supported width (or 16, float16).
    private static func width(_ s: StrictObject, _ key: String, _ b: Int) throws -> Int {
        guard b == 16 || QuantFormat.supportedBits.contains(b) else {
            throw RecipeError("\(s.location): '\(key)': \(b) bits is not a width (choose from "
                + "\((QuantFormat.supportedBits + [16]).map(String.init).joined(separator: ", ")))")
        }
        return b
    }
}
