/* Row-wise softmax, log-softmax and the fused softmax cross-entropy.
 *
 * For each row z of logits (C classes) and target row t (one-hot at idx[b]
 * when idx != NULL, else probs[b, :]), with label smoothing ls:
 *   t'        = (1 - ls) t + ls / C
 *   losses[b] = -sum_c t'_c log_softmax(z)_c = log(sum_c exp(z_c - m)) * sum t' - sum_c t'_c (z_c - m)
 *   dlogits   = (softmax(z) - t') * grad_scale     (when dlogits != NULL; same pass over the row)
 *
 * Arrays are C-contiguous.  x and out of fnn_softmax_rows_* may be the same
 * buffer.  Rows are independent: OpenMP splits rows over nthreads threads,
 * so results do not depend on the thread count.  A row holding NaN or +inf
 * takes the plain C path (libm propagates NaN), so every path gives NaN there.
 */
#ifndef FNN_XENT_H
#define FNN_XENT_H

#include <stddef.h>
#include <stdint.h>

void fnn_softmax_xent_f32(ptrdiff_t B, ptrdiff_t C, const float *logits, const int64_t *idx,
                          const float *probs, float *losses, float *dlogits,
                          double grad_scale, double ls, int nthreads);
void fnn_softmax_xent_f64(ptrdiff_t B, ptrdiff_t C, const double *logits, const int64_t *idx,
                          const double *probs, double *losses, double *dlogits,
                          double grad_scale, double ls, int nthreads);
/* log == 0: out = softmax(x); log != 0: out = log_softmax(x) */
void fnn_softmax_rows_f32(ptrdiff_t B, ptrdiff_t C, const float *x, float *out, int log,
                          int nthreads);
void fnn_softmax_rows_f64(ptrdiff_t B, ptrdiff_t C, const double *x, double *out, int log,
                          int nthreads);

#endif
