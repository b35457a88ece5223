/// Where an error arose and what was expected versus found, as fields: the file, the recipe stage, the key (a key
/// path in a recipe, config or metadata: "eval.window", "general.architecture"), the tensor, and the expected and
/// found values as text. Every field is optional; an error fills those it knows. `compress --json` reports them
/// next to the message (`file`, `stage`, `stage_name`, `key`, `tensor`, `expected`, `found`).
public struct ErrorContext: Equatable, Sendable, Encodable {
    /// The file the error concerns (a checkpoint, recipe, GGUF or safetensors file, text or token file).
    public var file: String?
    /// The recipe stage, 1-based, and its name (`"gptq"`).
    public var stage: Int?
    public var stageName: String?
    /// A key path in the file (`"eval.window"`, `"stages.2.bits"`, `"general.architecture"`).
    public var key: String?
    /// A tensor's name (`"model.layers.0.mlp.up_proj.weight"`).
    public var tensor: String?
    /// What the reader expected there and what it found (`"[64, 32]"` and `"[64, 16]"`; `"an integer"`, `"\"x\""`).
    public var expected: String?
    public var found: String?

    public init(file: String? = nil, stage: Int? = nil, stageName: String? = nil, key: String? = nil,
                tensor: String? = nil, expected: String? = nil, found: String? = nil) {
        self.file = file
        self.stage = stage
        self.stageName = stageName
        self.key = key
        self.tensor = tensor
        self.expected = expected
        self.found = found
    }

    /// Whether no field is set.
    public var isEmpty: Bool { self == ErrorContext() }

    /// These fields, with `outer`'s filling the ones left empty: the innermost error knows its file and tensor
    /// best, an outer layer adds what only it knows (the stage that was running).
    public func filled(from outer: ErrorContext) -> ErrorContext {
        ErrorContext(file: file ?? outer.file, stage: stage ?? outer.stage, stageName: stageName ?? outer.stageName,
                     key: key ?? outer.key, tensor: tensor ?? outer.tensor, expected: expected ?? outer.expected,
                     found: found ?? outer.found)
    }
}

/// An error that states where it arose as fields besides its message (`description`, rendered once, by the CLI).
public protocol ContextualError: Error, CustomStringConvertible {
    var context: ErrorContext { get }
}

/// An error with the context an outer layer added to it, instead of a new error re-formatting its message: the
/// error is kept as thrown (its type and fields: `underlying`), the outer places are prefixed and the notes and
/// advice appended when it is rendered. Adding context to an `ErrorInContext` extends it, so an error is wrapped at
/// most once however many layers it crosses.
public struct ErrorInContext: ContextualError {
    /// The error as it was thrown.
    public let underlying: any Error
    /// Places prefixed to the message ("recipes/a.json, stage 2 (gptq)"), outermost first.
    public private(set) var places: [String]
    /// Notes appended in parentheses ("base ckpt.h5"), innermost first.
    public private(set) var notes: [String]
    /// Advice appended after a semicolon ("nothing was exported"), innermost first.
    public private(set) var advice: [String]
    /// Fields the outer layers added; the underlying error's own fields win (`context`).
    public private(set) var added: ErrorContext

    /// "place: message (note); advice", with every place, note and advice added.
    public var description: String {
        places.map { "\($0): " }.joined() + String(describing: underlying) + notes.map { " (\($0))" }.joined()
            + advice.map { "; \($0)" }.joined()
    }

    public var context: ErrorContext {
        ((underlying as? any ContextualError)?.context ?? ErrorContext()).filled(from: added)
    }

    fileprivate init(_ error: any Error) {
        if let e = error as? ErrorInContext {
            self = e
        } else {
            underlying = error
            places = []
            notes = []
            advice = []
            added = ErrorContext()
        }
    }

    fileprivate mutating func add(_ context: ErrorContext, place: String?, note: String?, advice: String?) {
        if let place { places.insert(place, at: 0) }
        if let note { notes.append(note) }
        if let advice { self.advice.append(advice) }
        added = added.filled(from: context)
    }
}

extension Error {
    /// This error with context from an outer layer: `place` prefixed to its message ("place: message"), `note`
    /// appended ("message (note)"), `advice` after that ("message; advice"), `context` filling the fields the
    /// error leaves empty. The error keeps its type and fields (`ErrorInContext.underlying`, `rootError`).
    public func adding(_ context: ErrorContext = ErrorContext(), place: String? = nil, note: String? = nil,
                       advice: String? = nil) -> ErrorInContext {
        var e = ErrorInContext(self)
        e.add(context, place: place, note: note, advice: advice)
        return e
    }

    /// The error as it was thrown, under any context added to it.
    public var rootError: any Error { (self as? ErrorInContext)?.underlying ?? self }

    /// The fields of this error (empty when it states none).
    public var errorContext: ErrorContext { (self as? any ContextualError)?.context ?? ErrorContext() }
}

extension ErrorContext {
    /// "FILE: message" when the file is set, else the message: how an error that names its file renders.
    public func prefixingFile(_ message: String) -> String { file.map { "\($0): \(message)" } ?? message }
}
