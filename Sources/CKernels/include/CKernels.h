// Hand-written SIMD kernels for the non-GEMM work of the forward and backward (issue 29, item 3), chosen at run time
// by the CPU's features (cpuid through the compiler's __builtin_cpu_supports): AVX-512F, else AVX2, else the caller's
// portable Swift loop. Each kernel computes every element with the same float operations, in the same order, as the
// Swift reference named in its comment, so only the order of a sum's terms differs between paths.
#ifndef COMPRESS_CKERNELS_H
#define COMPRESS_CKERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The widest kernel set this CPU runs: 16 (AVX-512F), 8 (AVX2), or 0 (none: use the Swift loops).
int compress_kernels_lanes(void);

/// Softmax numerator of one row, in place: m = max_j x[j]; x[j] = fastExp(x[j] - m) for j < n; returns Σ_j x[j]
/// (summed in `compress_kernels_lanes()` lanes, then across lanes). n ≥ 1; x NaN-free. Swift reference: rowMax
/// and fastExp (TensorCore/Ops/FastMath.swift). Returns -1 when no kernel set is available.
float compress_exp_row(float *x, long n);
/// `compress_exp_row` with the kernel set of `lanes` (16 or 8, for tests of each); -1 when the CPU lacks it.
float compress_exp_row_lanes(float *x, long n, int lanes);

/// `compress_exp_row`'s AVX-512 exponentials and sum (the same floats, in the same order) without writing x: each
/// exponential goes to out[j] as bf16 (round to nearest even, denormals to zero: AVX512-BF16's vcvtneps2bf16, the
/// rounding of the bf16 products' operands). Returns the sum, or -1 (nothing written) when the CPU lacks AVX512-BF16
/// (or COMPRESS_KERNELS=0). For attention's probabilities when products run in bf16.
float compress_exp_row_bf16(const float *x, long n, uint16_t *out);

/// The quantizer's clipping search over one group of n weights x with error weights h, for the grid (s ≠ 0, lo):
/// q_k = clamp(x_k − lo) / s rounded half away from zero to [qlo, qhi] (the code minus the symmetric offset);
/// *err = Σ_k (h_k d_k) d_k with d_k = x_k − (lo + s q_k); with `refit`, also *xq = Σ_k (h_k x_k) q_k and
/// *qq = Σ_k (h_k q_k) q_k. Every term and sum (in k order) bit for bit the Swift loop's (Quantizer.swift,
/// searchGroup). Returns 0, or -1 (nothing written) without the AVX-512 kernel set.
int compress_group_error(const float *x, const float *h, long n, float s, float lo, float qlo, float qhi, int refit,
                         float *err, float *xq, float *qq);

/// Σ_j fastExp(x[j] - m) for j < n, each term a float, summed in double (logSumExp's sum,
/// TensorCore/Ops/Softmax.swift), with the kernel set of `lanes` (16 or 8); -1 when the CPU lacks it.
double compress_exp_sum_lanes(const float *x, long n, float m, int lanes);

/// out[j] = silu(gate[j]) · up[j] (gelu = 0; swigluForward) or gelu_tanh(gate[j]) · up[j] (gelu = 1;
/// geluTanhGatedForward), TensorCore/Ops/Activations.swift, for j < n, with the kernel set of `lanes`; returns 0, or
/// -1 (nothing written) when the CPU lacks it. `out` may alias `gate` or `up`.
int compress_gated_lanes(float *out, const float *gate, const float *up, long n, int gelu, int lanes);

/// acc[j] += Σ_{t < rows} x[t·ld + j]² in double for j < cols (the calibration statistics' Σ x² per column,
/// Passes/Layerwise.swift), each column summed in t order: the same doubles as the scalar loop (a float's square is
/// exact in double). With the kernel set of `lanes` (16 or 8; `compress_kernels_lanes()` for the best); returns 0, or
/// -1 (nothing written) when the CPU lacks it.
int compress_add_squares_lanes(const float *x, long rows, long cols, long ld, double *acc, int lanes);

/// acc[j] += (double)x[j] for j < n (a float32 Gram matrix's row added to its Float64 sum), with the kernel set of
/// `lanes`; returns 0, or -1 (nothing written) when the CPU lacks it.
int compress_add_to_double_lanes(const float *x, long n, double *acc, int lanes);

#ifdef __cplusplus
}
#endif
#endif
