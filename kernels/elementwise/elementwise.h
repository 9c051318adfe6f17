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

void fnn_act_forward_f32(int kind, ptrdiff_t n, const float *x, float *out, int nthreads);
void fnn_act_forward_f64(int kind, ptrdiff_t n, const double *x, double *out, int nthreads);
void fnn_act_backward_f32(int kind, ptrdiff_t n, const float *y, const float *dout, float *dx,
                          int accumulate, int nthreads);
void fnn_act_backward_f64(int kind, ptrdiff_t n, const double *y, const double *dout, double *dx,
                          int accumulate, int nthreads);

#endif
