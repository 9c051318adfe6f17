"""The specification of the optim family (fused optimizer updates), in
float64 numpy, following PyTorch's torch.optim.SGD / Adam / AdamW.

SGD (weight decay wd, momentum mu, velocity v starting at 0):
    g = grad + wd * p
    if mu:  v = mu * v + g;  step = g + mu * v if nesterov else v
    else:   step = g
    p -= lr * step

Adam (step t >= 1; m, v start at 0):
    if decoupled (AdamW):  p -= lr * wd * p         else:  g = grad + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p -= (lr / (1 - b1**t)) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

Variant interface (all arrays flat 1-D, C-contiguous, one dtype, updated in place):
    sgd_update(p, g, lr, momentum, velocity, nesterov, weight_decay, nthreads)
        velocity is None when momentum == 0
    adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, nthreads)
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import numpy.typing as npt


def sgd_update(p: npt.NDArray[np.floating], g: npt.NDArray[np.floating], lr: float,
               momentum: float, velocity: Optional[npt.NDArray[np.floating]], nesterov: bool,
               weight_decay: float, nthreads: int = 1) -> None:
    p64 = p.astype(np.float64)
    d = g.astype(np.float64) + weight_decay * p64
    if momentum:    # the interface passes a velocity buffer whenever momentum != 0
        v = momentum * velocity.astype(np.float64) + d  # type: ignore[union-attr]
        velocity[...] = v  # type: ignore[index]
        d = d + momentum * v if nesterov else v
    p[...] = p64 - lr * d


def adam_update(p: npt.NDArray[np.floating], g: npt.NDArray[np.floating],
                m: npt.NDArray[np.floating], v: npt.NDArray[np.floating], step: int, lr: float,
                beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
                nthreads: int = 1) -> None:
    p64 = p.astype(np.float64)
    g64 = g.astype(np.float64)
    if decoupled:
        p64 = p64 - lr * weight_decay * p64
    else:
        g64 = g64 + weight_decay * p64
    m64 = beta1 * m.astype(np.float64) + (1.0 - beta1) * g64
    v64 = beta2 * v.astype(np.float64) + (1.0 - beta2) * g64 * g64
    step_size = lr / (1.0 - beta1 ** step)
    bc2_sqrt = math.sqrt(1.0 - beta2 ** step)
    p[...] = p64 - step_size * m64 / (np.sqrt(v64) / bc2_sqrt + eps)
    m[...] = m64
    v[...] = v64
