import Model

/// What a pass needs the runner to provide.
public struct PassNeeds: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Token windows of calibration data (`PassContext.calibration`).
    public static let calibration = PassNeeds(rawValue: 1)
    /// Gradients through the model (the Training module).
    public static let gradients = PassNeeds(rawValue: 2)
}

/// What the runner hands a pass besides the model.
public struct PassContext {
    /// Calibration windows (each `window` token ids), drawn by the recipe's calibration settings.
    public var calibration: [[Int32]]
    public var seed: UInt64
    /// Where calibration statistics are kept between runs (nil: always computed).
    public var cache: StatsCache?
    /// Progress lines for long computations (stderr in the CLI).
    public var progress: (String) -> Void
    public init(calibration: [[Int32]] = [], seed: UInt64 = 0, cache: StatsCache? = nil, progress: @escaping (String) -> Void = { _ in }) {
        self.calibration = calibration; self.seed = seed; self.cache = cache; self.progress = progress
    }

    /// `compute()`'s value, through the cache when there is one.
    public func cached<T: Codable>(_ name: String, settings: JSONValue, _ compute: () throws -> T) throws -> T {
        guard let cache else { return try compute() }
        return try cache.value(name, settings: settings, compute: compute)
    }
}

/// A compression pass: decoded strictly from its recipe stage, run on a model, reporting what it did.
/// A pass that changes shapes builds a new model and leaves its input untouched.
public protocol CompressionPass {
    /// The name recipes use ("minitron", "finercut", ...).
    static var name: String { get }
    static var needs: PassNeeds { get }
    /// Reads the stage's settings (every key but "stage"); unknown keys and out-of-range values throw.
    init(config: StrictObject) throws
    /// The compressed model and the pass's own diagnostics (scores, what it removed and why).
    func run(on model: LlamaModel, context: PassContext) throws -> (model: LlamaModel, diagnostics: JSONValue)
}

/// Recipe name → pass type. Registering a name twice is an error.
public struct PassRegistry {
    private var types: [String: any CompressionPass.Type] = [:]

    public init() {}

    public mutating func register(_ type: any CompressionPass.Type) throws {
        guard types[type.name] == nil else { throw RecipeError("pass '\(type.name)' is registered twice") }
        types[type.name] = type
    }

    public var names: [String] { types.keys.sorted() }

    public func type(named name: String) -> (any CompressionPass.Type)? { types[name] }

    /// Builds the pass of a stage from its settings; unknown names list the known ones.
    public func make(_ name: String, config: StrictObject) throws -> any CompressionPass {
        guard let t = types[name] else {
            throw RecipeError("\(config.location): unknown pass '\(name)' (known: \(names.joined(separator: ", ")))")
        }
        let pass = try t.init(config: config)
        try config.finish()
        return pass
    }
}
