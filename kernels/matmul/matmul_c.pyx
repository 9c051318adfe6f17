# The `c` matmul variant: a thin wrapper over the GEMM engine in gemm.c.
# Arrays arrive validated (fastnn/kernels/matmul/__init__.py); strides are
# passed through, so transposed and strided operands are never copied.
cimport numpy as cnp
from gemm cimport fnn_epilogue, fnn_sgemm, fnn_dgemm

include "simd_api.pxi"

cnp.import_array()


def matmul(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, bias, bint relu, int nthreads=1):
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    cdef Py_ssize_t isz = a.itemsize
    cdef fnn_epilogue ep
    ep.bias = NULL
    ep.relu = relu
    ep.mask = NULL
    ep.rs_mask = 0
    ep.cs_mask = 0
    ep.accumulate = 0
    cdef cnp.ndarray bias_arr
    if bias is not None:
        bias_arr = <cnp.ndarray> bias
        ep.bias = cnp.PyArray_DATA(bias_arr)
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(out)
    cdef Py_ssize_t rsa = a.strides[0] // isz, csa = a.strides[1] // isz
    cdef Py_ssize_t rsb = b.strides[0] // isz, csb = b.strides[1] // isz
    cdef Py_ssize_t rsc = out.strides[0] // isz, csc = out.strides[1] // isz
    if a.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            fnn_sgemm(M, N, K, <const float *> pa, rsa, csa, <const float *> pb, rsb, csb,
                      <float *> pc, rsc, csc, &ep, nthreads)
    else:
        with nogil:
            fnn_dgemm(M, N, K, <const double *> pa, rsa, csa, <const double *> pb, rsb, csb,
                      <double *> pc, rsc, csc, &ep, nthreads)
    return out
