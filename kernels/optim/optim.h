/* Fused optimizer updates over one flat parameter buffer, in place
 * (formulas: fastnn/kernels/optim/reference.py, PyTorch's SGD / Adam / AdamW).
 *
 *   SGD:  g = grad + wd*p;  momentum: v = mu*v + g, step = nesterov ? g + mu*v : v;  p -= lr*step
 *   Adam: AdamW p -= lr*wd*p, else g = grad + wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *         p -= step_size * m / (sqrt(v) * inv_bc2_sqrt + eps)
 *         with step_size = lr / (1 - b1^t), inv_bc2_sqrt = 1 / sqrt(1 - b2^t) (computed by the caller)
 *
 * velocity may be NULL when mu == 0.  Elements are independent: OpenMP over
 * fixed chunks, results independent of the thread count.
 */
#ifndef FNN_OPTIM_H
#define FNN_OPTIM_H

#include <stddef.h>

void fnn_sgd_f32(ptrdiff_t n, float *p, const float *grad, float *velocity, double lr, double mu,
                 int nesterov, double wd, int nthreads);
void fnn_sgd_f64(ptrdiff_t n, double *p, const double *grad, double *velocity, double lr,
                 double mu, int nesterov, double wd, int nthreads);
void fnn_adam_f32(ptrdiff_t n, float *p, const float *grad, float *m, float *v, double lr,
                  double step_size, double inv_bc2_sqrt, double b1, double b2, double eps,
                  double wd, int decoupled, int nthreads);
void fnn_adam_f64(ptrdiff_t n, double *p, const double *grad, double *m, double *v, double lr,
                  double step_size, double inv_bc2_sqrt, double b1, double b2, double eps,
                  double wd, int decoupled, int nthreads);

#endif
