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
                   fnn_sgemm_set_fp32_engine, fnn_gemm_set_small,
                   fnn_gemm_set_shared)
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


def set_small_path(max_m=None):
    """Products with at most ``max_m`` rows and a B whose rows are contiguous take
    the small-M path (B streamed in place, no packing); 0 sends every product to
    the packed engine (tests, side-by-side benchmarks); None restores the default
    (16).  Returns the previous setting."""
    if max_m is None:
        max_m = -1
    elif type(max_m) is not int or not 0 <= max_m <= 64:
        raise ValueError(f"set_small_path: max_m must be an int in [0, 64] or None, "
                         f"got {max_m!r}")
    return fnn_gemm_set_small(max_m)


def set_shared_split(bint on=True, double chunk_fma=0):
    """Multithreaded products with a small packed A split N into chunks that share
    one packed A (the default); False sends them to the per-block split instead
    (side-by-side benchmarks).  ``chunk_fma`` > 0 sets the multiply-adds per chunk at
    least (tuning).  Results are bitwise the same either way.  Returns the previous
    on/off setting."""
    return bool(fnn_gemm_set_shared(on, chunk_fma))


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


# ---------------------------------------------------------------- a whole MLP in one call

from libc.stdlib cimport malloc, free


cdef class LeanMLP:
    """A chain of Dense layers (``relu?(h @ W + b)``) run as one native call: the
    lean ``predict`` path of an MLP (fastnn/training.py).

    ``LeanMLP(dense, layers)``: ``dense`` is a sequence of ``(layer, W, b, relu)``
    (``W`` a 2-D float32/float64 array (in, out), ``b`` its bias array or None),
    in order, their widths chaining; ``layers`` the model's layer list when it was
    built (``matches`` tells whether the model still has those layers and arrays).

    ``run(x, out, batch, nthreads)`` computes the chain on the C-contiguous batch
    ``x`` in slices of ``batch`` rows, every layer one engine call with the same
    arguments as ``matmul(h, W, y, b, relu, nthreads)`` (so the same numbers as
    ``Dense.forward``), intermediates in buffers this object keeps, the last
    layer straight into the result: ``out`` when given (nothing else is
    allocated), else a new array.  It returns None, computing nothing, when
    ``x`` or ``out`` does not qualify (dtype, shape, layout, ``out`` overlapping
    ``x``) or when another thread is running this object: the caller then takes
    its general path, which also raises the errors.

    >>> import numpy as np
    >>> w = np.ones((3, 2), np.float32); b = np.zeros(2, np.float32)
    >>> run = LeanMLP([(None, w, b, True)], [])
    >>> run.run(np.ones((1, 3), np.float32), None, 1000, 1)
    array([[3., 3.]], dtype=float32)
    """
    cdef readonly int nlayers
    cdef int typenum
    cdef Py_ssize_t *dims            # dims[0] in, dims[i + 1] layer i's width
    cdef const void **w
    cdef Py_ssize_t *rsw
    cdef Py_ssize_t *csw
    cdef const void **b
    cdef int *relu
    cdef Py_ssize_t maxw             # widest intermediate
    cdef object arrays               # keeps the weights and biases alive
    cdef tuple layers
    cdef tuple dense
    cdef object work                 # ping-pong buffer for the intermediates
    cdef char *wp
    cdef Py_ssize_t work_rows
    cdef bint busy

    def __cinit__(self):
        self.dims = NULL
        self.w = NULL
        self.rsw = NULL
        self.csw = NULL
        self.b = NULL
        self.relu = NULL
        self.wp = NULL
        self.work_rows = 0
        self.busy = False

    def __init__(self, dense, layers):
        dense = tuple(dense)
        if not dense:
            raise ValueError("LeanMLP: no layers")
        cdef int n = len(dense), i
        self.dims = <Py_ssize_t *> malloc((n + 1) * sizeof(Py_ssize_t))
        self.rsw = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
        self.csw = <Py_ssize_t *> malloc(n * sizeof(Py_ssize_t))
        self.w = <const void **> malloc(n * sizeof(void *))
        self.b = <const void **> malloc(n * sizeof(void *))
        self.relu = <int *> malloc(n * sizeof(int))
        if not (self.dims and self.rsw and self.csw and self.w and self.b and self.relu):
            raise MemoryError()
        cdef cnp.ndarray wa, ba
        arrays = []
        dt = None
        self.maxw = 0
        for i, (layer, W, bias, relu) in enumerate(dense):
            if not isinstance(W, np.ndarray) or W.ndim != 2 or \
                    W.dtype not in (np.float32, np.float64):
                raise TypeError("LeanMLP: weights must be 2-D float32/float64 arrays")
            if dt is None:
                dt = W.dtype
                self.dims[0] = W.shape[0]
            if W.dtype != dt or W.shape[0] != self.dims[i] or not W.flags.aligned or \
                    any(s % W.itemsize for s in W.strides):
                raise ValueError(f"LeanMLP: layer {i}'s weights {W.shape} {W.dtype} do not "
                                 f"chain (expected ({self.dims[i]}, N) {dt}, aligned)")
            wa = W
            self.w[i] = cnp.PyArray_DATA(wa)
            self.rsw[i] = _es(wa, 0)
            self.csw[i] = _es(wa, 1)
            self.dims[i + 1] = W.shape[1]
            if i < n - 1 and W.shape[1] > self.maxw:
                self.maxw = W.shape[1]
            self.b[i] = NULL
            if bias is not None:
                if not isinstance(bias, np.ndarray) or bias.dtype != dt or \
                        bias.shape != (W.shape[1],) or not bias.flags.c_contiguous:
                    raise ValueError(f"LeanMLP: layer {i}'s bias must be a contiguous {dt} "
                                     f"array of shape ({W.shape[1]},)")
                ba = bias
                self.b[i] = cnp.PyArray_DATA(ba)
            self.relu[i] = 1 if relu else 0
            arrays.append((W, bias))
        self.nlayers = n
        self.typenum = cnp.NPY_FLOAT32 if dt == np.float32 else cnp.NPY_FLOAT64
        self.arrays = arrays
        self.dense = dense
        self.layers = tuple(layers)
        self.work = None

    def __dealloc__(self):
        free(self.dims)
        free(self.rsw)
        free(self.csw)
        free(<void *> self.w)
        free(<void *> self.b)
        free(self.relu)

    def matches(self, layers):
        """Whether ``layers`` (a model's layer list) is still the one this was built
        from, with the same weight and bias arrays, activations and fp32 precision."""
        cdef Py_ssize_t i, n = len(self.layers)
        if len(layers) != n:
            return False
        for i in range(n):
            if layers[i] is not self.layers[i]:
                return False
        for (layer, W, bias, relu) in self.dense:
            if layer is None:
                continue
            if layer.weight.data is not W:
                return False
            lb = layer.bias
            if (lb is None) != (bias is None) or (lb is not None and lb.data is not bias):
                return False
            if (layer.activation == "relu") != relu or layer.activation not in (None, "relu"):
                return False
            if layer.precision != "fp32":
                return False
        return True

    cdef bint _x_ok(self, x):
        if type(x) is not np.ndarray:
            return False
        cdef cnp.ndarray xa = <cnp.ndarray> x
        return (cnp.PyArray_NDIM(xa) == 2 and cnp.PyArray_TYPE(xa) == self.typenum
                and xa.shape[1] == self.dims[0] and xa.shape[0] > 0
                and cnp.PyArray_IS_C_CONTIGUOUS(xa) and cnp.PyArray_ISALIGNED(xa))

    def accepts(self, x):
        """Whether ``run`` takes the batch ``x`` (a 2-D C-contiguous aligned array of
        the weights' dtype and width, at least one row)."""
        return self._x_ok(x)

    def run(self, x, out, Py_ssize_t batch, int nthreads, int repeat=1):
        """The chain on ``x`` (see the class); None when it does not apply.
        ``repeat`` > 1 runs the native part that many times (benchmarks: the cost
        of the GEMMs without the Python call around them)."""
        if self.busy or batch < 1 or repeat < 1 or not self._x_ok(x):
            return None
        cdef cnp.ndarray xa = <cnp.ndarray> x
        cdef Py_ssize_t n = xa.shape[0], nout = self.dims[self.nlayers]
        cdef cnp.ndarray res
        cdef cnp.npy_intp shp[2]
        cdef char *xlo
        cdef char *olo
        cdef Py_ssize_t isz = 4 if self.typenum == cnp.NPY_FLOAT32 else 8
        if out is None:
            shp[0] = n
            shp[1] = nout
            res = cnp.PyArray_EMPTY(2, shp, self.typenum, 0)
        else:
            if type(out) is not np.ndarray:
                return None
            res = <cnp.ndarray> out
            if not (cnp.PyArray_NDIM(res) == 2 and cnp.PyArray_TYPE(res) == self.typenum
                    and res.shape[0] == n and res.shape[1] == nout
                    and cnp.PyArray_IS_C_CONTIGUOUS(res) and cnp.PyArray_ISALIGNED(res)
                    and cnp.PyArray_ISWRITEABLE(res)):
                return None
            xlo = <char *> cnp.PyArray_DATA(xa)
            olo = <char *> cnp.PyArray_DATA(res)
            if xlo < olo + n * nout * isz and olo < xlo + n * self.dims[0] * isz:
                return None                  # out overlaps x
        cdef Py_ssize_t rows = batch if batch < n else n
        if self.nlayers > 1 and self.work_rows < rows:
            self.work = np.empty(2 * rows * self.maxw, np.float32 if isz == 4 else np.float64)
            self.wp = <char *> cnp.PyArray_DATA(<cnp.ndarray> self.work)
            self.work_rows = rows
        self.busy = True
        cdef fnn_epilogue ep
        ep.mask = NULL
        ep.rs_mask = 0
        ep.cs_mask = 0
        ep.accumulate = 0
        cdef char *px = <char *> cnp.PyArray_DATA(xa)
        cdef char *pr = <char *> cnp.PyArray_DATA(res)
        cdef char *h
        cdef char *y
        cdef Py_ssize_t s, m, K, N, half = rows * self.maxw * isz
        cdef int i, r, L = self.nlayers
        try:
            with nogil:
              for r in range(repeat):
                s = 0
                while s < n:
                    m = batch if n - s > batch else n - s
                    h = px + s * self.dims[0] * isz
                    for i in range(L):
                        K = self.dims[i]
                        N = self.dims[i + 1]
                        y = pr + s * nout * isz if i == L - 1 else self.wp + (i % 2) * half
                        ep.bias = self.b[i]
                        ep.relu = self.relu[i]
                        if isz == 4:
                            fnn_sgemm(m, N, K, <const float *> h, K, 1,
                                      <const float *> self.w[i], self.rsw[i], self.csw[i],
                                      <float *> y, N, 1, &ep, nthreads)
                        else:
                            fnn_dgemm(m, N, K, <const double *> h, K, 1,
                                      <const double *> self.w[i], self.rsw[i], self.csw[i],
                                      <double *> y, N, 1, &ep, nthreads)
                        h = y
                    s += m
        finally:
            self.busy = False
        return res
