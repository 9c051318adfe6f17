# The `c` variant of the elementwise family: thin wrappers over
# kernels/elementwise/elementwise.c.  Arrays arrive validated, flat and
# C-contiguous (fastnn/kernels/elementwise/__init__.py); the interface is
# documented in fastnn/kernels/elementwise/reference.py.
cimport numpy as cnp

include "simd_api.pxi"

from libc.stdint cimport uint8_t, uint32_t, uint64_t

cnp.import_array()

cdef extern from "elementwise.h" nogil:
    void fnn_act_forward_f32(int kind, Py_ssize_t n, const float *x, float *out, int nthreads)
    void fnn_act_forward_f64(int kind, Py_ssize_t n, const double *x, double *out, int nthreads)
    void fnn_act_backward_f32(int kind, Py_ssize_t n, const float *y, const float *dout,
                              float *dx, int accumulate, int nthreads)
    void fnn_act_backward_f64(int kind, Py_ssize_t n, const double *y, const double *dout,
                              double *dx, int accumulate, int nthreads)
    void fnn_dropout_forward_f32(Py_ssize_t n, const float *x, float *y, uint8_t *mask,
                                 uint64_t key, uint32_t threshold, float scale, int nthreads)
    void fnn_dropout_forward_f64(Py_ssize_t n, const double *x, double *y, uint8_t *mask,
                                 uint64_t key, uint32_t threshold, double scale, int nthreads)
    void fnn_dropout_backward_f32(Py_ssize_t n, const float *dy, const uint8_t *mask,
                                  float *dx, float scale, int nthreads)
    void fnn_dropout_backward_f64(Py_ssize_t n, const double *dy, const uint8_t *mask,
                                  double *dx, double scale, int nthreads)
    void fnn_batchnorm_forward_f32(Py_ssize_t M, Py_ssize_t C, const float *x,
                                   const float *gamma, const float *beta, double eps,
                                   int training, double *mean, double *var, float *inv_std,
                                   float *y, float *xhat, double *ws, float *scratch,
                                   int nthreads)
    void fnn_batchnorm_forward_f64(Py_ssize_t M, Py_ssize_t C, const double *x,
                                   const double *gamma, const double *beta, double eps,
                                   int training, double *mean, double *var, double *inv_std,
                                   double *y, double *xhat, double *ws, double *scratch,
                                   int nthreads)
    void fnn_batchnorm_backward_f32(Py_ssize_t M, Py_ssize_t C, const float *dy,
                                    const float *xhat, const float *gamma, const float *inv_std,
                                    int batch_stats, double *sums, float *dx, double *ws,
                                    float *scratch, int nthreads)
    void fnn_batchnorm_backward_f64(Py_ssize_t M, Py_ssize_t C, const double *dy,
                                    const double *xhat, const double *gamma,
                                    const double *inv_std, int batch_stats, double *sums,
                                    double *dx, double *ws, double *scratch, int nthreads)


def activation_forward(int kind, cnp.ndarray x, cnp.ndarray out, int nthreads=1):
    cdef Py_ssize_t n = x.shape[0]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *po = cnp.PyArray_DATA(out)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_act_forward_f32(kind, n, <const float *> px, <float *> po, nthreads)
    else:
        with nogil:
            fnn_act_forward_f64(kind, n, <const double *> px, <double *> po, nthreads)
    return out


def activation_backward(int kind, cnp.ndarray y, cnp.ndarray dout, cnp.ndarray dx,
                        bint accumulate, int nthreads=1):
    cdef Py_ssize_t n = y.shape[0]
    cdef void *py = cnp.PyArray_DATA(y)
    cdef void *pg = cnp.PyArray_DATA(dout)
    cdef void *pd = cnp.PyArray_DATA(dx)
    if y.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_act_backward_f32(kind, n, <const float *> py, <const float *> pg, <float *> pd,
                                 accumulate, nthreads)
    else:
        with nogil:
            fnn_act_backward_f64(kind, n, <const double *> py, <const double *> pg,
                                 <double *> pd, accumulate, nthreads)
    return dx


def dropout_forward(cnp.ndarray x, cnp.ndarray y, cnp.ndarray mask, uint64_t key,
                    uint32_t threshold, double scale, int nthreads=1):
    """Flat, validated arrays (fastnn/kernels/elementwise/__init__.py); see dropout.c."""
    cdef Py_ssize_t n = x.shape[0]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef uint8_t *pm = <uint8_t *> cnp.PyArray_DATA(mask)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_dropout_forward_f32(n, <const float *> px, <float *> py, pm, key, threshold,
                                    <float> scale, nthreads)
    else:
        with nogil:
            fnn_dropout_forward_f64(n, <const double *> px, <double *> py, pm, key, threshold,
                                    scale, nthreads)
    return y


def dropout_backward(cnp.ndarray dy, cnp.ndarray mask, cnp.ndarray dx, double scale,
                     int nthreads=1):
    cdef Py_ssize_t n = dy.shape[0]
    cdef void *pg = cnp.PyArray_DATA(dy)
    cdef void *pd = cnp.PyArray_DATA(dx)
    cdef const uint8_t *pm = <const uint8_t *> cnp.PyArray_DATA(mask)
    if dy.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_dropout_backward_f32(n, <const float *> pg, pm, <float *> pd, <float> scale,
                                     nthreads)
    else:
        with nogil:
            fnn_dropout_backward_f64(n, <const double *> pg, pm, <double *> pd, scale, nthreads)
    return dx


cdef inline void *_data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray> a)


def batchnorm_forward(cnp.ndarray x, cnp.ndarray gamma, cnp.ndarray beta, double eps,
                      bint training, cnp.ndarray mean, cnp.ndarray var, cnp.ndarray inv_std,
                      cnp.ndarray y, object xhat, cnp.ndarray ws, cnp.ndarray scratch,
                      int nthreads=1):
    """(M, C) C-contiguous arrays, validated and sized by
    fastnn/kernels/elementwise/__init__.py; see batchnorm.c."""
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    cdef void *px = cnp.PyArray_DATA(x)
    cdef void *pg = cnp.PyArray_DATA(gamma)
    cdef void *pb = cnp.PyArray_DATA(beta)
    cdef double *pm = <double *> cnp.PyArray_DATA(mean)
    cdef double *pv = <double *> cnp.PyArray_DATA(var)
    cdef void *pi = cnp.PyArray_DATA(inv_std)
    cdef void *py = cnp.PyArray_DATA(y)
    cdef void *ph = _data(xhat)
    cdef double *pw = <double *> cnp.PyArray_DATA(ws)
    cdef void *ps = cnp.PyArray_DATA(scratch)
    if x.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_batchnorm_forward_f32(M, C, <const float *> px, <const float *> pg,
                                      <const float *> pb, eps, training, pm, pv, <float *> pi,
                                      <float *> py, <float *> ph, pw, <float *> ps, nthreads)
    else:
        with nogil:
            fnn_batchnorm_forward_f64(M, C, <const double *> px, <const double *> pg,
                                      <const double *> pb, eps, training, pm, pv,
                                      <double *> pi, <double *> py, <double *> ph, pw,
                                      <double *> ps, nthreads)
    return y


def batchnorm_backward(cnp.ndarray dy, cnp.ndarray xhat, cnp.ndarray gamma,
                       cnp.ndarray inv_std, bint batch_stats, cnp.ndarray sums, cnp.ndarray dx,
                       cnp.ndarray ws, cnp.ndarray scratch, int nthreads=1):
    cdef Py_ssize_t M = dy.shape[0], C = dy.shape[1]
    cdef void *pd = cnp.PyArray_DATA(dy)
    cdef void *ph = cnp.PyArray_DATA(xhat)
    cdef void *pg = cnp.PyArray_DATA(gamma)
    cdef void *pi = cnp.PyArray_DATA(inv_std)
    cdef double *psum = <double *> cnp.PyArray_DATA(sums)
    cdef void *px = cnp.PyArray_DATA(dx)
    cdef double *pw = <double *> cnp.PyArray_DATA(ws)
    cdef void *ps = cnp.PyArray_DATA(scratch)
    if dy.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_batchnorm_backward_f32(M, C, <const float *> pd, <const float *> ph,
                                       <const float *> pg, <const float *> pi, batch_stats,
                                       psum, <float *> px, pw, <float *> ps, nthreads)
    else:
        with nogil:
            fnn_batchnorm_backward_f64(M, C, <const double *> pd, <const double *> ph,
                                       <const double *> pg, <const double *> pi, batch_stats,
                                       psum, <double *> px, pw, <double *> ps, nthreads)
    return dx
