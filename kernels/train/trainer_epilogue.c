/* The optimizer side of the fused trainer outside the GEMM tiles: the
 * per-step optimizer scalars and the bias gradient with its update (the
 * weight updates run in the dW tiles' epilogues, trainer_epilogue.h and trainer_gemm.c). */
#include "trainer_epilogue.h"

#include <math.h>
#include <string.h>

void fnn_tr_opt_scalars(const fnn_train_opt *opt, int64_t s, opt_sc *o)
{
    const int64_t t = opt->step + s + 1;      /* Adam's t counts updates from 1 */
    const float lr = opt->lrs ? opt->lrs[s] : opt->lr;
    memset(o, 0, sizeof(*o));
    o->kind = opt->kind;
    o->lr = lr;
    o->wd = opt->weight_decay;
    o->mu = opt->momentum;
    o->damp1 = 1.0f - opt->dampening;
    o->nesterov = opt->nesterov;
    o->decay = 1.0f;
    if (opt->kind != FNN_OPT_SGD) {
        double bc1 = 1.0 - pow(opt->beta1, (double)t);
        double bc2 = 1.0 - pow(opt->beta2, (double)t);
        o->b1 = (float)opt->beta1;
        o->b2 = (float)opt->beta2;
        o->c1 = (float)(1.0 - opt->beta1);
        o->c2 = (float)(1.0 - opt->beta2);
        o->eps = opt->eps;
        o->step_size = (float)((double)lr / bc1);
        o->bc2_sqrt = (float)sqrt(bc2);
        if (opt->kind == FNN_OPT_ADAMW) {
            o->decay = 1.0f - lr * opt->weight_decay;
            o->wd = 0.0f;
        }
    }
}

/* ------------------------------------------------- bias gradient + update */

/* Column panels [p_lo, p_hi) of db = sum_rows g, each followed by its update. */
static inline __attribute__((always_inline))
void bias_body(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo, ptrdiff_t p_hi,
               float *bias, float *s1, float *s2, const opt_sc *o)
{
    float acc[NR];
    ptrdiff_t np = (N + NR - 1) / NR;
    if (p_hi > np) p_hi = np;
    for (ptrdiff_t p = p_lo; p < p_hi; p++) {
        ptrdiff_t j0 = p * NR;
        int nc = N - (int)j0 < NR ? N - (int)j0 : NR;
        for (int j = 0; j < NR; j++) acc[j] = 0.0f;
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < NR; j++) acc[j] += g[r * ldg + j0 + j];
        opt_update(o, bias + j0, s1 + j0, s2 + j0, acc, nc);
    }
}

void fnn_tr_bias_scalar(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo,
                        ptrdiff_t p_hi, float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
}

#if FNN_X86
FNN_TARGET_AVX2
void fnn_tr_bias_avx2(const float *g, ptrdiff_t ldg, int rows, int N, ptrdiff_t p_lo,
                      ptrdiff_t p_hi, float *bias, float *s1, float *s2, const opt_sc *o)
{
    bias_body(g, ldg, rows, N, p_lo, p_hi, bias, s1, s2, o);
}
#endif
