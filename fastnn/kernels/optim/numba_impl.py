"""The ``numba`` variant of the optim family (interface and formulas: ``reference.py``).

One parallel loop over the flat buffer per update; the scalar coefficients
are float64, so float32 buffers are updated with float64 arithmetic and
rounded once on store.  No fastmath.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from ... import _threads


@njit(parallel=True, cache=True)
def _sgd(p, g, vel, has_vel, lr, mu, nesterov, wd):
    for i in prange(p.shape[0]):
        d = g[i] + wd * p[i]
        if has_vel:
            v = mu * vel[i] + d
            vel[i] = v
            d = d + mu * v if nesterov else v
        p[i] = p[i] - lr * d


@njit(parallel=True, cache=True)
def _adam(p, g, m, v, decay, wd_g, step_size, inv_bc2_sqrt, b1, b2, eps):
    for i in prange(p.shape[0]):
        pi = p[i] * decay
        gi = g[i] + wd_g * pi
        mi = b1 * m[i] + (1.0 - b1) * gi
        vi = b2 * v[i] + (1.0 - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (np.sqrt(vi) * inv_bc2_sqrt + eps)


def sgd_update(p: npt.NDArray[np.floating], g: npt.NDArray[np.floating], lr: float,
               momentum: float, velocity: Optional[npt.NDArray[np.floating]], nesterov: bool,
               weight_decay: float, nthreads: int = 1) -> None:
    _threads.sync_numba()
    has_vel = velocity is not None
    vel = velocity if has_vel else np.zeros(1, p.dtype)
    _sgd(p, g, vel, has_vel, float(lr), float(momentum), bool(nesterov), float(weight_decay))


def adam_update(p: npt.NDArray[np.floating], g: npt.NDArray[np.floating],
                m: npt.NDArray[np.floating], v: npt.NDArray[np.floating], step: int, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                nthreads: int = 1) -> None:
    _threads.sync_numba()
    decay = 1.0 - lr * weight_decay if decoupled else 1.0
    wd_g = 0.0 if decoupled else float(weight_decay)
    step_size = lr / (1.0 - beta1 ** step)
    inv_bc2_sqrt = 1.0 / math.sqrt(1.0 - beta2 ** step)
    _adam(p, g, m, v, decay, wd_g, step_size, inv_bc2_sqrt, float(beta1), float(beta2),
          float(eps))
