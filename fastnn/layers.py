"""Layers: each a ``forward``/``backward`` pair on fastnn's kernels.

Every layer maps a batch ``x`` of shape (N, ...) to ``y`` and back:

    y  = layer.forward(x)        # caches what backward needs
    dx = layer.backward(dy)      # dL/dx from dL/dy; parameter gradients ACCUMULATE (+=)

Parameter gradients accumulate so that zeroing them is one fill of the
model's flat gradient buffer (``Sequential.zero_grad``).  Inside a
``Sequential`` the parameters are views into that buffer; a layer used on
its own owns small private arrays.

Layers: ``Dense`` (fully connected, optional fused activation), ``ReLU``,
``Sigmoid``, ``Tanh``, ``Softmax``, ``Dropout``, ``Flatten``; for images (NHWC
batches (N, H, W, C), HWIO kernels) ``Conv2D``, ``MaxPool2D``, ``AvgPool2D``,
``GlobalAvgPool2D``, ``BatchNorm2D``.  Every layer has
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
           "Conv2D", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "BatchNorm2D",
           "dense_weight_from_torch", "dense_weight_to_torch", "layer_from_config",
           "LAYER_CLASSES"]


def _widths(who: str, **named: Any) -> Tuple[int, ...]:
    """The named layer widths as ints, each a positive integer, else ValueError naming it."""
    for name, v in named.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{who}: {name} must be a positive integer, got {v!r}")
    return tuple(int(v) for v in named.values())


def _check_activation(who: str, activation: Optional[str],
                      allowed: Sequence[Optional[str]]) -> None:
    if activation not in allowed:
        raise ValueError(f"{who}: activation must be one of {tuple(allowed)}, "
                         f"got {activation!r}")


def _check_float_array(x: Any, who: str, dtype: Optional[np.dtype[Any]], name: str) -> None:
    """A numpy array of the layer's dtype (or, without one, float32/float64)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: {name} must be a numpy array, got {type(x).__name__}")
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(f"{who}: {name} must have dtype {dtype} (the layer's dtype), "
                         f"got {x.dtype}")
    if dtype is None and x.dtype not in _FLOATS:
        raise DTypeError(f"{who}: {name} must be float32 or float64, got {x.dtype}")


def _check_batch(x: npt.NDArray[Any], who: str, dtype: Optional[np.dtype[Any]] = None,
                 features: Optional[int] = None, name: str = "x",
                 any_rank: bool = False) -> npt.NDArray[Any]:
    """Validate a 2-D float batch (``any_rank``: (N, ...), e.g. NHWC images); return it
    (never copies)."""
    _check_float_array(x, who, dtype, name)
    if any_rank and x.ndim < 2:
        raise ShapeError(f"{who}: {name} must be a batch (N, ...) of at least 2 dimensions, "
                         f"got shape {x.shape}")
    if not any_rank and x.ndim != 2:
        raise ShapeError(f"{who}: {name} must be 2-D (batch, features), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ShapeError(f"{who}: {name} is an empty batch (shape {x.shape})")
    if features is not None and x.shape[1] != features:
        raise ShapeError(f"{who}: {name} must have {features} features per row, "
                         f"got shape {x.shape}")
    return x


def _checked_precision(layer: Any, who: str) -> str:
    """``layer.precision`` checked against ``layer.PRECISIONS``: bf16 needs a float32 layer."""
    precision: str = layer.precision
    if precision == "fp32":
        return precision
    if precision not in layer.PRECISIONS:
        raise ValueError(f"{who}: precision must be one of {layer.PRECISIONS}, "
                         f"got {precision!r}")
    if layer.dtype != np.float32:
        raise DTypeError(f"{who}: precision={precision!r} needs a float32 layer, this one "
                         f"is {layer.dtype}")
    return precision


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
    #: 4 for layers that take NHWC image batches (Conv2D, pooling, BatchNorm2D): a
    #: ``Sequential`` starting with one feeds (N, H, W) images as (N, H, W, 1)
    INPUT_RANK: ClassVar[Optional[int]] = None

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

    def buffers(self) -> List[Tuple[str, npt.NDArray[Any]]]:
        """Non-trainable state saved with the weights, ``[(local name, array)]``
        (PyTorch's buffers: BatchNorm2D's running statistics); updated in place."""
        return []

    def _add_param(self, name: str, shape: Tuple[int, ...], dtype: np.dtype[Any]) -> Parameter:
        p = Parameter(name, np.zeros(shape, dtype), np.zeros(shape, dtype))
        self._params.append(p)
        return p

    def reset_parameters(self, rng: Union[None, int, np.random.Generator] = None) -> None:
        """Re-draw the parameters from their initialiser (``rng``: seed or Generator)."""

    # -- mode --------------------------------------------------------------------
    def train(self, mode: bool = True) -> Self:
        """Training mode (``mode=True``) or evaluation mode; returns the layer.

        Only layers that behave differently care: ``Dropout`` drops in training
        and is the identity in evaluation, ``BatchNorm2D`` normalises with the
        batch's statistics in training and the running ones in evaluation."""
        self.training = bool(mode)
        return self

    def eval(self) -> Self:
        """Evaluation mode, ``train(False)``; returns the layer."""
        return self.train(False)

    # -- shapes, config ----------------------------------------------------------
    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        """Shape of the output for an input of ``input_shape`` (batch dim included)."""
        return tuple(input_shape)

    def get_config(self) -> Dict[str, Any]:
        """The constructor's arguments as a JSON-able dict, ``{"class": name, ...}``;
        ``layer_from_config`` builds a fresh layer from it (the weights travel
        separately)."""
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

    ``precision``: ``"fp32"`` (default) or ``"bf16"`` (float32 layers only):
    the three GEMMs round both operands (x, W, dz) to bfloat16, round to
    nearest even, and accumulate in float32 (``fastnn.kernels.matmul(...,
    precision="bf16")``); W, b, their gradients, the bias add and the
    activation stay float32.  It is a run-time setting, not part of the
    layer's config: ``fit(..., precision="bf16")`` sets it for the duration
    of the fit and restores it after, so checkpoints stay float32 and the
    trained model evaluates in either precision.

    >>> import numpy as np
    >>> d = Dense(2, 1, init="zeros")
    >>> d.weight.data[:] = [[1.0], [2.0]]; d.bias.data[:] = 0.5
    >>> d.forward(np.array([[1.0, 1.0]], np.float32))
    array([[3.5]], dtype=float32)
    """

    ACTIVATIONS: ClassVar[Tuple[Optional[str], ...]] = (None, "relu", "sigmoid", "tanh")
    PRECISIONS: ClassVar[Tuple[str, ...]] = ("fp32", "bf16")
    ACCEPTS_DX_MASK = True
    dtype: np.dtype[Any]        # a Dense layer always has one
    precision: str = "fp32"     # the GEMMs' input precision (see the class docstring)

    def __init__(self, in_features: int, out_features: int, activation: Optional[str] = None,
                 use_bias: bool = True, init: str = "he",
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = _widths(
            "Dense", in_features=in_features, out_features=out_features)
        _check_activation("Dense", activation, self.ACTIVATIONS)
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
        precision = self._gemm_precision()
        if precision == "bf16" and variant is None:
            variant = "reference"       # bf16 runs on "c" or "reference" only
        if self.activation == "relu":
            k.matmul(x, self.weight.data, out=y, bias=bias, activation="relu", variant=variant,
                     precision=precision)
        else:
            k.matmul(x, self.weight.data, out=y, bias=bias, variant=variant,
                     precision=precision)
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
        bf16 = self._gemm_precision() == "bf16"
        ex = _gemm_ex()
        if dx_mask is not None:
            if dx_mask.shape != x.shape or dx_mask.dtype != self.dtype:
                raise ShapeError(f"Dense.backward: dx_mask must be a {self.dtype} array of "
                                 f"shape {x.shape}, got {dx_mask.dtype} {dx_mask.shape}")
            if ex is not None:
                from . import _threads
                return ex(dz, self.weight.data.T, dx, None, False, dx_mask, False,
                          _threads.get_num_threads(), bf16)
            _dx_matmul(dz, self.weight.data, dx, bf16)
            return k.activation_backward("relu", dx_mask, dx, dx=dx)
        return _dx_matmul(dz, self.weight.data, dx, bf16)

    def _gemm_precision(self) -> str:
        """``self.precision``, checked: bf16 needs a float32 layer."""
        return _checked_precision(self, "Dense")

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
    bf16 = layer._gemm_precision() == "bf16"
    if ex is not None and gw.flags.c_contiguous:
        ex(x.T, dz, gw, None, False, None, True, _threads.get_num_threads(), bf16)
        return
    tmp = layer._gw = _out_buffer(layer._gw, gw.shape, gw.dtype)
    if bf16:
        kernels.matmul(x, dz, trans_a=True, out=tmp, precision="bf16",
                       variant="c" if ex is not None else "reference")
    else:
        kernels.matmul(x, dz, trans_a=True, out=tmp)
    gw += tmp


def _dx_matmul(dz: npt.NDArray[np.floating], w: npt.NDArray[np.floating],
               dx: npt.NDArray[np.floating], bf16: bool) -> npt.NDArray[np.floating]:
    """dx = dz W^T (bf16 inputs, fp32 accumulation when ``bf16``)."""
    if bf16:
        return kernels.matmul(dz, w, trans_b=True, out=dx, precision="bf16",
                              variant="c" if _gemm_ex() is not None else "reference")
    # the C engine when built, as Dense.forward: the timing-based autotuner could pick BLAS
    # under load (its threads then fight the OpenMP team: 2 ms against 0.06 ms measured)
    # and the variants round differently, so the weights would depend on the machine's load
    return kernels.matmul(dz, w, trans_b=True, out=dx,
                          variant="c" if _gemm_ex() is not None else None)


class _Elementwise(Layer):
    """An activation as its own layer: y = f(x), dx = dy * f'(x) from the output y."""

    # the activation kernel's name; every subclass sets it
    kind: ClassVar[str] = None  # type: ignore[assignment]
    # True: any (N, ...) batch (ReLU follows conv layers); else 2-D rows only
    ANY_RANK: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._y: Any = None      # cached output

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        _check_batch(x, type(self).__name__, any_rank=self.ANY_RANK)
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
        _check_batch(dout, type(self).__name__ + ".backward", self._y.dtype, name="dout",
                     any_rank=self.ANY_RANK)
        if dout.shape != self._y.shape:
            raise ShapeError(f"{type(self).__name__}.backward: dout must have shape "
                             f"{self._y.shape}, got {dout.shape}")
        dx = _out_buffer(dx, dout.shape, dout.dtype)
        return kernels.activation_backward(self.kind, self._y, dout, dx=dx)


class ReLU(_Elementwise):
    """y = max(x, 0);  dx = dy * (y > 0).  Shapes: (N, ...) -> same (rows or NHWC images)."""
    kind = "relu"
    ANY_RANK = True

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
        """y_ij = exp(x_ij) / sum_k exp(x_ik); x (N, C) float."""
        _check_batch(x, "Softmax")
        y = _out_buffer(out, x.shape, x.dtype)
        kernels.softmax(x, out=y)
        self._y = y
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """dx_ij = y_ij (dy_ij - sum_k dy_ik y_ik) with the last forward's y; dout (N, C)."""
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
    makes the masks reproducible: each training forward draws one 64-bit key
    from the layer's generator (whose state checkpoints carry), and the mask is
    a hash of (key, element index) computed by the native kernel
    (``fastnn.kernels.elementwise.dropout_forward``), the same for any thread
    count.  Shapes: any (N, ...) -> same.

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
        # keep mask (uint8 0/1) of the last training forward, or None (identity);
        # the buffer is reused while the batch shape stays the same
        self._mask: Optional[npt.NDArray[np.uint8]] = None
        self._mask_buf: Optional[npt.NDArray[np.uint8]] = None

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """In training ``y = x * m / (1 - rate)`` with a fresh mask ``m``; in evaluation
        (or with rate 0) ``x`` itself.  x (N, ...) float32 or float64."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Dropout: x must be a numpy array, got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise DTypeError(f"Dropout: x must be float32 or float64, got {x.dtype}")
        if x.ndim == 0 or x.shape[0] == 0:
            raise ShapeError(f"Dropout: x must be a non-empty batch, got shape {x.shape}")
        if not self.training or self.rate == 0.0:
            self._mask = None
            return x
        if self._mask_buf is None or self._mask_buf.shape != x.shape:
            self._mask_buf = np.empty(x.shape, np.uint8)
        key = int(self._rng.bit_generator.random_raw())
        y = _out_buffer(out, x.shape, x.dtype)
        y, self._mask = kernels.elementwise.dropout_forward(x, self.rate, key, out=y, mask=self._mask_buf)
        return y

    def scaled_mask(self) -> Optional[npt.NDArray[np.floating]]:
        """``m / (1 - rate)`` of the last training forward as float64 (None in eval)."""
        if self._mask is None:
            return None
        return self._mask.astype(np.float64) / (1.0 - self.rate)

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """``dx = dout * m / (1 - rate)`` with the last training forward's mask
        (``dout`` itself after an evaluation forward); dout has the input's shape."""
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
        return kernels.elementwise.dropout_backward(dout, self._mask, self.rate, dx=dx)

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
        """x (N, d1, d2, ...) -> a (N, d1*d2*...) view of it."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Flatten: x must be a numpy array, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[0] == 0:
            raise ShapeError(f"Flatten: x must be a non-empty batch, got shape {x.shape}")
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """dout (N, d1*d2*...) reshaped to the last input's shape (a view)."""
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


# ----------------------------------------------------------------------------- images (NHWC)
#
# Image layers take NHWC batches (N, H, W, C): channels last, as Keras and TensorFlow do
# (PyTorch is NCHW).  Conv2D kernels are HWIO (KH, KW, Cin, Cout); PyTorch's nn.Conv2d holds
# OIHW (Cout, Cin, KH, KW): ``Conv2D.weight_from_torch`` / ``weight_to_torch`` convert.
# Flatten of an NHWC batch orders features (h, w, c); PyTorch's flatten of NCHW orders them
# (c, h, w): a Dense after Flatten crosses frameworks through ``dense_weight_from_torch``.

Pads = Tuple[int, int, int, int]          # (top, bottom, left, right)


def _check_images(x: Any, who: str, dtype: Optional[np.dtype[Any]] = None,
                  channels: Optional[int] = None, name: str = "x") -> npt.NDArray[Any]:
    """Validate a non-empty NHWC float batch (N, H, W, C); return it (never copies)."""
    _check_float_array(x, who, dtype, name)
    if x.ndim != 4:
        raise ShapeError(f"{who}: {name} must be 4-D NHWC (batch, height, width, channels), "
                         f"got shape {x.shape}")
    if 0 in x.shape:
        raise ShapeError(f"{who}: {name} is empty (shape {x.shape})")
    if channels is not None and x.shape[3] != channels:
        raise ShapeError(f"{who}: {name} must have {channels} channels (NHWC, last axis), "
                         f"got shape {x.shape}")
    return x


def _positive_pair(v: Any, name: str, who: str) -> Tuple[int, int]:
    """An int or a pair of ints, each >= 1, as a pair."""
    items = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(items) != 2 or any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
                              or i < 1 for i in items):
        raise ValueError(f"{who}: {name} must be a positive integer or a pair of them, "
                         f"got {v!r}")
    return int(items[0]), int(items[1])


def _check_padding(padding: Any, who: str) -> Union[str, Pads]:
    """'valid', 'same', an int, a pair (rows, cols) or (top, bottom, left, right); ints >= 0."""
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"{who}: padding must be 'valid', 'same', an int or a tuple, "
                             f"got {padding!r}")
        return padding
    items = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,)
    if len(items) not in (1, 2, 4) or any(isinstance(i, bool) or not isinstance(
            i, (int, np.integer)) or i < 0 for i in items):
        raise ValueError(f"{who}: padding must be 'valid', 'same', an integer >= 0, a pair "
                         f"(rows, cols) or (top, bottom, left, right), got {padding!r}")
    p = [int(i) for i in items]
    if len(p) == 1:
        return (p[0], p[0], p[0], p[0])
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    return (p[0], p[1], p[2], p[3])


def _same_pads(size: int, k: int, s: int) -> Tuple[int, int]:
    """TensorFlow's 'same': output ceil(size / s); for stride 1 (k-1)//2 before, the rest after."""
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows_out(who: str, shape: Sequence[int], window: Tuple[int, int],
                 stride: Tuple[int, int], pads: Pads, what: str) -> Tuple[int, int]:
    """(OH, OW) of a sliding window over an NHWC input; ShapeError when it does not fit."""
    h, w = int(shape[1]) + pads[0] + pads[1], int(shape[2]) + pads[2] + pads[3]
    if window[0] > h or window[1] > w:
        padded = " padded" if any(pads) else ""
        detail = f", padding {pads}" if any(pads) else ""
        raise ShapeError(f"{who}: the {what} {window[0]}x{window[1]} is larger than the{padded} "
                         f"input {h}x{w} (input shape {tuple(shape)}{detail})")
    return (h - window[0]) // stride[0] + 1, (w - window[1]) // stride[1] + 1


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as every framework computes it), NHWC:

        y[n, i, j, o] = act(b[o] + sum_{kh, kw, c} xp[n, i*sh + kh, j*sw + kw, c] W[kh, kw, c, o])

    with ``xp`` the input zero-padded.  Shapes: x (N, H, W, Cin) -- or (N, H, W)
    when ``in_channels == 1`` (MNIST as it loads) --, W (KH, KW, Cin, Cout) (HWIO),
    b (Cout,), y (N, OH, OW, Cout), ``OH = (H + top + bottom - KH) // sh + 1``.

    Backward (``dz = dy * (y > 0)`` for ``activation="relu"``, else ``dy``)::

        dW += im2col(x)^T dz      db += sum_{n,i,j} dz      dx = col2im(dz W^T)

    ``padding``: ``"valid"`` (none), ``"same"`` (output ceil(H / stride); for stride 1,
    (K-1)//2 rows/columns before and the rest after, as TensorFlow), an int, a pair
    (rows, cols) or (top, bottom, left, right).  ``init``: ``"torch"`` (default:
    PyTorch's nn.Conv2d, W, b ~ U(+-1/sqrt(Cin*KH*KW))), ``"he"``, ``"glorot"``,
    ``"zeros"`` (fan_in = KH*KW*Cin).  Runs on ``fastnn.kernels.conv2d_*``.

    ``Conv2D.weight_from_torch(w)`` / ``layer.weight_to_torch()`` convert to and from
    PyTorch's (Cout, Cin, KH, KW).

    ``precision``: ``"fp32"`` (default) or ``"bf16"`` (float32 layers only): the
    three convolutions take bf16-rounded inputs (x and W, dz and W, x and dz)
    with float32 sums (``fastnn.kernels.conv2d_forward(..., precision="bf16")``);
    W, b, their gradients, the bias add, ReLU and dbias stay float32, and so does a
    layer with one input channel (see ``conv2d_forward``).  A run-time setting like Dense's: ``fit(..., precision="bf16")`` sets it for
    the fit and restores it after.

    >>> import numpy as np
    >>> c = Conv2D(1, 4, 3, padding="same", activation="relu", init="zeros")
    >>> c.forward(np.ones((2, 28, 28, 1), np.float32)).shape
    (2, 28, 28, 4)
    >>> Conv2D(3, 8, 5, stride=2).output_shape((16, 32, 32, 3))
    (16, 14, 14, 8)
    """

    ACTIVATIONS: ClassVar[Tuple[Optional[str], ...]] = (None, "relu")
    PRECISIONS: ClassVar[Tuple[str, ...]] = ("fp32", "bf16")
    ACCEPTS_DX_MASK = True
    INPUT_RANK = 4
    dtype: np.dtype[Any]
    precision: str = "fp32"     # the convolutions' input precision (see the class docstring)

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]], stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[str, int, Tuple[int, ...]] = "valid",
                 activation: Optional[str] = None, use_bias: bool = True, init: str = "torch",
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        self.in_channels, self.out_channels = _widths(
            "Conv2D", in_channels=in_channels, out_channels=out_channels)
        _check_activation("Conv2D", activation, self.ACTIVATIONS)
        self.kernel_size = _positive_pair(kernel_size, "kernel_size", "Conv2D")
        self.stride = _positive_pair(stride, "stride", "Conv2D")
        self.padding = _check_padding(padding, "Conv2D")
        self.activation = activation
        self.use_bias = bool(use_bias)
        self.init = initializers.check_init(init)
        self.dtype = float_dtype(dtype, "Conv2D")
        kh, kw = self.kernel_size
        self.weight = self._add_param("weight", (kh, kw, self.in_channels, self.out_channels),
                                      self.dtype)
        self.bias = self._add_param("bias", (self.out_channels,), self.dtype) if use_bias else None
        self._x: Any = None              # cached NHWC input
        self._in_shape: Any = None       # the caller's input shape ((N, H, W) or NHWC)
        self._y: Any = None              # cached output
        self._pads: Pads = (0, 0, 0, 0)
        self._dz: Optional[npt.NDArray[np.floating]] = None
        # the kernels' im2col workspace, shared by forward and both backward kernels
        self._ws: Optional[npt.NDArray[np.floating]] = None
        self.reset_parameters()

    # -- PyTorch layout ------------------------------------------------------------
    @staticmethod
    def weight_from_torch(w: npt.ArrayLike) -> npt.NDArray[Any]:
        """PyTorch's nn.Conv2d weight (Cout, Cin, KH, KW) as fastnn's HWIO (KH, KW, Cin, Cout)."""
        a = np.asarray(w)
        if a.ndim != 4:
            raise ShapeError(f"Conv2D.weight_from_torch: expected (out, in, kh, kw), "
                             f"got shape {a.shape}")
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))

    def weight_to_torch(self) -> npt.NDArray[Any]:
        """This layer's weight in PyTorch's layout (Cout, Cin, KH, KW), a copy."""
        return np.ascontiguousarray(self.weight.data.transpose(3, 2, 0, 1))

    def reset_parameters(self, rng: Union[None, int, np.random.Generator] = None) -> None:
        initializers.init_conv(self.init, self.weight.data,
                               self.bias.data if self.bias is not None else None,
                               initializers.as_rng(rng))

    # -- shapes --------------------------------------------------------------------
    def padding_for(self, height: int, width: int) -> Pads:
        """(top, bottom, left, right) zero rows/columns for an input of height x width."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            return _same_pads(height, kh, sh) + _same_pads(width, kw, sw)
        return self.padding    # type: ignore[return-value]  # a 4-tuple once checked

    def _as_nhwc_shape(self, shape: Sequence[int], who: str) -> Tuple[int, ...]:
        shape = tuple(int(d) for d in shape)
        if len(shape) == 3 and self.in_channels == 1:
            shape = shape + (1,)
        if len(shape) != 4:
            raise ShapeError(f"{who}: input must be 4-D NHWC (batch, height, width, channels)"
                             + (" or (batch, height, width) for one channel"
                                if self.in_channels == 1 else "") + f", got shape {shape}")
        if shape[3] != self.in_channels:
            raise ShapeError(f"{who}: input must have {self.in_channels} channels (NHWC, last "
                             f"axis), got shape {shape}")
        return shape

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        shape = self._as_nhwc_shape(input_shape, "Conv2D")
        pads = self.padding_for(shape[1], shape[2])
        oh, ow = _windows_out("Conv2D", shape, self.kernel_size, self.stride, pads, "kernel")
        return (shape[0], oh, ow, self.out_channels)

    def relu_output(self) -> Optional[npt.NDArray[np.floating]]:
        return self._y if self.activation == "relu" else None

    def fusion_spec(self) -> LayerSpec:
        raise NotFusable("the fused trainer runs MLPs only (Dense, activations, Flatten); "
                         "convolutional networks train layer by layer")

    # -- forward / backward ----------------------------------------------------------
    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y = act(conv(x, W) + b); x (N, H, W, Cin) of the layer's dtype."""
        x4 = x
        if isinstance(x, np.ndarray) and x.ndim == 3 and self.in_channels == 1:
            x4 = x.reshape(x.shape + (1,))       # (N, H, W): one channel, as MNIST loads
        _check_images(x4, "Conv2D", self.dtype, self.in_channels)
        n, h, w = x4.shape[:3]
        pads = self.padding_for(h, w)
        oh, ow = _windows_out("Conv2D", x4.shape, self.kernel_size, self.stride, pads, "kernel")
        y = _out_buffer(out, (n, oh, ow, self.out_channels), self.dtype)
        need = kernels.conv2d_workspace_size(x4.shape, self.weight.shape, self.stride, pads)
        if self._ws is None or self._ws.size < need:
            self._ws = np.empty(need, self.dtype)
        kernels.conv2d_forward(x4, self.weight.data,
                               self.bias.data if self.bias is not None else None,
                               stride=self.stride, padding=pads, activation=self.activation,
                               out=y, workspace=self._ws,
                               precision=_checked_precision(self, "Conv2D"))
        self._x, self._in_shape, self._y, self._pads = x4, x.shape, y, pads
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None, *,
                 input_grad: bool = True, premasked: bool = False,
                 dx_mask: Optional[npt.NDArray[np.floating]] = None
                 ) -> Optional[npt.NDArray[np.floating]]:
        """Accumulate dW, db; return dx (None when ``input_grad`` is False).

        ``premasked=True``: ``dout`` is already dL/dz (the next layer applied this
        layer's ReLU mask).  ``dx_mask`` (the input's shape): return
        ``dx * (dx_mask > 0)``, the previous layer's ReLU backward fused in."""
        self._need_forward(self._x, "Conv2D")
        x, y = self._x, self._y
        _check_images(dout, "Conv2D.backward", self.dtype, name="dout")
        if dout.shape != y.shape:
            raise ShapeError(f"Conv2D.backward: dout must have the output's shape {y.shape}, "
                             f"got {dout.shape}")
        if self.activation is None or premasked:
            dz = dout
        else:
            dz = self._dz = _out_buffer(self._dz, dout.shape, self.dtype)
            kernels.activation_backward("relu", y, dout, dx=dz)
        kernels.conv2d_backward_weights(x, dz, self.weight.shape, self.stride, self._pads,
                                        dw=self.weight.grad,
                                        dbias=self.bias.grad if self.bias is not None else None,
                                        accumulate=True, workspace=self._ws,
                                        precision=_checked_precision(self, "Conv2D"))
        if not input_grad:
            return None
        mask = None
        if dx_mask is not None:
            if dx_mask.size != x.size or dx_mask.dtype != self.dtype:
                raise ShapeError(f"Conv2D.backward: dx_mask must be a {self.dtype} array of "
                                 f"shape {x.shape}, got {dx_mask.dtype} {dx_mask.shape}")
            mask = dx_mask.reshape(x.shape)
        buf = _out_buffer(dx, self._in_shape, self.dtype)    # (N, H, W) stays 3-D
        kernels.conv2d_backward_data(dz, self.weight.data, x.shape, self.stride, self._pads,
                                     out=buf.reshape(x.shape), workspace=self._ws, mask=mask,
                                     precision=_checked_precision(self, "Conv2D"))
        return buf

    def get_config(self) -> Dict[str, Any]:
        pad = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"class": "Conv2D", "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": pad, "activation": self.activation,
                "use_bias": self.use_bias, "init": self.init, "dtype": self.dtype.name}


def dense_weight_from_torch(w: npt.ArrayLike, chw: Optional[Tuple[int, int, int]] = None
                            ) -> npt.NDArray[Any]:
    """PyTorch's nn.Linear weight (out, in) as fastnn's Dense (in, out).

    ``chw=(C, H, W)``: the Linear follows a flatten of NCHW maps, fastnn's Dense a
    ``Flatten`` of NHWC maps: its input rows are reordered from (c, h, w) to (h, w, c)."""
    a = np.asarray(w)
    if a.ndim != 2:
        raise ShapeError(f"dense_weight_from_torch: expected (out, in), got shape {a.shape}")
    if chw is not None:
        c, h, w_ = chw
        if c * h * w_ != a.shape[1]:
            raise ShapeError(f"dense_weight_from_torch: chw={chw} holds {c * h * w_} features "
                             f"but the weight has {a.shape[1]} inputs")
        a = a.reshape(a.shape[0], c, h, w_).transpose(0, 2, 3, 1).reshape(a.shape[0], -1)
    return np.ascontiguousarray(a.T)


def dense_weight_to_torch(w: npt.ArrayLike, hwc: Optional[Tuple[int, int, int]] = None
                          ) -> npt.NDArray[Any]:
    """fastnn's Dense weight (in, out) as PyTorch's nn.Linear (out, in); the inverse of
    ``dense_weight_from_torch`` (``hwc=(H, W, C)`` after a ``Flatten`` of NHWC maps)."""
    a = np.asarray(w)
    if a.ndim != 2:
        raise ShapeError(f"dense_weight_to_torch: expected (in, out), got shape {a.shape}")
    t = a.T
    if hwc is not None:
        h, w_, c = hwc
        if c * h * w_ != a.shape[0]:
            raise ShapeError(f"dense_weight_to_torch: hwc={hwc} holds {c * h * w_} features "
                             f"but the weight has {a.shape[0]} inputs")
        t = t.reshape(t.shape[0], h, w_, c).transpose(0, 3, 1, 2).reshape(t.shape[0], -1)
    return np.ascontiguousarray(t)


class _Pool2D(Layer):
    """Shared by MaxPool2D and AvgPool2D: a window ``pool_size`` moved by ``stride``
    (default: the window, so windows do not overlap), no padding; a partial window at
    the edge is dropped (floor), as PyTorch and Keras ('valid') do."""

    INPUT_RANK = 4

    def __init__(self, pool_size: Union[int, Tuple[int, int]] = 2,
                 stride: Union[None, int, Tuple[int, int]] = None) -> None:
        super().__init__()
        who = type(self).__name__
        self.pool_size = _positive_pair(pool_size, "pool_size", who)
        self.stride = self.pool_size if stride is None else _positive_pair(stride, "stride", who)
        self._x_shape: Any = None

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        who = type(self).__name__
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4:
            raise ShapeError(f"{who}: input must be 4-D NHWC (batch, height, width, channels), "
                             f"got shape {shape}")
        oh, ow = _windows_out(who, shape, self.pool_size, self.stride, (0, 0, 0, 0), "pool")
        return (shape[0], oh, ow, shape[3])

    def _check_dout(self, dout: Any) -> Tuple[int, ...]:
        who = type(self).__name__
        self._need_forward(self._x_shape, who)
        _check_images(dout, who + ".backward", name="dout")
        want = self.output_shape(self._x_shape)
        if dout.shape != want:
            raise ShapeError(f"{who}.backward: dout must have the output's shape {want}, "
                             f"got {dout.shape}")
        return tuple(self._x_shape)

    def get_config(self) -> Dict[str, Any]:
        return {"class": type(self).__name__, "pool_size": list(self.pool_size),
                "stride": list(self.stride)}


class MaxPool2D(_Pool2D):
    """y[n, i, j, c] = max of x[n, i*sh : i*sh + ph, j*sw : j*sw + pw, c].

    Backward: each dy goes to the (first) maximum of its window, ``dx`` is zero
    elsewhere.  Shapes: (N, H, W, C) -> (N, (H - ph) // sh + 1, (W - pw) // sw + 1, C).

    >>> import numpy as np
    >>> MaxPool2D(2).forward(np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1))[0, :, :, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """

    # takes dx_mask: a ReLU layer before the pool has its backward fused into the scatter
    ACCEPTS_DX_MASK = True

    def __init__(self, pool_size: Union[int, Tuple[int, int]] = 2,
                 stride: Union[None, int, Tuple[int, int]] = None) -> None:
        super().__init__(pool_size, stride)
        self._argmax: Optional[npt.NDArray[np.int32]] = None
        self._y: Optional[npt.NDArray[np.floating]] = None     # the last forward's output

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y[n, i, j, c] = max of the window at (i*sh, j*sw); x (N, H, W, C).  The
        argmax of every window is kept for backward."""
        _check_images(x, "MaxPool2D")
        shape = self.output_shape(x.shape)
        y = _out_buffer(out, shape, x.dtype)
        am = _out_buffer(self._argmax, shape, np.int32)
        y, self._argmax = kernels.maxpool2d_forward(x, self.pool_size, self.stride, out=y,
                                                    argmax=am)
        self._x_shape, self._y = x.shape, y
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None, *,
                 input_grad: bool = True,
                 dx_mask: Optional[npt.NDArray[np.floating]] = None
                 ) -> Optional[npt.NDArray[np.floating]]:
        """dx = the scatter of dout to each window's maximum.

        ``dx_mask`` (the input's shape: the previous layer's ReLU output): return
        ``dx * (dx_mask > 0)``.  The maximum of a window of ReLU outputs is
        positive exactly when the input at the argmax is, so the scatter keeps
        ``dout`` where this layer's own output is > 0: the ReLU backward costs
        nothing and the previous layer gets dL/dz (``premasked``)."""
        x_shape = self._check_dout(dout)
        if not input_grad:
            return None
        mask = None
        if dx_mask is not None:
            if dx_mask.shape != x_shape or dx_mask.dtype != dout.dtype:
                raise ShapeError(f"MaxPool2D.backward: dx_mask must be a {dout.dtype} array of "
                                 f"shape {x_shape}, got {dx_mask.dtype} {dx_mask.shape}")
            mask = self._y
        buf = _out_buffer(dx, x_shape, dout.dtype)
        assert self._argmax is not None            # set with _x_shape by forward
        return kernels.maxpool2d_backward(dout, self._argmax, x_shape, out=buf, mask=mask)


class AvgPool2D(_Pool2D):
    """y[n, i, j, c] = mean of x[n, i*sh : i*sh + ph, j*sw : j*sw + pw, c].

    Backward: ``dx`` of every window element += dy / (ph * pw).
    Shapes: (N, H, W, C) -> (N, (H - ph) // sh + 1, (W - pw) // sw + 1, C)."""

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y[n, i, j, c] = mean of the window at (i*sh, j*sw); x (N, H, W, C)."""
        _check_images(x, "AvgPool2D")
        y = _out_buffer(out, self.output_shape(x.shape), x.dtype)
        kernels.avgpool2d_forward(x, self.pool_size, self.stride, out=y)
        self._x_shape = x.shape
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """dx: each window element receives dy / (ph * pw); dout (N, OH, OW, C)."""
        x_shape = self._check_dout(dout)
        buf = _out_buffer(dx, x_shape, dout.dtype)
        return kernels.avgpool2d_backward(dout, x_shape, self.pool_size, self.stride, out=buf)


class GlobalAvgPool2D(Layer):
    """y[n, c] = mean over (h, w) of x[n, h, w, c];  dx[n, h, w, c] = dy[n, c] / (H W).

    Shapes: (N, H, W, C) -> (N, C)."""

    INPUT_RANK = 4

    def __init__(self) -> None:
        super().__init__()
        self._x_shape: Any = None

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        if len(input_shape) != 4:
            raise ShapeError(f"GlobalAvgPool2D: input must be 4-D NHWC, got shape "
                             f"{tuple(input_shape)}")
        return (input_shape[0], input_shape[3])

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y[n, c] = mean over (h, w) of x[n, h, w, c]; x (N, H, W, C) -> (N, C)."""
        _check_images(x, "GlobalAvgPool2D")
        y = _out_buffer(out, (x.shape[0], x.shape[3]), x.dtype)
        np.mean(x, axis=(1, 2), out=y)
        self._x_shape = x.shape
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """dx[n, h, w, c] = dy[n, c] / (H W); dout (N, C) -> (N, H, W, C)."""
        self._need_forward(self._x_shape, "GlobalAvgPool2D")
        n, h, w, c = self._x_shape
        _check_batch(dout, "GlobalAvgPool2D.backward", name="dout", features=c)
        if dout.shape[0] != n:
            raise ShapeError(f"GlobalAvgPool2D.backward: dout must have shape {(n, c)}, "
                             f"got {dout.shape}")
        buf = _out_buffer(dx, self._x_shape, dout.dtype)
        np.multiply(dout[:, None, None, :], dout.dtype.type(1.0 / (h * w)), out=buf)
        return buf


class BatchNorm2D(Layer):
    """Batch normalisation over the channels of an NHWC batch (PyTorch's BatchNorm2d).

    Training, with mean and biased variance over (N, H, W) per channel (m = N*H*W values)::

        xhat = (x - mean) / sqrt(var + eps);   y = gamma * xhat + beta
        running_mean = (1 - momentum) running_mean + momentum mean
        running_var  = (1 - momentum) running_var  + momentum var * m / (m - 1)  (unbiased)

    Evaluation (``eval()``) normalises with ``running_mean`` / ``running_var`` instead.
    Backward in training::

        dgamma += sum(dy xhat)    dbeta += sum(dy)
        dx = gamma / sqrt(var + eps) * (dy - mean(dy) - xhat mean(dy xhat))

    ``gamma`` (ones) and ``beta`` (zeros) are trainable ``Parameter`` s;
    ``running_mean`` / ``running_var`` are buffers (``buffers()``): not trained,
    saved in checkpoints.  Shapes: (N, H, W, C) -> same.

    >>> import numpy as np
    >>> bn = BatchNorm2D(2)
    >>> y = bn.forward(np.random.default_rng(0).normal(3, 2, (8, 4, 4, 2)).astype(np.float32))
    >>> bool(abs(y.mean()) < 1e-5), [round(float(v), 1) for v in bn.running_mean]
    (True, [0.3, 0.3])
    """

    INPUT_RANK = 4
    dtype: np.dtype[Any]

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 dtype: npt.DTypeLike = np.float32) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) \
                or num_features < 1:
            raise ValueError(f"BatchNorm2D: num_features must be a positive integer, "
                             f"got {num_features!r}")
        self.num_features = int(num_features)
        self.momentum = real(momentum, "momentum", "BatchNorm2D", lo=0.0, hi=1.0)
        self.eps = real(eps, "eps", "BatchNorm2D", lo=0.0, lo_open=True)
        self.dtype = float_dtype(dtype, "BatchNorm2D")
        self.gamma = self._add_param("gamma", (self.num_features,), self.dtype)
        self.beta = self._add_param("beta", (self.num_features,), self.dtype)
        self.running_mean = np.zeros(self.num_features, self.dtype)
        self.running_var = np.ones(self.num_features, self.dtype)
        self._xhat: Any = None          # cached normalised input (N*H*W, C)
        self._inv_std: Any = None       # 1 / sqrt(var + eps) used by the last forward
        self._shape: Any = None
        self._batch_stats = True        # the last forward normalised with batch statistics
        self.reset_parameters()

    def reset_parameters(self, rng: Union[None, int, np.random.Generator] = None) -> None:
        """gamma = 1, beta = 0, running statistics reset (no randomness)."""
        self.gamma.data[...] = 1
        self.beta.data[...] = 0
        self.running_mean[...] = 0
        self.running_var[...] = 1

    def buffers(self) -> List[Tuple[str, npt.NDArray[Any]]]:
        return [("running_mean", self.running_mean), ("running_var", self.running_var)]

    def output_shape(self, input_shape: Sequence[int]) -> Tuple[int, ...]:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4 or shape[3] != self.num_features:
            raise ShapeError(f"BatchNorm2D: input must be 4-D NHWC with {self.num_features} "
                             f"channels, got shape {shape}")
        return shape

    def forward(self, x: npt.NDArray[np.floating],
                out: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """y = gamma * (x - mean) / sqrt(var + eps) + beta per channel; x (N, H, W, C).
        Training uses the batch's mean and biased variance and updates the running
        statistics; evaluation uses the running ones."""
        _check_images(x, "BatchNorm2D", self.dtype, self.num_features)
        c = self.num_features
        x2 = np.ascontiguousarray(x).reshape(-1, c)
        m = x2.shape[0]
        y = _out_buffer(out if out is None or out.flags.c_contiguous else None, x.shape,
                        self.dtype)
        # xhat is kept for backward in a buffer reused across steps
        self._xhat = _out_buffer(self._xhat, x2.shape, self.dtype)
        if self.training and m < 2:
            raise ShapeError(f"BatchNorm2D: training needs more than one value per channel "
                             f"(input shape {x.shape}); call eval() to use the running "
                             f"statistics")
        # training: the batch's statistics (the running ones are ignored, then updated)
        _, mean, var, inv = kernels.elementwise.batchnorm_forward(
            x2, self.gamma.data, self.beta.data, self.eps, training=self.training,
            mean=self.running_mean, var=self.running_var, out=y.reshape(-1, c), xhat=self._xhat)
        if self.training:
            mom = self.dtype.type(self.momentum)
            self.running_mean *= 1 - mom
            self.running_mean += mom * mean.astype(self.dtype)
            self.running_var *= 1 - mom
            self.running_var += mom * (var * (m / (m - 1))).astype(self.dtype)
        self._inv_std, self._shape = inv, x.shape
        self._batch_stats = self.training
        return y

    def backward(self, dout: npt.NDArray[np.floating],
                 dx: Optional[npt.NDArray[np.floating]] = None) -> npt.NDArray[np.floating]:
        """Accumulate dgamma = sum dy * xhat and dbeta = sum dy; return
        dx = gamma / sqrt(var + eps) * (dy - mean(dy) - xhat * mean(dy * xhat)) after a
        training forward (``gamma * dy / sqrt(running_var + eps)`` after an evaluation one)."""
        self._need_forward(self._xhat, "BatchNorm2D")
        _check_images(dout, "BatchNorm2D.backward", self.dtype, name="dout")
        if dout.shape != self._shape:
            raise ShapeError(f"BatchNorm2D.backward: dout must have shape {self._shape}, "
                             f"got {dout.shape}")
        c = self.num_features
        buf = _out_buffer(dx if dx is None or dx.flags.c_contiguous else None, self._shape,
                          self.dtype)
        _, sum_dy, sum_dy_xhat = kernels.elementwise.batchnorm_backward(
            np.ascontiguousarray(dout).reshape(-1, c), self._xhat, self.gamma.data,
            self._inv_std, batch_stats=self._batch_stats, dx=buf.reshape(-1, c))
        self.gamma.grad += sum_dy_xhat.astype(self.dtype)
        self.beta.grad += sum_dy.astype(self.dtype)
        return buf

    def get_config(self) -> Dict[str, Any]:
        return {"class": "BatchNorm2D", "num_features": self.num_features,
                "momentum": self.momentum, "eps": self.eps, "dtype": self.dtype.name}


LAYER_CLASSES.update({cls.__name__: cls for cls in (Conv2D, MaxPool2D, AvgPool2D,
                                                     GlobalAvgPool2D, BatchNorm2D)})
