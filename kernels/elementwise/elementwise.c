/* Activation kernels (see elementwise.h for the math).
 *
 * The cheap cases (relu, step, every backward rule) are plain loops that gcc
 * vectorises; each is written once as an always-inline body and compiled
 * twice: for the baseline ISA and, inside an FNN_TARGET_AVX2 function, for
 * AVX2 (chosen at run time).  sigmoid and tanh in float32 have explicit AVX2
 * code around the vector exp of fnn_vexp.h; float64 sigmoid/tanh use libm.
 */
#include <math.h>

#include "cpu.h"
#include "elementwise.h"
#include "fnn_vexp.h"

#define ACT_RELU 0
#define ACT_SIGMOID 1
#define ACT_TANH 2
#define ACT_STEP 3

#define EW_CHUNK 16384     /* elements per OpenMP work item (multiple of 8) */
#define EW_PAR_MIN 65536   /* below this a parallel region costs more than it saves */

#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ scalar elementwise math */

static inline float sigmoid_f32(float x)
{
    /* exp of a non-positive number never overflows */
    float e = expf(-fabsf(x));
    float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

static inline double sigmoid_f64(double x)
{
    double e = exp(-fabs(x));
    double r = 1.0 / (1.0 + e);
    return x >= 0.0 ? r : e * r;
}

/* ------------------------------------------------------------------ loop bodies (both ISAs) */

#define DEFINE_BODIES(REAL, SFX)                                                              \
INLINE void relu_step_body_##SFX(int kind, const REAL *x, REAL *out, ptrdiff_t n)             \
{                                                                                             \
    if (kind == ACT_RELU) {                                                                   \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            out[i] = x[i] < 0 ? (REAL)0 : x[i];          /* NaN stays NaN */                \
    } else {                                                                                  \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            out[i] = x[i] > 0 ? (REAL)1 : (REAL)0;                                            \
    }                                                                                         \
}                                                                                             \
INLINE void backward_body_##SFX(int kind, const REAL *y, const REAL *dout, REAL *dx,         \
                                ptrdiff_t n, int acc)                                         \
{                                                                                             \
    if (kind == ACT_STEP) {                                                                   \
        if (!acc)                                                                             \
            for (ptrdiff_t i = 0; i < n; i++)                                                 \
                dx[i] = 0;                                                                    \
        return;                                                                               \
    }                                                                                         \
    for (ptrdiff_t i = 0; i < n; i++) {                                                       \
        REAL g;                                                                               \
        if (kind == ACT_RELU)                                                                 \
            g = y[i] > 0 ? dout[i] : (REAL)0;                                                 \
        else if (kind == ACT_SIGMOID)                                                         \
            g = dout[i] * y[i] * ((REAL)1 - y[i]);                                            \
        else                                                                                  \
            g = dout[i] * ((REAL)1 - y[i] * y[i]);                                            \
        dx[i] = acc ? dx[i] + g : g;                                                          \
    }                                                                                         \
}                                                                                             \
static void backward_scalar_##SFX(int kind, const REAL *y, const REAL *dout, REAL *dx,        \
                                  ptrdiff_t n, int acc)                                       \
{                                                                                             \
    /* one loop per case so that each one vectorises */                                     \
    switch (kind) {                                                                           \
    case ACT_RELU: backward_body_##SFX(ACT_RELU, y, dout, dx, n, acc); break;                 \
    case ACT_SIGMOID: backward_body_##SFX(ACT_SIGMOID, y, dout, dx, n, acc); break;           \
    case ACT_TANH: backward_body_##SFX(ACT_TANH, y, dout, dx, n, acc); break;                 \
    default: backward_body_##SFX(ACT_STEP, y, dout, dx, n, acc); break;                       \
    }                                                                                         \
}                                                                                             \
static void forward_scalar_##SFX(int kind, const REAL *x, REAL *out, ptrdiff_t n)             \
{                                                                                             \
    switch (kind) {                                                                           \
    case ACT_RELU: relu_step_body_##SFX(ACT_RELU, x, out, n); break;                          \
    case ACT_STEP: relu_step_body_##SFX(ACT_STEP, x, out, n); break;                          \
    case ACT_SIGMOID:                                                                         \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            out[i] = sigmoid_##SFX(x[i]);                                                     \
        break;                                                                                \
    default:                                                                                  \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            out[i] = TANH_##SFX(x[i]);                                                        \
        break;                                                                                \
    }                                                                                         \
}

#define TANH_f32 tanhf
#define TANH_f64 tanh
DEFINE_BODIES(float, f32)
DEFINE_BODIES(double, f64)

/* ------------------------------------------------------------------ AVX2 */

#if FNN_X86
FNN_TARGET_AVX2 static inline __m256 sigmoid256(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 e = fnn_exp256_ps(_mm256_or_ps(x, sign));          /* exp(-|x|) in (0, 1] */
    __m256 r = _mm256_div_ps(one, _mm256_add_ps(one, e));
    __m256 neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    return _mm256_blendv_ps(r, _mm256_mul_ps(e, r), neg);
}

/* tanh: an odd polynomial for |x| < 0.625 (Cephes tanhf; no cancellation near 0), else
 * (1 - e) / (1 + e) with e = exp(-2|x|) and the sign restored.  About 1e-7 relative
 * error: the backward pass computes 1 - y*y from this y, which amplifies any error
 * near saturation, so accuracy wins over the faster rational forms here. */
FNN_TARGET_AVX2 static inline __m256 tanh256(__m256 x)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 a = _mm256_andnot_ps(sign, x);
    /* |x| < 0.625: odd polynomial (Cephes tanhf), avoids the cancellation in 1 - e */
    __m256 s = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-3.33332819422e-1f));
    __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, s), x, x);
    /* otherwise: (1 - e) / (1 + e) with e = exp(-2|x|), sign restored */
    __m256 e = fnn_exp256_ps(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
    __m256 big = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    big = _mm256_or_ps(big, _mm256_and_ps(x, sign));
    __m256 r = _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
    return _mm256_blendv_ps(r, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));    /* NaN stays NaN */
}

FNN_TARGET_AVX2 static void forward_avx2_f32(int kind, const float *x, float *out, ptrdiff_t n)
{
    if (kind == ACT_RELU || kind == ACT_STEP) {
        if (kind == ACT_RELU)
            relu_step_body_f32(ACT_RELU, x, out, n);
        else
            relu_step_body_f32(ACT_STEP, x, out, n);
        return;
    }
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(out + i, kind == ACT_SIGMOID ? sigmoid256(v) : tanh256(v));
    }
    if (i < n) {
        __m256i mk = fnn_tail_mask(n - i);
        __m256 v = _mm256_maskload_ps(x + i, mk);
        _mm256_maskstore_ps(out + i, mk, kind == ACT_SIGMOID ? sigmoid256(v) : tanh256(v));
    }
}

FNN_TARGET_AVX2 static void forward_avx2_f64(int kind, const double *x, double *out, ptrdiff_t n)
{
    if (kind == ACT_RELU)
        relu_step_body_f64(ACT_RELU, x, out, n);
    else if (kind == ACT_STEP)
        relu_step_body_f64(ACT_STEP, x, out, n);
    else
        forward_scalar_f64(kind, x, out, n);   /* libm exp/tanh dominate */
}

#define DEFINE_BACKWARD_AVX2(REAL, SFX)                                                       \
FNN_TARGET_AVX2 static void backward_avx2_##SFX(int kind, const REAL *y, const REAL *dout,     \
                                                REAL *dx, ptrdiff_t n, int acc)               \
{                                                                                             \
    switch (kind) {                                                                           \
    case ACT_RELU: backward_body_##SFX(ACT_RELU, y, dout, dx, n, acc); break;                 \
    case ACT_SIGMOID: backward_body_##SFX(ACT_SIGMOID, y, dout, dx, n, acc); break;           \
    case ACT_TANH: backward_body_##SFX(ACT_TANH, y, dout, dx, n, acc); break;                 \
    default: backward_body_##SFX(ACT_STEP, y, dout, dx, n, acc); break;                       \
    }                                                                                         \
}
DEFINE_BACKWARD_AVX2(float, f32)
DEFINE_BACKWARD_AVX2(double, f64)
#endif

/* ------------------------------------------------------------------ drivers */

#if FNN_X86
#define PICK(avx2, a, s) ((avx2) ? (a) : (s))
#else
#define PICK(avx2, a, s) (s)
#endif

#define DEFINE_DRIVERS(REAL, SFX)                                                             \
void fnn_act_forward_##SFX(int kind, ptrdiff_t n, const REAL *x, REAL *out, int nthreads)     \
{                                                                                             \
    void (*f)(int, const REAL *, REAL *, ptrdiff_t) =                                         \
        PICK(fnn_use_avx2(), forward_avx2_##SFX, forward_scalar_##SFX);                           \
    ptrdiff_t chunks = (n + EW_CHUNK - 1) / EW_CHUNK;                                         \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= EW_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * EW_CHUNK, len = n - lo < EW_CHUNK ? n - lo : EW_CHUNK;             \
        f(kind, x + lo, out + lo, len);                                                       \
    }                                                                                         \
}                                                                                             \
void fnn_act_backward_##SFX(int kind, ptrdiff_t n, const REAL *y, const REAL *dout, REAL *dx, \
                            int accumulate, int nthreads)                                     \
{                                                                                             \
    void (*f)(int, const REAL *, const REAL *, REAL *, ptrdiff_t, int) =                      \
        PICK(fnn_use_avx2(), backward_avx2_##SFX, backward_scalar_##SFX);                         \
    ptrdiff_t chunks = (n + EW_CHUNK - 1) / EW_CHUNK;                                         \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= EW_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * EW_CHUNK, len = n - lo < EW_CHUNK ? n - lo : EW_CHUNK;             \
        f(kind, y + lo, dout + lo, dx + lo, len, accumulate);                                 \
    }                                                                                         \
}

DEFINE_DRIVERS(float, f32)
DEFINE_DRIVERS(double, f64)
