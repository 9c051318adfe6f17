"""The specification of the reduce family, in float64 numpy.

    column_sums:  out[j] (+)= sum_i x[i, j]     (the bias gradient: db = batch sum of dY)

Variant interface: ``column_sums(x, out, accumulate, nthreads)`` with x (B, N)
C-contiguous and out (N,) contiguous of the same dtype.  Fast variants must
give the same bits for every thread count (they sum in float64 and round
once to the output dtype): rows are cut into fixed blocks of
ROW_BLOCK (independent of the thread count), each block is summed in row
order into its own partial row, and the partials are added in block order.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

ROW_BLOCK = 256     # rows per partial sum in the fast variants (fixed: determinism)


def column_sums(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                accumulate: bool = False, nthreads: int = 1) -> npt.NDArray[np.floating]:
    s = np.asarray(x, dtype=np.float64).sum(axis=0)
    if accumulate:
        out[...] = np.asarray(out, dtype=np.float64) + s
    else:
        out[...] = s
    return out
