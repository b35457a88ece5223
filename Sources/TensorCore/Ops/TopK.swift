import Foundation
import RealModule

/// Top-k summaries of output distributions, and the KL divergence against such a summary with its exact error
/// bound (issue 30: a compact base reference for `compress eval --reference`).
///
/// A reference row keeps, of p = softmax(z): the k most likely ids K (descending log-probability, ties by lower id),
/// their log-probabilities, and log r, r = Σ_{j∉K} p_j the mass of the rest. Against a model's q = softmax(z'):
///   KL_k(p ‖ q) = Σ_{i∈K} p_i log(p_i / q_i) + r log(r / q_R),   q_R = Σ_{j∉K} q_j
/// is the KL divergence between the two distributions coarsened to k + 1 outcomes (K and "the rest"), so by the
/// log-sum inequality (Cover & Thomas, Elements of Information Theory, Thm. 2.7.1)
///   KL_k ≤ KL(p ‖ q) ≤ KL_k + B,
///   B = max{ Σ_{j∉K} π_j log(π_j / q_j) : 0 ≤ π_j ≤ c, Σ π_j = r } − r log(r / q_R),   c = min_{i∈K} p_i,
/// since every tail p_j ≤ c. The maximum of that convex function over the polytope is at a vertex: π = c on the
/// ⌈r/c⌉ − 1 least likely tail tokens of q and the remainder on the next one (an exchange argument: p log(p/q) falls
/// with q), which `topKDivergenceForward` finds by selection. The same grouping gives the reverse divergence's lower
/// bound KL_k(q ‖ p) ≤ KL(q ‖ p) (no upper bound: the tail's p_j may be arbitrarily small).

/// Floor of a stored log rest mass (log of the smallest normal Float): a tail that underflows is stored as this, so
/// that reverse divergences stay finite.
public let topKLogRestFloor: Float = -87.33

/// The top-k summary of softmax(logits) per row: `ids` (rows × k) by descending log-probability (ties: lower id
/// first), `logProbs` (rows × k) their log-probabilities, `logRest` (rows) log of the remaining mass (at least
/// `topKLogRestFloor`), and `targetLogProbs` (rows) the log-probability of `targets[t]` when given.
/// log-softmax as `logSoftmaxDouble`. 1 ≤ k ≤ V.
public func topKLogSoftmax(
    ids: UnsafeMutablePointer<Int32>, logProbs: UnsafeMutablePointer<Float>, logRest: UnsafeMutablePointer<Float>,
    targetLogProbs: UnsafeMutablePointer<Float>?, targets: UnsafePointer<Int32>?,
    logits: UnsafePointer<Float>, rows T: Int, columns V: Int, k: Int
) {
    precondition(k >= 1 && k <= V, "top-k: k must lie in 1...\(V), got \(k)")
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        var heap = TopKHeap(capacity: k)
        let tail = UnsafeMutablePointer<Float>.allocate(capacity: V)
        defer { tail.deallocate() }
        for t in rows {
            let z = logits + t * V
            let lse = logSumExpDouble(z, count: V)
            heap.removeAll()
            for j in 0..<V { heap.offer(z[j], Int32(j)) }
            let top = heap.sortedDescending()
            tail.update(from: z, count: V)
            for (i, e) in top.enumerated() {
                ids[t * k + i] = e.id
                logProbs[t * k + i] = Float(Double(e.value) - lse)
                tail[Int(e.id)] = -.infinity
            }
            let lr = k < V ? logSumExpDouble(tail, count: V) - lse : -Double.infinity
            logRest[t] = max(Float(lr), topKLogRestFloor)
            if let targetLogProbs, let targets { targetLogProbs[t] = Float(Double(z[Int(targets[t])]) - lse) }
        }
    }
}

/// Per row, against a top-k reference (`topKLogSoftmax`'s ids, logProbs, logRest; k per row) and a model's logits:
/// `kl[t]` = KL_k(p ‖ q), `bound[t]` = B (KL_k ≤ KL(p ‖ q) ≤ KL_k + B), `reverse[t]` = KL_k(q ‖ p) (a lower bound of
/// KL(q ‖ p)), all in nats, with q = softmax(logits) as `logSoftmaxDouble`.
public func topKDivergenceForward(
    kl: UnsafeMutablePointer<Double>, bound: UnsafeMutablePointer<Double>?, reverse: UnsafeMutablePointer<Double>?,
    ids: UnsafePointer<Int32>, logProbs: UnsafePointer<Float>, logRest: UnsafePointer<Float>,
    logits: UnsafePointer<Float>, rows T: Int, columns V: Int, k: Int
) {
    Parallel.forEachChunk(T, minChunk: 1) { rows in
        let tail = UnsafeMutablePointer<Float>.allocate(capacity: V)
        defer { tail.deallocate() }
        for t in rows {
            let z = logits + t * V, id = ids + t * k, lp = logProbs + t * k
            let lse = logSumExpDouble(z, count: V)
            tail.update(from: z, count: V)
            for i in 0..<k { tail[Int(id[i])] = -.infinity }
            let n = V - k
            let logQR = n > 0 ? logSumExpDouble(tail, count: V) - lse : -Double.infinity
            let logR = Double(logRest[t]), r = n > 0 ? Foundation.exp(logR) : 0
            var forward = 0.0, backward = 0.0
            for i in 0..<k {
                let a = Double(lp[i]), b = Double(z[Int(id[i])]) - lse
                forward += Foundation.exp(a) * (a - b)
                backward += Foundation.exp(b) * (b - a)
            }
            if r > 0 { forward += r * (logR - logQR) }
            if n > 0 && logQR > -.infinity { backward += Foundation.exp(logQR) * (logQR - logR) }
            kl[t] = forward
            reverse?[t] = backward
            guard let bound else { continue }
            // The tail's worst case: mass c on the ⌈r/c⌉ − 1 least likely tail tokens of q, the remainder on the next.
            let c = Foundation.exp(Double(lp[k - 1]))
            guard r > 0, n > 0, c > 0, logQR > -.infinity else { bound[t] = 0; continue }
            let full = min(Int((r / c).rounded(.up)) - 1, n - 1)
            for i in 0..<k { tail[Int(id[i])] = .infinity }  // the kept tokens rank last
            selectSmallest(tail, count: V, rank: full)
            let logC = Foundation.log(c)
            var worst = 0.0
            for j in 0..<full { worst += c * (logC - (Double(tail[j]) - lse)) }
            let f = r - Double(full) * c
            if f > 0 { worst += f * (Foundation.log(f) - (Double(tail[full]) - lse)) }
            bound[t] = max(0, worst - r * (logR - logQR))
        }
    }
}

/// log Σ_j exp(x_j) of one row in Double: max-shifted, each exponential `fastExpDouble` (relative error ≤ 1e-15) of
/// the Float logit minus the max, summed in Double (16-bit-free: the divergences of compressed models are small
/// differences of these). Entries of −∞ count for nothing; all −∞ gives −∞.
@inlinable
public func logSumExpDouble(_ x: UnsafePointer<Float>, count V: Int) -> Double {
    let m = Double(rowMax(x, count: V))
    guard m > -.infinity else { return -.infinity }
    var s = 0.0
    for j in 0..<V { s = Relaxed.sum(s, fastExpDouble(Double(x[j]) - m)) }
    return m + Foundation.log(s)
}

/// exp(x) in Double by range reduction (x = n ln 2 + r, |r| ≤ ln2/2, ln 2 split in two parts as fdlibm's) and the
/// Taylor polynomial of degree 12 (truncation ≤ 3e-17 relative); plain arithmetic so that loops over it vectorise.
/// Returns 0 below −708 (and for −∞) and saturates at exp(709).
@inlinable @inline(__always)
public func fastExpDouble(_ x: Double) -> Double {
    let xc = min(max(x, -708), 709)
    let magic = 6_755_399_441_055_744.0  // 1.5 · 2^52: adding it rounds to an integer held in the low bits
    let shifted = xc * 1.442_695_040_888_963_4 + magic
    let n = shifted - magic
    let r = (xc - n * 6.931_471_803_691_238_164_90e-01) - n * 1.908_214_929_270_587_700_02e-10
    var p = 1.0 / 479_001_600
    p = p * r + 1.0 / 39_916_800
    p = p * r + 1.0 / 3_628_800
    p = p * r + 1.0 / 362_880
    p = p * r + 1.0 / 40_320
    p = p * r + 1.0 / 5_040
    p = p * r + 1.0 / 720
    p = p * r + 1.0 / 120
    p = p * r + 1.0 / 24
    p = p * r + 1.0 / 6
    p = p * r + 0.5
    p = p * r + 1
    p = p * r + 1
    let k = Int64(bitPattern: shifted.bitPattern) &- Int64(bitPattern: magic.bitPattern)
    let scale = Double(bitPattern: UInt64(bitPattern: (k &+ 1023) << 52))
    return x < -708 ? 0 : p * scale
}

/// Rearranges x[0..<count] so that x[rank] holds the value of that rank in ascending order, x[..<rank] the smaller
/// ones (unordered) and x[(rank+1)...] the larger (Hoare's selection, median-of-three pivots; deterministic).
public func selectSmallest(_ x: UnsafeMutablePointer<Float>, count n: Int, rank: Int) {
    precondition(rank >= 0 && rank < n)
    var lo = 0, hi = n - 1
    while hi > lo {
        let mid = lo + (hi - lo) / 2
        if x[mid] < x[lo] { swap(&x[mid], &x[lo]) }
        if x[hi] < x[lo] { swap(&x[hi], &x[lo]) }
        if x[hi] < x[mid] { swap(&x[hi], &x[mid]) }
        let pivot = x[mid]
        var i = lo, j = hi
        while i <= j {
            while x[i] < pivot { i += 1 }
            while x[j] > pivot { j -= 1 }
            if i <= j { if i != j { swap(&x[i], &x[j]) }; i += 1; j -= 1 }
        }
        if rank <= j { hi = j } else if rank >= i { lo = i } else { return }
    }
}

/// A bounded min-heap keeping the k largest (value, id) pairs offered (ties: the lower id ranks higher).
struct TopKHeap {
    struct Entry { var value: Float; var id: Int32 }
    private var items: [Entry] = []
    let capacity: Int
    init(capacity: Int) { self.capacity = capacity; items.reserveCapacity(capacity) }

    /// a ranks below b.
    @inline(__always) private static func below(_ a: Entry, _ b: Entry) -> Bool {
        a.value < b.value || (a.value == b.value && a.id > b.id)
    }

    mutating func removeAll() { items.removeAll(keepingCapacity: true) }

    @inline(__always) mutating func offer(_ value: Float, _ id: Int32) {
        let e = Entry(value: value, id: id)
        if items.count < capacity {
            items.append(e)
            var c = items.count - 1
            while c > 0 {
                let p = (c - 1) / 2
                guard Self.below(items[c], items[p]) else { break }
                items.swapAt(c, p); c = p
            }
        } else if Self.below(items[0], e) {
            items[0] = e
            var p = 0
            while true {
                let l = 2 * p + 1, r = l + 1
                var s = p
                if l < items.count && Self.below(items[l], items[s]) { s = l }
                if r < items.count && Self.below(items[r], items[s]) { s = r }
                if s == p { break }
                items.swapAt(p, s); p = s
            }
        }
    }

    /// The kept entries, highest first.
    func sortedDescending() -> [Entry] { items.sorted { Self.below($1, $0) } }
}
