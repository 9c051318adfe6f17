"""The optim family: fused, in-place optimizer updates over one flat buffer.

Parameters and gradients live in one contiguous buffer each (layers hold
views), so one update is one parallel loop over the whole model.

Variants (see ``fastnn.kernels.variants("optim")``); each is a module-like
object with ``sgd_update`` and ``adam_update`` (interface and the exact
formulas in ``fastnn/kernels/optim/reference.py``):

    reference  numpy in float64, the specification    fastnn/kernels/optim/reference.py
    numba      prange over the flat buffer             fastnn/kernels/optim/numba_impl.py
    cython     OpenMP prange over the flat buffer      kernels/optim/optim_cy.pyx
    c          OpenMP over chunks, AVX2/FMA             kernels/optim/optim.c, optim_c.pyx
"""
from __future__ import annotations

import numbers
from typing import List, Optional, SupportsIndex, Tuple

import numpy as np
import numpy.typing as npt

from ... import _threads
from ...errors import DTypeError, ShapeError
from .._registry import register_module_variants
from .._checks import (FLOATS, check_variant, overlaps, pick, real_scalar,
                                   writable_contiguous)

__all__ = ["sgd_update", "adam_update"]


register_module_variants("optim", __name__, "optim",
                         numba="Numba, prange over the flat buffer",
                         cython="Cython, OpenMP prange over the flat buffer",
                         c="C, OpenMP over chunks, AVX2/FMA")


def _buffers(fn: str, named: List[Tuple[str, npt.NDArray[np.floating]]]) -> None:
    """Check the flat state buffers: ndarray, float, 1-D, equal shapes and dtypes,
    writable and contiguous (except grads, only read), pairwise non-overlapping."""
    first_name, first = None, None
    for name, a in named:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}: {name} must be a numpy array, got {type(a).__name__}")
        if a.dtype not in FLOATS:
            raise DTypeError(f"{fn}: {name} must be float32 or float64, got dtype {a.dtype}")
        if a.ndim != 1:
            raise ShapeError(f"{fn}: {name} must be a flat 1-D buffer, got shape {a.shape}")
        if first is None:
            first_name, first = name, a
        else:
            if a.dtype != first.dtype:
                raise DTypeError(f"{fn}: {name} has dtype {a.dtype} but {first_name} has "
                                 f"{first.dtype}; all buffers must share one dtype")
            if a.shape != first.shape:
                raise ShapeError(f"{fn}: {name} has shape {a.shape} but {first_name} has "
                                 f"{first.shape}")
        if name == "grads":
            if not (a.flags.c_contiguous and a.flags.aligned):
                raise ValueError(f"{fn}: grads must be C-contiguous and aligned")
        else:
            writable_contiguous(a, fn, name)
    for i, (na, a) in enumerate(named):
        for nb, b in named[i + 1:]:
            if overlaps(a, b):
                raise ValueError(f"{fn}: {na} and {nb} share memory; every buffer must be "
                                 "separate")


def sgd_update(params: npt.NDArray[np.floating], grads: npt.NDArray[np.floating], *, lr: float,
               momentum: float = 0.0, velocity: Optional[npt.NDArray[np.floating]] = None,
               nesterov: bool = False, weight_decay: float = 0.0,
               variant: Optional[str] = None) -> None:
    """One SGD step, in place, with PyTorch's semantics (torch.optim.SGD, dampening 0):

        g = grads + weight_decay * params
        if momentum:  velocity = momentum * velocity + g
                      step = g + momentum * velocity  if nesterov else velocity
        else:         step = g
        params -= lr * step

    Shapes: params, grads, velocity flat 1-D C-contiguous buffers of one float
    dtype and length; velocity (zeros at the start) is needed when momentum > 0.

    >>> import numpy as np
    >>> from fastnn.kernels import sgd_update
    >>> p = np.ones(3, np.float32)
    >>> sgd_update(p, np.ones(3, np.float32), lr=0.5); p.tolist()
    [0.5, 0.5, 0.5]
    """
    fn = "sgd_update"
    check_variant(fn, variant)
    lr = real_scalar(lr, fn, "lr", lo=0.0)
    momentum = real_scalar(momentum, fn, "momentum", lo=0.0, hi=1.0, hi_open=True)
    weight_decay = real_scalar(weight_decay, fn, "weight_decay", lo=0.0)
    if nesterov and momentum == 0.0:
        raise ValueError(f"{fn}: nesterov=True needs momentum > 0")
    named = [("params", params), ("grads", grads)]
    if momentum > 0.0:
        if velocity is None:
            raise ValueError(f"{fn}: momentum={momentum:g} needs a velocity buffer "
                             "(zeros, like params)")
        named.append(("velocity", velocity))
    else:
        velocity = None
    _buffers(fn, named)
    impl = pick("optim", variant)
    impl.sgd_update(params, grads, lr, momentum, velocity, bool(nesterov), weight_decay,
                    _threads.get_num_threads())


def adam_update(params: npt.NDArray[np.floating], grads: npt.NDArray[np.floating],
                m: npt.NDArray[np.floating], v: npt.NDArray[np.floating], *,
                step: SupportsIndex, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                eps: float = 1e-8,
                weight_decay: float = 0.0, decoupled: bool = False,
                variant: Optional[str] = None) -> None:
    """One Adam (or AdamW) step, in place, fused into one parallel loop (PyTorch's formulas):

        AdamW (decoupled=True):  params -= lr * weight_decay * params
        Adam:                    g = grads + weight_decay * params
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        params -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)

    ``step`` counts updates from 1.  Shapes: params, grads, m, v flat 1-D
    C-contiguous buffers of one float dtype and length (m and v start at zero).

    >>> import numpy as np
    >>> from fastnn.kernels import adam_update
    >>> p = np.zeros(2); m = np.zeros(2); v = np.zeros(2)
    >>> adam_update(p, np.array([1.0, -1.0]), m, v, step=1, lr=0.1); p.round(6).tolist()
    [-0.1, 0.1]
    """
    fn = "adam_update"
    check_variant(fn, variant)
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{fn}: step must be an integer >= 1, got {type(step).__name__}")
    if step < 1:
        raise ValueError(f"{fn}: step must be an integer >= 1 (1 for the first update), "
                         f"got {step}")
    lr = real_scalar(lr, fn, "lr", lo=0.0)
    beta1 = real_scalar(beta1, fn, "beta1", lo=0.0, hi=1.0, hi_open=True)
    beta2 = real_scalar(beta2, fn, "beta2", lo=0.0, hi=1.0, hi_open=True)
    eps = real_scalar(eps, fn, "eps", lo=0.0, lo_open=True)
    weight_decay = real_scalar(weight_decay, fn, "weight_decay", lo=0.0)
    _buffers(fn, [("params", params), ("grads", grads), ("m", m), ("v", v)])
    impl = pick("optim", variant)
    impl.adam_update(params, grads, m, v, int(step), lr, beta1, beta2, eps, weight_decay,
                     bool(decoupled), _threads.get_num_threads())
