# The `c` matmul variant: a thin wrapper over the GEMM engine in gemm.c.
# Arrays arrive validated (fastnn/kernels/matmul/__init__.py); strides are
# passed through, so transposed and strided operands are never copied.
#
#   matmul(a, b, out, bias, relu, nthreads)      the registry variant
#   gemm_ex(a, b, out, bias, relu, mask, accumulate, nthreads)
#                                                 every epilogue option (tests, other kernels)
#   gemm_raw(a, b, out, nthreads, repeat)         the engine alone, `repeat` times without
#                                                 leaving C (call-overhead benchmark)
cimport numpy as cnp
from gemm cimport fnn_epilogue, fnn_sgemm, fnn_dgemm

import numpy as np

include "simd_api.pxi"

cnp.import_array()


cdef inline Py_ssize_t _es(cnp.ndarray x, int axis):
    # element stride (arrays arrive with strides that are multiples of the item size)
    return x.strides[axis] // x.itemsize


cdef void _run(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, fnn_epilogue *ep,
               int nthreads, int repeat):
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(out)
    cdef Py_ssize_t rsa = _es(a, 0), csa = _es(a, 1)
    cdef Py_ssize_t rsb = _es(b, 0), csb = _es(b, 1)
    cdef Py_ssize_t rsc = _es(out, 0), csc = _es(out, 1)
    cdef int r
    if a.dtype.num == cnp.NPY_FLOAT32:
        with nogil:
            for r in range(repeat):
                fnn_sgemm(M, N, K, <const float *> pa, rsa, csa, <const float *> pb, rsb, csb,
                          <float *> pc, rsc, csc, ep, nthreads)
    else:
        with nogil:
            for r in range(repeat):
                fnn_dgemm(M, N, K, <const double *> pa, rsa, csa, <const double *> pb, rsb, csb,
                          <double *> pc, rsc, csc, ep, nthreads)


def matmul(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, bias, bint relu, int nthreads=1):
    """out = relu?(a @ b + bias) on the C engine (inputs validated by the caller)."""
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
    _run(a, b, out, &ep, nthreads, 1)
    return out


def _check2d(x, name, dtype):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"gemm_ex: {name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"gemm_ex: {name} must be 2-D, got shape {x.shape}")
    if x.dtype != dtype:
        raise TypeError(f"gemm_ex: {name} must have dtype {dtype}, got {x.dtype}")
    if (not x.flags.aligned) or any(s % x.itemsize for s in x.strides):
        raise ValueError(f"gemm_ex: {name} must be aligned with element strides")


def _check_abc(a, b, out):
    if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
        raise TypeError("gemm_ex: a must be a float32 or float64 numpy array")
    dt = a.dtype
    _check2d(a, "a", dt)
    _check2d(b, "b", dt)
    _check2d(out, "out", dt)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm_ex: inner dimensions differ: a {a.shape}, b {b.shape}")
    if out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"gemm_ex: out must have shape {(a.shape[0], b.shape[1])}, "
                         f"got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("gemm_ex: out is read-only")
    return dt


def gemm_ex(a, b, out, bias=None, bint relu=False, mask=None, bint accumulate=False,
            int nthreads=1):
    """Every option of the engine's epilogue, from Python.

        acc = a @ b;  if accumulate: acc += out;  acc += bias;  relu;
        if mask is not None: acc = where(mask > 0, acc, 0);  out[...] = acc

    Shapes: a (M, K), b (K, N), out (M, N), bias (N,), mask (M, N); one float
    dtype; any strides (transposes are views).  ``mask`` and ``bias`` must
    not overlap ``out``.  Checks are light (this is a test and building-block
    entry point; ``fastnn.kernels.matmul`` is the validated public API).

    >>> import numpy as np
    >>> a = np.ones((2, 3), np.float32); b = np.ones((3, 2), np.float32)
    >>> out = np.ones((2, 2), np.float32)
    >>> gemm_ex(a, b, out, accumulate=True)[0, 0]
    4.0
    """
    dt = _check_abc(a, b, out)
    cdef fnn_epilogue ep
    ep.bias = NULL
    ep.relu = relu
    ep.mask = NULL
    ep.rs_mask = 0
    ep.cs_mask = 0
    ep.accumulate = accumulate
    cdef cnp.ndarray bias_arr, mask_arr
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype != dt or bias.shape != (b.shape[1],):
            raise ValueError(f"gemm_ex: bias must be a {dt} array of shape ({b.shape[1]},)")
        bias_arr = np.ascontiguousarray(bias)
        ep.bias = cnp.PyArray_DATA(bias_arr)
    if mask is not None:
        _check2d(mask, "mask", dt)
        if mask.shape != out.shape:
            raise ValueError(f"gemm_ex: mask must have shape {out.shape}, got {mask.shape}")
        mask_arr = <cnp.ndarray> mask
        ep.mask = cnp.PyArray_DATA(mask_arr)
        ep.rs_mask = _es(mask_arr, 0)
        ep.cs_mask = _es(mask_arr, 1)
    _run(a, b, out, &ep, nthreads, 1)
    return out


def gemm_raw(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, int nthreads=1, int repeat=1):
    """Call the engine `repeat` times in one native loop (no epilogue, no checks):
    the benchmark's measure of what the engine costs without Python around it."""
    _check_abc(a, b, out)
    cdef fnn_epilogue ep
    ep.bias = NULL
    ep.relu = 0
    ep.mask = NULL
    ep.rs_mask = 0
    ep.cs_mask = 0
    ep.accumulate = 0
    _run(a, b, out, &ep, nthreads, repeat)
    return out
