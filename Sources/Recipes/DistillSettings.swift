import Foundation
import Model
import Training

/// How a recipe stage spells the distillation loop's settings (`DistillConfig`): which settings it reads and
/// under which key, the range of `steps`, and the warm-up default when it follows the steps. The other settings'
/// ranges are the same in every stage (`DistillConfig.init(settings:defaults:keys:)`); settings a stage does not
/// read keep its defaults.
public struct DistillKeys: Sendable {
    /// The settings read, each under its recipe key: `DistillConfig.Setting.rawValue` unless `renamed` says otherwise.
    public var accepted: Set<DistillConfig.Setting>
    public var renamed: [DistillConfig.Setting: String] = [:]
    /// The range of the required `steps`.
    public var steps: ClosedRange<Int> = 1...10_000_000
    /// The warm-up default for a given number of steps (nil: the defaults' `warmup`).
    public var warmupDefault: (@Sendable (_ steps: Int) -> Int)? = nil

    public init(accepted: Set<DistillConfig.Setting>, renamed: [DistillConfig.Setting: String] = [:],
                steps: ClosedRange<Int> = 1...10_000_000, warmupDefault: (@Sendable (_ steps: Int) -> Int)? = nil) {
        self.accepted = accepted; self.renamed = renamed; self.steps = steps; self.warmupDefault = warmupDefault
    }

    /// The `distill` stage's: every setting but `eps`, under its own name.
    public static let distill = DistillKeys(accepted: Set(DistillConfig.Setting.allCases).subtracting([.eps]))

    /// The recipe key of `setting`, nil when the stage does not read it.
    public func key(_ setting: DistillConfig.Setting) -> String? {
        accepted.contains(setting) ? renamed[setting] ?? setting.rawValue : nil
    }
}

extension DistillConfig {
    /// The distillation settings of a recipe stage, read from `s` under `keys` (each setting the stage does not
    /// read, or that `s` leaves out, keeps its value in `defaults`). `steps` is required. Ranges of the recipe keys:
    /// batch 1...4096, window 2...8192, accumulation 1...4096, seed 0...Int.max, lr [1e-12, 1], min_lr_ratio [0, 1],
    /// warmup 0...10⁷, beta1 and beta2 [0, 0.999999], weight_decay [0, 10], clip [0, 1e6], eps [1e-12, 1],
    /// temperature [0.001, 100], kl_weight, ce_weight and intermediate_weight [0, 1e6]; when the stage reads a
    /// loss weight, at least one of kl_weight and ce_weight must be positive. Errors name `s`'s location and the key.
    public init(settings s: StrictObject, defaults: DistillConfig, keys: DistillKeys) throws {
        self = defaults
        func int(_ x: Setting, _ value: WritableKeyPath<DistillConfig, Int>, _ range: ClosedRange<Int>) throws {
            if let k = keys.key(x) { self[keyPath: value] = try s.int(k, default: self[keyPath: value], in: range) }
        }
        func real(_ x: Setting, _ value: WritableKeyPath<DistillConfig, Double>, _ range: ClosedRange<Double>) throws {
            if let k = keys.key(x) { self[keyPath: value] = try s.double(k, default: self[keyPath: value], in: range) }
        }
        func flag(_ x: Setting, _ value: WritableKeyPath<DistillConfig, Bool>) throws {
            if let k = keys.key(x) { self[keyPath: value] = try s.bool(k, default: self[keyPath: value]) }
        }
        if let k = keys.key(.steps) { steps = try s.int(k, in: keys.steps) }
        try int(.batch, \.batch, 1...4096)
        try int(.window, \.window, 2...8192)
        try int(.accumulation, \.accumulation, 1...4096)
        if let k = keys.key(.seed) { seed = UInt64(try s.int(k, default: Int(defaults.seed), in: 0...Int.max)) }
        try real(.lr, \.lr, 1e-12...1)
        try real(.minLRRatio, \.minLRRatio, 0...1)
        if let w = keys.warmupDefault { warmup = w(steps) }
        try int(.warmup, \.warmup, 0...10_000_000)
        if let k = keys.key(.decay) { decay = try s.choice(k, default: decay) }
        try real(.beta1, \.beta1, 0...0.999999)
        try real(.beta2, \.beta2, 0...0.999999)
        try real(.weightDecay, \.weightDecay, 0...10)
        try real(.clip, \.clip, 0...1e6)
        try real(.eps, \.eps, 1e-12...1)
        try real(.temperature, \.temperature, 1e-3...100)
        try real(.klWeight, \.klWeight, 0...1e6)
        try real(.ceWeight, \.ceWeight, 0...1e6)
        if let k = keys.key(.intermediate), let pairs = try s.array(k) {
            intermediate = try pairs.enumerated().map { i, p in
                guard let a = p.arrayValue, a.count == 2, let st = a[0].intValue, let te = a[1].intValue,
                      st >= 0, te >= 0 else {
                    throw RecipeError(
                        "\(s.location): '\(k)'[\(i)]: expected [student layer, teacher layer], found \(p.text)")
                }
                return LayerPair(student: st, teacher: te)
            }
        }
        if let k = keys.key(.intermediateLoss) { intermediateLoss = try s.choice(k, default: intermediateLoss) }
        try real(.intermediateWeight, \.intermediateWeight, 0...1e6)
        try flag(.balance, \.balance)
        try flag(.alwaysMap, \.alwaysMap)
        if let kl = keys.key(.klWeight), let ce = keys.key(.ceWeight), klWeight == 0 && ceWeight == 0 {
            throw RecipeError("\(s.location): '\(kl)', '\(ce)': at least one must be positive")
        }
    }
}
