import Passes
import Recipes

extension StageRegistry {
    /// Every stage kind this build provides, under its recipe name: the passes, `distill`, `eval` (`passes()`)
    /// and `export`.
    public static func standard() -> StageRegistry {
        var r = StageRegistry.passes()
        do { try r.register(ExportStage.self) } catch { preconditionFailure("\(error)") }
        return r
    }
}
