# The `cython` variant of the optim family: one prange loop over the flat
# buffer per update (formulas: fastnn/kernels/optim/reference.py), in the
# buffers' precision like the C kernel.
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

include "simd_api.pxi"

cnp.import_array()

DEF PAR_MIN = 65536


cdef inline floating _sqrt(floating v) noexcept nogil:
    if floating is float:
        return sqrtf(v)
    else:
        return sqrt(v)


cdef void _sgd(floating *p, const floating *g, floating *vel, Py_ssize_t n, floating lr,
               floating mu, bint nesterov, floating wd, int nt) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating d, v
    for i in prange(n, num_threads=nt, schedule="static"):
        d = g[i] + wd * p[i]
        if vel != NULL:
            v = mu * vel[i] + d
            vel[i] = v
            if nesterov:
                d = d + mu * v
            else:
                d = v
        p[i] = p[i] - lr * d


cdef void _adam(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t n,
                floating decay, floating wd_g, floating step_size, floating inv_bc2_sqrt,
                floating b1, floating b2, floating c1, floating c2, floating eps,
                int nt) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating pi, gi, mi, vi
    for i in prange(n, num_threads=nt, schedule="static"):
        pi = p[i] * decay
        gi = g[i] + wd_g * pi
        mi = b1 * m[i] + c1 * gi
        vi = b2 * v[i] + c2 * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (_sqrt(vi) * inv_bc2_sqrt + eps)


def sgd_update(cnp.ndarray p, cnp.ndarray g, double lr, double momentum, velocity,
               bint nesterov, double weight_decay, int nthreads=1):
    cdef Py_ssize_t n = p.shape[0]
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pv = NULL if velocity is None else cnp.PyArray_DATA(<cnp.ndarray> velocity)
    if nthreads < 1 or n < PAR_MIN:
        nthreads = 1
    if p.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _sgd(<float *> pp, <const float *> pg, <float *> pv, n, <float> lr,
                 <float> momentum, nesterov, <float> weight_decay, nthreads)
    else:
        with nogil:
            _sgd(<double *> pp, <const double *> pg, <double *> pv, n, lr, momentum, nesterov,
                 weight_decay, nthreads)


def adam_update(cnp.ndarray p, cnp.ndarray g, cnp.ndarray m, cnp.ndarray v, long step,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                bint decoupled, int nthreads=1):
    cdef Py_ssize_t n = p.shape[0]
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double inv_bc2_sqrt = 1.0 / sqrt(1.0 - beta2 ** step)
    # AdamW shrinks p before the update; Adam adds wd*p to the gradient instead
    cdef double decay = 1.0 - lr * weight_decay if decoupled else 1.0
    cdef double wd_g = 0.0 if decoupled else weight_decay
    # 1 - beta in double, rounded once (1 - (float)0.999 is 1.3e-5 off relatively)
    cdef double c1 = 1.0 - beta1, c2 = 1.0 - beta2
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pm = cnp.PyArray_DATA(m)
    cdef void *pv = cnp.PyArray_DATA(v)
    if nthreads < 1 or n < PAR_MIN:
        nthreads = 1
    if p.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            _adam(<float *> pp, <const float *> pg, <float *> pm, <float *> pv, n,
                  <float> decay, <float> wd_g, <float> step_size, <float> inv_bc2_sqrt,
                  <float> beta1, <float> beta2, <float> c1, <float> c2, <float> eps, nthreads)
    else:
        with nogil:
            _adam(<double *> pp, <const double *> pg, <double *> pm, <double *> pv, n, decay,
                  wd_g, step_size, inv_bc2_sqrt, beta1, beta2, c1, c2, eps, nthreads)
