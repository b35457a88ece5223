// Bit allocation for mixed-precision quantization (CPTQuant, Nanda et al. 2024, and a budgeted variant).
//
// Units are what gets one width: decoder layers (the paper) or single tensors. Each unit has a sensitivity
// s_u (from an estimator) and, per candidate width b, a storage cost c_u(b) in bytes and a relative weight
// error e_u(b) = ‖W_u − Q_b(W_u)‖²_F / ‖W_u‖²_F (measured by quantizing it).
//
// (a) Clusters (the paper): the sensitivities are split into k = |ladder| groups by exact 1-D k-means (the
//     optimal partition of the sorted values into k contiguous runs, by dynamic programming, minimizing the
//     within-cluster sum of squares); clusters ordered by sensitivity get the ladder's widths in ascending
//     order: the least sensitive cluster the fewest bits. The size is whatever follows.
// (b) Budget: choose b_u for every unit to minimize the estimated damage Σ_u s_u · e_u(b_u) subject to
//     Σ_u c_u(b_u) ≤ B. This is a multiple-choice knapsack, solved exactly by dynamic programming over the
//     cost in units of g = gcd of all costs. When the table would exceed `maxCells`, costs are rounded up to
//     a coarser unit (still never over budget) and the result says it is not proven optimal.
// (c) Uniform: the widest single width whose total fits the budget (the baseline).
// A width that cannot store a unit (a group whose float16 scale would overflow) is not among that unit's
// options; in (a) such a unit takes the next wider width it has, in (c) only widths every unit has count.
// A "width" here is any integer label ordered by size: the bit width of a ladder, or (CPTQuant) the index of
// a candidate format in a list sorted by bits per weight; "widest" means the largest label.

/// One unit's choices: candidate widths (bits) with their cost and damage.
public struct AllocationUnit: Sendable {
    public var name: String
    public var options: [(bits: Int, bytes: Int, damage: Double)]
    public init(name: String, options: [(bits: Int, bytes: Int, damage: Double)]) {
        self.name = name; self.options = options
    }

    /// A unit's options from every candidate width, nil where the width cannot store the unit's weights
    /// (`UnrepresentableWeights`, explained by `why`): those widths are not options. Throws only when no
    /// candidate width can store the unit.
    public init(name: String, candidates: [(bits: Int, option: (bytes: Int, damage: Double)?)], why: [String]) throws {
        let options = candidates.compactMap { c in c.option.map { (bits: c.bits, bytes: $0.bytes, damage: $0.damage) } }
        guard !options.isEmpty else {
            throw QuantizationError(
                "\(name): no width of \(candidates.map(\.bits)) can store its weights "
                    + "(\(why.joined(separator: "; "))); expected at least one width whose float16 scales hold every "
                    + "group (a wider width, 16 = float16 values, or exclude the layer)")
        }
        self.init(name: name, options: options)
    }
}

/// Optimal 1-D k-means: cluster index (0 = lowest values) of every value. k is reduced to the number of
/// distinct values when there are fewer.
public func clusterSensitivities(_ values: [Double], k: Int) -> [Int] {
    precondition(k >= 1 && !values.isEmpty, "clustering needs k ≥ 1 and values")
    let order = values.indices.sorted { values[$0] < values[$1] || (values[$0] == values[$1] && $0 < $1) }
    let x = order.map { values[$0] }, n = x.count
    let k = min(k, Set(x).count)
    var prefix = [0.0], prefix2 = [0.0]
    for v in x { prefix.append(prefix.last! + v); prefix2.append(prefix2.last! + v * v) }
    func sse(_ i: Int, _ j: Int) -> Double {  // values i..<j
        let s = prefix[j] - prefix[i], s2 = prefix2[j] - prefix2[i]
        return max(0, s2 - s * s / Double(j - i))
    }
    // cost[c][j]: best SSE of the first j values in c + 1 clusters; cut[c][j]: start of the last cluster.
    var cost = [[Double]](repeating: [Double](repeating: .infinity, count: n + 1), count: k)
    var cut = [[Int]](repeating: [Int](repeating: 0, count: n + 1), count: k)
    for j in 1...n { cost[0][j] = sse(0, j) }
    for c in 1..<max(k, 1) {
        for j in (c + 1)...n {
            for i in c..<j where cost[c - 1][i] + sse(i, j) < cost[c][j] {
                cost[c][j] = cost[c - 1][i] + sse(i, j); cut[c][j] = i
            }
        }
    }
    var labels = [Int](repeating: 0, count: n), j = n
    for c in stride(from: k - 1, through: 0, by: -1) {
        let i = c == 0 ? 0 : cut[c][j]
        for r in i..<j { labels[order[r]] = c }
        j = i
    }
    return labels
}

/// What an allocation chose.
public struct Allocation: Sendable {
    /// Chosen width (label, see the top of this file) per unit.
    public var bits: [Int]
    public var bytes: Int
    public var damage: Double
    /// Whether the budgeted choice is proven minimal (false only after cost coarsening).
    public var optimal: Bool
}

func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }

/// The least-damage choice of widths whose total bytes do not exceed `budget`. Throws when even the smallest
/// choice of every unit is over budget.
public func allocateToBudget(
    _ units: [AllocationUnit], budgetBytes budget: Int, maxCells: Int = 200_000_000
) throws -> Allocation {
    precondition(units.allSatisfy { !$0.options.isEmpty }, "every unit needs a width")
    let floor = units.reduce(0) { $0 + $1.options.map(\.bytes).min()! }
    guard floor <= budget else {
        throw QuantizationError(
            "the budget of \(budget) bytes is below the smallest possible size, \(floor) bytes (every unit at its "
                + "narrowest width)")
    }
    // Work with costs above each unit's minimum: what the budget has to pay for beyond the floor.
    let spare = budget - floor
    let extras = units.map { u in u.options.map { $0.bytes - u.options.map(\.bytes).min()! } }
    var unit = extras.joined().reduce(0, gcd)
    if unit == 0 { unit = 1 }
    var optimal = true
    var capacity = spare / unit
    if capacity * units.count > maxCells {
        // Coarsen: costs in bigger units, rounded up, so any solution still fits.
        let factor = (capacity * units.count + maxCells - 1) / maxCells
        unit *= factor
        capacity = spare / unit
        optimal = false
    }
    let steps = extras.map { $0.map { ($0 + unit - 1) / unit } }
    let width = capacity + 1
    // best[c]: least damage of the units so far with total extra steps exactly c (∞: unreachable).
    var best = [Double](repeating: .infinity, count: width)
    best[0] = 0
    var choice = [[UInt8]](repeating: [], count: units.count)
    for (u, opts) in units.enumerated() {
        var next = [Double](repeating: .infinity, count: width)
        var pick = [UInt8](repeating: 0, count: width)
        for c in 0..<width where best[c] < .infinity {
            for (o, opt) in opts.options.enumerated() {
                let c2 = c + steps[u][o]
                guard c2 < width else { continue }
                let d = best[c] + opt.damage
                if d < next[c2] { next[c2] = d; pick[c2] = UInt8(o) }
            }
        }
        best = next
        choice[u] = pick
    }
    var c = best.indices.min { best[$0] < best[$1] || (best[$0] == best[$1] && $0 < $1) }!
    var picks = [Int](repeating: 0, count: units.count)
    for u in stride(from: units.count - 1, through: 0, by: -1) {
        let o = Int(choice[u][c])
        picks[u] = o
        c -= steps[u][o]
    }
    let bits = zip(units, picks).map { $0.options[$1].bits }
    let bytes = zip(units, picks).reduce(0) { $0 + $1.0.options[$1.1].bytes }
    let damage = zip(units, picks).reduce(0.0) { $0 + $1.0.options[$1.1].damage }
    return Allocation(bits: bits, bytes: bytes, damage: damage, optimal: optimal)
}

/// The widest single width (among those every unit offers) whose total fits `budget`.
public func allocateUniform(_ units: [AllocationUnit], budgetBytes budget: Int) throws -> Allocation {
    let common = units.dropFirst().reduce(Set(units.first?.options.map(\.bits) ?? [])) {
        $0.intersection($1.options.map(\.bits))
    }
    for b in common.sorted(by: >) {
        let opts = units.map { $0.options.first { $0.bits == b }! }
        let bytes = opts.reduce(0) { $0 + $1.bytes }
        if bytes <= budget {
            return Allocation(
                bits: units.map { _ in b }, bytes: bytes, damage: opts.reduce(0) { $0 + $1.damage }, optimal: true)
        }
    }
    throw QuantizationError("no single width fits the budget of \(budget) bytes (widths \(common.sorted()))")
}

/// The paper's allocation: clusters of sensitivity onto `ladder` (ascending widths).
public func allocateByClusters(_ units: [AllocationUnit], sensitivities: [Double], ladder: [Int]) -> Allocation {
    precondition(units.count == sensitivities.count)
    let ladder = ladder.sorted()
    let labels = clusterSensitivities(sensitivities, k: ladder.count)
    let k = (labels.max() ?? 0) + 1
    // With fewer distinct sensitivities than widths, the clusters take the top of the ladder.
    // A unit without its cluster's width (it cannot store the unit) takes the next wider width it has, else
    // the widest.
    var bits = labels.map { ladder[ladder.count - k + $0] }
    var bytes = 0, damage = 0.0
    for u in units.indices {
        let have = units[u].options.sorted { $0.bits < $1.bits }
        guard let o = have.first(where: { $0.bits >= bits[u] }) ?? have.last else {
            preconditionFailure("unit \(units[u].name) has no option")
        }
        bits[u] = o.bits
        bytes += o.bytes; damage += o.damage
    }
    return Allocation(bits: bits, bytes: bytes, damage: damage, optimal: true)
}
