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
import math

import numpy as np


def sgd_update(p, g, lr, momentum, velocity, nesterov, weight_decay, nthreads=1):
    p64 = p.astype(np.float64)
    d = g.astype(np.float64) + weight_decay * p64
    if momentum:
        v = momentum * velocity.astype(np.float64) + d
        velocity[...] = v
        d = d + momentum * v if nesterov else v
    p[...] = p64 - lr * d


def adam_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled, nthreads=1):
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
