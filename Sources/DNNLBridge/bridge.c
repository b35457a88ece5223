// See include/DNNLBridge.h. oneDNN objects: one engine for the process; per calling thread, one stream and three
// growable scratch buffers (A and B in bf16, the primitive's scratchpad), so concurrent callers never share a
// buffer. Primitives use a user-managed scratchpad for the same reason.
#include "DNNLBridge.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

void omp_set_num_threads(int n);

struct compress_bf16_matmul {
    dnnl_primitive_t matmul;
    // A and B as the matmul reads them: bf16 copies in the operands' own storage order (contiguous), or, with
    // bf16 = 0, the caller's float32 memory with its strides.
    dnnl_memory_desc_t a_md, b_md, c_md;
    int64_t a_rows, a_cols, lda, b_rows, b_cols, ldb;  // storage shape of A and B (op() undone), as stored
    size_t scratch_bytes;
    int threads, bf16;
};

static dnnl_engine_t engine;
static dnnl_status_t engine_status = dnnl_success;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static void create_engine(void) { engine_status = dnnl_engine_create(&engine, dnnl_cpu, 0); }

// Per-thread state.
struct thread_state {
    dnnl_stream_t stream;
    void *buffer[3];
    size_t capacity[3];
};
static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;
static void free_state(void *p) {
    struct thread_state *s = p;
    if (s->stream) dnnl_stream_destroy(s->stream);
    for (int i = 0; i < 3; i++) free(s->buffer[i]);
    free(s);
}
static void create_state_key(void) { pthread_key_create(&state_key, free_state); }
static struct thread_state *thread_state(void) {
    pthread_once(&state_once, create_state_key);
    struct thread_state *s = pthread_getspecific(state_key);
    if (s) return s;
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    if (dnnl_stream_create(&s->stream, engine, dnnl_stream_default_flags) != dnnl_success) {
        free(s);
        return NULL;
    }
    pthread_setspecific(state_key, s);
    return s;
}
/// Scratch buffer `i` of this thread, at least `bytes` long, 64-byte aligned (NULL when out of memory).
static void *scratch(struct thread_state *s, int i, size_t bytes) {
    if (bytes == 0) return NULL;
    if (s->capacity[i] < bytes) {
        free(s->buffer[i]);
        size_t rounded = (bytes + 63) / 64 * 64;
        s->buffer[i] = aligned_alloc(64, rounded);
        s->capacity[i] = s->buffer[i] ? rounded : 0;
    }
    return s->buffer[i];
}

/// bf16 of x as `vcvtneps2bf16` gives it: round to nearest even, NaN made quiet, denormals to zero of their sign.
static uint16_t bf16_scalar(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static void to_bf16_avx512(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst) {
    for (int64_t r = 0; r < rows; r++) {
        const float *in = src + r * ld;
        uint16_t *out = dst + r * cols;
        int64_t j = 0;
        for (; j + 32 <= cols; j += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(in + j + 16), _mm512_loadu_ps(in + j));
            _mm512_storeu_si512(out + j, (__m512i)v);
        }
        for (; j < cols; j += 16) {
            __mmask16 m = (__mmask16)(cols - j >= 16 ? 0xffff : (1u << (cols - j)) - 1);
            __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, in + j));
            _mm256_mask_storeu_epi16(out + j, m, (__m256i)v);
        }
    }
}
#endif

/// dst (rows × cols, contiguous) = bf16 of src (rows × cols, leading dimension ld): AVX512-BF16's
/// `vcvtne2ps2bf16` where the CPU has it (round to nearest even, denormals to zero, like oneDNN's own reorders on
/// these CPUs), else the same in scalar code. About memory speed: oneDNN's generic reorder took 12.8 % of a bf16
/// training step's samples (benchmarks/README.md), this 7 %.
void compress_to_bf16(const float *src, int64_t rows, int64_t cols, int64_t ld, uint16_t *dst) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512bf16")) {
        to_bf16_avx512(src, rows, cols, ld, dst);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < cols; j++) dst[r * cols + j] = bf16_scalar(src[r * ld + j]);
}

static void destroy_parts(compress_bf16_matmul *p) {
    if (p->matmul) dnnl_primitive_destroy(p->matmul);
    free(p);
}

void compress_bf16_matmul_destroy(compress_bf16_matmul *p) {
    if (p) destroy_parts(p);
}

#define CHECK(call, what)                                                                                   \
    do {                                                                                                    \
        dnnl_status_t st_ = (call);                                                                         \
        if (st_ != dnnl_success) {                                                                          \
            snprintf(error, error_length, "oneDNN %s failed (status %d)", what, (int)st_);                  \
            goto fail;                                                                                      \
        }                                                                                                   \
    } while (0)

compress_bf16_matmul *compress_bf16_matmul_create(int64_t m, int64_t n, int64_t k, int trans_a, int trans_b,
                                                  int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta,
                                                  int threads, int bf16, int a_strided, int b_strided, char *error,
                                                  size_t error_length) {
    pthread_once(&engine_once, create_engine);
    if (engine_status != dnnl_success) {
        snprintf(error, error_length, "oneDNN could not create a CPU engine (status %d)", (int)engine_status);
        return NULL;
    }
    compress_bf16_matmul *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(error, error_length, "out of memory");
        return NULL;
    }
    p->threads = threads;
    p->bf16 = bf16;
    omp_set_num_threads(threads);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_matmul_desc_t desc;
    dnnl_dims_t a_dims = {m, k}, b_dims = {k, n}, c_dims = {m, n};
    // Storage of A and B: op(A) = A (m × k rows) or Aᵀ (k × m rows), likewise B; the bf16 copies keep that
    // order without the leading dimension's padding, so converting is a contiguous pass.
    p->a_rows = trans_a ? k : m; p->a_cols = trans_a ? m : k; p->lda = lda;
    p->b_rows = trans_b ? n : k; p->b_cols = trans_b ? k : n; p->ldb = ldb;
    int64_t a_ld = bf16 && !a_strided ? p->a_cols : lda, b_ld = bf16 && !b_strided ? p->b_cols : ldb;
    dnnl_dims_t a_strides = {trans_a ? 1 : a_ld, trans_a ? a_ld : 1};
    dnnl_dims_t b_strides = {trans_b ? 1 : b_ld, trans_b ? b_ld : 1};
    dnnl_dims_t c_strides = {ldc, 1};
    dnnl_data_type_t input_type = bf16 ? dnnl_bf16 : dnnl_f32;
    CHECK(dnnl_memory_desc_init_by_strides(&p->a_md, 2, a_dims, input_type, a_strides), "A descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&p->b_md, 2, b_dims, input_type, b_strides), "B descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&p->c_md, 2, c_dims, dnnl_f32, c_strides), "C descriptor");
    CHECK(dnnl_matmul_desc_init(&desc, &p->a_md, &p->b_md, NULL, &p->c_md), "matmul descriptor");
    CHECK(dnnl_primitive_attr_create(&attr), "attribute");
    CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
    if (alpha != 1) CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "output scale");
    if (beta != 0) {
        CHECK(dnnl_post_ops_create(&post_ops), "post-ops");
        CHECK(dnnl_post_ops_append_sum(post_ops, beta), "sum post-op");
        CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-ops");
    }
    CHECK(dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL), "bf16 matmul (no bf16 kernel on this CPU?)");
    const dnnl_memory_desc_t *s = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    p->scratch_bytes = s ? dnnl_memory_desc_get_size(s) : 0;
    CHECK(dnnl_primitive_create(&p->matmul, pd), "matmul primitive");
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    return p;
fail:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    if (post_ops) dnnl_post_ops_destroy(post_ops);
    destroy_parts(p);
    return NULL;
}

size_t compress_bf16_matmul_packed_b_bytes(const compress_bf16_matmul *p) {
    return p->bf16 ? (size_t)(p->b_rows * p->b_cols) * 2 : 0;
}

/// A oneDNN memory object of `bytes` over this thread's scratch buffer 2 (a primitive's user-managed scratchpad).
static dnnl_status_t scratchpad(struct thread_state *s, size_t bytes, dnnl_memory_t *pad) {
    dnnl_memory_desc_t md;
    dnnl_dims_t dims = {(dnnl_dim_t)bytes};
    dnnl_status_t st = dnnl_memory_desc_init_by_tag(&md, 1, dims, dnnl_u8, dnnl_a);
    void *buffer = scratch(s, 2, bytes);
    if (st == dnnl_success && !buffer) st = dnnl_out_of_memory;
    if (st == dnnl_success) st = dnnl_memory_create(pad, &md, engine, buffer);
    return st;
}

int compress_bf16_matmul_pack_b(const compress_bf16_matmul *p, const float *b, void *packed) {
    if (!p->bf16) return (int)dnnl_invalid_arguments;
    compress_to_bf16(b, p->b_rows, p->b_cols, p->ldb, packed);
    return 0;
}

int compress_bf16_matmul_run(const compress_bf16_matmul *p, const float *a, const void *a16, const float *b,
                             const void *b16, float *c) {
    if ((a == NULL) == (a16 == NULL) || (b == NULL) == (b16 == NULL)) return (int)dnnl_invalid_arguments;
    if (!p->bf16 && (a16 || b16)) return (int)dnnl_invalid_arguments;
    omp_set_num_threads(p->threads);
    struct thread_state *s = thread_state();
    if (!s) return (int)dnnl_out_of_memory;
    const void *a_in = a16 ? a16 : (const void *)a, *b_in = b16 ? b16 : (const void *)b;
    if (p->bf16 && a) {
        void *buffer = scratch(s, 0, (size_t)(p->a_rows * p->a_cols) * 2);
        if (p->a_rows * p->a_cols && !buffer) return (int)dnnl_out_of_memory;
        compress_to_bf16(a, p->a_rows, p->a_cols, p->lda, buffer);
        a_in = buffer;
    }
    if (p->bf16 && b) {
        void *buffer = scratch(s, 1, compress_bf16_matmul_packed_b_bytes(p));
        if (p->b_rows * p->b_cols && !buffer) return (int)dnnl_out_of_memory;
        compress_to_bf16(b, p->b_rows, p->b_cols, p->ldb, buffer);
        b_in = buffer;
    }
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, pad = NULL;
    dnnl_status_t r = dnnl_memory_create(&ma, &p->a_md, engine, (void *)a_in);
    if (r == dnnl_success) r = dnnl_memory_create(&mb, &p->b_md, engine, (void *)b_in);
    if (r == dnnl_success) r = dnnl_memory_create(&mc, &p->c_md, engine, c);
    dnnl_exec_arg_t args[4] = {
        {DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}, {DNNL_ARG_SCRATCHPAD, NULL}};
    int nargs = 3;
    if (r == dnnl_success && p->scratch_bytes > 0) {
        r = scratchpad(s, p->scratch_bytes, &pad);
        args[3].memory = pad;
        nargs = 4;
    }
    if (r == dnnl_success) r = dnnl_primitive_execute(p->matmul, s->stream, nargs, args);
    if (r == dnnl_success) r = dnnl_stream_wait(s->stream);
    if (ma) dnnl_memory_destroy(ma);
    if (mb) dnnl_memory_destroy(mb);
    if (mc) dnnl_memory_destroy(mc);
    if (pad) dnnl_memory_destroy(pad);
    return (int)r;
}

const char *compress_dnnl_isa(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_avx512_core_amx: return "AMX";
    case dnnl_cpu_isa_avx512_core_bf16: return "AVX512-BF16";
    case dnnl_cpu_isa_avx512_core_vnni:
    case dnnl_cpu_isa_avx512_core: return "AVX512";
    case dnnl_cpu_isa_avx2_vnni:
    case dnnl_cpu_isa_avx2: return "AVX2";
    default: return "other";
    }
}

int compress_request_amx(void) {
#if defined(__linux__) && defined(__x86_64__)
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0 ? 0 : -1;
#else
    return -1;
#endif
}

const char *compress_dnnl_version(void) {
    static char text[32];
    const dnnl_version_t *v = dnnl_version();
    snprintf(text, sizeof text, "%d.%d.%d", v->major, v->minor, v->patch);
    return text;
}
