import Diagnostics
import Checkpoint
import Foundation
import Model
import TensorCore

/// Knowledge distillation of a compressed student from its original (the teacher), with Minitron's recipe
/// as the default (Sreenivas, Muralidharan et al., "LLM Pruning and Distillation in Practice: The Minitron
/// Approach", 2024; Muralidharan et al., "Compact Language Models via Pruning and Knowledge Distillation",
/// 2024): forward KL divergence between the teacher's and the student's next-token distributions on logits
/// at temperature 1, no ground-truth loss, AdamW with warm-up and cosine decay.
///
/// Loss of one micro-batch of B windows of W tokens (see `LogitLossWeights` for the logit terms):
///   L = w_kl · L_kl + w_ce · L_ce + α · L_int
///   L_int = mean over layer pairs (s, t) of  mean_{b,t} (1 - cos(M h_s, h_t))        (cosine)
///                                        or  mean_{b,t,c} (M h_s - h_t)²             (mse)
/// where h_s is the residual stream after student layer s, h_t after teacher layer t, and M a learned linear
/// map (teacher width × student width, initialised to the identity on the shared channels), used when the
/// widths differ or when asked for. α = w_int, or with balancing α = w_int · (w_kl L_kl + w_ce L_ce) / L_int
/// (the ratio taken as a constant each step), which scales the intermediate loss to the logit loss as
/// Minitron's dynamic weighting does.
///
/// Windows are drawn deterministically: step s, micro-batch k, window b starts at a position derived from
/// (seed, s, k) only, so a resumed run sees exactly the windows an uninterrupted one would.
public struct DistillConfig: Codable, Equatable, Sendable {
    public struct LayerPair: Codable, Equatable, Sendable {
        public var student: Int
        public var teacher: Int
        public init(student: Int, teacher: Int) { self.student = student; self.teacher = teacher }
    }
    public enum FeatureLoss: String, Codable, Sendable, CaseIterable { case cosine, mse }

    public var steps = 100
    public var batch = 4
    public var window = 512
    /// Micro-batches accumulated per optimizer step.
    public var accumulation = 1
    public var seed: UInt64 = 0
    public var lr = 1e-4
    /// Learning-rate floor of the decay, as a fraction of lr.
    public var minLRRatio = 0.1
    public var warmup = 10
    public var decay = LRSchedule.Decay.cosine
    public var beta1 = 0.9
    public var beta2 = 0.95
    public var eps = 1e-8
    /// Decoupled weight decay of matrices; vectors (norm weights) are never decayed unless a group says so.
    public var weightDecay = 0.0
    /// Global gradient-norm clip (0 = off).
    public var clip = 1.0
    public var temperature = 1.0
    public var klWeight = 1.0
    public var ceWeight = 0.0
    public var intermediate: [LayerPair] = []
    public var intermediateLoss = FeatureLoss.cosine
    public var intermediateWeight = 1.0
    public var balance = false
    /// Learn a map even when the widths agree (it is always learned when they differ).
    public var alwaysMap = false
    public var groups: [ParameterGroup] = []

    public init() {}

    public static let maxSteps = 1 << 30
    public static let maxBatch = 1 << 12
    public static let maxWindow = 1 << 17
    public static let maxTokensPerMicroBatch = 1 << 17
    public static let maxLR = 10.0

    /// The settings by the names recipes and reports give them (snake_case, the recipe keys of the `distill`
    /// stage); a command-line option is the name with dashes (`--min-lr-ratio`).
    public enum Setting: String, CaseIterable, Sendable {
        case steps, batch, window, accumulation, seed, lr
        case minLRRatio = "min_lr_ratio"
        case warmup, decay, beta1, beta2
        case weightDecay = "weight_decay"
        case clip, eps, temperature
        case klWeight = "kl_weight", ceWeight = "ce_weight"
        case intermediate
        case intermediateLoss = "intermediate_loss", intermediateWeight = "intermediate_weight"
        case balance
        case alwaysMap = "always_map"
    }

    /// An integer setting `validate` keeps in a closed range.
    public struct IntegerLimit: Sendable {
        public let setting: Setting
        public let value: KeyPath<DistillConfig, Int> & Sendable
        public let range: ClosedRange<Int>
    }

    /// A real setting `validate` keeps in a closed range; `name` and `text` are how its messages write the setting
    /// and the range.
    public struct RealLimit: Sendable {
        public let setting: Setting
        public let name: String
        public let value: KeyPath<DistillConfig, Double> & Sendable
        public let range: ClosedRange<Double>
        public let text: String
    }

    /// The integer settings' ranges, in the order they are checked.
    public static let integerLimits: [IntegerLimit] = [
        IntegerLimit(setting: .steps, value: \.steps, range: 1...maxSteps),
        IntegerLimit(setting: .batch, value: \.batch, range: 1...maxBatch),
        IntegerLimit(setting: .window, value: \.window, range: 2...maxWindow),
        IntegerLimit(setting: .accumulation, value: \.accumulation, range: 1...maxSteps),
        IntegerLimit(setting: .warmup, value: \.warmup, range: 0...maxSteps),
    ]

    /// The real settings' closed ranges, in the order they are checked (lr, the betas and eps have open ends and
    /// are checked on their own).
    public static let realLimits: [RealLimit] = [
        RealLimit(setting: .minLRRatio, name: "min-lr ratio", value: \.minLRRatio, range: 0...1, text: "[0, 1]"),
        RealLimit(setting: .weightDecay, name: "weight decay", value: \.weightDecay, range: 0...1, text: "[0, 1]"),
        RealLimit(setting: .clip, name: "clip", value: \.clip, range: 0...1e6, text: "[0, 1e6] (0 = off)"),
        RealLimit(setting: .temperature, name: "temperature", value: \.temperature, range: 1e-3...1e3,
                  text: "[0.001, 1000]"),
        RealLimit(setting: .klWeight, name: "kl weight", value: \.klWeight, range: 0...1e6, text: "[0, 1e6]"),
        RealLimit(setting: .ceWeight, name: "ce weight", value: \.ceWeight, range: 0...1e6, text: "[0, 1e6]"),
        RealLimit(setting: .intermediateWeight, name: "intermediate weight", value: \.intermediateWeight,
                  range: 0...1e6, text: "[0, 1e6]"),
    ]

    /// Checks ranges (`integerLimits`, `realLimits`, then lr, the betas, eps and the groups); errors name the setting.
    public func validate(teacher: ModelConfig, student: ModelConfig) throws {
        func need(_ ok: Bool, _ message: String) throws { if !ok { throw ConfigError(message) } }
        // Every setting finite and in a range that keeps sizes, products and the arithmetic of a step in range.
        for l in Self.integerLimits where !l.range.contains(self[keyPath: l.value]) {
            let (name, r) = (l.setting.rawValue, l.range)
            throw ConfigError("\(name) must lie in \(r.lowerBound)...\(r.upperBound), got \(self[keyPath: l.value])")
        }
        try need(batch * window <= Self.maxTokensPerMicroBatch,
                 "batch × window = \(batch * window) tokens per micro-batch, more " +
                 "than \(Self.maxTokensPerMicroBatch) (activations and logits of every token are held in memory; use " +
                 "--accumulation instead)")
        try need(lr > 0 && lr <= Self.maxLR, "lr must lie in (0, \(Self.maxLR)], got \(lr)")
        for l in Self.realLimits where !l.range.contains(self[keyPath: l.value]) {
            throw ConfigError("\(l.name) must lie in \(l.text), got \(self[keyPath: l.value])")
        }
        try need((0..<1).contains(beta1) && (0..<1).contains(beta2), "betas must lie in [0, 1), got \(beta1), \(beta2)")
        try need(eps > 0 && eps <= 1, "eps must lie in (0, 1], got \(eps)")
        for g in groups {
            if let l = g.lr {
                try need(l > 0 && l <= Self.maxLR, "group '\(g.match)': lr must lie in (0, \(Self.maxLR)], got \(l)")
            }
            if let d = g.weightDecay {
                try need((0...1).contains(d), "group '\(g.match)': weight_decay must lie in [0, 1], got \(d)")
            }
        }
        try need(klWeight > 0 || ceWeight > 0, "at least one of the KL and cross-entropy weights must be positive")
        try need(teacher.vocabSize == student.vocabSize,
                 "teacher and student vocabularies differ (\(teacher.vocabSize) vs \(student.vocabSize))")
        for p in intermediate {
            try need((0..<student.blocks.count).contains(p.student),
                     "intermediate pair: student layer \(p.student) outside 0..<\(student.blocks.count)")
            try need((0..<teacher.blocks.count).contains(p.teacher),
                     "intermediate pair: teacher layer \(p.teacher) outside 0..<\(teacher.blocks.count)")
        }
    }
}

/// Statistics of one optimizer step.
public struct StepStats: Codable, Equatable, Sendable {
    public var step: Int
    public var loss: Double
    public var kl: Double
    public var ce: Double
    public var intermediate: Double
    public var lr: Double
    public var gradNorm: Double
    /// The trainables' regularisers and statistics by name (nil when there are none).
    public var extras: [String: Double]? = nil
}

/// The distillation loop over a teacher and a student model. Both are values: the student is trained as a
/// copy (`student` is the trained model) and the teacher is only read, so neither model given is changed.
public final class Distiller {
    public let config: DistillConfig
    public let teacher: DecoderModel
    /// The trained student (the trainer's own copy of the student given).
    public var student: DecoderModel { studentTrainer.model }
    public let studentTrainer: Trainer
    /// The teacher's forward (inference mode: nothing kept but the hidden states and captures).
    let teacherDecoder: TransformerDecoder?
    /// What the loop trains besides the student's weights (gates, mask logits, factors).
    public let trainables: [Trainable]
    let logitLoss: LogitLoss
    let dHidden: Tensor
    /// Learned maps (teacher width × student width), one per layer pair (nil when not used).
    public let maps: [Tensor?]
    let mapGrads: [Tensor?]
    /// Per pair, the mapped student states (nil for pairs without a map); one shared gradient buffer.
    let mapped: [Tensor?]
    let dMapped: Tensor?
    public let optimizer: AdamW
    public let schedule: LRSchedule
    let tokens: [Int32]
    /// Optimizer steps done.
    public private(set) var step = 0
    /// Stats of every step done (restored on resume).
    public private(set) var log: [StepStats] = []

    public static let stateFormat = "compress-distill-state"
    public static let stateVersion = 2

    /// `trainWeights: false` freezes every weight of the student (only `trainables` and maps train).
    public init(teacher: DecoderModel, student: DecoderModel, config: DistillConfig, trainTokens: [Int32],
                trainables: [Trainable] = [], trainWeights: Bool = true) throws {
        try config.validate(teacher: teacher.config, student: student.config)
        guard trainTokens.count > config.window else {
            throw ConfigError("training split has \(trainTokens.count) tokens, fewer than one window " +
                              "of \(config.window) + 1")
        }
        if let bad = trainTokens.first(where: { $0 < 0 || Int($0) >= student.config.vocabSize }) {
            throw ConfigError("training token id \(bad) is outside the vocabulary (0..<\(student.config.vocabSize))")
        }
        self.config = config
        self.teacher = teacher
        self.trainables = trainables
        tokens = trainTokens
        let B = config.batch, W = config.window, N = B * W
        // Parameter groups: first matching rule wins; a frozen rule (or trainWeights: false) gives no gradient.
        // Weights a trainable reads the gradient of get one, but the optimizer never updates them.
        let gradientOnly = trainables.reduce(into: Set<WeightID>()) { $0.formUnion($1.weightGradients) }
        let frozen = Set(student.weights.filter { w in
            !trainWeights || w.weight.parameterNames(w.id, config: student.config).contains { n in
                config.groups.first { $0.matches(n) }?.frozen == true
            }
        }.map(\.id)).subtracting(gradientOnly)
        studentTrainer = Trainer(model: student, batch: B, window: W, frozen: frozen)
        let needTeacher = config.klWeight > 0 || !config.intermediate.isEmpty
        teacherDecoder = needTeacher ? TransformerDecoder(model: teacher, batch: B, window: W) : nil
        logitLoss = LogitLoss(vocab: student.config.vocabSize)
        dHidden = Tensor(shape: [N, student.config.hiddenSize])
        let Cs = student.config.hiddenSize, Ct = teacher.config.hiddenSize
        var maps: [Tensor?] = [], mapGrads: [Tensor?] = []
        for p in config.intermediate {
            studentTrainer.capture(layer: p.student)
            teacherDecoder?.capture(layer: p.teacher)
            if Cs != Ct || config.alwaysMap {
                let m = Tensor(shape: [Ct, Cs])
                for i in 0..<min(Cs, Ct) { m[i * Cs + i] = 1 }
                maps.append(m)
                mapGrads.append(Tensor(shape: [Ct, Cs]))
            } else {
                maps.append(nil)
                mapGrads.append(nil)
            }
        }
        self.maps = maps
        self.mapGrads = mapGrads
        mapped = maps.map { $0 == nil ? nil : Tensor(shape: [N, Ct]) }
        dMapped = config.intermediate.isEmpty ? nil : Tensor(shape: [N, Ct])

        // Default decay on matrices only.
        var params: [Parameter] = []
        let replaced = trainables.reduce(into: Set<String>()) { $0.formUnion($1.replacedParameters) }
        func add(_ name: String, _ value: Tensor, _ grad: Tensor) {
            if replaced.contains(name) { return }
            let rule = config.groups.first { $0.matches(name) }
            if rule?.frozen == true { return }
            params.append(Parameter(name: name, value: value, grad: grad, lr: rule?.lr ?? config.lr,
                                    weightDecay: rule?.weightDecay
                                        ?? (value.shape.count >= 2 ? config.weightDecay : 0)))
        }
        for p in studentTrainer.parameters where !gradientOnly.contains(p.id) { add(p.name, p.value, p.grad) }
        for (i, (m, g)) in zip(maps, mapGrads).enumerated() { if let m, let g { add("map.\(i)", m, g) } }
        var names = Set(trainables.map(\.name))
        guard names.count == trainables.count else { throw ConfigError("two trainables share a name") }
        for t in trainables {
            try t.bind(to: studentTrainer)
            params += t.parameters
        }
        names = []
        for p in params where !names.insert(p.name).inserted {
            throw ConfigError("two trained parameters are both named '\(p.name)'")
        }
        guard !params.isEmpty else { throw ConfigError("every parameter is frozen: nothing to train") }
        optimizer = AdamW(parameters: params, beta1: config.beta1, beta2: config.beta2, eps: config.eps)
        schedule = LRSchedule(warmup: config.warmup, total: config.steps, decay: config.decay,
                              minRatio: config.minLRRatio)
    }

    /// Token ids (batch × window) of micro-batch `micro` of step `step`.
    public func batchIds(step: Int, micro: Int) -> [Int32] {
        var rng = SplitMix64(seed: config.seed &+ UInt64(step) &* 0x9E37_79B9_7F4A_7C15
                                   &+ UInt64(micro) &* 0xD1B5_4A32_D192_ED03)
        let W = config.window, span = UInt64(tokens.count - W + 1)
        var ids: [Int32] = []
        ids.reserveCapacity(config.batch * W)
        for _ in 0..<config.batch {
            let start = Int(rng.next() % span)
            ids += tokens[start..<(start + W)]
        }
        return ids
    }

    /// Forward, loss and backward of one micro-batch, gradients scaled by `scale`; returns the loss terms and
    /// the total loss L they weigh into.
    func accumulate(_ ids: [Int32], scale: Float) -> (kl: Double, ce: Double, inter: Double, total: Double) {
        let s = studentTrainer, N = s.rows
        teacherDecoder?.forward(ids)
        s.forward(ids)
        let weights = LogitLossWeights(temperature: Float(config.temperature), kl: Float(config.klWeight),
                                       ce: Float(config.ceWeight))
        let v = logitLoss.compute(student: s, teacher: teacherDecoder.map { ($0.model, $0.hidden) }, weights: weights,
                                  scale: scale, dHidden: dHidden)
        let logit = config.klWeight * v.kl + config.ceWeight * v.ce
        var inter = 0.0, alpha = config.intermediateWeight
        if let t = teacherDecoder, let dMapped, !config.intermediate.isEmpty {
            let P = Double(config.intermediate.count)
            var dist = [Double](repeating: 0, count: N)
            func perRowDistance(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ C: Int,
                                da: UnsafeMutablePointer<Float>?, scale: Float) {
                dist.withUnsafeMutableBufferPointer { dp in
                    switch config.intermediateLoss {
                    case .cosine: cosineDistanceBackward(da: da, distance: dp.baseAddress!, a: a, b: b, scale: scale,
                                                         rows: N, channels: C)
                    case .mse: squaredErrorBackward(da: da, error: dp.baseAddress!, a: a, b: b, scale: scale, rows: N,
                                                    channels: C)
                    }
                }
            }
            // The student side of each pair (through its map when it has one), computed once.
            let sources: [(UnsafePointer<Float>, Int)] = config.intermediate.enumerated().map { i, p in
                let hs = s.captures[p.student]!
                if let m = maps[i], let out = mapped[i] {
                    linearForward(out: out.data, inp: hs.data, weight: m.data, rows: N, inFeatures: m.shape[1],
                                  outFeatures: m.shape[0])
                    return (UnsafePointer(out.data), m.shape[0])
                }
                return (UnsafePointer(hs.data), hs.shape[1])
            }
            func denominator(_ C: Int) -> Double { Double(N) * (config.intermediateLoss == .mse ? Double(C) : 1) }
            // Values first (the balancing ratio needs them), then gradients.
            for (i, p) in config.intermediate.enumerated() {
                let (a, C) = sources[i]
                perRowDistance(a, t.captures[p.teacher]!.data, C, da: nil, scale: 0)
                inter += dist.reduce(0, +) / denominator(C) / P
            }
            if config.balance { alpha = config.intermediateWeight * logit / max(inter, 1e-12) }
            for (i, p) in config.intermediate.enumerated() {
                let (a, C) = sources[i], ht = t.captures[p.teacher]!
                let rowScale = Float(alpha / P / denominator(C)) * scale
                let hs = s.captures[p.student]!, dhs = s.captureGrads[p.student]!
                if let m = maps[i], let g = mapGrads[i] {
                    dMapped.data.update(repeating: 0, count: N * C)
                    perRowDistance(a, ht.data, C, da: dMapped.data, scale: rowScale)
                    linearBackward(dinp: dhs.data,
                                   dweight: optimizer.parameters.contains { $0.name == "map.\(i)" } ? g.data : nil,
                                   dout: dMapped.data,
                                   inp: hs.data, weight: m.data, rows: N, inFeatures: m.shape[1],
                                   outFeatures: m.shape[0])
                } else {
                    perRowDistance(a, ht.data, C, da: dhs.data, scale: rowScale)
                }
            }
        }
        s.backward(dHidden: dHidden.data)
        return (v.kl, v.ce, inter, logit + alpha * inter)
    }

    /// One optimizer step (K micro-batches, clipping, AdamW); returns its statistics. `batches` replaces the
    /// drawn windows with given micro-batches (each batch × window ids), for tests against references.
    @discardableResult
    public func trainStep(batches: [[Int32]]? = nil) -> StepStats {
        studentTrainer.zeroGradients()
        for g in mapGrads { g?.zero() }
        let K = batches?.count ?? config.accumulation
        var kl = 0.0, ce = 0.0, inter = 0.0, total = 0.0
        for t in trainables { for p in t.parameters { p.grad.zero() } }
        for k in 0..<K {
            for t in trainables { t.willForward(step: step, micro: k) }
            // In bf16, weights are packed once per micro-batch (trainables rewrite effective weights before it, the
            // optimizer after the step).
            let v = MatrixProduct.withWeightCache {
                accumulate(batches?[k] ?? batchIds(step: step, micro: k), scale: 1 / Float(K))
            }
            for t in trainables { t.didBackward(step: step, micro: k) }
            kl += v.kl / Double(K); ce += v.ce / Double(K); inter += v.inter / Double(K); total += v.total / Double(K)
        }
        var extras: [String: Double] = [:]
        for t in trainables { for (name, value) in t.regularize(step: step) { total += value; extras[name] = value } }
        let norm = config.clip > 0 ? optimizer.clipGradients(maxNorm: config.clip) : optimizer.gradientNorm()
        let factor = schedule.factor(step: step)
        optimizer.update(lrFactor: factor)
        for t in trainables { for (name, value) in t.didUpdate(step: step) { extras[name] = value } }
        let stats = StepStats(step: step + 1, loss: total, kl: kl, ce: ce, intermediate: inter, lr: config.lr * factor,
                              gradNorm: norm,
                              extras: extras.isEmpty ? nil : extras)
        step += 1
        log.append(stats)
        return stats
    }

    /// Loss terms on a fixed batch without updating anything (for tests and evaluation).
    public func evaluateLoss(_ ids: [Int32]) -> (kl: Double, ce: Double, intermediate: Double) {
        studentTrainer.zeroGradients()
        let v = accumulate(ids, scale: 1)
        studentTrainer.zeroGradients()
        return (v.kl, v.ce, v.inter)
    }

    // MARK: - State

    struct StateMeta: Codable {
        var step: Int
        var config: DistillConfig
        /// The student's config as JSON text (compared as text: it is our own canonical serialisation).
        var studentConfig: String
        var log: [StepStats]
        /// Digest of the teacher's weights and the training tokens: a state resumes only with the same inputs.
        var inputs: String?
        /// The trainables' own settings (`Trainable.stateSettings`), one line each.
        var trainables: String?
        /// The matrix products' precision the state was trained in ("fp32" or "bf16"; absent before issue 29: fp32).
        var precision: String?
    }

    var trainableSettings: String { trainables.map(\.stateSettings).joined(separator: "\n") }

    /// FNV-1a digest of the teacher (config and every tensor's bits) and of the training tokens.
    public private(set) lazy var inputsDigest: String = {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ raw: UnsafeRawBufferPointer) {
            let words = raw.count / 8
            for i in 0..<words {
                h = (h ^ raw.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0x100_0000_01b3
            }
            for i in (words * 8)..<raw.count { h = (h ^ UInt64(raw[i])) &* 0x100_0000_01b3 }
        }
        Array(teacher.config.json.text.utf8).withUnsafeBytes(mix)
        for (name, t) in teacher.namedTensors.sorted(by: { $0.name < $1.name }) {
            Array(name.utf8).withUnsafeBytes(mix)
            mix(UnsafeRawBufferPointer(start: t.data, count: t.count * 4))
        }
        let teacherPart = String(h, radix: 16)
        h = 0xcbf2_9ce4_8422_2325
        tokens.withUnsafeBytes(mix)
        return "teacher:\(teacherPart) train:\(String(h, radix: 16)):\(tokens.count)"
    }()

    /// The first unsound value among the trained tensors (a parameter or AdamW moment that is not finite, or a
    /// negative second moment), described with its state-file key, or nil when every value is sound.
    public func unsoundValue() -> String? {
        for p in optimizer.parameters {
            if let (slot, i, x) = p.firstUnsoundValue() {
                return "'\(slot.rawValue):\(p.name)' (\(slot.meaning)) holds \(x) at index \(i) of shape "
                    + "\(p.value.shape) (expected \(slot.expectation))"
            }
        }
        return nil
    }

    /// Writes every trained parameter (student weights, maps, trainables), its AdamW moments and the step
    /// atomically to `path`. Frozen weights are not saved: they equal the student given. A state holding an
    /// unsound value (`unsoundValue()`) is refused: nothing is written and an earlier state at `path` is kept.
    public func saveState(to path: String) throws {
        if let bad = unsoundValue() {
            throw ConfigError("the training state at step \(step) is not saved: \(bad); the file is left as "
                + "it was", ErrorContext(file: path))
        }
        var tensors: [(String, Tensor)] = []
        for p in optimizer.parameters {
            tensors += [("param:" + p.name, p.value), ("adam_m:" + p.name, p.m), ("adam_v:" + p.name, p.v)]
        }
        let meta = StateMeta(step: step, config: config, studentConfig: student.config.json.text, log: log,
                             inputs: inputsDigest,
                             trainables: trainableSettings, precision: MatrixProduct.precision.rawValue)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        let text = String(decoding: try e.encode(meta), as: UTF8.self)
        try TensorArchive.write(to: path, format: Self.stateFormat, version: Self.stateVersion, meta: text,
                                tensors: tensors)
    }

    /// Restores a state written by `saveState`. Checked before anything is restored: the run settings, the
    /// student's config, the trained parts' settings and the inputs must match; the step must lie in 0...steps with
    /// one log entry per step; every trained tensor must be present with its parameter's shape, finite, and AdamW's
    /// second moments >= 0. Errors name the state file, the tensor and what was found.
    public func loadState(from path: String) throws {
        let (text, tensors) = try TensorArchive.read(path, format: Self.stateFormat, version: Self.stateVersion)
        let meta: StateMeta
        do { meta = try JSONDecoder().decode(StateMeta.self, from: Data(text.utf8)) } catch {
            throw ConfigError("training state metadata is unreadable (\(error))", ErrorContext(file: path))
        }
        if meta.config != config {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            let a = (try? JSONValue.parse(String(decoding: try e.encode(meta.config), as: UTF8.self)).objectValue)
                ?? [:]
            let b = (try? JSONValue.parse(String(decoding: try e.encode(config), as: UTF8.self)).objectValue) ?? [:]
            let keys = Set(a.keys).union(b.keys).sorted().filter { a[$0] != b[$0] }
            throw ConfigError("the state was written by a run with different settings "
                + "(\(keys.joined(separator: ", "))); resume with the same options",
                ErrorContext(file: path))
        }
        guard meta.studentConfig == student.config.json.text else {
            throw ConfigError("the state's student config differs from the student checkpoint's",
                ErrorContext(file: path))
        }
        guard (meta.trainables ?? "") == trainableSettings else {
            throw ConfigError("the state was written by a run whose trained parts had other settings (its: "
                + "\(meta.trainables ?? "none"); this run's: \(trainableSettings)); resume with the same settings",
                ErrorContext(file: path))
        }
        let statePrecision = meta.precision ?? Precision.fp32.rawValue
        guard statePrecision == MatrixProduct.precision.rawValue else {
            throw ConfigError("the state was trained with \(statePrecision) matrix products and this run uses "
                + "\(MatrixProduct.precision.rawValue); resume with --precision \(statePrecision), or start afresh",
                ErrorContext(file: path, key: "precision", expected: MatrixProduct.precision.rawValue,
                             found: statePrecision))
        }
        guard (0...config.steps).contains(meta.step), meta.log.count == meta.step else {
            throw ConfigError("the state is at step \(meta.step) with \(meta.log.count) logged steps (expected a step "
                + "in 0...\(config.steps), the run's --steps, with one log entry per step)",
                ErrorContext(file: path))
        }
        guard meta.inputs == inputsDigest else {
            let theirs = meta.inputs ?? "none recorded"
            throw ConfigError("the state was written with another teacher or training text (its inputs \(theirs), this "
                + "run's \(inputsDigest)); resume with the same teacher and --train, or start afresh",
                ErrorContext(file: path))
        }
        // Every tensor checked before any is restored: a refused state leaves the distiller as it was.
        var sources: [(from: Tensor, to: Tensor)] = []
        for p in optimizer.parameters {
            for slot in Parameter.Slot.allCases {
                let key = slot.rawValue + ":" + p.name, t = p.tensor(slot)
                guard let s = tensors[key] else {
                    throw ConfigError("training state lacks tensor '\(key)'", ErrorContext(file: path))
                }
                guard s.shape == t.shape else {
                    throw ConfigError("tensor '\(key)': expected shape \(t.shape), found \(s.shape)",
                        ErrorContext(file: path, tensor: key, expected: "\(t.shape)", found: "\(s.shape)"))
                }
                if let (i, x) = firstUnsoundValue(s, nonNegative: slot == .adamV) {
                    throw ConfigError("tensor '\(key)' (\(slot.meaning)) holds \(x) at index \(i) of shape "
                        + "\(s.shape) (expected \(slot.expectation)): the state is damaged and was not resumed from; "
                        + "delete it to start afresh", ErrorContext(file: path))
                }
                sources.append((s, t))
            }
        }
        for (s, t) in sources { t.data.update(from: s.data, count: t.count) }
        step = meta.step
        optimizer.step = meta.step
        log = meta.log
    }
}
