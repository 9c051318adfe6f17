# The `c` matmul variant: a thin wrapper over the GEMM engine in gemm.c.
# Arrays arrive validated (fastnn/kernels/matmul/__init__.py); strides are
# passed through, so transposed and strided operands are never copied.
#
#   matmul(a, b, out, bias, relu, nthreads)      the registry variant
#   matmul_bf16(a, b, out, bias, relu, nthreads)  the same with bf16 inputs, fp32 accumulation
#   gemm_ex(a, b, out, bias, relu, mask, accumulate, nthreads, bf16)
#                                                 every epilogue option (tests, other kernels)
#   gemm_raw(a, b, out, nthreads, repeat, bf16)   the engine alone, `repeat` times without
#                                                 leaving C (call-overhead benchmark)
#   gemm_path(m, k, n, layout, bf16)              the code path a shape takes at this level
#   simd_level / set_simd_level / simd_name       this module's level (it has AVX-512 paths,
#                                                 so it does not take simd_api.pxi's names)
cimport numpy as cnp
from gemm cimport (fnn_epilogue, fnn_sgemm, fnn_dgemm, fnn_sgemm_bf16, fnn_sgemm_path,
                   fnn_sgemm_set_fp32_engine)
from fnn_common cimport fnn_simd_level, fnn_set_simd_level, fnn_simd_name

import numpy as np


def simd_level():
    """Current SIMD level of this module: 0 scalar, 1 AVX2+FMA, 2 AVX-512, 3 AVX-512+BF16."""
    return fnn_simd_level()


def set_simd_level(int level):
    """Set this module's SIMD level (clamped to what the CPU supports); returns it."""
    return fnn_set_simd_level(level)


def gemm_path(Py_ssize_t m, Py_ssize_t k, Py_ssize_t n, str layout="NN", bint bf16=False):
    """The code path a float32 (M, K) @ (K, N) product takes at the current level;
    ``layout`` "NN", "TN", "NT", "TT" says which operand is a transposed view."""
    cdef Py_ssize_t csa = m if layout[0] == "T" else 1
    cdef Py_ssize_t rsb = 1 if layout[1] == "T" else n
    return fnn_sgemm_path(m, n, k, csa, rsb, bf16).decode()


_ENGINES = ("auto", "avx512", "avx2")


def set_fp32_engine(str which="auto"):
    """Which float32 engine runs at levels >= avx512: "auto" (the dispatcher's
    choice per shape class and CPU model), "avx512" (every shape: tests and
    side-by-side benchmarks) or "avx2".  Returns the previous setting."""
    if which not in _ENGINES:
        raise ValueError(f"fp32 engine must be one of {_ENGINES}, got {which!r}")
    return _ENGINES[fnn_sgemm_set_fp32_engine(_ENGINES.index(which))]


def simd_name():
    """What the float32 GEMM runs at the current level, per shape class."""
    cdef int level = fnn_simd_level()
    if level < 2:
        return fnn_simd_name(level).decode()
    big = gemm_path(128, 784, 512, "NN")
    narrow = gemm_path(128, 512, 10, "NN")
    short = gemm_path(784, 128, 512, "TN")
    text = f"{fnn_simd_name(level).decode()}: fp32 {big}"
    if short != big:
        text += f", K <= 128: {short}"
    text += f"; N <= 12: {narrow}; bf16: {gemm_path(128, 784, 512, 'NN', True)}; float64: avx2+fma"
    return text

cnp.import_array()


cdef inline Py_ssize_t _es(cnp.ndarray x, int axis):
    # element stride (arrays arrive with strides that are multiples of the item size)
    return x.strides[axis] // x.itemsize


cdef void _run(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, fnn_epilogue *ep,
               int nthreads, int repeat, bint bf16=False):
    cdef Py_ssize_t M = a.shape[0], K = a.shape[1], N = b.shape[1]
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(out)
    cdef Py_ssize_t rsa = _es(a, 0), csa = _es(a, 1)
    cdef Py_ssize_t rsb = _es(b, 0), csb = _es(b, 1)
    cdef Py_ssize_t rsc = _es(out, 0), csc = _es(out, 1)
    cdef int r
    if bf16:
        if a.dtype.num != cnp.NPY_FLOAT32:
            raise TypeError("bf16 GEMM: operands must be float32")
        with nogil:
            for r in range(repeat):
                fnn_sgemm_bf16(M, N, K, <const float *> pa, rsa, csa, <const float *> pb, rsb,
                               csb, <float *> pc, rsc, csc, ep, nthreads)
    elif a.dtype.num == cnp.NPY_FLOAT32:
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


def matmul_bf16(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, bias, bint relu,
                int nthreads=1):
    """out = relu?(bf16(a) @ bf16(b) + bias), fp32 accumulation (float32 only; inputs
    validated by the caller)."""
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
    _run(a, b, out, &ep, nthreads, 1, True)
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
            int nthreads=1, bint bf16=False):
    """Every option of the engine's epilogue, from Python.

        acc = a @ b;  if accumulate: acc += out;  acc += bias;  relu;
        if mask is not None: acc = where(mask > 0, acc, 0);  out[...] = acc

    Shapes: a (M, K), b (K, N), out (M, N), bias (N,), mask (M, N); one float
    dtype; any strides (transposes are views).  ``mask`` and ``bias`` must
    not overlap ``out``.  ``bf16=True`` (float32 only) rounds a and b to
    bf16 and accumulates in fp32 (``fnn_sgemm_bf16``).  Checks are light (this is a test and building-block
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
    _run(a, b, out, &ep, nthreads, 1, bf16)
    return out


def gemm_raw(cnp.ndarray a, cnp.ndarray b, cnp.ndarray out, int nthreads=1, int repeat=1,
             bint bf16=False):
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
    _run(a, b, out, &ep, nthreads, repeat, bf16)
    return out
