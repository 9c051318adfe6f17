/* Column sums (the bias gradient): out[j] (+)= sum_i x[i, j], x (B, N) C-contiguous.
 *
 * Deterministic for any thread count: rows are cut into fixed blocks of
 * FNN_REDUCE_ROW_BLOCK rows; each block is summed in row order, and the block
 * sums are added in block order.  Threads only change which core computes
 * which block sum, never the arithmetic, so the bits are the same for 1 or
 * 64 threads (and for the scalar and AVX2 paths: only additions, no FMA).
 * Sums are accumulated in double and rounded once to the output dtype.
 */
#ifndef FNN_REDUCE_H
#define FNN_REDUCE_H

#include <stddef.h>

#define FNN_REDUCE_ROW_BLOCK 256

/* returns 0, or -1 if a scratch buffer could not be allocated (then nothing was written) */
int fnn_column_sums_f32(ptrdiff_t B, ptrdiff_t N, const float *x, float *out, int accumulate,
                        int nthreads);
int fnn_column_sums_f64(ptrdiff_t B, ptrdiff_t N, const double *x, double *out, int accumulate,
                        int nthreads);

#endif
