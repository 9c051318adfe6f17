/* The fused trainer's GEMM: runs of 6 x 16 tiles of C = epilogue(A @ B)
 * (trainer_gemm.c), each tile's epilogue (trainer_epilogue.h) applied in
 * registers or from a 6 x 16 stack buffer right after its K loop. */
#ifndef FNN_TR_GEMM_H
#define FNN_TR_GEMM_H

#include "trainer_epilogue.h"

FNN_TR_HIDDEN void fnn_tr_gemm_tiles_scalar(ptrdiff_t M, ptrdiff_t K, const float *A,
                                            ptrdiff_t rsa, ptrdiff_t csa, ptrdiff_t tsa,
                                            const float *B, ptrdiff_t ldb, const tile_ep *e,
                                            ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi);
#if FNN_X86
FNN_TR_HIDDEN void fnn_tr_gemm_tiles_avx2(ptrdiff_t M, ptrdiff_t K, const float *A,
                                          ptrdiff_t rsa, ptrdiff_t csa, ptrdiff_t tsa,
                                          const float *B, ptrdiff_t ldb, const tile_ep *e,
                                          ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi);
#endif

/* Row tiles [ip_lo, ip_hi) of column panel jp of C = epilogue(A @ B): A[i, k]
 * at A[(i / MR) * tsa + (i % MR) * rsa + k * csa] (tsa = MR * rsa unless A is
 * a packed copy), B[k, j] at B[k * ldb + j]. */
static inline void gemm_tiles(int avx2, ptrdiff_t M, ptrdiff_t K, const float *A, ptrdiff_t rsa,
                              ptrdiff_t csa, ptrdiff_t tsa, const float *B, ptrdiff_t ldb,
                              const tile_ep *e, ptrdiff_t jp, ptrdiff_t ip_lo, ptrdiff_t ip_hi)
{
#if FNN_X86
    if (avx2) {
        fnn_tr_gemm_tiles_avx2(M, K, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
#endif
    (void)avx2;
    fnn_tr_gemm_tiles_scalar(M, K, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
}

#endif
