/* TEMPORARY straightforward implementation of gemm.h so that other kernels
 * can be developed against the API; replaced by the packed AVX2 engine. */
#include "gemm.h"

#define DEF_GEMM(NAME, T)                                                        \
void NAME(ptrdiff_t M, ptrdiff_t N, ptrdiff_t K,                                 \
          const T *A, ptrdiff_t rsa, ptrdiff_t csa,                              \
          const T *B, ptrdiff_t rsb, ptrdiff_t csb,                              \
          T *C, ptrdiff_t rsc, ptrdiff_t csc,                                    \
          const fnn_epilogue *ep, int nthreads)                                  \
{                                                                                \
    (void)nthreads;                                                              \
    for (ptrdiff_t i = 0; i < M; i++)                                            \
        for (ptrdiff_t j = 0; j < N; j++) {                                      \
            T acc = 0;                                                           \
            for (ptrdiff_t k = 0; k < K; k++)                                    \
                acc += A[i * rsa + k * csa] * B[k * rsb + j * csb];              \
            T *c = &C[i * rsc + j * csc];                                        \
            if (ep && ep->accumulate) acc += *c;                                 \
            if (ep && ep->bias) acc += ((const T *)ep->bias)[j];                 \
            if (ep && ep->relu && acc < 0) acc = 0;                              \
            if (ep && ep->mask &&                                                \
                !(((const T *)ep->mask)[i * ep->rs_mask + j * ep->cs_mask] > 0)) \
                acc = 0;                                                         \
            *c = acc;                                                            \
        }                                                                        \
}
DEF_GEMM(fnn_sgemm, float)
DEF_GEMM(fnn_dgemm, double)
