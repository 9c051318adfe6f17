"""``Sequential``: a stack of layers whose ``Parameter`` s live in two flat buffers.

A model with parameters theta_1..theta_P keeps them all in ONE contiguous
1-D array ``model.flat_params`` and their gradients in ``model.flat_grads``
(same layout).  Every ``Parameter.data`` / ``.grad`` is a reshaped view into
those buffers, so

* ``zero_grad()`` is one ``fill(0)``,
* an optimizer over ``model.parameters()`` is one fused kernel call on the
  flat buffers (``fastnn.optim``),
* saving or averaging a model is one array copy.

Layout: parameters in layer order, weight before bias, each C-contiguous,
no padding; ``p.offset`` is where ``p`` starts in the flat buffers.

>>> import numpy as np, fastnn
>>> from fastnn.layers import Dense
>>> model = fastnn.Sequential([Dense(4, 3, activation="relu"), Dense(3, 2)], seed=0)
>>> model.flat_params.shape, [p.name for p in model.parameters()]
((23,), ['0.weight', '0.bias', '1.weight', '1.bias'])
>>> model.parameters()[0].data[0, 0] = 1.5
>>> float(model.flat_params[0])
1.5
"""
from __future__ import annotations

import math
import threading
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence, Tuple, Union)

import numpy as np
import numpy.typing as npt

from . import training
from ._validation import float_dtype
from .errors import DTypeError, ShapeError
from .fusion import NotFusable, require_own_methods
from .initializers import as_rng
from .layers import BatchNorm2D, Conv2D, Dense, Flatten, GlobalAvgPool2D, Layer, layer_from_config
from .parameter import Parameter

if TYPE_CHECKING:
    from typing_extensions import Self

    from .callbacks import Callback
    from .fusion import LayerSpec
    from .losses import Loss
    from .optim import LRSchedule, Optimizer

__all__ = ["Parameter", "Sequential"]

_UINT8_SCALE = 1.0 / 255.0


def _slice_buffer(buf: Optional[npt.NDArray[Any]], n: int) -> Optional[npt.NDArray[Any]]:
    """The first n rows of a reusable workspace buffer, or None if it has too few."""
    if buf is None or buf.shape[0] < n:
        return None
    return buf[:n]


class Sequential:
    """A stack of layers applied in order: ``y = f_L(... f_2(f_1(x)))``.

    ``Sequential(layers, dtype=None, seed=None)``

    * ``dtype``: float32 or float64.  Every layer with parameters must have
      this dtype (mixing raises ``DTypeError``); None takes the layers'
      dtype (float32 for a model without parameters).
    * ``seed``: re-draws every layer's parameters from one generator seeded
      with it, in layer order, so the same seed gives the same model.  None
      keeps the values the layers already hold.

    Inputs to ``model(x)``: a float array of shape (N, features) (other float
    dtypes are cast to the model's dtype), or uint8 images, which are scaled
    by 1/255 on the fly.  Inputs of shape (N, d1, d2, ...) are flattened to
    (N, d1*d2*...) when the first layer is a ``Dense`` expecting that many
    features (so MNIST's (N, 28, 28) images feed a ``Dense(784, ...)``
    directly); a ``Flatten`` layer does the same explicitly.

    Intermediate activations live in workspace buffers reused across calls
    (no allocation per step once the batch size is known); the returned
    output is always a fresh array.

    Threads: because those workspaces are shared, ``forward`` and ``backward``
    hold a per-model lock, so calls on ONE model from several threads (e.g.
    ``predict`` in a thread pool) are serialised and each gets correct
    results; different models run in parallel.  A forward followed by its
    backward is not atomic: train a model from one thread at a time.

    >>> import numpy as np, fastnn
    >>> from fastnn.layers import Dense
    >>> model = fastnn.Sequential([Dense(784, 10, init="zeros")])
    >>> model(np.zeros((5, 28, 28), np.uint8)).shape
    (5, 10)
    """

    def __init__(self, layers: Union[Layer, Iterable[Layer]], dtype: Optional[npt.DTypeLike] = None,
                 seed: Union[None, int, np.random.Generator] = None) -> None:
        layers = list(layers) if not isinstance(layers, Layer) else [layers]
        if not layers:
            raise ValueError("Sequential: layers must be a non-empty list of layers")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layers[{i}] must be a fastnn.layers.Layer, "
                                f"got {type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears twice in layers")
        layer_dtypes = {layer.dtype for layer in layers if layer.dtype is not None}
        if len(layer_dtypes) > 1:
            detail = ", ".join(f"{i}:{type(l).__name__}={l.dtype}"
                               for i, l in enumerate(layers) if l.dtype is not None)
            raise DTypeError(f"Sequential: layers mix dtypes ({detail}); build every layer "
                             f"with the same dtype=")
        dt = None if dtype is None else float_dtype(dtype, "Sequential")
        if dt is not None and layer_dtypes and layer_dtypes != {dt}:
            raise DTypeError(f"Sequential: dtype={dt} but the layers have dtype "
                             f"{layer_dtypes.pop()}; build the layers with dtype={dt}")
        if dt is None:
            dt = layer_dtypes.pop() if layer_dtypes else np.dtype(np.float32)
        self.dtype = dt
        self.layers = layers
        self.training = True
        self._check_chain()
        if seed is not None:
            self.reset_parameters(seed)
        self._allocate_flat()
        self._fwd_ws: List[Optional[npt.NDArray[Any]]] = [None] * len(layers)
        self._bwd_ws: List[Optional[npt.NDArray[Any]]] = [None] * len(layers)
        self._last_out_shape: Optional[Tuple[int, ...]] = None
        self._last_in_shape: Optional[Tuple[int, ...]] = None     # for summary()
        # Workspaces and the layers' forward caches are shared state: concurrent
        # forwards on one model used to overwrite each other's activations.
        self._lock = threading.RLock()

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]              # locks do not copy; copy.deepcopy(model) gets a new one
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        # copy.deepcopy / pickle copy every parameter array on its own: point them back
        # into this copy's flat buffers, or an optimizer stepping flat_params would
        # train buffers the layers no longer read
        for p in self._params:     # bound parameters: every offset is an int
            n, off = p.size, p.offset
            p.bind(self.flat_params[off:off + n].reshape(p.shape),  # type: ignore[operator]
                      self.flat_grads[off:off + n].reshape(p.shape), self, off, p.name)  # type: ignore[operator, arg-type]

    # ----------------------------------------------------------------- construction
    def _check_chain(self) -> None:
        """Adjacent layers must agree: Dense widths, and the channels of image layers."""
        width = None           # features per row after the last Dense
        channels = None        # NHWC channels after the last Conv2D / BatchNorm2D
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                if width is not None and width != layer.in_features:
                    raise ShapeError(f"Sequential: layer {i} (Dense) expects {layer.in_features} "
                                     f"input features but the previous layer gives {width}")
                width, channels = layer.out_features, None
            elif isinstance(layer, (Conv2D, BatchNorm2D)):
                want = layer.in_channels if isinstance(layer, Conv2D) else layer.num_features
                if channels is not None and channels != want:
                    raise ShapeError(f"Sequential: layer {i} ({type(layer).__name__}) expects "
                                     f"{want} input channels but the previous layer gives "
                                     f"{channels}")
                channels = layer.out_channels if isinstance(layer, Conv2D) else want
                width = None
            elif isinstance(layer, (Flatten, GlobalAvgPool2D)):
                width = channels if isinstance(layer, GlobalAvgPool2D) else None
                channels = None

    def _allocate_flat(self) -> None:
        params = [p for layer in self.layers for p in layer._params]
        for p in params:
            if p._owner is not None:
                raise ValueError(f"Sequential: parameter {p.name!r} already belongs to another "
                                 f"Sequential; build new layers (or use from_config)")
        total = sum(p.size for p in params)
        self.flat_params = np.empty(total, self.dtype)
        self.flat_grads = np.zeros(total, self.dtype)
        off = 0
        for i, layer in enumerate(self.layers):
            for p in layer._params:
                n = p.size
                dview = self.flat_params[off:off + n].reshape(p.shape)
                gview = self.flat_grads[off:off + n].reshape(p.shape)
                dview[...] = p.data
                p.bind(dview, gview, self, off, f"{i}.{p.local_name}")
                off += n
        self._params = params

    # ----------------------------------------------------------------- parameters
    def parameters(self) -> List[Parameter]:
        """All parameters, in flat-buffer order."""
        return list(self._params)

    def named_parameters(self) -> List[Tuple[str, Parameter]]:
        """``[(name, Parameter), ...]`` with names like ``"0.weight"``."""
        return [(p.name, p) for p in self._params]

    def count_params(self) -> int:
        """Total number of scalar parameters (= ``flat_params.size``)."""
        return int(self.flat_params.size)

    def reset_parameters(self, seed: Union[None, int, np.random.Generator] = None) -> None:
        """Re-draw every layer's parameters (in place, in the flat buffer) from one
        generator seeded with ``seed``, in layer order."""
        rng = as_rng(seed)
        for layer in self.layers:
            layer.reset_parameters(rng)

    def zero_grad(self) -> None:
        """Set every gradient to zero: one fill of ``flat_grads``."""
        self.flat_grads.fill(0)

    def named_buffers(self) -> List[Tuple[str, npt.NDArray[Any]]]:
        """Non-trainable state, ``[(name, array)]`` with names like ``"1.running_mean"``
        (BatchNorm2D's running statistics); the arrays themselves, updated in place."""
        return [(f"{i}.{name}", buf) for i, layer in enumerate(self.layers)
                for name, buf in layer.buffers()]

    def state_dict(self) -> Dict[str, npt.NDArray[Any]]:
        """``{name: copy of the values}`` of every parameter, then every buffer."""
        out = {p.name: p.data.copy() for p in self._params}
        out.update((name, buf.copy()) for name, buf in self.named_buffers())
        return out

    def load_state_dict(self, state: Mapping[str, npt.ArrayLike]) -> None:
        """Copy values from ``state_dict()`` output; names and shapes must match."""
        targets = [(p.name, p.data) for p in self._params] + self.named_buffers()
        names = [n for n, _ in targets]
        missing = [n for n in names if n not in state]
        extra = [n for n in state if n not in names]
        if missing or extra:
            raise ValueError(f"load_state_dict: missing {missing}, unexpected {extra}")
        for name, target in targets:
            v = np.asarray(state[name])
            if v.shape != target.shape:
                raise ShapeError(f"load_state_dict: {name} must have shape {target.shape}, "
                                 f"got {v.shape}")
            target[...] = v

    # ----------------------------------------------------------------- mode
    def train(self, mode: bool = True) -> Self:
        """Training mode (Dropout active).  Returns self."""
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self) -> Self:
        """Inference mode (Dropout is the identity).  Returns self."""
        return self.train(False)

    # ----------------------------------------------------------------- forward / backward
    def input_features(self) -> Optional[int]:
        """Features per sample the first layer expects (its ``in_features``), or None
        when it takes any width."""
        return getattr(self.layers[0], "in_features", None)

    def fusion_spec(self) -> List[LayerSpec]:
        """The layers' ``fusion_spec()`` s in order (``fastnn.fusion``); ``NotFusable``
        names the first layer the fused trainer cannot run."""
        require_own_methods(self, Sequential, ("forward", "backward", "_forward", "_backward"))
        if self.dtype != np.float32:
            raise NotFusable(f"the model is {self.dtype}; the fused trainer runs float32")
        specs = []
        for i, layer in enumerate(self.layers):
            try:
                specs.append(layer.fusion_spec())
            except NotFusable as exc:
                raise NotFusable(f"layer {i} ({type(layer).__name__}): {exc}") from None
        return specs

    def _prepare_input(self, x: Any) -> npt.NDArray[np.floating]:
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype == np.uint8:
            x = np.multiply(x, self.dtype.type(_UINT8_SCALE), dtype=self.dtype)
        elif x.dtype.kind == "f":
            if x.dtype != self.dtype:
                x = x.astype(self.dtype)
        else:
            raise DTypeError(f"Sequential: input must be a float array or uint8 images, "
                             f"got dtype {x.dtype}")
        if x.ndim < 2:
            raise ShapeError(f"Sequential: input must be a batch (N, features), got shape "
                             f"{x.shape}; use x[None] for a single sample")
        if x.shape[0] == 0:
            raise ShapeError(f"Sequential: input is an empty batch (shape {x.shape})")
        if x.ndim == 3 and self.layers[0].INPUT_RANK == 4:
            x = x.reshape(x.shape + (1,))   # (N, H, W) images: one channel, NHWC
        elif x.ndim > 2:
            nfeat = self.input_features()
            if nfeat is not None:
                if math.prod(x.shape[1:]) != nfeat:
                    raise ShapeError(f"Sequential: input of shape {x.shape} cannot feed the "
                                     f"first layer, which expects {nfeat} features")
                x = x.reshape(x.shape[0], nfeat)
        return x

    def forward(self, x: npt.ArrayLike) -> npt.NDArray[np.floating]:
        """Run every layer; returns a fresh output array (N, out_features)."""
        with self._lock:
            return self._forward(x)

    def _forward(self, x: npt.ArrayLike) -> npt.NDArray[np.floating]:
        x = self._prepare_input(x)
        self._last_in_shape = x.shape
        n = x.shape[0]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            out = None if i == last else _slice_buffer(self._fwd_ws[i], n)
            y = layer.forward(x, out=out)
            if i != last and y is not out and y is not x and y.base is None:
                self._fwd_ws[i] = y          # a fresh array the layer owns: reuse next time
            x_in, x = x, y
        if x is x_in or not x.flags.owndata:
            # The last layer passed its input through (or a view of it), e.g. a
            # trailing Dropout in eval mode: copy so that the result is never a
            # workspace the next call overwrites, nor the caller's own array.
            x = x.copy()
        self._last_out_shape = x.shape
        return x

    def __call__(self, x: npt.ArrayLike) -> npt.NDArray[np.floating]:
        return self.forward(x)

    def backward(self, dout: npt.NDArray[np.floating], *,
                 input_grad: bool = True) -> Optional[npt.NDArray[np.floating]]:
        """Back-propagate dL/d(output); gradients ACCUMULATE into every ``.grad``.

        Returns dL/d(input) of shape (N, in_features), or None when
        ``input_grad=False`` -- training loops should pass that: it skips the
        first layer's dx matmul, which nobody reads."""
        with self._lock:
            return self._backward(dout, input_grad)

    def _backward(self, dout: npt.NDArray[np.floating],
                  input_grad: bool) -> Optional[npt.NDArray[np.floating]]:
        if self._last_out_shape is None:
            raise RuntimeError("Sequential.backward called before forward")
        if not isinstance(dout, np.ndarray):
            raise TypeError(f"Sequential.backward: dout must be a numpy array, "
                            f"got {type(dout).__name__}")
        if dout.shape != self._last_out_shape:
            raise ShapeError(f"Sequential.backward: dout must have the output's shape "
                             f"{self._last_out_shape}, got {dout.shape}")
        if dout.dtype != self.dtype:
            raise DTypeError(f"Sequential.backward: dout must have dtype {self.dtype}, "
                             f"got {dout.dtype}")
        g: Any = dout        # None after a layer asked for no input gradient (the first)
        n = dout.shape[0]
        premasked = False
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            ws = _slice_buffer(self._bwd_ws[i], n)
            kw: Dict[str, Any] = {"premasked": True} if premasked else {}
            premasked = False
            if layer.ACCEPTS_DX_MASK:
                # X(relu) -> Dense: X's ReLU backward (dz = dx * (y > 0)) runs in this
                # layer's dx GEMM epilogue; X's backward then skips it (Layer's contract)
                mask = self.layers[i - 1].relu_output() if i > 0 else None
                kw.update(input_grad=input_grad or i > 0, dx_mask=mask)
                premasked = mask is not None
            g_new = layer.backward(g, dx=ws, **kw)
            if g_new is not None and g_new is not ws and g_new is not g and g_new.base is None:
                self._bwd_ws[i] = g_new
            g = g_new
        return g

    # ----------------------------------------------------------------- description
    def summary(self, input_shape: Optional[Sequence[int]] = None,
                print_fn: Optional[Callable[[str], Any]] = print) -> str:
        """A table of layers, output shapes and parameter counts; printed and returned.

        ``input_shape``: per-sample input shape, e.g. (784,), (28, 28) or (28, 28, 1)
        (NHWC) for a convolutional network; by default the first Dense layer's
        in_features, else the shape of the last input seen by ``forward``.

        >>> import fastnn
        >>> from fastnn.layers import Conv2D, Dense, Flatten, MaxPool2D
        >>> m = fastnn.Sequential([Conv2D(1, 4, 3, activation="relu"), MaxPool2D(2), Flatten(),
        ...                        Dense(676, 10)])
        >>> print(m.summary(input_shape=(28, 28, 1), print_fn=None))
        #  Layer         Output shape       Params
        ------------------------------------------
        0  Conv2D(relu)  (None, 26, 26, 4)      40
        1  MaxPool2D     (None, 13, 13, 4)       0
        2  Flatten       (None, 676)             0
        3  Dense         (None, 10)          6,770
        ------------------------------------------
        Total params: 6,810 (float32, 27,240 bytes)
        """
        shape: Optional[Tuple[Optional[int], ...]]     # per-sample shape, batch dim None
        if input_shape is None:
            nfeat = self.input_features()
            if nfeat is not None:
                shape = (None, nfeat)
            elif self._last_in_shape is not None:
                shape = (None,) + self._last_in_shape[1:]
            else:
                shape = None
        else:
            shape = (None,) + tuple(int(d) for d in input_shape)
            if len(shape) == 3 and self.layers[0].INPUT_RANK == 4:
                shape = shape + (1,)            # (H, W): one channel, as forward feeds it
        rows = [("#", "Layer", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            if shape is not None:
                try:
                    shape = _symbolic_output_shape(layer, shape)
                except Exception:        # a shape the layer cannot predict: show '?'
                    shape = None
            desc = type(layer).__name__
            act = getattr(layer, "activation", None)
            if act:
                desc += f"({act})"
            rows.append((str(i), desc, str(shape) if shape is not None else "?",
                         f"{sum(p.size for p in layer.parameters()):,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "-" * (sum(widths) + 6)
        fmt = lambda r: "  ".join(s.ljust(w) if c < 3 else s.rjust(w)  # noqa: E731
                                  for c, (s, w) in enumerate(zip(r, widths)))
        text = "\n".join([fmt(rows[0]), line] + [fmt(r) for r in rows[1:]] + [
            line, f"Total params: {self.count_params():,} ({self.dtype}, "
                  f"{self.flat_params.nbytes:,} bytes)"])
        if print_fn is not None:
            print_fn(text)
        return text

    def get_config(self) -> Dict[str, Any]:
        """``{"class": "Sequential", "dtype": ..., "layers": [layer configs]}`` (JSON-able;
        architecture only -- the weights travel separately, e.g. ``state_dict()``)."""
        return {"class": "Sequential", "dtype": self.dtype.name,
                "layers": [layer.get_config() for layer in self.layers]}

    @classmethod
    def from_config(cls, cfg: Dict[str, Any]) -> Sequential:
        """Build a fresh (newly initialised) model from ``get_config()`` output."""
        if not isinstance(cfg, dict) or cfg.get("class") != "Sequential":
            raise ValueError(f"Sequential.from_config: expected a dict with class "
                             f"'Sequential', got {cfg!r:.200}")
        if not isinstance(cfg.get("layers"), list):
            raise ValueError("Sequential.from_config: 'layers' must be a list of layer configs")
        # a Sequential whatever cls is: MLP & co. are built from widths, not layer lists
        return Sequential([layer_from_config(c) for c in cfg["layers"]], dtype=cfg.get("dtype"))

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential([\n  {inner}\n], dtype={self.dtype})"

    # ----------------------------------------------------------------- training
    def fit(self, x: npt.NDArray[Any], y: npt.NDArray[np.integer], *, epochs: int,
            batch_size: int, loss: Loss, optimizer: Optimizer,
            validation_data: Optional[Tuple[npt.NDArray[Any], npt.NDArray[np.integer]]] = None,
            shuffle: bool = True, seed: Optional[int] = None, callbacks: Iterable[Callback] = (),
            verbose: int = 1,
            schedule: Union[None, LRSchedule, Callable[[int], float]] = None,
            initial_epoch: int = 0, resume: Optional[Mapping[str, Any]] = None,
            fused: Optional[bool] = None, precision: str = "fp32") -> training.History:
        return training.fit(self, x, y, epochs=epochs, batch_size=batch_size, loss=loss,
                            optimizer=optimizer, validation_data=validation_data,
                            shuffle=shuffle, seed=seed, callbacks=callbacks, verbose=verbose,
                            schedule=schedule, initial_epoch=initial_epoch, resume=resume,
                            fused=fused, precision=precision)

    def evaluate(self, x: npt.NDArray[Any], y: npt.NDArray[np.integer], loss: Optional[Loss] = None,
                 batch_size: int = training.EVAL_BATCH) -> Dict[str, float]:
        return training.evaluate(self, x, y, loss=loss, batch_size=batch_size)

    def predict(self, x: npt.NDArray[Any], batch_size: int = training.EVAL_BATCH,
                out: Optional[npt.NDArray[Any]] = None) -> npt.NDArray[np.floating]:
        if out is None:
            return training.predict(self, x, batch_size=batch_size)
        return training.predict(self, x, batch_size=batch_size, out=out)

    fit.__doc__ = training.fit.__doc__
    evaluate.__doc__ = training.evaluate.__doc__
    predict.__doc__ = training.predict.__doc__


def _symbolic_output_shape(layer: Layer, shape: Sequence[Any]) -> Tuple[Optional[int], ...]:
    """Output shape with a symbolic (None) batch dimension."""
    out = layer.output_shape((1,) + tuple(shape[1:]))
    return (None,) + tuple(out[1:])
