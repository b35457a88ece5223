import Recipes

extension StageRegistry {
    /// Every stage kind this build provides, under its recipe name: the passes, `distill` and `eval`.
    public static func standard() -> StageRegistry {
        var r = StageRegistry()
        // The names are distinct by construction; a duplicate here is a programming error.
        for t in [MinitronPass.self, FinerCutPass.self, CPTQuantPass.self, MagnitudePass.self, WandaPass.self, SparseGPTPass.self, DistillStage.self, EvalStage.self] as [any RecipeStage.Type] {
            do { try r.register(t) } catch { preconditionFailure("\(error)") }
        }
        return r
    }
}
