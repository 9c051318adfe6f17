# The `c` variant of the optim family: thin wrappers over kernels/optim/optim.c.
# Buffers arrive validated (flat, C-contiguous, one dtype, no aliasing:
# fastnn/kernels/optim/__init__.py); formulas in fastnn/kernels/optim/reference.py.
from libc.math cimport sqrt

cimport numpy as cnp

include "simd_api.pxi"

cnp.import_array()

cdef extern from "optim.h" nogil:
    void fnn_sgd_f32(Py_ssize_t n, float *p, const float *grad, float *velocity, double lr,
                     double mu, int nesterov, double wd, int nthreads)
    void fnn_sgd_f64(Py_ssize_t n, double *p, const double *grad, double *velocity, double lr,
                     double mu, int nesterov, double wd, int nthreads)
    void fnn_adam_f32(Py_ssize_t n, float *p, const float *grad, float *m, float *v, double lr,
                      double step_size, double inv_bc2_sqrt, double b1, double b2, double eps,
                      double wd, int decoupled, int nthreads)
    void fnn_adam_f64(Py_ssize_t n, double *p, const double *grad, double *m, double *v,
                      double lr, double step_size, double inv_bc2_sqrt, double b1, double b2,
                      double eps, double wd, int decoupled, int nthreads)


def sgd_update(cnp.ndarray p, cnp.ndarray g, double lr, double momentum, velocity,
               bint nesterov, double weight_decay, int nthreads=1):
    cdef Py_ssize_t n = p.shape[0]
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pv = NULL
    if velocity is not None:
        pv = cnp.PyArray_DATA(<cnp.ndarray> velocity)
    if p.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_sgd_f32(n, <float *> pp, <const float *> pg, <float *> pv, lr, momentum,
                        nesterov, weight_decay, nthreads)
    else:
        with nogil:
            fnn_sgd_f64(n, <double *> pp, <const double *> pg, <double *> pv, lr, momentum,
                        nesterov, weight_decay, nthreads)


def adam_update(cnp.ndarray p, cnp.ndarray g, cnp.ndarray m, cnp.ndarray v, long step,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                bint decoupled, int nthreads=1):
    cdef Py_ssize_t n = p.shape[0]
    cdef double step_size = lr / (1.0 - beta1 ** step)
    cdef double inv_bc2_sqrt = 1.0 / sqrt(1.0 - beta2 ** step)
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pm = cnp.PyArray_DATA(m)
    cdef void *pv = cnp.PyArray_DATA(v)
    if p.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_adam_f32(n, <float *> pp, <const float *> pg, <float *> pm, <float *> pv, lr,
                         step_size, inv_bc2_sqrt, beta1, beta2, eps, weight_decay, decoupled,
                         nthreads)
    else:
        with nogil:
            fnn_adam_f64(n, <double *> pp, <const double *> pg, <double *> pm, <double *> pv,
                         lr, step_size, inv_bc2_sqrt, beta1, beta2, eps, weight_decay,
                         decoupled, nthreads)
