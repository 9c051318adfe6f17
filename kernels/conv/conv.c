/* 2-D convolution (im2col + the packed GEMM of kernels/matmul/gemm.h) and
 * pooling, float32 and float64: see conv.h for the contract and the work
 * decomposition, conv_tmpl.h for the code (compiled once per dtype).
 */
#include <stddef.h>

#include "conv.h"
#include "cpu.h"
#include "../matmul/gemm.h"   /* not on the include path: another family's header */

#define INLINE static inline __attribute__((always_inline))

/* output rows per group (one im2col + one GEMM call): enough rows for the
 * GEMM's 6-row tiles and packing to pay off, few enough that a group's
 * columns (rows x K) stay in L2 while the GEMM reads them */
#define GROUP_ROWS 256
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

#define REAL float
#define SFX f32
#define GEMM fnn_sgemm
#include "conv_tmpl.h"
#undef REAL
#undef SFX
#undef GEMM

#define REAL double
#define SFX f64
#define GEMM fnn_dgemm
#include "conv_tmpl.h"
#undef REAL
#undef SFX
#undef GEMM
