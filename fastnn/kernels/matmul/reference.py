"""The specification of the matmul family, in float64 numpy.

    out = act(op(a) @ op(b) + bias)

Variant signature (shared by every variant of the family):
``fn(a, b, out, bias, relu, nthreads) -> out`` where ``a`` is op(a) with
shape (M, K), ``b`` is op(b) with shape (K, N) (any strides: a transpose is a
view, never a copy), ``out`` is a writable (M, N) array of the same dtype,
``bias`` is None or a contiguous (N,) array and ``relu`` a bool.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt


def matmul(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
           bias: Optional[npt.NDArray[np.floating]], relu: bool,
           nthreads: int = 1) -> npt.NDArray[np.floating]:
    acc = np.asarray(a, dtype=np.float64) @ np.asarray(b, dtype=np.float64)
    if bias is not None:
        acc += np.asarray(bias, dtype=np.float64)
    if relu:
        np.maximum(acc, 0.0, out=acc)
    out[...] = acc
    return out
