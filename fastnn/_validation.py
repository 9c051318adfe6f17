"""Argument checks shared across fastnn's Python API (one place, as scikit-learn's
``utils/validation.py``): every public function validates its arguments through
these, so the same mistake gets the same message everywhere.

Each check returns the validated value (converted: ``float``, ``int``,
``np.dtype``) or raises ``TypeError`` / ``ValueError`` / ``DTypeError`` naming
the argument and the caller (``who``).

>>> real(0.5, "lr", "SGD", lo=0.0)
0.5
>>> integer(3, "epochs", lo=0)
3
>>> float_dtype("float32", "Dense")
dtype('float32')
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np
import numpy.typing as npt

from .errors import DTypeError

__all__ = ["FLOATS", "real", "integer", "float_dtype", "first_nonfinite_row",
           "check_finite_rows"]

#: the float dtypes fastnn's kernels run in
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _prefix(who: Optional[str]) -> str:
    return f"{who}: " if who else ""


def real(value: Any, name: str, who: Optional[str] = None, *, lo: Optional[float] = None,
         lo_open: bool = False, hi: Optional[float] = None, hi_open: bool = False,
         finite: bool = True) -> float:
    """``value`` as a float in the given range, else ``TypeError``/``ValueError`` naming ``name``.

    Booleans are refused (``True`` is not a learning rate).  ``finite=False``
    lets inf through (not NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_prefix(who)}{name} must be a real number, got "
                        f"{type(value).__name__} {value!r:.40}")
    v = float(value)
    if math.isnan(v) or (finite and not math.isfinite(v)):
        raise ValueError(f"{_prefix(who)}{name} must be finite, got {v!r}")
    below = lo is not None and (v < lo or (lo_open and v == lo))
    above = hi is not None and (v > hi or (hi_open and v == hi))
    if below or above:
        if lo is not None and hi is not None:
            want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif below:
            want = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            want = f"{'<' if hi_open else '<='} {hi:g}"
        raise ValueError(f"{_prefix(who)}{name} must be {want}, got {v!r}")
    return v


def integer(value: Any, name: str, who: Optional[str] = None, *, lo: Optional[int] = 1,
            hi: Optional[int] = None) -> int:
    """``value`` as an int in [lo, hi], else ``TypeError``/``ValueError`` naming ``name``.

    Booleans and floats are refused, numpy integers accepted."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{_prefix(who)}{name} must be an integer, got "
                        f"{type(value).__name__} {value!r:.40}")
    if lo is not None and value < lo:
        raise ValueError(f"{_prefix(who)}{name} must be >= {lo}, got {value}")
    # typeshed's numbers.Integral declares __lt__ but not __gt__
    if hi is not None and value > hi:  # type: ignore[operator]
        raise ValueError(f"{_prefix(who)}{name} must be <= {hi}, got {value}")
    return int(value)


def float_dtype(dtype: npt.DTypeLike, who: str) -> np.dtype[Any]:
    """float32 or float64 as a ``np.dtype``, else ``DTypeError``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise DTypeError(f"{who}: dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOATS:
        raise DTypeError(f"{who}: dtype must be float32 or float64, got {dt}")
    return dt


# Rows scanned per block by first_nonfinite_row: ~4 MB of float32 MNIST rows, so the
# block's products stay in L2/L3 and the scan allocates nothing that grows with N.
_FINITE_BLOCK_BYTES = 1 << 22


def first_nonfinite_row(x: npt.NDArray[Any]) -> Optional[int]:
    """Index of the first row of ``x`` (N, ...) holding NaN or +-inf, or None.

    Integer arrays (uint8 images) cannot hold either: no pass at all.  For
    floats it scans block by block without a temporary the size of ``x``:
    a block's ``max`` and ``min`` are both finite exactly when every value in
    it is (NaN propagates through both, +inf shows in ``max``, -inf in
    ``min``); only a block that fails is looked at row by row.

    No BLAS call (an earlier version used ``block @ zeros``): OpenBLAS's
    worker threads keep spinning ~0.1 s after a multithreaded call and take
    the cores from the training that follows (issue 14, BENCHMARKS.md)."""
    if x.dtype.kind != "f" or x.size == 0:
        return None
    rows = x.reshape(x.shape[0], -1)
    width = rows.shape[1]
    step = max(1, _FINITE_BLOCK_BYTES // max(1, width * x.itemsize))
    for s in range(0, rows.shape[0], step):
        block = rows[s:s + step]
        with np.errstate(invalid="ignore", over="ignore"):
            if np.isfinite(block.max()) and np.isfinite(block.min()):
                continue
        return s + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
    return None


def check_finite_rows(x: npt.NDArray[Any], name: str = "x") -> None:
    """``ValueError`` naming ``name`` and the first row with NaN or inf (see
    :func:`first_nonfinite_row`)."""
    bad = first_nonfinite_row(x)
    if bad is not None:
        vals = np.asarray(x[bad]).reshape(-1)
        kind = "NaN" if np.isnan(vals).any() else "inf"
        raise ValueError(f"{name} holds {kind} in row {bad} (the first non-finite row); "
                         f"training needs finite inputs: clean or drop those rows")

