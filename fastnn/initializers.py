"""Weight initialisers for ``Dense`` and ``Conv2D`` layers.

For a weight W of shape (fan_in, fan_out) -- a ``Conv2D`` kernel (KH, KW, Cin, Cout)
counts fan_in = KH*KW*Cin and fan_out = KH*KW*Cout, as PyTorch and Keras do:

    he       W ~ N(0, 2 / fan_in)                          (ReLU networks; He et al. 2015)
    glorot   W ~ U(-a, a),  a = sqrt(6 / (fan_in + fan_out))  (Glorot & Bengio 2010)
    torch    W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))      (PyTorch's nn.Linear / nn.Conv2d
                                                            default: kaiming_uniform, a=sqrt(5))
    zeros    W = 0                                          (the tutorial's softmax regression)

Biases are zero except under ``"torch"``, which draws them like the weights.

>>> import numpy as np
>>> from fastnn.initializers import init_dense
>>> w = np.empty((784, 10), np.float32); b = np.empty(10, np.float32)
>>> init_dense("glorot", w, b, np.random.default_rng(0))
>>> float(abs(w).max()) <= (6 / 794) ** 0.5
True
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, SupportsIndex, Union

import numpy as np
import numpy.typing as npt

__all__ = ["INITIALIZERS", "init_dense", "init_conv"]

INITIALIZERS = ("he", "glorot", "torch", "zeros")


def check_init(init: str) -> str:
    """Return ``init`` if it names a known initialiser, else raise ValueError."""
    if init not in INITIALIZERS:
        raise ValueError(f"init must be one of {INITIALIZERS}, got {init!r}")
    return init


def init_dense(init: str, weight: npt.NDArray[np.floating],
               bias: Optional[npt.NDArray[np.floating]], rng: np.random.Generator) -> None:
    """Fill ``weight`` (fan_in, fan_out) and ``bias`` (fan_out,) or None in place.

    Draws in float64 then casts, so a seed gives the same values (to rounding)
    in float32 and float64."""
    fan_in, fan_out = weight.shape
    _fill(init, weight, bias, rng, fan_in, fan_out)


def init_conv(init: str, weight: npt.NDArray[np.floating],
              bias: Optional[npt.NDArray[np.floating]], rng: np.random.Generator) -> None:
    """Fill a ``Conv2D`` kernel ``weight`` (KH, KW, Cin, Cout) and ``bias`` (Cout,) in place.

    fan_in = KH*KW*Cin, fan_out = KH*KW*Cout; otherwise exactly ``init_dense``."""
    kh, kw, cin, cout = weight.shape
    _fill(init, weight, bias, rng, kh * kw * cin, kh * kw * cout)


def _fill(init: str, weight: npt.NDArray[np.floating], bias: Optional[npt.NDArray[np.floating]],
          rng: np.random.Generator, fan_in: int, fan_out: int) -> None:
    check_init(init)
    if init == "zeros":
        weight[...] = 0
        if bias is not None:
            bias[...] = 0
        return
    if init == "he":
        std = math.sqrt(2.0 / fan_in) if fan_in else 0.0
        weight[...] = rng.standard_normal(weight.shape) * std
        if bias is not None:
            bias[...] = 0
    elif init == "glorot":
        a = math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
        weight[...] = rng.uniform(-a, a, size=weight.shape)
        if bias is not None:
            bias[...] = 0
    else:  # torch
        a = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        weight[...] = rng.uniform(-a, a, size=weight.shape)
        if bias is not None:
            bias[...] = rng.uniform(-a, a, size=bias.shape)
    # A standard normal draw casts to the same value in any float dtype; the
    # assignment above already cast, nothing else to do.
    return None


def as_rng(seed: Union[None, SupportsIndex, np.random.Generator]) -> np.random.Generator:
    """A numpy Generator from None, an int seed, or a Generator."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, (bool, np.bool_))
                             or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be None, an integer >= 0 or a numpy Generator, "
                        f"got {type(seed).__name__} {seed!r:.40}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed}")
    return np.random.default_rng(seed)  # type: ignore[arg-type]  # numpy's stubs: no Integral
