/* The fused trainer's bf16 GEMM tiles (trainer_gemm_bf16.c): the same runs of
 * 6 x 16 tiles and epilogues as trainer_gemm.h, with both operands bf16 and the
 * sums in fp32.  An operand is an array of uint32 "pairs": two bf16 values
 * adjacent along K (low half k, high half k + 1), what vdpbf16ps multiplies.
 *
 *   T[i, j] = sum_kp  hi(A[i, kp]) * hi(B[kp, j]) + lo(A[i, kp]) * lo(B[kp, j])
 *
 * with A[i, kp] at A[(i / MR) * tsa + (i % MR) * rsa + kp * csa] and B[kp, j] at
 * B[kp * ldb + j], kp < KP = ceil(K / 2) (an odd K's last pair has a zero high half
 * on one side).  Levels:
 *   3  AVX512_BF16: vdpbf16ps, two row tiles at a time (12 zmm accumulators)
 *   1, 2  AVX2 emulation: the pairs widened to fp32 (a shift, a mask), two FMAs,
 *      the high product first as vdpbf16ps orders them
 *   0  scalar C, the same order
 * bf16 x bf16 products are exact in fp32, so the levels differ only where
 * vdpbf16ps flushes denormals (products below 2^-126). */
#ifndef FNN_TR_GEMM_BF16_H
#define FNN_TR_GEMM_BF16_H

#include "trainer_epilogue.h"

#define FNN_TR_BF16_TILES_ARGS                                                        \
    ptrdiff_t M, ptrdiff_t KP, const uint32_t *A, ptrdiff_t rsa, ptrdiff_t csa,       \
    ptrdiff_t tsa, const uint32_t *B, ptrdiff_t ldb, const tile_ep *e, ptrdiff_t jp,  \
    ptrdiff_t ip_lo, ptrdiff_t ip_hi

FNN_TR_HIDDEN void fnn_tr_bf16_tiles_scalar(FNN_TR_BF16_TILES_ARGS);
#if FNN_X86
FNN_TR_HIDDEN void fnn_tr_bf16_tiles_avx2(FNN_TR_BF16_TILES_ARGS);
FNN_TR_HIDDEN void fnn_tr_bf16_tiles_x512(FNN_TR_BF16_TILES_ARGS);
#endif

/* Row tiles [ip_lo, ip_hi) of column panel jp of C = epilogue(A @ B), bf16 inputs. */
static inline void gemm_tiles_bf16(int simd, FNN_TR_BF16_TILES_ARGS)
{
#if FNN_X86
    if (simd >= FNN_SIMD_AVX512_BF16) {
        fnn_tr_bf16_tiles_x512(M, KP, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
    if (simd >= FNN_SIMD_AVX2) {
        fnn_tr_bf16_tiles_avx2(M, KP, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
        return;
    }
#endif
    (void)simd;
    fnn_tr_bf16_tiles_scalar(M, KP, A, rsa, csa, tsa, B, ldb, e, jp, ip_lo, ip_hi);
}

/* Rows [r0, r0 + nr) (r0 even) x columns [0, ncols) of the fp32 C (stride ldc)
 * to bf16: row-major to Cb (or NULL), pairs of rows to Cp (or NULL; a last odd
 * row pairs with zeros).  Strides of Cb and Cp: ldc bf16 / ldc pairs. */
FNN_TR_HIDDEN void fnn_tr_bf16_rows(int simd, const float *C, ptrdiff_t ldc, ptrdiff_t r0,
                                    ptrdiff_t nr, ptrdiff_t ncols, uint16_t *Cb, uint32_t *Cp);

/* The gather of bf16 mode: rows [lo, hi) (lo even) of the batch, x[idx[r]]
 * (uint8 * float32(1/255), or float rows) rounded to bf16 into ab (row-major,
 * stride lda) and ap (pairs of rows, stride lda pairs); when hi is odd the
 * last pair's second row is zero. */
FNN_TR_HIDDEN void fnn_tr_bf16_gather(int simd, uint16_t *ab, uint32_t *ap, ptrdiff_t lda,
                                      ptrdiff_t lo, ptrdiff_t hi, int D, const void *x,
                                      int x_u8, ptrdiff_t x_ld, const int64_t *idx);

#endif
