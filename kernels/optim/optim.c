/* Fused optimizer updates (see optim.h).  Memory bound: one read of each
 * state buffer and one write, in one loop.  The SGD loop is plain C that gcc
 * vectorises (compiled twice: baseline and, in an FNN_TARGET_AVX2 clone,
 * AVX2); Adam's AVX2 path is written with intrinsics because gcc will not
 * vectorise sqrt without -fno-math-errno, which the build does not use.
 */
#include <math.h>

#include "cpu.h"
#include "optim.h"

#if FNN_X86
#include <immintrin.h>
#endif

#define OPT_CHUNK 16384     /* elements per OpenMP work item (multiple of 8) */
#define OPT_PAR_MIN 65536

#define INLINE static inline __attribute__((always_inline))

#define DEFINE_BODIES(REAL, SFX, SQRT)                                                        \
INLINE void sgd_body_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *vel, REAL lr,        \
                           REAL mu, int nesterov, REAL wd)                                    \
{                                                                                             \
    if (!vel) {                                                                               \
        for (ptrdiff_t i = 0; i < n; i++)                                                     \
            p[i] -= lr * (grad[i] + wd * p[i]);                                               \
    } else if (!nesterov) {                                                                   \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            REAL v = mu * vel[i] + (grad[i] + wd * p[i]);                                     \
            vel[i] = v;                                                                       \
            p[i] -= lr * v;                                                                   \
        }                                                                                     \
    } else {                                                                                  \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            REAL g = grad[i] + wd * p[i];                                                     \
            REAL v = mu * vel[i] + g;                                                         \
            vel[i] = v;                                                                       \
            p[i] -= lr * (g + mu * v);                                                        \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
static void sgd_scalar_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *vel, REAL lr,      \
                             REAL mu, int nesterov, REAL wd)                                  \
{                                                                                             \
    sgd_body_##SFX(n, p, grad, vel, lr, mu, nesterov, wd);                                    \
}                                                                                             \
INLINE void adam_body_##SFX(ptrdiff_t i0, ptrdiff_t n, REAL *p, const REAL *grad, REAL *m,    \
                            REAL *v, REAL decay, REAL wd_g, REAL step_size,                   \
                            REAL inv_bc2_sqrt, REAL b1, REAL b2, REAL c1, REAL c2, REAL eps)  \
{                                                                                             \
    for (ptrdiff_t i = i0; i < n; i++) {                                                      \
        REAL pi = p[i] * decay;                                                               \
        REAL g = grad[i] + wd_g * pi;                                                         \
        REAL mi = b1 * m[i] + c1 * g;                                                         \
        REAL vi = b2 * v[i] + c2 * g * g;                                                     \
        m[i] = mi;                                                                            \
        v[i] = vi;                                                                            \
        p[i] = pi - step_size * mi / (SQRT(vi) * inv_bc2_sqrt + eps);                         \
    }                                                                                         \
}                                                                                             \
static void adam_scalar_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *m, REAL *v,       \
                              REAL decay, REAL wd_g, REAL step_size, REAL inv_bc2_sqrt,       \
                              REAL b1, REAL b2, REAL c1, REAL c2, REAL eps)                   \
{                                                                                             \
    adam_body_##SFX(0, n, p, grad, m, v, decay, wd_g, step_size, inv_bc2_sqrt, b1, b2, c1, c2, \
                    eps);                                                                     \
}

DEFINE_BODIES(float, f32, sqrtf)
DEFINE_BODIES(double, f64, sqrt)

#if FNN_X86
FNN_TARGET_AVX2 static void sgd_avx2_f32(ptrdiff_t n, float *p, const float *grad, float *vel,
                                         float lr, float mu, int nesterov, float wd)
{
    sgd_body_f32(n, p, grad, vel, lr, mu, nesterov, wd);
}

FNN_TARGET_AVX2 static void sgd_avx2_f64(ptrdiff_t n, double *p, const double *grad, double *vel,
                                         double lr, double mu, int nesterov, double wd)
{
    sgd_body_f64(n, p, grad, vel, lr, mu, nesterov, wd);
}

/* One template for both widths: W = lanes, V = vector type, X(op) = intrinsic name. */
#define DEFINE_ADAM_AVX2(REAL, SFX, V, W, X)                                                  \
FNN_TARGET_AVX2 static void adam_avx2_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *m,  \
                                            REAL *v, REAL decay, REAL wd_g, REAL step_size,   \
                                            REAL inv_bc2_sqrt, REAL b1, REAL b2, REAL c1,     \
                                            REAL c2, REAL eps)                                \
{                                                                                             \
    const V vdecay = X(set1)(decay), vwd = X(set1)(wd_g), vss = X(set1)(step_size);           \
    const V vibc = X(set1)(inv_bc2_sqrt), vb1 = X(set1)(b1), vb2 = X(set1)(b2);               \
    const V vc1 = X(set1)(c1), vc2 = X(set1)(c2), veps = X(set1)(eps);                        \
    ptrdiff_t i = 0;                                                                          \
    for (; i + W <= n; i += W) {                                                              \
        V pi = X(mul)(X(loadu)(p + i), vdecay);                                               \
        V g = X(fmadd)(vwd, pi, X(loadu)(grad + i));                                          \
        V mi = X(fmadd)(vb1, X(loadu)(m + i), X(mul)(vc1, g));                                \
        V vi = X(fmadd)(vb2, X(loadu)(v + i), X(mul)(vc2, X(mul)(g, g)));                     \
        X(storeu)(m + i, mi);                                                                 \
        X(storeu)(v + i, vi);                                                                 \
        V den = X(fmadd)(X(sqrt)(vi), vibc, veps);                                            \
        X(storeu)(p + i, X(fnmadd)(vss, X(div)(mi, den), pi));                                \
    }                                                                                         \
    adam_body_##SFX(i, n, p, grad, m, v, decay, wd_g, step_size, inv_bc2_sqrt, b1, b2, c1, c2, \
                    eps);                                                                     \
}
#define XPS(op) _mm256_##op##_ps
#define XPD(op) _mm256_##op##_pd
DEFINE_ADAM_AVX2(float, f32, __m256, 8, XPS)
DEFINE_ADAM_AVX2(double, f64, __m256d, 4, XPD)
#define PICK(a, s) (fnn_use_avx2() ? (a) : (s))
#else
#define PICK(a, s) (s)
#endif

#define DEFINE_DRIVERS(REAL, SFX)                                                             \
void fnn_sgd_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *velocity, double lr,         \
                   double mu, int nesterov, double wd, int nthreads)                          \
{                                                                                             \
    void (*f)(ptrdiff_t, REAL *, const REAL *, REAL *, REAL, REAL, int, REAL) =               \
        PICK(sgd_avx2_##SFX, sgd_scalar_##SFX);                                               \
    const ptrdiff_t chunks = (n + OPT_CHUNK - 1) / OPT_CHUNK;                                 \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= OPT_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * OPT_CHUNK, len = n - lo < OPT_CHUNK ? n - lo : OPT_CHUNK;          \
        f(len, p + lo, grad + lo, velocity ? velocity + lo : NULL, (REAL)lr, (REAL)mu,        \
          nesterov, (REAL)wd);                                                                \
    }                                                                                         \
}                                                                                             \
void fnn_adam_##SFX(ptrdiff_t n, REAL *p, const REAL *grad, REAL *m, REAL *v, double lr,      \
                    double step_size, double inv_bc2_sqrt, double b1, double b2, double eps,  \
                    double wd, int decoupled, int nthreads)                                   \
{                                                                                             \
    void (*f)(ptrdiff_t, REAL *, const REAL *, REAL *, REAL *, REAL, REAL, REAL, REAL, REAL,  \
              REAL, REAL, REAL, REAL) = PICK(adam_avx2_##SFX, adam_scalar_##SFX);             \
    /* AdamW shrinks p before the update; Adam adds wd*p to the gradient instead */          \
    const REAL decay = decoupled ? (REAL)(1.0 - lr * wd) : (REAL)1;                           \
    const REAL wd_g = decoupled ? (REAL)0 : (REAL)wd;                                         \
    /* 1 - beta in double, then rounded (as PyTorch does): 1 - 0.999f in float is off by     \
     * 1.3e-5 relative, which skewed every float32 step of v by as much */                    \
    const REAL c1 = (REAL)(1.0 - b1), c2 = (REAL)(1.0 - b2);                                  \
    const ptrdiff_t chunks = (n + OPT_CHUNK - 1) / OPT_CHUNK;                                 \
    if (nthreads < 1)                                                                         \
        nthreads = 1;                                                                         \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && n >= OPT_PAR_MIN)") \
    for (ptrdiff_t k = 0; k < chunks; k++) {                                                  \
        ptrdiff_t lo = k * OPT_CHUNK, len = n - lo < OPT_CHUNK ? n - lo : OPT_CHUNK;          \
        f(len, p + lo, grad + lo, m + lo, v + lo, decay, wd_g, (REAL)step_size,               \
          (REAL)inv_bc2_sqrt, (REAL)b1, (REAL)b2, c1, c2, (REAL)eps);                         \
    }                                                                                         \
}

DEFINE_DRIVERS(float, f32)
DEFINE_DRIVERS(double, f64)
