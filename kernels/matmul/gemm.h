/* fastnn's GEMM engine: the C entry points every native kernel and the fused
 * trainer call.
 *
 *   C[M,N] = epilogue( op(A)[M,K] @ op(B)[K,N] )
 *
 * Operands are described by (pointer, row stride, column stride) in ELEMENTS,
 * as in BLIS, so transposed, Fortran-ordered and strided operands need no
 * copy: op(A) = A^T is simply A with its two strides swapped.
 *
 * The epilogue is applied while the tile is still in registers/cache, in this
 * order:
 *   acc = A@B
 *   if accumulate: acc += C_old          (backward kernels accumulate: dW += X^T dY)
 *   if bias:       acc += bias[j]        (bias has N entries, contiguous)
 *   if relu:       acc  = max(acc, 0)
 *   if mask:       acc  = mask[i,j] > 0 ? acc : 0   (ReLU backward: dX = (dY W^T) * (Y > 0))
 *   C = acc
 *
 * nthreads <= 1 runs on the calling thread; otherwise the engine's worker pool
 * (gemm_pool.h: the caller plus up to nthreads - 1 persistent workers claiming
 * blocks dynamically; never more than requested, small problems use fewer).
 * Results for a fixed nthreads are bitwise repeatable, and in fact the same
 * for every nthreads (K is never split across threads).  M, N or K may be 0
 * (K == 0 gives C = epilogue(0)).
 *
 * C must not overlap A, B, bias or mask (C is written block by block while
 * they are still being read).  Safe to call from several threads at once:
 * packing buffers are per thread.  While the pool runs one caller's job, a
 * concurrent caller (another thread, an OpenMP region) runs on its own thread.
 */
#ifndef FNN_GEMM_H
#define FNN_GEMM_H

#include <stddef.h>

typedef struct {
    const void *bias;        /* float* / double* with N entries, or NULL */
    int relu;                /* nonzero: max(x, 0) after the bias */
    const void *mask;        /* same dtype as C, M x N, or NULL */
    ptrdiff_t rs_mask, cs_mask;
    int accumulate;          /* nonzero: C += result instead of C = result */
} fnn_epilogue;

void fnn_sgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const float *A, ptrdiff_t rsa, ptrdiff_t csa,
               const float *B, ptrdiff_t rsb, ptrdiff_t csb,
               float *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads);

void fnn_dgemm(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
               const double *A, ptrdiff_t rsa, ptrdiff_t csa,
               const double *B, ptrdiff_t rsb, ptrdiff_t csb,
               double *C, ptrdiff_t rsc, ptrdiff_t csc,
               const fnn_epilogue *ep, int nthreads);

/* bf16 GEMM (fp32 in, fp32 out): every element of A and B is rounded to bf16
 * (round to nearest even; zero and denormals -> signed zero, NaN stays NaN,
 * as vcvtneps2bf16 does) and the products are accumulated in fp32, then the
 * same epilogue as fnn_sgemm.  With AVX512_BF16 (level avx512_bf16) the
 * packed panels hold bf16 pairs and vdpbf16ps does the arithmetic; below it
 * the same rounded values are multiplied with fp32 FMAs ("emulated"), which
 * differs from the native instruction only by summation order (and
 * vdpbf16ps's flush of denormal results).  Same contract as fnn_sgemm
 * otherwise: bitwise repeatable for every nthreads at a fixed level. */
void fnn_sgemm_bf16(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,
                    const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                    float *C, ptrdiff_t rsc, ptrdiff_t csc,
                    const fnn_epilogue *ep, int nthreads);

/* The code path fnn_sgemm (bf16 = 0) or fnn_sgemm_bf16 (bf16 = 1) takes for
 * this shape at the current SIMD level, in words (for `fastnn info` and the
 * benchmarks); csa / rsb as passed to the GEMM. */
const char *fnn_sgemm_path(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, ptrdiff_t csa, ptrdiff_t rsb,
                           int bf16);

/* Which engine fnn_sgemm uses at levels >= avx512: 0 the dispatcher's choice
 * per shape and CPU model (default), 1 the AVX-512 engine for every shape
 * (tests, benchmarks), 2 always AVX2.  Process-wide for this module; returns
 * the previous setting. */
int fnn_sgemm_set_fp32_engine(int which);

/* Products with M <= max_m rows and a B with contiguous rows take the small-M
 * path (gemm_small.h: B streamed in place, no packing); 0 sends every product to
 * the packed engine (tests and side-by-side benchmarks), a negative value restores
 * the default (16), at most 64.  Process-wide for this module; returns the
 * previous setting. */
int fnn_gemm_set_small(int max_m);

/* Multithreaded products whose packed A is small (the MLP shapes) split N into
 * chunks of a few tiles that share one packed A (gemm.c, fnn_plan_shared); 0 sends
 * them to the per-block split instead (side-by-side benchmarks).  chunk_fma > 0 sets
 * the multiply-adds per chunk at least (tuning; 0 keeps it).  Process-wide for this
 * module; returns the previous on/off setting. */
int fnn_gemm_set_shared(int on, double chunk_fma);

#endif
