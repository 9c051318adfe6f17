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
