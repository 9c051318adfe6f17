"""The ``numba`` variant of the reduce family (interface: ``reference.py``).

Same summation order as the C kernel: fixed blocks of ROW_BLOCK rows summed
in parallel into partial rows, then the partials added in block order, so
the result does not depend on the thread count.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from ... import _threads
from .reference import ROW_BLOCK


@njit(parallel=True, cache=True)
def _column_sums(x, out, acc, rb):
    B, N = x.shape
    nb = (B + rb - 1) // rb
    part = np.zeros((nb, N), np.float64)     # float64 sums, rounded once (as the C kernel)
    for b in prange(nb):
        r1 = min(B, (b + 1) * rb)
        for i in range(b * rb, r1):
            for j in range(N):
                part[b, j] += x[i, j]
    tot = np.zeros(N, np.float64)
    for j in prange(N):
        for b in range(nb):
            tot[j] += part[b, j]
        out[j] = out[j] + tot[j] if acc else tot[j]

def column_sums(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating], accumulate: bool,
                nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    _column_sums(x, out, bool(accumulate), ROW_BLOCK)
    return out
