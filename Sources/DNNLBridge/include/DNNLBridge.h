// A thin C bridge over oneDNN's matmul (Debian libdnnl-dev 2.6, OpenMP runtime) for TensorCore/MatrixProduct.swift:
// C (m, n) = alpha · op(A) (m, k) · op(B) (k, n) + beta · C with A and B rounded to bf16 (round to nearest even),
// products accumulated in float32, C float32; row-major with leading dimensions, like cblas_sgemm. With
// `bf16` = 0 the same product runs on float32 inputs (oneDNN's float32 kernels, for comparison with OpenBLAS).
// One `compress_bf16_matmul` holds the primitive for one shape and thread count. In bf16, A and B are converted on
// each call (`compress_to_bf16`, AVX512-BF16, into per-thread buffers, in their own storage order); B can be
// converted once (`compress_bf16_matmul_pack_b`, e.g. a weight) and reused. In float32 oneDNN reads A and B as given.
#ifndef COMPRESS_DNNL_BRIDGE_H
#define COMPRESS_DNNL_BRIDGE_H
#include <stddef.h>
#include <stdint.h>

typedef struct compress_bf16_matmul compress_bf16_matmul;

/// Creates the primitive for one shape on `threads` OpenMP threads, bf16 inputs (`bf16` = 1) or float32 (0);
/// NULL and a message in `error` on failure (e.g. no bf16 support on this CPU). In bf16, `a_strided` /
/// `b_strided` = 1: the operand comes already converted (`run`'s a16 / b16) with the float32 layout's leading
/// dimension; 0: it is converted on each call, or given converted without padding (`pack_b`'s copy).
compress_bf16_matmul *compress_bf16_matmul_create(int64_t m, int64_t n, int64_t k, int trans_a, int trans_b,
                                                  int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta,
                                                  int threads, int bf16, int a_strided, int b_strided, char *error,
                                                  size_t error_length);
void compress_bf16_matmul_destroy(compress_bf16_matmul *p);
/// Bytes of B's bf16 copy (its storage block, row-major without padding); 0 in float32 (nothing to convert).
size_t compress_bf16_matmul_packed_b_bytes(const compress_bf16_matmul *p);
/// Converts B (float32, op(B) (k, n) with leading dimension ldb) into `packed` (`packed_b_bytes`), bf16 only.
/// Returns 0, or a oneDNN status.
int compress_bf16_matmul_pack_b(const compress_bf16_matmul *p, const float *b, void *packed);
/// C = alpha · op(A) · op(B) + beta · C. Each operand is given either as float32 (`a`, `b`: converted into a
/// per-thread buffer on each call in bf16) or already in bf16 (`a16`, `b16`: as the primitive was created for,
/// e.g. `pack_b`'s copy); exactly one of each pair is non-NULL. Returns 0, or a oneDNN status.
int compress_bf16_matmul_run(const compress_bf16_matmul *p, const float *a, const void *a16, const float *b,
                             const void *b16, float *c);

/// dst (rows × cols, contiguous) = src (rows × cols, leading dimension ld) rounded to bf16 as `vcvtneps2bf16`
/// does: to nearest even, NaN made quiet, denormals to zero of their sign. Every bf16 product converts its float32
/// operands with it.
void compress_to_bf16(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst);
/// The ISA oneDNN's kernels dispatch to: "AMX", "AVX512-BF16", "AVX512", "AVX2" or "other"
/// (dnnl_get_effective_cpu_isa).
const char *compress_dnnl_isa(void);
/// Asks Linux for permission to use AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
/// 0 when granted, -1 otherwise (or off Linux x86-64).
int compress_request_amx(void);
/// oneDNN's version, e.g. "2.6.3".
const char *compress_dnnl_version(void);
#endif
