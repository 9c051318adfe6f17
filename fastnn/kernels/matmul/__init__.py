"""The matmul family: ``out = act(op(a) @ op(b) + bias)``.

Variants (see ``fastnn.kernels.variants("matmul")``):

    reference  numpy in float64, the specification      fastnn/kernels/matmul/reference.py
    blas       numpy's BLAS, the yardstick               fastnn/kernels/matmul/blas.py
    numba      blocked, prange over output tiles         fastnn/kernels/matmul/numba_impl.py
    cython     blocked loops, OpenMP prange              kernels/matmul/matmul_cy.pyx
    c          packed panels + AVX2/FMA 6x16 and AVX-512  kernels/matmul/gemm.c (engine),
               12x32 microkernels (fp32, bf16 vdpbf16ps), gemm_tmpl.h, gemm_x512.h,
               fused bias/ReLU epilogue, OpenMP           kernels/matmul/matmul_c.pyx (wrapper)

``matmul(..., precision="bf16")`` rounds the operands to bfloat16 and
accumulates in float32 (``c``: ``fnn_sgemm_bf16``; ``reference``:
``reference.matmul_bf16``).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._registry import available, get, native_module, register

__all__ = ["matmul"]

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def _load_reference() -> Callable[..., Any]:
    from .reference import matmul as fn
    return fn


def _load_blas() -> Callable[..., Any]:
    from .blas import matmul as fn
    return fn


def _blas_simd() -> str:
    from .blas import simd
    return simd()


def _load_numba() -> Callable[..., Any]:
    from .numba_impl import matmul as fn
    return fn


def _load_cython() -> Callable[..., Any]:
    return native_module("matmul_cy").matmul


def _load_c() -> Callable[..., Any]:
    return native_module("matmul_c").matmul


register("matmul", "reference", _load_reference, description="numpy float64 (specification)",
         simd=lambda: "numpy float64")
register("matmul", "blas", _load_blas, description="numpy's BLAS + separate bias/ReLU passes",
         simd=_blas_simd)
register("matmul", "numba", _load_numba, description="Numba, blocked, prange over output tiles",
         simd=lambda: "LLVM (host CPU)")
register("matmul", "cython", _load_cython, description="Cython, blocked loops, OpenMP prange",
         simd=lambda: native_module("matmul_cy").simd_name())
register("matmul", "c", _load_c,
         description="C, packed panels, register-blocked microkernel, fused epilogue, OpenMP",
         simd=lambda: native_module("matmul_c").simd_name())


# ----------------------------------------------------------------------------- validation

def _as_operand(x: npt.ArrayLike, name: str) -> npt.NDArray[np.floating]:
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in _SUPPORTED:
        raise DTypeError(f"matmul: {name} must be float32 or float64, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ShapeError(f"matmul: {name} must be 2-D, got shape {x.shape}")
    # Kernels take element strides: copy the rare array whose strides are not a
    # multiple of the item size or whose data is misaligned.
    item = x.itemsize
    if (not x.flags.aligned) or any(s % item for s in x.strides):
        x = np.array(x, order="C")      # a copy (ascontiguousarray kept a misaligned C array)
    return x


def _overlaps(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    try:
        # numpy's stubs allow max_work in {-1, 0} only; numpy takes any bound
        return np.shares_memory(a, b, max_work=10_000)  # type: ignore[arg-type]
    except np.exceptions.TooHardError if hasattr(np, "exceptions") else Exception:
        return True


def _validate(a: npt.ArrayLike, b: npt.ArrayLike, trans_a: bool, trans_b: bool,
              out: Optional[npt.NDArray[np.floating]], bias: Optional[npt.ArrayLike],
              activation: Optional[str]
              ) -> Tuple[npt.NDArray[np.floating], npt.NDArray[np.floating],
                         npt.NDArray[np.floating], Optional[npt.NDArray[np.floating]]]:
    a = _as_operand(a, "a")
    b = _as_operand(b, "b")
    if a.dtype != b.dtype:
        raise DTypeError(f"matmul: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    a_op = a.T if trans_a else a
    b_op = b.T if trans_b else b
    (m, k), (k2, n) = a_op.shape, b_op.shape
    if k != k2:
        raise ShapeError(
            f"matmul: inner dimensions differ: op(a) is {a_op.shape} (trans_a={bool(trans_a)}), "
            f"op(b) is {b_op.shape} (trans_b={bool(trans_b)})")
    if activation not in (None, "relu"):
        raise ValueError(f"matmul: activation must be None or 'relu', got {activation!r}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != a.dtype:
            raise DTypeError(f"matmul: bias must have dtype {a.dtype}, got {bias.dtype}")
        if bias.shape != (n,):
            raise ShapeError(f"matmul: bias must have shape ({n},) (one value per output column), "
                             f"got {bias.shape}")
        bias = np.require(bias, requirements=("C", "A"))
    if out is None:
        out = np.empty((m, n), dtype=a.dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"matmul: out must be a numpy array, got {type(out).__name__}")
        if out.dtype != a.dtype:
            raise DTypeError(f"matmul: out must have dtype {a.dtype}, got {out.dtype}")
        if out.shape != (m, n):
            raise ShapeError(f"matmul: out must have shape {(m, n)}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("matmul: out is read-only")
        if (not out.flags.aligned) or any(s % out.itemsize for s in out.strides):
            raise ValueError("matmul: out must be aligned with strides that are multiples "
                             "of its item size")
        for other, name in ((a, "a"), (b, "b"), (bias, "bias")):
            if other is not None and _overlaps(out, other):
                raise ValueError(f"matmul: out overlaps input {name}; pass a separate output array")
    return a_op, b_op, out, bias


# ----------------------------------------------------------------------------- autotuner

_FORCE_ENV = "FASTNN_MATMUL_VARIANT"
_CANDIDATES = ("c", "blas")
_tune_lock = threading.Lock()
_tuned: Dict[Tuple[Any, ...], str] = {}   # key -> variant name
_SMALL_FLOPS = 2 * 64 * 64 * 64   # below this, timing costs more than it could save
_SWITCH_MARGIN = 1.10             # another candidate must be >10% faster than the first


def _layout(x: npt.NDArray[Any]) -> str:
    if x.flags.c_contiguous:
        return "C"
    if x.flags.f_contiguous:
        return "F"
    return "S"


def _choose(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
            bias: Optional[npt.NDArray[np.floating]], relu: bool, nthreads: int) -> str:
    forced = os.environ.get(_FORCE_ENV)
    if forced:
        return forced
    avail = [v for v in _CANDIDATES if available("matmul", v)]   # never loads numba
    if not avail:
        return "reference"
    m, k = a.shape
    n = b.shape[1]
    if len(avail) == 1 or 2 * m * n * k < _SMALL_FLOPS:
        return avail[0]
    key = (a.dtype.char, m, k, n, _layout(a), _layout(b), bias is not None, relu, nthreads)
    name = _tuned.get(key)
    if name is not None:
        return name
    with _tune_lock:
        name = _tuned.get(key)
        if name is None:
            best = None
            for cand in avail:
                fn = get("matmul", cand)
                fn(a, b, out, bias, relu, nthreads)          # warm caches / first-call costs
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    fn(a, b, out, bias, relu, nthreads)
                    times.append(time.perf_counter() - t0)
                t = sorted(times)[1]
                if cand != avail[0]:
                    # Hysteresis toward the first candidate (our fused engine):
                    # another pool must win clearly, because interleaving two
                    # spinning thread pools (OpenMP and OpenBLAS) on few cores
                    # costs more than a few percent of kernel speed.
                    t *= _SWITCH_MARGIN
                if best is None or t < best[0]:
                    best = (t, cand)
            name = best[1]  # type: ignore[index]  # avail is not empty: best is set
            if len(_tuned) > 4096:
                _tuned.clear()
            _tuned[key] = name
    return name


def autotune_table() -> Dict[Tuple[Any, ...], str]:
    """The autotuner's choices so far: {(dtype, M, K, N, layouts..., nthreads): variant}."""
    return dict(_tuned)


# ----------------------------------------------------------------------------- public API

def matmul(a: npt.ArrayLike, b: npt.ArrayLike, *, trans_a: bool = False, trans_b: bool = False,
           out: Optional[npt.NDArray[np.floating]] = None, bias: Optional[npt.ArrayLike] = None,
           activation: Optional[str] = None,
           variant: Optional[str] = None,
           precision: str = "fp32") -> npt.NDArray[np.floating]:
    """``act(op(a) @ op(b) + bias)`` on fastnn's kernels.

    op(x) is x or x.T (``trans_a``/``trans_b``); transposes are strided views,
    never copies.  ``bias`` has one value per output column; ``activation``
    is None or ``"relu"`` and is fused into the kernel's epilogue.

    Shapes: op(a) (M, K), op(b) (K, N), bias (N,), out (M, N).  float32 or
    float64, both operands the same.  ``out`` must not overlap an input.

    ``variant`` picks an implementation (``fastnn.kernels.variants("matmul")``);
    None lets a per-process autotuner pick the fastest for the shape, and
    ``$FASTNN_MATMUL_VARIANT`` forces one.

    ``precision="bf16"`` (float32 operands only) rounds op(a) and op(b) to
    bfloat16 (round to nearest even, see ``reference.bf16_round``) and
    accumulates in float32: ``vdpbf16ps`` where the CPU has AVX512_BF16 and
    the SIMD level allows it, otherwise the same rounded products with
    float32 FMAs.  The two differ by summation order only: for inputs of
    magnitude ~1 the results agree within about ``1e-6 * sqrt(K)`` of the
    output's scale, far below bf16's own rounding error (``2**-9`` relative
    per input).  Variants: ``"c"`` (default) and ``"reference"``.

    >>> import numpy as np, fastnn
    >>> x = np.ones((2, 3), np.float32); w = np.ones((3, 4), np.float32)
    >>> float(fastnn.kernels.matmul(x, w, bias=np.zeros(4, np.float32), activation="relu")[0, 0])
    3.0
    >>> float(fastnn.kernels.matmul(np.full((1, 1), 1.00390625, np.float32),
    ...                             np.ones((1, 1), np.float32), precision="bf16")[0, 0])
    1.0
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"matmul: precision must be 'fp32' or 'bf16', got {precision!r}")
    a_op, b_op, out, bias = _validate(a, b, trans_a, trans_b, out, bias, activation)
    relu = activation == "relu"
    nthreads = _threads.get_num_threads()
    if precision == "bf16":
        return _matmul_bf16(a_op, b_op, out, bias, relu, nthreads, variant)
    name = variant if variant is not None else _choose(a_op, b_op, out, bias, relu, nthreads)
    fn = get("matmul", name)
    return fn(a_op, b_op, out, bias, relu, nthreads)


def _matmul_bf16(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating],
                 out: npt.NDArray[np.floating], bias: Optional[npt.NDArray[np.floating]],
                 relu: bool, nthreads: int, variant: Optional[str]) -> npt.NDArray[np.floating]:
    if a.dtype != np.float32:
        raise DTypeError(f"matmul: precision='bf16' needs float32 operands, got {a.dtype}")
    name = variant or "c"
    if name == "reference":
        from .reference import matmul_bf16
        return matmul_bf16(a, b, out, bias, relu, nthreads)
    if name != "c":
        raise ValueError(f"matmul: precision='bf16' runs on variant 'c' or 'reference', "
                         f"not {name!r}")
    fn: Callable[..., npt.NDArray[np.floating]] = native_module("matmul_c").matmul_bf16
    return fn(a, b, out, bias, relu, nthreads)
