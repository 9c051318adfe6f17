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
/* Below this many elements, one thread.  A pass is memory-bound, ~0.1-0.2 ns per
 * element on one core (0.29 ms for the three forward passes over 64x26x26x16), so a
 * second thread saves little, while each OpenMP region waits at its closing barrier
 * for a partner that a busy machine has descheduled: with one compiler job beside a
 * 2-thread run, a speedrun-cnn step measured 133 ms instead of ~8, its BatchNorm
 * forward 23 ms (three regions of a 128x13x13x16 batch). */
#define BN_PAR_MIN (1 << 21)

#define INLINE static inline __attribute__((always_inline))

#if FNN_X86
#define PICK(a, s) (fnn_use_avx2() ? (a) : (s))
#else
#define PICK(a, s) (s)
#endif

/* ---- the pass bodies: rows [r0, r1) of x (M, C) ---- */
/* Channels go in tiles of BN_CT held in local arrays: a full tile's loops have a
 * constant trip count, so gcc keeps the tile's sums in vector registers across the
 * rows (sums kept behind a pointer were loaded and stored for every row: 2.5x slower). */
#define BN_CT 16
/* 32-byte vectors of GCC's vector extension (two SSE registers in the baseline build,
 * one ymm in the AVX2 one), loadable from any element-aligned address */
typedef float bn_vf32 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double bn_vf64 __attribute__((vector_size(32), aligned(8), may_alias));
#define DEFINE_BN_BODIES(REAL, SFX)                                                            \
/* out[c] = sum over the rows of x (square = 0) or of (x - shift[c])^2 (square = 1) */       \
INLINE void sums_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const double *shift, int square, double *out)                     \
{                                                                                             \
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BN_CT) {                                             \
        ptrdiff_t w = C - c0 < BN_CT ? C - c0 : BN_CT;                                        \
        REAL a[BN_CT], sh[BN_CT];                                                             \
        for (int j = 0; j < BN_CT; j++) {                                                     \
            a[j] = 0;                                                                         \
            sh[j] = square && j < w ? (REAL)shift[c0 + j] : (REAL)0;                          \
        }                                                                                     \
        const REAL *xc = x + c0;                                                              \
        if (w == BN_CT) {                                                                     \
            enum { L = 32 / sizeof(REAL), NV = BN_CT / L };                                   \
            bn_v##SFX va[NV], vs[NV];                                                         \
            for (int k = 0; k < NV; k++) {                                                    \
                va[k] = *(const bn_v##SFX *)(a + k * L);                                      \
                vs[k] = *(const bn_v##SFX *)(sh + k * L);                                     \
            }                                                                                 \
            if (!square) {                                                                    \
                for (ptrdiff_t r = r0; r < r1; r++)                                           \
                    for (int k = 0; k < NV; k++)                                              \
                        va[k] += *(const bn_v##SFX *)(xc + r * C + k * L);                    \
            } else {                                                                          \
                for (ptrdiff_t r = r0; r < r1; r++)                                           \
                    for (int k = 0; k < NV; k++) {                                            \
                        bn_v##SFX d = *(const bn_v##SFX *)(xc + r * C + k * L) - vs[k];       \
                        va[k] += d * d;                                                       \
                    }                                                                         \
            }                                                                                 \
            for (int k = 0; k < NV; k++)                                                      \
                *(bn_v##SFX *)(a + k * L) = va[k];                                            \
        } else {                                                                              \
            for (ptrdiff_t r = r0; r < r1; r++)                                               \
                for (ptrdiff_t j = 0; j < w; j++) {                                           \
                    REAL d = xc[r * C + j] - sh[j];                                           \
                    a[j] += square ? d * d : d;                                               \
                }                                                                             \
        }                                                                                     \
        for (ptrdiff_t j = 0; j < w; j++)                                                     \
            out[c0 + j] = (double)a[j];                                                       \
    }                                                                                         \
}                                                                                             \
/* y = (x - mean) * a + b with a = gamma * inv, b = beta (coef rows: mean, inv, a, b);        \
 * xhat = (x - mean) * inv when xhat != NULL.  y may be x (in place); xhat and coef are       \
 * never y or x (restrict: without it gcc ran the xhat loop scalar, 3x slower). */            \
INLINE void norm_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const REAL *restrict coef, REAL *y, REAL *restrict xhat)          \
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
/* out[c] = sum dy, out[C + c] = sum dy * xhat (channel tiles as in sums_body) */           \
INLINE void bsums_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,         \
                             const REAL *xhat, double *out)                                   \
{                                                                                             \
    for (ptrdiff_t c0 = 0; c0 < C; c0 += BN_CT) {                                             \
        ptrdiff_t w = C - c0 < BN_CT ? C - c0 : BN_CT;                                        \
        REAL a[BN_CT], p[BN_CT];                                                              \
        for (int j = 0; j < BN_CT; j++)                                                       \
            a[j] = p[j] = 0;                                                                  \
        const REAL *gc = dy + c0, *hc = xhat + c0;                                            \
        if (w == BN_CT) {                                                                     \
            enum { L = 32 / sizeof(REAL), NV = BN_CT / L };                                   \
            bn_v##SFX va[NV], vp[NV];                                                         \
            for (int k = 0; k < NV; k++)                                                      \
                va[k] = vp[k] = (bn_v##SFX){0};                                               \
            for (ptrdiff_t r = r0; r < r1; r++)                                               \
                for (int k = 0; k < NV; k++) {                                                \
                    bn_v##SFX g = *(const bn_v##SFX *)(gc + r * C + k * L);                   \
                    va[k] += g;                                                               \
                    vp[k] += g * *(const bn_v##SFX *)(hc + r * C + k * L);                    \
                }                                                                             \
            for (int k = 0; k < NV; k++) {                                                    \
                *(bn_v##SFX *)(a + k * L) = va[k];                                            \
                *(bn_v##SFX *)(p + k * L) = vp[k];                                            \
            }                                                                                 \
        } else {                                                                              \
            for (ptrdiff_t r = r0; r < r1; r++)                                               \
                for (ptrdiff_t j = 0; j < w; j++) {                                           \
                    a[j] += gc[r * C + j];                                                    \
                    p[j] += gc[r * C + j] * hc[r * C + j];                                    \
                }                                                                             \
        }                                                                                     \
        for (ptrdiff_t j = 0; j < w; j++) {                                                   \
            out[c0 + j] = (double)a[j];                                                       \
            out[C + c0 + j] = (double)p[j];                                                   \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
/* dx = (dy - k0) * s - xhat * k1 (coef rows: k0 = sum_dy / M, s = gamma * inv,              \
 * k1 = s * sum_dyx / M) */                                                                   \
INLINE void dx_body_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,            \
                          const REAL *restrict xhat, const REAL *restrict coef, REAL *dx)     \
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
                            const double *shift, int square, double *out)                     \
{ sums_body_##SFX(r0, r1, C, x, shift, square, out); }                                   \
static void norm_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *x,           \
                            const REAL *coef, REAL *y, REAL *xhat)                            \
{ norm_body_##SFX(r0, r1, C, x, coef, y, xhat); }                                             \
static void bsums_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,         \
                             const REAL *xhat, double *out)                                   \
{ bsums_body_##SFX(r0, r1, C, dy, xhat, out); }                                          \
static void dx_base_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C, const REAL *dy,            \
                          const REAL *xhat, const REAL *coef, REAL *dx)                       \
{ dx_body_##SFX(r0, r1, C, dy, xhat, coef, dx); }                                             \
FNN_TARGET_AVX2 static void sums_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,          \
                                            const REAL *x, const double *shift, int square,   \
                                            double *out)                                      \
{ sums_body_##SFX(r0, r1, C, x, shift, square, out); }                                   \
FNN_TARGET_AVX2 static void norm_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,          \
                                            const REAL *x, const REAL *coef, REAL *y,         \
                                            REAL *xhat)                                       \
{ norm_body_##SFX(r0, r1, C, x, coef, y, xhat); }                                             \
FNN_TARGET_AVX2 static void bsums_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,         \
                                             const REAL *dy, const REAL *xhat, double *out)   \
{ bsums_body_##SFX(r0, r1, C, dy, xhat, out); }                                          \
FNN_TARGET_AVX2 static void dx_avx2_##SFX(ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C,            \
                                          const REAL *dy, const REAL *xhat, const REAL *coef, \
                                          REAL *dx)                                           \
{ dx_body_##SFX(r0, r1, C, dy, xhat, coef, dx); }

/* ---- the drivers ---- */
/* Workspace: ws, 2 * nblocks * C doubles (nblocks = ceil(M / BN_ROWS): the block
 * partials), and scratch, 4 * C elements (the per-channel coefficients of the
 * elementwise pass).  Both come from the caller: nothing is allocated here. */
#define DEFINE_BN_DRIVERS(REAL, SFX)                                                           \
static void block_sums_##SFX(ptrdiff_t M, ptrdiff_t C, const REAL *x, const double *shift,    \
                             int square, double *part, int nt)                                \
{                                                                                             \
    void (*f)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const double *, int, double *) = \
        PICK(sums_avx2_##SFX, sums_base_##SFX);                                               \
    ptrdiff_t nb = (M + BN_ROWS - 1) / BN_ROWS;                                               \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                  \
    for (ptrdiff_t b = 0; b < nb; b++) {                                                      \
        ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                 \
        f(r0, r1, C, x, shift, square, part + b * C);                                         \
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
    REAL *coef = scratch;                                                                     \
    if (training) {                                                                           \
        block_sums_##SFX(M, C, x, NULL, 0, ws, nt);                                           \
        reduce_blocks_##SFX(nb, C, ws, mean);                                                 \
        for (ptrdiff_t c = 0; c < C; c++)                                                     \
            mean[c] /= (double)M;                                                             \
        block_sums_##SFX(M, C, x, mean, 1, ws, nt);                                           \
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
    REAL *coef = scratch;                                                                     \
    void (*fs)(ptrdiff_t, ptrdiff_t, ptrdiff_t, const REAL *, const REAL *, double *) =       \
        PICK(bsums_avx2_##SFX, bsums_base_##SFX);                                             \
    _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                  \
    for (ptrdiff_t b = 0; b < nb; b++) {                                                      \
        ptrdiff_t r0 = b * BN_ROWS, r1 = r0 + BN_ROWS < M ? r0 + BN_ROWS : M;                 \
        fs(r0, r1, C, dy, xhat, ws + b * 2 * C);                                              \
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

DEFINE_BN_BODIES(float, f32)
DEFINE_BN_BODIES(double, f64)
DEFINE_BN_DRIVERS(float, f32)
DEFINE_BN_DRIVERS(double, f64)
