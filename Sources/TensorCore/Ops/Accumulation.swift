import CKernels

/// Float64 sums of float32 data: the calibration statistics' Σ x² per column and the Float64 sum of the windows'
/// float32 Gram matrices (Passes/Layerwise.swift). CKernels' AVX-512 / AVX2 loops when the CPU has them (the
/// build targets baseline x86-64, where the Swift loops vectorize two doubles wide), else the Swift loops; the
/// same doubles either way (a float's square is exact in double, and each element's terms are added in order).
public enum DoubleAccumulation {
    /// acc[j] += Σ_{t < rows} x[t·ld + j]² for j < cols, each column's terms added in t order.
    /// `lanes`: the kernel set (16, 8, or 0 for the Swift loop; tests), default the best this CPU runs.
    public static func addSquares(_ x: UnsafePointer<Float>, rows: Int, cols: Int, ld: Int,
                                  into acc: UnsafeMutablePointer<Double>, lanes: Int = SIMDKernels.lanes) {
        if lanes > 0, compress_add_squares_lanes(x, rows, cols, ld, acc, Int32(lanes)) == 0 { return }
        for t in 0..<rows {
            let row = x + t * ld
            for j in 0..<cols { let v = Double(row[j]); acc[j] += v * v }
        }
    }

    /// acc[j] += Double(x[j]) for j < count. `lanes` as in `addSquares`.
    public static func add(_ x: UnsafePointer<Float>, count: Int, into acc: UnsafeMutablePointer<Double>,
                           lanes: Int = SIMDKernels.lanes) {
        if lanes > 0, compress_add_to_double_lanes(x, count, acc, Int32(lanes)) == 0 { return }
        for j in 0..<count { acc[j] += Double(x[j]) }
    }
}
