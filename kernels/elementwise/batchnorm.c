/* Batch normalisation over the channels of an (M, C) matrix: the rows are the
 * N*H*W pixels of an NHWC batch (BatchNorm2D), or the N rows of a Dense
 * activation.  Spec: fastnn/kernels/elementwise/reference.py (batchnorm_*).
 *
 *   forward (training)  mean = sum x / M,  var = sum (x - mean)^2 / M  (biased),
 *                       xhat = (x - mean) * inv_std,  y = gamma * xhat + beta,
 *                       inv_std = 1 / sqrt(var + eps)
 *   forward (eval)      the same with the caller's mean and var (one pass)
 *   backward            sum_dy = sum dy,  sum_dyx = sum dy * xhat,
 *                       dx = gamma * inv_std * (dy - sum_dy / M - xhat * sum_dyx / M)
 *
 * Why native: BatchNorm2D in numpy made six to eight passes over the
 * activations per step and a per-channel reduction along axis 0 with a few
 * channels, which numpy runs slowly; a conv net with two BatchNorm2D layers
 * trained ~1.8x slower than without them (issue 11, speedrun-cnn search).
 *
 * Reductions are deterministic and independent of the thread count: the rows
 * are cut into blocks of BN_ROWS (a function of M only); each block's sums
 * are formed in the element type and stored as double partials in the
 * caller's workspace, which are then added in block order in double.  The
 * variance is a second pass over the centred values (no cancellation).
 *
 * One body per pass, compiled twice (baseline x86-64 and AVX2+FMA): the
 * loops run over the channels of a row, which gcc vectorises in both.
 */
#include <math.h>
#include <stddef.h>

#include "cpu.h"
#include "elementwise.h"

#define BN_ROWS 256               /* rows per block: the partial sums' granularity */
/* Below this many elements, one thread: a pass is ~0.1 ns per element, and a
 * partner thread descheduled on a shared machine costs milliseconds. */
#define BN_PAR_MIN (1 << 18)

#define INLINE static inline __attribute__((always_inline))

#if FNN_X86
#define PICK(a, s) (fnn_use_avx2() ? (a) : (s))
#else
#define PICK(a, s) (s)
#endif

/* ---- the pass bodies: rows [r0, r1) of x (M, C) ---- */
#define DEFINE_BN_BODIES(REAL, SFX)                                                            \
/* out[c] = sum over the rows of (x - shift[c]) (pow 1) or its square (pow 2) */              \
INLINE void sums_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const double *shift, int square, REAL *acc, double *out)          \
{                                                                                             \
    for (ptrdiff_t c = 0; c < C; c++)                                                         \
        acc[c] = 0;                                                                           \
    if (!square) {                                                                            \
        for (ptrdiff_t r = r0; r < r1; r++) {                                                 \
            const REAL *xr = x + r * C;                                                       \
            for (ptrdiff_t c = 0; c < C; c++)                                                 \
                acc[c] += xr[c];                                                              \
        }                                                                                     \
    } else {                                                                                  \
        for (ptrdiff_t c = 0; c < C; c++)                                                     \
            acc[C + c] = (REAL)shift[c];                                                      \
        for (ptrdiff_t r = r0; r < r1; r++) {                                                 \
            const REAL *xr = x + r * C;                                                       \
            for (ptrdiff_t c = 0; c < C; c++) {                                               \
                REAL d = xr[c] - acc[C + c];                                                  \
                acc[c] += d * d;                                                              \
            }                                                                                 \
        }                                                                                     \
    }                                                                                         \
    for (ptrdiff_t c = 0; c < C; c++)                                                         \
        out[c] = (double)acc[c];                                                              \
}                                                                                             \
/* y = (x - mean) * a + b with a = gamma * inv, b = beta (coef rows: mean, inv, a, b);        \
 * xhat = (x - mean) * inv when xhat != NULL */                                               \
INLINE void norm_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const REAL *coef, REAL *y, REAL *xhat)                            \
{                                                                                             \
    const REAL *mean = coef, *inv = coef + C, *a = coef + 2 * C, *b = coef + 3 * C;           \
    for (ptrdiff_t r = r0; r < r1; r++) {                                                     \
        const REAL *xr = x + r * C;                                                           \
        REAL *yr = y + r * C;                                                                 \
        if (xhat) {                                                                           \
            REAL *hr = xhat + r * C;                                                          \
            for (ptrdiff_t c = 0; c < C; c++) {                                               \
                REAL d = xr[c] - mean[c];                                                     \
                hr[c] = d * inv[c];                                                           \
                yr[c] = d * a[c] + b[c];                                                      \
            }                                                                                 \
        } else {                                                                              \
            for (ptrdiff_t c = 0; c < C; c++)                                                 \
                yr[c] = (xr[c] - mean[c]) * a[c] + b[c];                                      \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
/* out[c] = sum dy, out[C + c] = sum dy * xhat */                                             \
INLINE void bsums_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,         \
                             const REAL *xhat, REAL *acc, double *out)                        \
{                                                                                             \
    for (ptrdiff_t c = 0; c < 2 * C; c++)                                                     \
        acc[c] = 0;                                                                           \
    for (ptrdiff_t r = r0; r < r1; r++) {                                                     \
        const REAL *gr = dy + r * C, *hr = xhat + r * C;                                      \
        for (ptrdiff_t c = 0; c < C; c++) {                                                   \
            acc[c] += gr[c];                                                                  \
            acc[C + c] += gr[c] * hr[c];                                                      \
        }                                                                                     \
    }                                                                                         \
    for (ptrdiff_t c = 0; c < 2 * C; c++)                                                     \
        out[c] = (double)acc[c];                                                              \
}                                                                                             \
/* dx = (dy - k0) * s - xhat * k1 (coef rows: k0 = sum_dy / M, s = gamma * inv,              \
 * k1 = s * sum_dyx / M) */                                                                   \
INLINE void dx_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,            \
                          const REAL *xhat, const REAL *coef, REAL *dx)                       \
{                                                                                             \
    const REAL *k0 = coef, *s = coef + C, *k1 = coef + 2 * C;                                 \
    for (ptrdiff_t r = r0; r < r1; r++) {                                                     \
        const REAL *gr = dy + r * C, *hr = xhat + r * C;                                      \
        REAL *dr = dx + r * C;                                                                \
        for (ptrdiff_t c = 0; c < C; c++)                                                     \
            dr[c] = (gr[c] - k0[c]) * s[c] - hr[c] * k1[c];                                   \
    }                                                                                         \
}                                                                                             \
static void sums_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const double *shift, int square, REAL *acc, double *out)          \
{ sums_body_##SFX(r0, r1, C, x, shift, square, acc, out); }                                   \
static void norm_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const REAL *coef, REAL *y, REAL *xhat)                            \
{ norm_body_##SFX(r0, r1, C, x, coef, y, xhat); }                                             \
static void bsums_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,         \
                             const REAL *xhat, REAL *acc, double *out)                        \
{ bsums_body_##SFX(r0, r1, C, dy, xhat, acc, out); }                                          \
static void dx_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,            \
                          const REAL *xhat, const REAL *coef, REAL *dx)                       \
{ dx_body_##SFX(r0, r1, C, dy, xhat, coef, dx); }                                             \
FNN_TARGET_AVX2 static void sums_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,          \
                                            const REAL *x, const double *shift, int square,   \
                                            REAL *acc, double *out)                           \
{ sums_body_##SFX(r0, r1, C, x, shift, square, acc, out); }                                   \
FNN_TARGET_AVX2 static void norm_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,          \
                                            const REAL *x, const REAL *coef, REAL *y,         \
                                            REAL *xhat)                                       \
{ norm_body_##SFX(r0, r1, C, x, coef, y, xhat); }                                             \
FNN_TARGET_AVX2 static void bsums_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,         \
                                             const REAL *dy, const REAL *xhat, REAL *acc,     \
                                             double *out)                                     \
{ bsums_body_##SFX(r0, r1, C, dy, xhat, acc, out); }                                          \
FNN_TARGET_AVX2 static void dx_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,            \
                                          const REAL *dy, const REAL *xhat, const REAL *coef, \
                                          REAL *dx)                                           \
{ dx_body_##SFX(r0, r1, C, dy, xhat, coef, dx); }

/* ---- the drivers ---- */
/* Workspace (doubles): ws_size = 2 * nblocks * C + 4 * C, nblocks = ceil(M / BN_ROWS); the
 * element-typed scratch (acc, 2C per thread, and coef, 4C) lives in `scratch`
 * (REAL, (2 * nthreads + 4) * C).  Both come from the caller: nothing is allocated here. */
#define DEFINE_BN_DRIVERS(REAL, SFX)                                                           \
static void block_sums_##SFX(ptrdiff_t M, ptrdiff_t C, const REAL *x, const double *shift,    \
                             int square, double *part, REAL *acc, int nt)                     \
{                                                                                             \
    void (*f)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const double *, int, REAL *,     \
              double *) = PICK(sums_avx2_##SFX, sums_base_##SFX);                             \
    ptrdiff_t nb = (M + BN_ROWS - 1) / BN_ROWS;                                               \
    _Pragma("omp parallel num_threads(nt) if (nt > 1)")                                       \
    {                                                                                         \
        int t = 0;                                                                            \
        FNN_OMP_THREAD_NUM(t);                                                                \
        REAL *a = acc + (ptrdiff_t)t * 2 * C;                                                 \
        _Pragma("omp for schedule(static)")                                                   \
        for (ptrdiff_t b = 0; b < nb; b++) {                                                  \
            ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;             \
            f(r0, r1, C, x, shift, square, a, part + b * C);                                  \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
static void reduce_blocks_##SFX(ptrdiff_t nb, ptrdiff_t width, const double *part,            \
                                double *out)                                                  \
{                                                                                             \
    for (ptrdiff_t c = 0; c < width; c++)                                                     \
        out[c] = 0.0;                                                                         \
    for (ptrdiff_t b = 0; b < nb; b++)                                                        \
        for (ptrdiff_t c = 0; c < width; c++)                                                 \
            out[c] += part[b * width + c];                                                    \
}                                                                                             \
void fnn_batchnorm_forward_##SFX(ptrdiff_t M, ptrdiff_t C, const REAL *x, const REAL *gamma,  \
                                 const REAL *beta, double eps, int training, double *mean,    \
                                 double *var, REAL *inv_std, REAL *y, REAL *xhat, double *ws, \
                                 REAL *scratch, int nthreads)                                 \
{                                                                                             \
    int nt = (nthreads > 1 && M * C >= BN_PAR_MIN) ? nthreads : 1;                            \
    ptrdiff_t nb = (M + BN_ROWS - 1) / BN_ROWS;                                               \
    REAL *acc = scratch, *coef = scratch + (ptrdiff_t)2 * nthreads * C;                       \
    if (training) {                                                                           \
        block_sums_##SFX(M, C, x, NULL, 0, ws, acc, nt);                                      \
        reduce_blocks_##SFX(nb, C, ws, mean);                                                 \
        for (ptrdiff_t c = 0; c < C; c++)                                                     \
            mean[c] /= (double)M;                                                             \
        block_sums_##SFX(M, C, x, mean, 1, ws, acc, nt);                                      \
        reduce_blocks_##SFX(nb, C, ws, var);                                                  \
        for (ptrdiff_t c = 0; c < C; c++)                                                     \
            var[c] /= (double)M;                                                              \
    }                                                                                         \
    for (ptrdiff_t c = 0; c < C; c++) {                                                       \
        REAL inv = (REAL)(1.0 / sqrt((double)(REAL)var[c] + eps));                            \
        coef[c] = (REAL)mean[c];                                                              \
        coef[C + c] = inv_std[c] = inv;                                                       \
        coef[2 * C + c] = gamma[c] * inv;                                                     \
        coef[3 * C + c] = beta[c];                                                            \
    }                                                                                         \
    void (*f)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const REAL *, REAL *, REAL *) =  \
        PICK(norm_avx2_##SFX, norm_base_##SFX);                                               \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                  \
    for (ptrdiff_t b = 0; b < nb; b++) {                                                      \
        ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                 \
        f(r0, r1, C, x, coef, y, xhat);                                                       \
    }                                                                                         \
}                                                                                             \
void fnn_batchnorm_backward_##SFX(ptrdiff_t M, ptrdiff_t C, const REAL *dy, const REAL *xhat, \
                                  const REAL *gamma, const REAL *inv_std, int batch_stats,    \
                                  double *sums, REAL *dx, double *ws, REAL *scratch,          \
                                  int nthreads)                                               \
{                                                                                             \
    int nt = (nthreads > 1 && M * C >= BN_PAR_MIN) ? nthreads : 1;                            \
    ptrdiff_t nb = (M + BN_ROWS - 1) / BN_ROWS;                                               \
    REAL *acc = scratch, *coef = scratch + (ptrdiff_t)2 * nthreads * C;                       \
    void (*fs)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const REAL *, REAL *,           \
               double *) = PICK(bsums_avx2_##SFX, bsums_base_##SFX);                          \
    _Pragma("omp parallel num_threads(nt) if (nt > 1)")                                       \
    {                                                                                         \
        int t = 0;                                                                            \
        FNN_OMP_THREAD_NUM(t);                                                                \
        REAL *a = acc + (ptrdiff_t)t * 2 * C;                                                 \
        _Pragma("omp for schedule(static)")                                                   \
        for (ptrdiff_t b = 0; b < nb; b++) {                                                  \
            ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;             \
            fs(r0, r1, C, dy, xhat, a, ws + b * 2 * C);                                       \
        }                                                                                     \
    }                                                                                         \
    reduce_blocks_##SFX(nb, 2 * C, ws, sums);                                                 \
    for (ptrdiff_t c = 0; c < C; c++) {                                                       \
        REAL s = gamma[c] * inv_std[c];                                                       \
        coef[c] = batch_stats ? (REAL)(sums[c] / (double)M) : (REAL)0;                        \
        coef[C + c] = s;                                                                      \
        coef[2 * C + c] = batch_stats ? (REAL)((double)s * sums[C + c] / (double)M) : (REAL)0;\
    }                                                                                         \
    void (*f)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const REAL *, const REAL *,      \
              REAL *) = PICK(dx_avx2_##SFX, dx_base_##SFX);                                   \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                  \
    for (ptrdiff_t b = 0; b < nb; b++) {                                                      \
        ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                 \
        f(r0, r1, C, dy, xhat, coef, dx);                                                     \
    }                                                                                         \
}

#ifdef FASTNN_HAVE_OPENMP
#define FNN_OMP_THREAD_NUM(t) ((t) = omp_get_thread_num())
#else
#define FNN_OMP_THREAD_NUM(t) ((void)(t))
#endif

DEFINE_BN_BODIES(float, f32)
DEFINE_BN_BODIES(double, f64)
DEFINE_BN_DRIVERS(float, f32)
DEFINE_BN_DRIVERS(double, f64)
