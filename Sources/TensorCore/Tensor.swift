import Foundation

/// A contiguous, row-major Float32 array with a shape.
///
/// Reference semantics (a class): kernels write into tensors they are handed, and a copy is always
/// explicit (`copy()`). Storage is 64-byte aligned and zero-initialised.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// Allocates a zero-filled tensor of the given shape.
    public init(shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("out of memory allocating tensor \(shape) (\(bytes) bytes)")
        }
        data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    /// Creates a tensor holding `values` (row-major) with the given shape.
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { free(data) }

    /// The elements as a mutable buffer.
    @inlinable public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: data, count: count)
    }

    /// The elements as a Swift array (a copy).
    public var array: [Float] { Array(buffer) }

    /// Size of the elements in bytes.
    public var bytes: Int { count * MemoryLayout<Float>.stride }

    /// Flat element access.
    @inlinable public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    /// A deep copy.
    public func copy() -> Tensor {
        let t = Tensor(shape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// Sets every element to zero.
    public func zero() { data.update(repeating: 0, count: count) }

    /// Fills the tensor with values drawn uniformly from [-scale, scale).
    public func fillUniform(scale: Float, rng: inout SplitMix64) {
        for i in 0..<count { data[i] = scale * (2 * rng.nextFloat() - 1) }
    }
}

/// SplitMix64: a small, fast, seedable generator. Deterministic for a given seed on every platform.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A float in [0, 1) with 24 random bits.
    public mutating func nextFloat() -> Float { Float(next() >> 40) * 0x1p-24 }
}
