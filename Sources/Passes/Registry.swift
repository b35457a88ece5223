import Recipes

extension PassRegistry {
    /// Every pass this build provides, under its recipe name.
    public static func standard() -> PassRegistry {
        var r = PassRegistry()
        // The names are distinct by construction; a duplicate here is a programming error.
        for t in [MinitronPass.self, FinerCutPass.self, CPTQuantPass.self] as [any CompressionPass.Type] {
            do { try r.register(t) } catch { preconditionFailure("\(error)") }
        }
        return r
    }
}
