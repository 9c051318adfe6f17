"""The ``numba`` variant of the xent family (interface: ``reference.py``).

One parallel loop over rows; per row the same three sweeps as the C kernel
(max, exp and sums, rescale).  Sums are kept in float64.  No fastmath: it
would break the NaN propagation the spec asks for.  Imported lazily (only
when this variant is asked for), compiled on first use, cached on disk.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from ... import _threads


@njit(parallel=True, cache=True)
def _xent(x, y, t, use_idx, losses, d, has_d, scale, ls):
    B, C = x.shape
    u = ls / C
    hot = 1.0 - ls
    for b in prange(B):
        m = x[b, 0]
        for c in range(1, C):
            if x[b, c] > m:
                m = x[b, c]
        s = 0.0
        sz = 0.0
        st = 0.0
        stz = 0.0
        for c in range(C):
            z = x[b, c] - m
            e = np.exp(z)
            if has_d:
                d[b, c] = e
            s += e
            sz += z
            if not use_idx:
                st += t[b, c]
                stz += t[b, c] * z
        if use_idx:
            st = 1.0
            stz = x[b, y[b]] - m
        if has_d:
            inv = 1.0 / s
            for c in range(C):
                if use_idx:
                    tc = hot + u if c == y[b] else u
                else:
                    tc = hot * t[b, c] + u
                d[b, c] = (d[b, c] * inv - tc) * scale
        losses[b] = np.log(s) * (hot * st + ls) - (hot * stz + u * sz)


@njit(parallel=True, cache=True)
def _rows(x, out, lg):
    B, C = x.shape
    for b in prange(B):
        if C == 0:
            continue
        m = x[b, 0]
        for c in range(1, C):
            if x[b, c] > m:
                m = x[b, c]
        s = 0.0
        for c in range(C):
            e = np.exp(x[b, c] - m)
            if not lg:
                out[b, c] = e
            s += e
        if lg:
            lz = np.log(s)
            for c in range(C):
                out[b, c] = (x[b, c] - m) - lz
        else:
            inv = 1.0 / s
            for c in range(C):
                out[b, c] = out[b, c] * inv


def softmax_xent(logits: npt.NDArray[np.floating], labels: npt.NDArray[Any],
                 losses: npt.NDArray[np.floating], dlogits: Optional[npt.NDArray[np.floating]],
                 grad_scale: float, label_smoothing: float,
                 nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    B, C = logits.shape
    use_idx = labels.ndim == 1
    y = labels if use_idx else np.zeros(1, np.int64)
    t = np.zeros((1, 1), logits.dtype) if use_idx else labels
    has_d = dlogits is not None
    d = dlogits if has_d else np.zeros((1, 1), logits.dtype)
    _xent(logits, y, t, use_idx, losses, d, has_d, float(grad_scale), float(label_smoothing))
    return losses


def softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
            nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    _rows(x, out, False)
    return out


def log_softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                nthreads: int = 1) -> npt.NDArray[np.floating]:
    _threads.sync_numba()
    _rows(x, out, True)
    return out
