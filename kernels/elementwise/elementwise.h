/* Activation functions and their derivatives, elementwise over flat buffers.
 *
 * kind: 0 relu, 1 sigmoid, 2 tanh, 3 step (see fastnn/kernels/elementwise/reference.py).
 *   forward:  out = f(x)                        (out may be x)
 *   backward: dx (+)= g(y, dout) from the forward OUTPUT y   (dx may be dout)
 *     relu dout*(y>0), sigmoid dout*y*(1-y), tanh dout*(1-y*y), step 0
 * OpenMP over fixed chunks; each element is independent, so results do not
 * depend on the thread count.
 */
#ifndef FNN_ELEMENTWISE_H
#define FNN_ELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>

void fnn_act_forward_f32(int kind, ptrdiff_t n, const float *x, float *out, int nthreads);
void fnn_act_forward_f64(int kind, ptrdiff_t n, const double *x, double *out, int nthreads);
void fnn_act_backward_f32(int kind, ptrdiff_t n, const float *y, const float *dout, float *dx,
                          int accumulate, int nthreads);
void fnn_act_backward_f64(int kind, ptrdiff_t n, const double *y, const double *dout, double *dx,
                          int accumulate, int nthreads);

/* Inverted dropout (dropout.c): mask[i] = hash(i, key) >= threshold (0 or 1),
 *   forward  y[i]  = mask[i] ? x[i] * scale : 0      (y may be x)
 *   backward dx[i] = mask[i] ? dy[i] * scale : 0     (dx may be dy)
 * threshold = floor(rate * 2**32), scale = 1 / (1 - rate).  The mask depends on
 * (key, i) only, never on the thread count. */
void fnn_dropout_forward_f32(ptrdiff_t n, const float *x, float *y, uint8_t *mask,
                             uint64_t key, uint32_t threshold, float scale, int nthreads);
void fnn_dropout_forward_f64(ptrdiff_t n, const double *x, double *y, uint8_t *mask,
                             uint64_t key, uint32_t threshold, double scale, int nthreads);
void fnn_dropout_backward_f32(ptrdiff_t n, const float *dy, const uint8_t *mask, float *dx,
                              float scale, int nthreads);
void fnn_dropout_backward_f64(ptrdiff_t n, const double *dy, const uint8_t *mask, double *dx,
                              double scale, int nthreads);

/* Batch normalisation over the channels of an (M, C) matrix (batchnorm.c; spec:
 * fastnn/kernels/elementwise/reference.py).  Forward: training computes mean and
 * biased var (double, C each) from x, eval takes them as given; writes inv_std (C),
 * y and, when xhat != NULL, xhat.  Backward: sums[0:C] = sum dy, sums[C:2C] =
 * sum dy * xhat (double); dx = gamma * inv_std * (dy - [sum dy / M - xhat sum dy xhat / M
 * when batch_stats]).  ws: 2 * ceil(M / 256) * C doubles; scratch: 4 * C elements.  Deterministic for any nthreads. */
void fnn_batchnorm_forward_f32(ptrdiff_t M, ptrdiff_t C, const float *x, const float *gamma,
                               const float *beta, double eps, int training, double *mean,
                               double *var, float *inv_std, float *y, float *xhat, double *ws,
                               float *scratch, int nthreads);
void fnn_batchnorm_forward_f64(ptrdiff_t M, ptrdiff_t C, const double *x, const double *gamma,
                               const double *beta, double eps, int training, double *mean,
                               double *var, double *inv_std, double *y, double *xhat,
                               double *ws, double *scratch, int nthreads);
void fnn_batchnorm_backward_f32(ptrdiff_t M, ptrdiff_t C, const float *dy, const float *xhat,
                                const float *gamma, const float *inv_std, int batch_stats,
                                double *sums, float *dx, double *ws, float *scratch,
                                int nthreads);
void fnn_batchnorm_backward_f64(ptrdiff_t M, ptrdiff_t C, const double *dy, const double *xhat,
                                const double *gamma, const double *inv_std, int batch_stats,
                                double *sums, double *dx, double *ws, double *scratch,
                                int nthreads);

#endif
