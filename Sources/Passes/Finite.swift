import Recipes

/// Throws when one of `values` (a pass's distances, scores, damages, losses) is not finite, naming it by
/// `describe(index)`: an order or selection made from NaN or infinite numbers means nothing, so the pass stops.
func requireFinite(_ values: [Double], stage: String, _ describe: (Int) -> String) throws {
    guard let i = values.firstIndex(where: { !$0.isFinite }) else { return }
    throw RecipeError("\(stage): \(describe(i)) is \(values[i]) (expected a finite number): the model's outputs on the "
        + "calibration windows hold NaN or infinite values (check the input checkpoint's weights)")
}

/// Index of the first of `count` floats at `p` that is not finite, or nil. For outputs whose distance kernels would
/// hide a NaN (a kernel that compares with `max` can return 0 for NaN inputs).
func firstNonFinite(_ p: UnsafePointer<Float>, count: Int) -> Int? {
    var flag: Float = 0
    for i in 0..<count { flag += p[i] * 0 }  // 0 for finite values, NaN once any is not
    guard flag.isNaN else { return nil }
    return (0..<count).first { !p[$0].isFinite }
}

/// Throws when the model's outputs `logits` (rows × V) on a calibration window are not finite, naming `what`.
func requireFiniteOutputs(_ logits: UnsafePointer<Float>, rows: Int, columns V: Int, stage: String,
                          _ what: @autoclosure () -> String) throws {
    guard let i = firstNonFinite(logits, count: rows * V) else { return }
    throw RecipeError("\(stage): \(what()) holds \(logits[i]) at position \(i / V) (expected finite logits): its "
        + "forward overflows on the calibration windows (check the input checkpoint's weights)")
}
