import Recipes

extension StageRegistry {
    /// Every stage kind of this module, under its recipe name: the passes, with `distill` and `eval` (Recipes).
    /// Workbench's `standard()` adds `export`.
    public static func passes() -> StageRegistry {
        var r = StageRegistry()
        let kinds: [any RecipeStage.Type] = [
            MinitronPass.self, FinerCutPass.self, CPTQuantPass.self, MagnitudePass.self, WandaPass.self,
            SparseGPTPass.self, MaskLLMPass.self, DistillStage.self, EvalStage.self, DSFormerPass.self,
            LowRankPass.self, VTransPass.self,
        ]
        // The names are distinct by construction; a duplicate here is a programming error.
        for t in kinds {
            do { try r.register(t) } catch { preconditionFailure("\(error)") }
        }
        return r
    }
}
