"""Layers: each a ``forward``/``backward`` pair on fastnn's kernels.

Every layer maps a batch ``x`` of shape (N, ...) to ``y`` and back:

    y  = layer.forward(x)        # caches what backward needs
    dx = layer.backward(dy)      # dL/dx from dL/dy; parameter gradients ACCUMULATE (+=)

Parameter gradients accumulate so that zeroing them is one fill of the
model's flat gradient buffer (``Sequential.zero_grad``).  Inside a
``Sequential`` the parameters are views into that buffer; a layer used on
its own owns small private arrays.

Layers: ``Dense`` (fully connected, optional fused activation), ``ReLU``,
``Sigmoid``, ``Tanh``, ``Softmax``, ``Dropout``, ``Flatten``.  Every layer has
``get_config()`` (a JSON-able dict with ``"class"`` and the constructor
arguments) and ``layer_from_config(cfg)`` rebuilds it.

``forward(x, out=None)`` / ``backward(dout, dx=None)`` accept optional output
arrays; ``Sequential`` passes its reusable workspace so a training step
allocates nothing after the first batch.  Called on its own, a layer
returns fresh arrays.

>>> import numpy as np
>>> from fastnn.layers import Dense
>>> layer = Dense(3, 2, activation="relu", init="zeros")
>>> layer.forward(np.ones((4, 3), np.float32)).shape
(4, 2)
"""
from __future__ import annotations

import math
import warnings
from typing import (TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple,
                    Type, Union)

import numpy as np
import numpy.typing as npt

from . import initializers, kernels
from ._validation import FLOATS as _FLOATS
from ._validation import float_dtype, real
from .errors import DTypeError, ShapeError
from .fusion import LayerSpec, NotFusable, require_own_methods
from .parameter import Parameter

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Layer", "Dense", "ReLU", "Sigmoid", "Tanh", "Softmax", "Dropout", "Flatten",
           "layer_from_config", "LAYER_CLASSES"]


def _check_batch(x: npt.NDArray[Any], who: str, dtype: Optional[np.dtype[Any]] = None,
                 features: Optional[int] = None, name: str = "x") -> npt.NDArray[Any]:
    """Validate a 2-D float batch; return it (never copies)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: {name} must be a numpy array, got {type(x).__name__}")
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(f"{who}: {name} must have dtype {dtype} (the layer's dtype), "
                         f"got {x.dtype}")
    if dtype is None and x.dtype not in _FLOATS:
        raise DTypeError(f"{who}: {name} must be float32 or float64, got {x.dtype}")
    if x.ndim != 2:
        raise ShapeError(f"{who}: {name} must be 2-D (batch, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ShapeError(f"{who}: {name} is an empty batch (shape {x.shape})")
    if features is not None and x.shape[1] != features:
        raise ShapeError(f"{who}: {name} must have {features} features per row, "
                         f"got shape {x.shape}")
    return x


def _out_buffer(out: Optional[npt.NDArray[Any]], shape: Tuple[int, ...],
                dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """``out`` if it fits (reused workspace), else a fresh array."""
    if out is not None and out.shape == shape and out.dtype == dtype:
        return out
    return np.empty(shape, dtype)


class Layer:
    """Base class.  Subclasses define ``forward``, ``backward``, ``get_config``.

    Attributes: ``training`` (bool: ``Dropout`` is active only in training
    mode), ``dtype`` (None for layers without parameters: they follow their
    input); ``parameters()`` lists the trainable ``Parameter`` s.

    The contract with ``Sequential`` (which fuses an activation's backward
    into the next layer's GEMM) and with the fused native trainer:

    * ``relu_output()``: the cached output when this layer's forward ended in
      a ReLU (its backward is then ``dy * (y > 0)``), else None.  A layer that
      returns an array here accepts ``backward(..., premasked=True)``, meaning
      the next layer already applied that mask.
    * ``ACCEPTS_DX_MASK``: True when ``backward`` takes ``input_grad=`` and
      ``dx_mask=`` (return ``dx * (dx_mask > 0)``, the previous layer's ReLU
      backward fused into this one's).
    * ``fusion_spec()``: a ``fastnn.fusion.LayerSpec``, or ``NotFusable``."""

    dtype: Optional[np.dtype[Any]] = None
    ACCEPTS_DX_MASK: ClassVar[bool] = False

    if TYPE_CHECKING:   # the contract every subclass implements
        def forward(self, x: npt.NDArray[np.floating],
                    out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]: ...

        def backward(self, dout: npt.NDArray[np.floating],
                     dx: Optional[npt.NDArray[np.floating]] = None
                     ) -> Optional[npt.NDArray[np.floating]]: ...

    def __init__(self) -> None:
        self.training = True
        self._params: List[Parameter] = []

    # -- parameters ---------------------------------------------------------------
    def parameters(self) -> List[Parameter]:
        """The layer's parameters, in a fixed order (weight before bias)."""
        return list(self._params)

    @property
    def params(self) -> List[Parameter]:
        """Deprecated alias of ``parameters()`` (a method on layers and models alike)."""
        warnings.warn("Layer.params is deprecated; call layer.parameters()",
                      DeprecationWarning, stacklevel=2)
        return self.parameters()

    # -- contract with Sequential and the fused trainer -----------------------------
    def relu_output(self) -> Optional[npt.NDArray[np.floating]]:
        """The last forward's output when it ended in a ReLU, else None."""
        return None

    def fusion_spec(self) -> LayerSpec:
        """What this layer is for the fused native trainer (``fastnn.fusion``)."""
        raise NotFusable(f"the fused trainer has no {type(self).__name__} kernel")

    def _add_param(self, name: str, shape: Tuple[int, ...], dtype: np.dtype[Any]) -> Parameter:
        p = Parameter(name, np.zeros(shape, dtype), np.zeros(shape, dtype))
        self._params.append(p)
        return p

    def reset_parameters(self, rng: Union[None, int, np.random.Generator] = None) -> None:
        """Re-draw the parameters from their initialiser (``rng``: seed or Generator)."""

    # -- mode --------------------------------------------------------------------
    def train(self, mode: bool = True) -> Self:
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        return self.train(False)

    # -- shapes, config ----------------------------------------------------------
    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        """Shape of the output for an input of ``input_shape`` (batch dim included)."""
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        return {"class": type(self).__name__}

    def __call__(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.floating]:
        return self.forward(x)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "class")
        return f"{type(self).__name__}({args})"

    def _need_forward(self, cached: object, who: str) -> None:
        if cached is None:
            raise RuntimeError(f"{who}.backward called before forward")


class Dense(Layer):
    """Fully connected layer: ``y = act(x @ W + b)``.

    Shapes: x (N, in_features), W (in_features, out_features) -- the
    tutorial's ``W[784, 10]`` layout --, b (out_features,), y (N, out_features).

    Backward, with ``dz = dy * act'(z)`` (``dz = dy`` without activation)::

        dW += x^T dz          (matmul, a transposed)
        db += sum_rows(dz)    (column_sums)
        dx  = dz W^T          (matmul, b transposed)

    ``activation``: None, ``"relu"`` (fused into the matmul epilogue: one pass
    over the output), ``"sigmoid"`` or ``"tanh"`` (an elementwise kernel after
    the matmul).  ``init``: ``"he"`` (default), ``"glorot"``, ``"torch"``
    (PyTorch's default uniform(+-1/sqrt(in_features)) for W and b),
    ``"zeros"``.  The initial values are drawn from a fresh unseeded
    generator; ``Sequential(..., seed=s)`` re-draws every layer reproducibly.

    >>> import numpy as np
    >>> d = Dense(2, 1, init="zeros")
    >>> d.weight.data[:] = [[1.0], [2.0]]; d.bias.data[:] = 0.5
    >>> d.forward(np.array([[1.0, 1.0]], np.float32))
    array([[3.5]], dtype=float32)
    """

    ACTIVATIONS: ClassVar[Tuple[Optional[str], ...]] = (None, "relu", "sigmoid", "tanh")
    ACCEPTS_DX_MASK = True
    dtype: np.dtype[Any]        # a Dense layer always has one

    def __init__(self, in_features: int, out_features: int, activation: Optional[str] = None,
                 use_bias: bool = True, init: str = "he",
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {v!r}")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"Dense: activation must be one of {self.ACTIVATIONS}, "
                             f"got {activation!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.init = initializers.check_init(init)
        self.dtype = float_dtype(dtype, "Dense")
        self.weight = self._add_param("weight", (self.in_features, self.out_features), self.dtype)
        self.bias = self._add_param("bias", (self.out_features,), self.dtype) if use_bias else None
        self._x: Any = None     # cached input
        self._y: Any = None     # cached output (needed by the activation's backward)
        # workspaces: dy * act'(z), and x^T dz when the engine cannot accumulate
        self._dz: Optional[npt.NDArray[np.floating]] = None
        self._gw: Optional[npt.NDArray[np.floating]] = None
        self.reset_parameters()

    def reset_parameters(self, rng: Union[None, int, np.random.Generator] = None) -> None:
        initializers.init_dense(self.init, self.weight.data,
                                self.bias.data if self.bias is not None else None,
                                initializers.as_rng(rng))

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        return (input_shape[0], self.out_features)

    def relu_output(self) -> Optional[npt.NDArray[np.floating]]:
        return self._y if self.activation == "relu" else None

    def fusion_spec(self) -> LayerSpec:
        require_own_methods(self, Dense, ("forward", "backward"))
        return LayerSpec("dense", activation=self.activation, in_features=self.in_features,
                         out_features=self.out_features, dtype=self.dtype,
                         weight=self.weight, bias=self.bias)

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y = act(x @ W + b); x (N, in_features) of the layer's dtype."""
        _check_batch(x, "Dense", self.dtype, self.in_features)
        k = kernels
        y = _out_buffer(out, (x.shape[0], self.out_features), self.dtype)
        bias = self.bias.data if self.bias is not None else None
        # The C engine when built (backward always uses it), not the timing-based
        # autotuner: its choice can differ between processes and the variants round
        # differently, so the same seed gave different weights from run to run.
        variant = "c" if _gemm_ex() is not None else None
        if self.activation == "relu":
            k.matmul(x, self.weight.data, out=y, bias=bias, activation="relu", variant=variant)
        else:
            k.matmul(x, self.weight.data, out=y, bias=bias, variant=variant)
            if self.activation is not None:
                k.activation_forward(self.activation, y, out=y)
        self._x = x
        self._y = y
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None, *,
                 input_grad: bool = True, premasked: bool = False,
                 dx_mask: Optional[npt.NDArray[np.floating]] = None
                 ) -> Optional[npt.NDArray[np.floating]]:
        """Accumulate dW, db; return dx = dz W^T (None when ``input_grad`` is False).

        ``premasked=True`` says ``dout`` is already dL/dz (the caller fused the
        activation's derivative, e.g. a ReLU mask in the next layer's GEMM).
        ``dx_mask`` (N, in_features): return ``dx = (dz W^T) * (dx_mask > 0)``
        instead -- the previous layer's ReLU backward fused into this GEMM's
        epilogue (``Sequential`` does this for Dense(relu) -> Dense)."""
        self._need_forward(self._x, "Dense")
        x, y = self._x, self._y
        _check_batch(dout, "Dense.backward", self.dtype, self.out_features, name="dout")
        if dout.shape[0] != x.shape[0]:
            raise ShapeError(f"Dense.backward: dout has {dout.shape[0]} rows but the forward "
                             f"batch had {x.shape[0]}")
        k = kernels
        if self.activation is None or premasked:
            dz = dout
        else:
            dz = self._dz = _out_buffer(self._dz, dout.shape, self.dtype)
            k.activation_backward(self.activation, y, dout, dx=dz)
        _gemm_accumulate(self, x, dz)                  # dW += x^T dz
        if self.bias is not None:
            k.column_sums(dz, out=self.bias.grad, accumulate=True)
        if not input_grad:
            return None
        dx = _out_buffer(dx, x.shape, self.dtype)
        if dx_mask is not None:
            if dx_mask.shape != x.shape or dx_mask.dtype != self.dtype:
                raise ShapeError(f"Dense.backward: dx_mask must be a {self.dtype} array of "
                                 f"shape {x.shape}, got {dx_mask.dtype} {dx_mask.shape}")
            ex = _gemm_ex()
            if ex is not None:
                from . import _threads
                return ex(dz, self.weight.data.T, dx, None, False, dx_mask, False,
                          _threads.get_num_threads())
            k.matmul(dz, self.weight.data, trans_b=True, out=dx)
            return k.activation_backward("relu", dx_mask, dx, dx=dx)
        return k.matmul(dz, self.weight.data, trans_b=True, out=dx)

    def get_config(self) -> Dict[str, Any]:
        return {"class": "Dense", "in_features": self.in_features,
                "out_features": self.out_features, "activation": self.activation,
                "use_bias": self.use_bias, "init": self.init, "dtype": self.dtype.name}


_GEMM_EX: List[Optional[Callable[..., Any]]] = []          # [fn or None] once looked up


def _gemm_ex() -> Optional[Callable[..., Any]]:
    """The C engine's full-epilogue entry point (accumulate, mask), or None when
    the extension is not built (then numpy-side fallbacks run)."""
    if not _GEMM_EX:
        try:
            from ._ext import matmul_c
            _GEMM_EX.append(getattr(matmul_c, "gemm_ex", None))
        except ImportError:
            _GEMM_EX.append(None)
    return _GEMM_EX[0]


def _gemm_accumulate(layer: Dense, x: npt.NDArray[np.floating],
                     dz: npt.NDArray[np.floating]) -> None:
    """layer.weight.grad += x^T dz, in the GEMM epilogue when the C engine is built."""
    from . import _threads
    gw = layer.weight.grad
    ex = _gemm_ex()
    if ex is not None and gw.flags.c_contiguous:
        ex(x.T, dz, gw, None, False, None, True, _threads.get_num_threads())
        return
    tmp = layer._gw = _out_buffer(layer._gw, gw.shape, gw.dtype)
    kernels.matmul(x, dz, trans_a=True, out=tmp)
    gw += tmp


class _Elementwise(Layer):
    """An activation as its own layer: y = f(x), dx = dy * f'(x) from the output y."""

    # the activation kernel's name; every subclass sets it
    kind: ClassVar[str] = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None      # cached output

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        _check_batch(x, type(self).__name__)
        y = _out_buffer(out, x.shape, x.dtype)
        kernels.activation_forward(self.kind, x, out=y)
        self._y = y
        return y

    def fusion_spec(self) -> LayerSpec:
        # the fastnn class this one is (ReLU, ...): a user's subclass must not change its math
        base = next(c for c in type(self).__mro__ if c.__module__ == __name__)
        require_own_methods(self, base, ("forward", "backward"))
        return LayerSpec("activation", activation=self.kind)

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        self._need_forward(self._y, type(self).__name__)
        _check_batch(dout, type(self).__name__ + ".backward", self._y.dtype, name="dout")
        if dout.shape != self._y.shape:
            raise ShapeError(f"{type(self).__name__}.backward: dout must have shape "
                             f"{self._y.shape}, got {dout.shape}")
        dx = _out_buffer(dx, dout.shape, dout.dtype)
        return kernels.activation_backward(self.kind, self._y, dout, dx=dx)


class ReLU(_Elementwise):
    """y = max(x, 0);  dx = dy * (y > 0).  Shapes: (N, D) -> (N, D)."""
    kind = "relu"

    def relu_output(self) -> Optional[npt.NDArray[np.floating]]:
        return self._y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None, *,
                 premasked: bool = False) -> npt.NDArray[np.floating]:
        """dx = dy * (y > 0); ``premasked=True``: the next layer applied the mask already
        (``Sequential``'s fusion), so dx = dy."""
        if premasked:
            self._need_forward(self._y, "ReLU")
            return dout
        return super().backward(dout, dx)


class Sigmoid(_Elementwise):
    """y = 1 / (1 + exp(-x));  dx = dy * y (1 - y).  Shapes: (N, D) -> (N, D)."""
    kind = "sigmoid"


class Tanh(_Elementwise):
    """y = tanh(x);  dx = dy * (1 - y^2).  Shapes: (N, D) -> (N, D)."""
    kind = "tanh"


class Softmax(Layer):
    """Row-wise softmax: y_ij = exp(x_ij) / sum_k exp(x_ik).

    Backward (the softmax Jacobian applied to dy):
    ``dx_ij = y_ij (dy_ij - sum_k dy_ik y_ik)``.  Shapes: (N, C) -> (N, C).

    For training a classifier prefer logits + ``losses.SoftmaxCrossEntropy``
    (one fused, numerically stable kernel); this layer is for models that
    must output probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None      # cached output

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        _check_batch(x, "Softmax")
        y = _out_buffer(out, x.shape, x.dtype)
        kernels.softmax(x, out=y)
        self._y = y
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        self._need_forward(self._y, "Softmax")
        y = self._y
        _check_batch(dout, "Softmax.backward", y.dtype, name="dout")
        if dout.shape != y.shape:
            raise ShapeError(f"Softmax.backward: dout must have shape {y.shape}, got {dout.shape}")
        dx = _out_buffer(dx, y.shape, y.dtype)
        np.multiply(dout, y, out=dx)
        s = dx.sum(axis=1, keepdims=True)
        np.subtract(dout, s, out=dx)
        dx *= y
        return dx


class Dropout(Layer):
    """Inverted dropout: in training ``y = x * m / (1 - rate)`` with
    ``m ~ Bernoulli(1 - rate)`` drawn per element; in eval ``y = x``.

    Backward: ``dx = dy * m / (1 - rate)``.  ``rate`` in [0, 1).  ``seed``
    makes the masks reproducible.  Shapes: any (N, ...) -> same.

    >>> import numpy as np
    >>> d = Dropout(0.5, seed=0).eval()
    >>> d.forward(np.ones((2, 2), np.float32)).tolist()
    [[1.0, 1.0], [1.0, 1.0]]
    """

    def __init__(self, rate: float, seed: Optional[int] = None) -> None:
        super().__init__()
        self.rate = real(rate, "rate", "Dropout", lo=0.0, hi=1.0, hi_open=True)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # scaled mask of the last training forward, or None (identity)
        self._mask: Optional[npt.NDArray[np.floating]] = None

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Dropout: x must be a numpy array, got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise DTypeError(f"Dropout: x must be float32 or float64, got {x.dtype}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ShapeError(f"Dropout: x must be a non-empty batch, got shape {x.shape}")
        if not self.training or self.rate == 0.0:
            self._mask = None
            return x
        keep = 1.0 - self.rate
        mask = self._rng.random(x.shape, dtype=x.dtype) >= self.rate
        self._mask = np.multiply(mask, x.dtype.type(1.0 / keep), dtype=x.dtype)
        y = _out_buffer(out, x.shape, x.dtype)
        return np.multiply(x, self._mask, out=y)

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        if not isinstance(dout, np.ndarray):
            raise TypeError(f"Dropout.backward: dout must be a numpy array, "
                            f"got {type(dout).__name__}")
        if dout.dtype not in _FLOATS:
            raise DTypeError(f"Dropout.backward: dout must be float32 or float64, "
                             f"got {dout.dtype}")
        if self._mask is None:
            return dout
        if dout.shape != self._mask.shape:
            raise ShapeError(f"Dropout.backward: dout must have shape {self._mask.shape}, "
                             f"got {dout.shape}")
        dx = _out_buffer(dx, dout.shape, dout.dtype)
        return np.multiply(dout, self._mask, out=dx)

    def get_config(self) -> Dict[str, Any]:
        return {"class": "Dropout", "rate": self.rate, "seed": self.seed}


class Flatten(Layer):
    """Reshape (N, d1, d2, ...) to (N, d1*d2*...): a view, no copy.

    Backward reshapes dy back to the input's shape."""

    def __init__(self) -> None:
        super().__init__()
        self._shape: Any = None  # the input's shape, cached by forward

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        return (input_shape[0], int(math.prod(input_shape[1:])))

    def fusion_spec(self) -> LayerSpec:
        require_own_methods(self, Flatten, ("forward", "backward"))
        return LayerSpec("flatten")

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Flatten: x must be a numpy array, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ShapeError(f"Flatten: x must be a non-empty batch, got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        self._need_forward(self._shape, "Flatten")
        if not isinstance(dout, np.ndarray):
            raise TypeError(f"Flatten.backward: dout must be a numpy array, "
                            f"got {type(dout).__name__}")
        if dout.size != math.prod(self._shape):
            raise ShapeError(f"Flatten.backward: dout of shape {dout.shape} cannot be reshaped "
                             f"to the input's {self._shape}")
        return dout.reshape(self._shape)


LAYER_CLASSES: Dict[str, Type[Layer]]
LAYER_CLASSES = {cls.__name__: cls for cls in (Dense, ReLU, Sigmoid, Tanh, Softmax, Dropout,
                                                Flatten)}


def layer_from_config(cfg: Dict[str, Any]) -> Layer:
    """Rebuild a layer from ``layer.get_config()``."""
    if not isinstance(cfg, dict) or "class" not in cfg:
        raise ValueError(f"layer config must be a dict with a 'class' key, got {cfg!r}")
    cls = LAYER_CLASSES.get(cfg["class"])
    if cls is None:
        raise ValueError(f"unknown layer class {cfg['class']!r}; known: {sorted(LAYER_CLASSES)}")
    kwargs = {k: v for k, v in cfg.items() if k != "class"}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad config for {cfg['class']}: {exc}") from None
