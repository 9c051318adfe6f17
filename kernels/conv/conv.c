/* 2-D convolution (im2col + the packed GEMM of kernels/matmul/gemm.h) and
 * pooling, float32 and float64: see conv.h for the contract and the work
 * decomposition, conv_tmpl.h for the code (compiled once per dtype).
 */
#include <stddef.h>
#include <string.h>

#include "conv.h"
#include "cpu.h"
#include "../matmul/gemm.h"   /* not on the include path: another family's header */

#define INLINE static inline __attribute__((always_inline))

/* output rows per group (one im2col + one GEMM call): enough rows for the
 * GEMM's 6-row tiles and packing to pay off, few enough that a group's
 * columns (rows x K) stay in L2 while the GEMM reads them */
#define GROUP_ROWS 256
/* one input channel, stride 1 along W: the direct forward up to this many
 * output channels (one accumulator per channel and 8 pixels, then scalar
 * stores into NHWC; from 16 channels the GEMM's tiles are full and it was
 * faster on the convnet's 3x3x32) */
#define C1_MAX_COUT 8
/* pooling below this many element visits runs on one thread */
#define POOL_PAR_MIN 32768

static ptrdiff_t group_images(ptrdiff_t P)
{
    return (GROUP_ROWS + P - 1) / P;
}

/* 1x1, stride 1, no padding: x's rows are already the im2col columns */
static int is_direct(const fnn_conv_shape *s)
{
    return s->KH == 1 && s->KW == 1 && s->sh == 1 && s->sw == 1 && s->pt == 0 && s->pb == 0
           && s->pl == 0 && s->pr == 0;
}

/* the kernel columns [kw0, kw1) whose input column iw0 + kw lies in [0, W) */
INLINE void kw_range(ptrdiff_t iw0, ptrdiff_t KW, ptrdiff_t W, ptrdiff_t *kw0, ptrdiff_t *kw1)
{
    ptrdiff_t lo = iw0 < 0 ? -iw0 : 0, hi = W - iw0 < KW ? W - iw0 : KW;
    if (lo > KW)
        lo = KW;
    if (hi < lo)
        hi = lo;
    *kw0 = lo;
    *kw1 = hi;
}

#if FNN_X86
#include <immintrin.h>
#endif

/* the vector operations of the AVX2 run helpers, per dtype (conv_tmpl.h) */
#define REAL float
#define SFX f32
/* float32: fnn_sgemm, or fnn_sgemm_bf16 (bf16 inputs, fp32 sums) when the shape asks */
#define GEMM(s) ((s)->bf16 ? fnn_sgemm_bf16 : fnn_sgemm)
#define VW 8
#define VMASK __m256i
#define VMASK_FOR(n) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n)), \
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define VLOADU _mm256_loadu_ps
#define VSTOREU _mm256_storeu_ps
#define VMASKLOAD _mm256_maskload_ps
#define VMASKSTORE _mm256_maskstore_ps
#define VADD _mm256_add_ps
#define VZERO _mm256_setzero_ps
#define VTYPE __m256
#define VSET1 _mm256_set1_ps
#define VFMA _mm256_fmadd_ps
#define VMAX _mm256_max_ps
#define CONV_F32 1
#include "conv_tmpl.h"
#undef CONV_F32
#undef REAL
#undef SFX
#undef GEMM
#undef VW
#undef VMASK_FOR
#undef VLOADU
#undef VSTOREU
#undef VMASKLOAD
#undef VMASKSTORE
#undef VADD
#undef VZERO
#undef VTYPE
#undef VSET1
#undef VFMA
#undef VMAX

#define REAL double
#define SFX f64
#define GEMM(s) fnn_dgemm
#define VW 4
#define VMASK_FOR(n) _mm256_cmpgt_epi64(_mm256_set1_epi64x((long long)(n)), \
                                        _mm256_setr_epi64x(0, 1, 2, 3))
#define VLOADU _mm256_loadu_pd
#define VSTOREU _mm256_storeu_pd
#define VMASKLOAD _mm256_maskload_pd
#define VMASKSTORE _mm256_maskstore_pd
#define VADD _mm256_add_pd
#define VZERO _mm256_setzero_pd
#define VTYPE __m256d
#define VSET1 _mm256_set1_pd
#define VFMA _mm256_fmadd_pd
#define VMAX _mm256_max_pd
#include "conv_tmpl.h"
#undef REAL
#undef SFX
#undef GEMM
