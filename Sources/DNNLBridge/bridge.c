// See include/DNNLBridge.h. oneDNN objects: one engine for the process; per calling thread, one stream and three
// growable scratch buffers (A and B in bf16, the primitive's scratchpad), so concurrent callers never share a
// buffer. Primitives use a user-managed scratchpad for the same reason.
#include "DNNLBridge.h"

#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

void omp_set_num_threads(int n);

struct compress_bf16_matmul {
    dnnl_primitive_t matmul, reorder_a, reorder_b;
    dnnl_memory_desc_t a_f32, a_bf16, b_f32, b_packed, c_f32;
    size_t a_bytes, b_bytes, scratch_bytes, reorder_scratch_bytes;
    int threads;
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

static void destroy_parts(compress_bf16_matmul *p) {
    if (p->matmul) dnnl_primitive_destroy(p->matmul);
    if (p->reorder_a) dnnl_primitive_destroy(p->reorder_a);
    if (p->reorder_b) dnnl_primitive_destroy(p->reorder_b);
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

/// A reorder primitive from `from` to `to`, with a user-managed scratchpad whose size goes to `scratch_bytes`.
static dnnl_status_t make_reorder(const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                                  dnnl_primitive_t *out, size_t *scratch_bytes) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_primitive_attr_create(&attr);
    if (st == dnnl_success) st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success) st = dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, attr);
    if (st == dnnl_success) {
        const dnnl_memory_desc_t *s = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        size_t bytes = s ? dnnl_memory_desc_get_size(s) : 0;
        if (bytes > *scratch_bytes) *scratch_bytes = bytes;
        st = dnnl_primitive_create(out, pd);
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    return st;
}

compress_bf16_matmul *compress_bf16_matmul_create(int64_t m, int64_t n, int64_t k, int trans_a, int trans_b,
                                                  int64_t lda, int64_t ldb, int64_t ldc, float alpha, float beta,
                                                  int threads, int bf16, char *error, size_t error_length) {
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
    omp_set_num_threads(threads);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post_ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_matmul_desc_t desc;
    dnnl_memory_desc_t b_any;
    dnnl_dims_t a_dims = {m, k}, b_dims = {k, n}, c_dims = {m, n};
    dnnl_dims_t a_strides = {trans_a ? 1 : lda, trans_a ? lda : 1};
    dnnl_dims_t b_strides = {trans_b ? 1 : ldb, trans_b ? ldb : 1};
    dnnl_dims_t c_strides = {ldc, 1};
    CHECK(dnnl_memory_desc_init_by_strides(&p->a_f32, 2, a_dims, dnnl_f32, a_strides), "A descriptor");
    dnnl_data_type_t input_type = bf16 ? dnnl_bf16 : dnnl_f32;
    CHECK(dnnl_memory_desc_init_by_tag(&p->a_bf16, 2, a_dims, input_type, dnnl_ab), "A bf16 descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&p->b_f32, 2, b_dims, dnnl_f32, b_strides), "B descriptor");
    CHECK(dnnl_memory_desc_init_by_tag(&b_any, 2, b_dims, input_type, dnnl_format_tag_any), "B bf16 descriptor");
    CHECK(dnnl_memory_desc_init_by_strides(&p->c_f32, 2, c_dims, dnnl_f32, c_strides), "C descriptor");
    CHECK(dnnl_matmul_desc_init(&desc, &p->a_bf16, &b_any, NULL, &p->c_f32), "matmul descriptor");
    CHECK(dnnl_primitive_attr_create(&attr), "attribute");
    CHECK(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "scratchpad mode");
    if (alpha != 1) CHECK(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha), "output scale");
    if (beta != 0) {
        CHECK(dnnl_post_ops_create(&post_ops), "post-ops");
        CHECK(dnnl_post_ops_append_sum(post_ops, beta), "sum post-op");
        CHECK(dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-ops");
    }
    CHECK(dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL), "bf16 matmul (no bf16 kernel on this CPU?)");
    p->b_packed = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *s = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    p->scratch_bytes = s ? dnnl_memory_desc_get_size(s) : 0;
    p->a_bytes = dnnl_memory_desc_get_size(&p->a_bf16);
    p->b_bytes = dnnl_memory_desc_get_size(&p->b_packed);
    CHECK(dnnl_primitive_create(&p->matmul, pd), "matmul primitive");
    CHECK(make_reorder(&p->a_f32, &p->a_bf16, &p->reorder_a, &p->reorder_scratch_bytes), "A reorder");
    CHECK(make_reorder(&p->b_f32, &p->b_packed, &p->reorder_b, &p->reorder_scratch_bytes), "B reorder");
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

size_t compress_bf16_matmul_packed_b_bytes(const compress_bf16_matmul *p) { return p->b_bytes; }

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

/// Runs `reorder` from `from` (desc `from_md`) into `to` (desc `to_md`) on this thread's stream.
static int run_reorder(const compress_bf16_matmul *p, struct thread_state *s, dnnl_primitive_t reorder,
                       const dnnl_memory_desc_t *from_md, const void *from, const dnnl_memory_desc_t *to_md,
                       void *to) {
    dnnl_memory_t src = NULL, dst = NULL, pad = NULL;
    dnnl_status_t st = dnnl_memory_create(&src, from_md, engine, (void *)from);
    if (st == dnnl_success) st = dnnl_memory_create(&dst, to_md, engine, to);
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, dst}, {DNNL_ARG_SCRATCHPAD, NULL}};
    int nargs = 2;
    if (st == dnnl_success && p->reorder_scratch_bytes > 0) {
        st = scratchpad(s, p->reorder_scratch_bytes, &pad);
        args[2].memory = pad;
        nargs = 3;
    }
    if (st == dnnl_success) st = dnnl_primitive_execute(reorder, s->stream, nargs, args);
    if (st == dnnl_success) st = dnnl_stream_wait(s->stream);
    if (src) dnnl_memory_destroy(src);
    if (dst) dnnl_memory_destroy(dst);
    if (pad) dnnl_memory_destroy(pad);
    return (int)st;
}

int compress_bf16_matmul_pack_b(const compress_bf16_matmul *p, const float *b, void *packed) {
    omp_set_num_threads(p->threads);
    struct thread_state *s = thread_state();
    if (!s) return (int)dnnl_out_of_memory;
    return run_reorder(p, s, p->reorder_b, &p->b_f32, b, &p->b_packed, packed);
}

int compress_bf16_matmul_run(const compress_bf16_matmul *p, const float *a, const float *b, const void *packed_b,
                             float *c) {
    if ((b == NULL) == (packed_b == NULL)) return (int)dnnl_invalid_arguments;
    omp_set_num_threads(p->threads);
    struct thread_state *s = thread_state();
    if (!s) return (int)dnnl_out_of_memory;
    void *a16 = scratch(s, 0, p->a_bytes);
    if (p->a_bytes && !a16) return (int)dnnl_out_of_memory;
    int st = run_reorder(p, s, p->reorder_a, &p->a_f32, a, &p->a_bf16, a16);
    if (st) return st;
    if (!packed_b) {
        void *b16 = scratch(s, 1, p->b_bytes);
        if (p->b_bytes && !b16) return (int)dnnl_out_of_memory;
        st = run_reorder(p, s, p->reorder_b, &p->b_f32, b, &p->b_packed, b16);
        if (st) return st;
        packed_b = b16;
    }
    // The reorder's scratchpad (buffer 2) is free again: the matmul's scratchpad reuses it.
    dnnl_memory_t ma = NULL, mb = NULL, mc = NULL, pad = NULL;
    dnnl_status_t r = dnnl_memory_create(&ma, &p->a_bf16, engine, a16);
    if (r == dnnl_success) r = dnnl_memory_create(&mb, &p->b_packed, engine, (void *)packed_b);
    if (r == dnnl_success) r = dnnl_memory_create(&mc, &p->c_f32, engine, c);
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
