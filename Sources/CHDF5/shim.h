#include <hdf5.h>
#include <stdio.h>

// HDF5 exposes its predefined types and defaults as macros that expand to global
// ids (often after calling H5open()); Swift cannot import them, so we wrap them.
static inline hid_t h5_native_float(void) { return H5T_NATIVE_FLOAT; }
static inline hid_t h5_native_int64(void) { return H5T_NATIVE_INT64; }
static inline hid_t h5_native_int32(void) { return H5T_NATIVE_INT32; }
static inline hid_t h5_native_uint8(void) { return H5T_NATIVE_UINT8; }
static inline hid_t h5_native_uint16(void) { return H5T_NATIVE_UINT16; }
static inline hid_t h5_ieee_f32le(void) { return H5T_IEEE_F32LE; }
static inline hid_t h5_std_i64le(void) { return H5T_STD_I64LE; }
static inline hid_t h5_std_i32le(void) { return H5T_STD_I32LE; }
static inline hid_t h5_std_u8le(void) { return H5T_STD_U8LE; }
static inline hid_t h5_std_u16le(void) { return H5T_STD_U16LE; }
static inline hid_t h5_c_s1(void) { return H5T_C_S1; }
static inline hid_t h5p_default(void) { return H5P_DEFAULT; }
static inline hid_t h5s_all(void) { return H5S_ALL; }
static inline hid_t h5p_file_access(void) { return H5P_FILE_ACCESS; }
static inline hid_t h5p_link_create(void) { return H5P_LINK_CREATE; }
static inline unsigned h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
static inline unsigned h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
static inline unsigned h5f_acc_excl(void) { return H5F_ACC_EXCL; }
static inline void h5_silence_errors(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }
static inline size_t h5t_variable(void) { return H5T_VARIABLE; }
static inline hid_t h5_native_double(void) { return H5T_NATIVE_DOUBLE; }

// The library's own account of the last failure: every description on the default error stack, outermost
// (the API call) first, joined by "; " into `buf` (truncated to `size`). Empty when the stack is empty.
typedef struct { char *buf; size_t size; size_t used; } h5_error_text;
static inline herr_t h5_error_walker(unsigned n, const H5E_error2_t *e, void *data) {
    h5_error_text *t = (h5_error_text *)data;
    (void)n;
    if (t->used + 1 >= t->size || e->desc == NULL || e->desc[0] == 0) return 0;
    int w = snprintf(t->buf + t->used, t->size - t->used, "%s%s", t->used ? "; " : "", e->desc);
    if (w > 0) t->used += (size_t)w < t->size - t->used ? (size_t)w : t->size - t->used - 1;
    return 0;
}
static inline void h5_error_stack(char *buf, size_t size) {
    h5_error_text t = { buf, size, 0 };
    if (size == 0) return;
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, h5_error_walker, &t);
}
