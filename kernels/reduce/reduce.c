/* Column sums with a thread-count-independent summation order (see reduce.h).
 *
 * Work is cut into column tiles of COL_TILE columns.  With enough tiles
 * every thread takes whole tiles and walks the row blocks itself (no scratch
 * memory).  With few tiles and many rows (a narrow bias, a big batch) the
 * (block, tile) pairs are spread over the threads, each writing its block
 * sum into a scratch row, and a second loop adds the scratch rows in block
 * order.  Both ways perform exactly the same additions in the same order.
 *
 * Sums are kept in double for float32 too (rounded once at the end): a bias
 * gradient sums many terms of both signs, and float32 partial sums lose
 * digits to cancellation.  The loop stays memory bound.
 */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "reduce.h"

#define RB FNN_REDUCE_ROW_BLOCK
#define COL_TILE 256
#define RED_PAR_MIN 32768     /* elements; below this one thread is faster */

#define INLINE static inline __attribute__((always_inline))

#define DEFINE_REDUCE(REAL, SFX)                                                              \
/* blk[0:w] = sum of rows r0 .. r1-1 of x[:, j0:j0+w], in row order */                      \
INLINE void block_sum_body_##SFX(const REAL *x, ptrdiff_t N, ptrdiff_t r0, ptrdiff_t r1,      \
                                 ptrdiff_t j0, ptrdiff_t w, double *blk)                      \
{                                                                                             \
    for (ptrdiff_t j = 0; j < w; j++)                                                         \
        blk[j] = 0;                                                                           \
    ptrdiff_t i = r0;                                                                         \
    /* four rows per sweep: blk stays in registers; same order of additions as one by one */ \
    for (; i + 4 <= r1; i += 4) {                                                             \
        const REAL *a = x + i * N + j0, *b = a + N, *c = b + N, *d = c + N;                   \
        for (ptrdiff_t j = 0; j < w; j++) {                                                   \
            double s = blk[j];                                                                \
            s += (double)a[j];                                                                \
            s += (double)b[j];                                                                \
            s += (double)c[j];                                                                \
            s += (double)d[j];                                                                \
            blk[j] = s;                                                                       \
        }                                                                                     \
    }                                                                                         \
    for (; i < r1; i++) {                                                                     \
        const REAL *row = x + i * N + j0;                                                     \
        for (ptrdiff_t j = 0; j < w; j++)                                                     \
            blk[j] += (double)row[j];                                                         \
    }                                                                                         \
}                                                                                             \
static void block_sum_scalar_##SFX(const REAL *x, ptrdiff_t N, ptrdiff_t r0, ptrdiff_t r1,    \
                                   ptrdiff_t j0, ptrdiff_t w, double *blk)                    \
{                                                                                             \
    block_sum_body_##SFX(x, N, r0, r1, j0, w, blk);                                           \
}                                                                                             \
AVX2_CLONE(REAL, SFX)                                                                         \
                                                                                              \
int fnn_column_sums_##SFX(ptrdiff_t B, ptrdiff_t N, const REAL *x, REAL *out, int accumulate, \
                          int nthreads)                                                       \
{                                                                                             \
    void (*bsum)(const REAL *, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, double *) \
        = PICK_BSUM(SFX);                                                                     \
    const ptrdiff_t nb = (B + RB - 1) / RB, nt = (N + COL_TILE - 1) / COL_TILE;               \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    if (B * N < RED_PAR_MIN)                                                                  \
        nthreads = 1;                                                                         \
    double *scratch = NULL;                                                                   \
    if (nthreads > 1 && nt < nthreads && nb > 1) {                                            \
        scratch = (double *)malloc((size_t)nb * (size_t)N * sizeof(double));                  \
        if (!scratch)                                                                         \
            return -1;                                                                        \
        _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                    \
        for (ptrdiff_t item = 0; item < nb * nt; item++) {                                    \
            ptrdiff_t b = item / nt, t = item % nt;                                           \
            ptrdiff_t j0 = t * COL_TILE, w = N - j0 < COL_TILE ? N - j0 : COL_TILE;           \
            ptrdiff_t r1 = (b + 1) * RB < B ? (b + 1) * RB : B;                               \
            bsum(x, N, b * RB, r1, j0, w, scratch + b * N + j0);                              \
        }                                                                                     \
    }                                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)")      \
    for (ptrdiff_t t = 0; t < nt; t++) {                                                      \
        double tot[COL_TILE], blk[COL_TILE];                                                  \
        ptrdiff_t j0 = t * COL_TILE, w = N - j0 < COL_TILE ? N - j0 : COL_TILE;               \
        for (ptrdiff_t j = 0; j < w; j++)                                                     \
            tot[j] = 0;                                                                       \
        for (ptrdiff_t b = 0; b < nb; b++) {                                                  \
            const double *part = blk;                                                         \
            if (scratch)                                                                      \
                part = scratch + b * N + j0;                                                  \
            else                                                                              \
                bsum(x, N, b * RB, (b + 1) * RB < B ? (b + 1) * RB : B, j0, w, blk);          \
            for (ptrdiff_t j = 0; j < w; j++)                                                 \
                tot[j] += part[j];                                                            \
        }                                                                                     \
        for (ptrdiff_t j = 0; j < w; j++)                                                     \
            out[j0 + j] = (REAL)(accumulate ? (double)out[j0 + j] + tot[j] : tot[j]);         \
    }                                                                                         \
    free(scratch);                                                                            \
    return 0;                                                                                 \
}

#if FNN_X86
#define AVX2_CLONE(REAL, SFX)                                                                 \
FNN_TARGET_AVX2 static void block_sum_avx2_##SFX(const REAL *x, ptrdiff_t N, ptrdiff_t r0,    \
                                                 ptrdiff_t r1, ptrdiff_t j0, ptrdiff_t w,     \
                                                 double *blk)                                 \
{                                                                                             \
    block_sum_body_##SFX(x, N, r0, r1, j0, w, blk);                                           \
}
#define PICK_BSUM(SFX) (fnn_use_avx2() ? block_sum_avx2_##SFX : block_sum_scalar_##SFX)
#else
#define AVX2_CLONE(REAL, SFX)
#define PICK_BSUM(SFX) block_sum_scalar_##SFX
#endif

DEFINE_REDUCE(float, f32)
DEFINE_REDUCE(double, f64)
