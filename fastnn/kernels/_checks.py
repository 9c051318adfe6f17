"""Argument checks shared by the xent, elementwise, reduce and optim families.

Every check runs in Python before a native call, so a bad argument gives a
clear exception (naming the function and the argument) instead of a crash.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, SupportsFloat

import numpy as np
import numpy.typing as npt

from .._validation import FLOATS, real
from ..errors import DTypeError, ShapeError
from ._registry import get

__all__ = ["FLOATS", "float_input", "output", "writable_contiguous", "overlaps", "same_buffer",
           "no_overlap", "real_scalar", "check_variant", "pick"]


def float_input(x: npt.ArrayLike, fn: str, name: str, *,
                ndim: Optional[int] = None) -> npt.NDArray[np.floating]:
    """``x`` as a C-contiguous float32/float64 array (copied only when it is not one)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype not in FLOATS:
        raise DTypeError(f"{fn}: {name} must be float32 or float64, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ShapeError(f"{fn}: {name} must be {ndim}-D, got shape {x.shape}")
    if not (x.flags.c_contiguous and x.flags.aligned):
        # np.require copies a misaligned C-contiguous array too (ascontiguousarray
        # returned it as is, and the kernels then read misaligned floats: UB)
        x = np.require(x, requirements=("C", "A"))
    return x


def output(out: Optional[npt.NDArray[Any]], fn: str, name: str, shape: Sequence[int],
           dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """Check a caller-supplied output (or allocate one when ``out`` is None)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise DTypeError(f"{fn}: {name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ShapeError(f"{fn}: {name} must have shape {tuple(shape)}, got {out.shape}")
    writable_contiguous(out, fn, name)
    return out


def writable_contiguous(a: npt.NDArray[Any], fn: str, name: str) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{fn}: {name} is read-only")
    if not (a.flags.c_contiguous and a.flags.aligned):
        raise ValueError(f"{fn}: {name} must be C-contiguous and aligned (it is written in place)")


def overlaps(a: Optional[npt.NDArray[Any]], b: Optional[npt.NDArray[Any]]) -> bool:
    """True when two arrays may share memory (conservative when numpy cannot tell)."""
    if a is None or b is None:
        return False
    if not np.may_share_memory(a, b):      # cheap bounds test first: the common case
        return False
    try:
        # numpy's stubs allow max_work in {-1, 0} only; numpy takes any bound
        return bool(np.shares_memory(a, b, max_work=10_000))  # type: ignore[arg-type]
    except np.exceptions.TooHardError:
        return True


def same_buffer(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """True when ``a`` and ``b`` view exactly the same elements in the same order."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def no_overlap(fn: str, out: npt.NDArray[Any], out_name: str,
               inputs: Mapping[str, Optional[npt.NDArray[Any]]], *,
               allow_same: Sequence[str] = ()) -> None:
    """Raise when ``out`` overlaps any of ``inputs`` (a dict name -> array).

    Names in ``allow_same`` may be the very same buffer as ``out`` (an
    in-place update, safe for element-wise kernels) but not a partial overlap.
    """
    for name, arr in inputs.items():
        if arr is None or not overlaps(out, arr):
            continue
        if name in allow_same and same_buffer(out, arr):
            continue
        raise ValueError(f"{fn}: {out_name} overlaps {name}; pass a separate array"
                         + (" (or exactly the same array, for an in-place update)"
                            if name in allow_same else ""))


def real_scalar(value: SupportsFloat, fn: str, name: str, *, lo: Optional[float] = None,
                hi: Optional[float] = None, lo_open: bool = False, hi_open: bool = False) -> float:
    """A finite Python float within [lo, hi] (open ends where asked): the API's one
    check, ``fastnn._validation.real``, in the kernels' argument order."""
    if type(value) is float and math.isfinite(value) and (lo is None or value > lo) \
            and (hi is None or value < hi):
        return value                # the per-step hot case: nothing to convert or report
    return real(value, name, fn, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def check_variant(fn: str, variant: Optional[str]) -> None:
    if variant is not None and not isinstance(variant, str):
        raise TypeError(f"{fn}: variant must be a string or None, got {type(variant).__name__}")


_DEFAULT_ORDER = ("c", "cython", "reference")
_default_cache: Dict[str, str] = {}


def pick(family: str, variant: Optional[str]) -> Any:
    """The variant function-set to run: ``variant`` if given, else the fastest
    native one built here (c, then cython), else the numpy reference.

    Numba is never the default so that training never pays Numba's import and
    compile time unless asked for (``variant="numba"``)."""
    if variant is not None:
        return get(family, variant)
    name = _default_cache.get(family)
    if name is None:
        # load the candidates one by one: variants() would load (and import) Numba too
        for name in _DEFAULT_ORDER:
            try:
                get(family, name)
                break
            except RuntimeError:        # not built here
                continue
        # _DEFAULT_ORDER is not empty, so the loop has set name to a str
        _default_cache[family] = name  # type: ignore[assignment]
    return get(family, name)  # type: ignore[arg-type]
