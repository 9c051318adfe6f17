"""The ``numba`` variant of the elementwise family (interface: ``reference.py``).

One parallel loop per activation kind (the kind is chosen outside the
loop so each loop body stays branch-free and vectorisable).  No fastmath.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from ... import _threads
from .reference import RELU, SIGMOID, STEP, TANH


@njit(parallel=True, cache=True)
def _forward(kind, x, out):
    n = x.shape[0]
    if kind == RELU:
        for i in prange(n):
            out[i] = 0.0 if x[i] < 0 else x[i]
    elif kind == SIGMOID:
        for i in prange(n):
            e = np.exp(-np.abs(x[i]))          # never overflows
            r = 1.0 / (1.0 + e)
            out[i] = r if x[i] >= 0 else e * r
    elif kind == TANH:
        for i in prange(n):
            out[i] = np.tanh(x[i])
    else:
        for i in prange(n):
            out[i] = 1.0 if x[i] > 0 else 0.0


@njit(parallel=True, cache=True)
def _backward(kind, y, dout, dx, acc):
    n = y.shape[0]
    if kind == STEP:
        if not acc:
            for i in prange(n):
                dx[i] = 0.0
        return
    for i in prange(n):
        if kind == RELU:
            g = dout[i] if y[i] > 0 else 0.0 * dout[i]
        elif kind == SIGMOID:
            g = dout[i] * y[i] * (1.0 - y[i])
        else:
            g = dout[i] * (1.0 - y[i] * y[i])
        dx[i] = dx[i] + g if acc else g


def activation_forward(kind: int, x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                       nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    _forward(kind, x, out)
    return out


def activation_backward(kind: int, y: npt.NDArray[np.floating], dout: npt.NDArray[np.floating],
                        dx: npt.NDArray[np.floating], accumulate: bool,
                        nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    _backward(kind, y, dout, dx, bool(accumulate))
    return dx
