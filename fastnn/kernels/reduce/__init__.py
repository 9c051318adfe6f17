"""The reduce family: column sums (the bias gradient), deterministic for any thread count.

Variants (see ``fastnn.kernels.variants("reduce")``); each is a module-like
object with ``column_sums`` (interface in ``fastnn/kernels/reduce/reference.py``):

    reference  numpy in float64, the specification         fastnn/kernels/reduce/reference.py
    numba      fixed row blocks, prange, ordered reduce     fastnn/kernels/reduce/numba_impl.py
    cython     fixed row blocks in prange, same order   kernels/reduce/reduce_cy.pyx
    c          fixed row blocks x column tiles, OpenMP       kernels/reduce/reduce.c, reduce_c.pyx
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ... import _threads
from .._registry import register_module_variants
from .._checks import check_variant, float_input, no_overlap, output, pick

__all__ = ["column_sums"]


register_module_variants("reduce", __name__, "reduce",
                         numba="Numba, fixed row blocks in prange, partials added in order",
                         cython="Cython, fixed row blocks in prange, partials added in order",
                         c="C, fixed row blocks x column tiles, OpenMP, partials added in order")


def column_sums(x: npt.ArrayLike, out: Optional[npt.NDArray[np.floating]] = None, *,
                accumulate: bool = False,
                variant: Optional[str] = None) -> npt.NDArray[np.floating]:
    """Sums over rows: ``out[j] = sum_i x[i, j]`` (``+=`` with ``accumulate=True``).

    The bias gradient of a dense layer (db = column sums of dY).  Deterministic:
    the same bits for any thread count (fixed row blocks whose partial sums are
    added in a fixed order).

    Shapes: x (B, N) float32/float64 (B may be 0: the sum is 0); out (N,) of
    x's dtype, contiguous, not overlapping x.

    >>> import numpy as np
    >>> from fastnn.kernels import column_sums
    >>> column_sums(np.ones((3, 2), np.float32)).tolist()
    [3.0, 3.0]
    """
    fn = "column_sums"
    check_variant(fn, variant)
    x = float_input(x, fn, "x", ndim=2)
    if out is None and accumulate:
        raise ValueError(f"{fn}: accumulate=True needs an out array to add into")
    out = output(out, fn, "out", (x.shape[1],), x.dtype)
    no_overlap(fn, out, "out", {"x": x})
    impl = pick("reduce", variant)
    impl.column_sums(x, out, bool(accumulate), _threads.get_num_threads())
    return out
