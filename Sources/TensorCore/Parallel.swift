import Dispatch
import Foundation

/// Row-parallel loops for the work that is not a GEMM.
///
/// The range is cut into `Parallel.threads` contiguous chunks in a fixed way, so a kernel that writes
/// per-row results (and reduces within a row serially) is deterministic. Never call BLAS inside a body:
/// OpenBLAS is threaded itself.
public enum Parallel {
    /// Number of worker chunks; defaults to the number of active cores, or `COMPRESS_THREADS` when set (a sweep
    /// running several points at once splits the cores between them).
    nonisolated(unsafe) public static var threads: Int = {
        if let v = ProcessInfo.processInfo.environment["COMPRESS_THREADS"], let n = Int(v), n >= 1 {
            return min(n, 256)
        }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Number of chunks `forEachChunk` cuts `n` items into.
    @inlinable
    public static func chunkCount(_ n: Int, minChunk: Int = 1) -> Int { min(threads, max(1, n / max(minChunk, 1))) }

    /// Runs `body(chunk, range)` over disjoint contiguous sub-ranges of `0..<n`; `chunk` < `chunkCount(n, minChunk:)`
    /// indexes per-chunk scratch.
    @inlinable
    public static func forEachChunkIndexed(_ n: Int, minChunk: Int = 1, _ body: (Int, Range<Int>) -> Void) {
        let chunks = chunkCount(n, minChunk: minChunk)
        if chunks <= 1 {
            if n > 0 { body(0, 0..<n) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = n * c / chunks, hi = n * (c + 1) / chunks
            if lo < hi { body(c, lo..<hi) }
        }
    }

    /// Runs `body` over disjoint contiguous sub-ranges of `0..<n`. Small ranges run inline.
    @inlinable
    public static func forEachChunk(_ n: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        forEachChunkIndexed(n, minChunk: minChunk) { _, r in body(r) }
    }

    /// dst[0..<count] = src[0..<count], the copy spread over the workers in chunks of at least 64 K floats (a
    /// calibration window's activations are megabytes; one thread's copy leaves the other cores idle). The ranges
    /// must not overlap.
    public static func copy(_ src: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Float>, count: Int) {
        forEachChunk(count, minChunk: 1 << 16) { r in
            (dst + r.lowerBound).update(from: src + r.lowerBound, count: r.count)
        }
    }
}
