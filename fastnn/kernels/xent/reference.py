"""The specification of the xent family (softmax, log-softmax, fused softmax
cross-entropy), in float64 numpy.

For one row z of logits (C classes) and a target distribution t:

    softmax(z)_c     = exp(z_c - max z) / sum_k exp(z_k - max z)
    log_softmax(z)_c = z_c - max z - log sum_k exp(z_k - max z)
    t'               = (1 - ls) * t + ls / C                (label smoothing ls)
    loss             = -sum_c t'_c * log_softmax(z)_c
    dlogits_c        = (softmax(z)_c - t'_c) * grad_scale

t is a one-hot row when labels are class indices.

Variant interface (every variant module of the family provides these three):

    softmax_xent(logits, labels, losses, dlogits, grad_scale, label_smoothing, nthreads)
        logits (B, C) C-contiguous float; labels either int64 (B,) in [0, C)
        or (B, C) C-contiguous of the logits' dtype; losses (B,) written;
        dlogits (B, C) written, or None (loss only).
    softmax(x, out, nthreads)       x, out (B, C) C-contiguous; out may be x
    log_softmax(x, out, nthreads)   idem
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import numpy.typing as npt


def _log_softmax64(x: npt.ArrayLike) -> Tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x.copy(), np.zeros_like(x)
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    return z - np.log(s), e / s


def targets64(labels: npt.NDArray[Any], B: int, C: int,
              label_smoothing: float) -> npt.NDArray[np.float64]:
    """The (smoothed) target rows t' in float64."""
    if labels.ndim == 1:
        t = np.zeros((B, C))
        t[np.arange(B), labels] = 1.0
    else:
        t = np.asarray(labels, dtype=np.float64)
    if label_smoothing:
        t = (1.0 - label_smoothing) * t + label_smoothing / C
    return t


def softmax_xent(logits: npt.NDArray[np.floating], labels: npt.NDArray[Any],
                 losses: npt.NDArray[np.floating], dlogits: Optional[npt.NDArray[np.floating]],
                 grad_scale: float = 1.0, label_smoothing: float = 0.0,
                 nthreads: int = 1) -> npt.NDArray[np.floating]:
    B, C = logits.shape
    logp, p = _log_softmax64(logits)
    t = targets64(labels, B, C, label_smoothing)
    losses[...] = -(t * logp).sum(axis=1)
    if dlogits is not None:
        dlogits[...] = (p - t) * grad_scale
    return losses


def softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
            nthreads: int = 1) -> npt.NDArray[np.floating]:
    out[...] = _log_softmax64(x)[1]
    return out


def log_softmax(x: npt.NDArray[np.floating], out: npt.NDArray[np.floating],
                nthreads: int = 1) -> npt.NDArray[np.floating]:
    out[...] = _log_softmax64(x)[0]
    return out
