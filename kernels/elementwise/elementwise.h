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

#endif
