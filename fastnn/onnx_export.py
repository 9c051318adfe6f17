"""Export a trained ``Sequential`` to ONNX, so that it runs where fastnn is not installed
(onnxruntime, or anything else that reads ONNX).

    export_onnx(model, path, batch=None, softmax=False, input_shape=None)

The graph computes ``model.predict`` in eval mode (Dropout is the identity,
BatchNorm2D uses its running statistics), opset 17, in the model's dtype:

    input  "input"   (N, F) for a model whose first layer is Dense (an MLP: MNIST
                     images flattened to 784 features), else the images in fastnn's
                     layout (N, H, W, C) -- ``input_shape`` (default (28, 28, C),
                     MNIST) gives (H, W, C)
    output "output"  (N, classes): the logits, or probabilities with ``softmax=True``
                     (or when the model ends with a Softmax layer)

Like ``predict``, the graph takes pixels already scaled: fastnn divides uint8
images by 255 (``x * float32(1 / 255)``) before the first layer; do the same to
what you feed the graph.  ``N`` is a symbolic dimension ``"N"`` unless ``batch``
fixes it.

Layers and their ONNX nodes:

    Dense                      Gemm (W is (in, out): transB = 0), + Relu/Sigmoid/Tanh
    ReLU, Sigmoid, Tanh        Relu, Sigmoid, Tanh
    Softmax                    Softmax (axis -1)
    Dropout                    nothing (the identity at inference)
    Flatten                    Flatten (axis 1)
    Conv2D                     Conv (+ Relu); HWIO weights as OIHW, pads (top, left, bottom, right)
    MaxPool2D, AvgPool2D       MaxPool, AveragePool (no padding, floor)
    GlobalAvgPool2D            GlobalAveragePool, then Flatten to (N, C)
    BatchNorm2D                BatchNormalization (gamma, beta, running mean and variance)

Layout: fastnn's images are NHWC, ONNX's Conv and pooling NCHW.  The graph keeps
fastnn's input layout and inserts a Transpose to NCHW before the first image
layer, and a Transpose back to NHWC before a Flatten, so that the Dense weights
after it keep fastnn's (h, w, c) flatten order unchanged.  Any other layer, or a
subclass of one of these, is refused with ``ValueError`` naming its index and
class.

Needs the ``onnx`` package (``pip install "fastnn[onnx]"``, which brings
onnxruntime too).

>>> import os, tempfile
>>> import fastnn
>>> from fastnn.presets import build_model, get_preset
>>> model = build_model(get_preset("mlp"), seed=0)
>>> path = os.path.join(tempfile.mkdtemp(), "mlp.onnx")
>>> fastnn.export_onnx(model, path)
>>> import onnx
>>> [n.op_type for n in onnx.load(path).graph.node]
['Gemm', 'Relu', 'Gemm']
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx

__all__ = ["export_onnx", "to_onnx", "OPSET"]

#: The ONNX operator set the graphs use (Softmax's and BatchNormalization's current
#: forms; onnxruntime runs it).
OPSET = 17
#: IR version 8 goes with opset 17: readers older than the ``onnx`` package that
#: writes the file still load it.
_IR_VERSION = 8

_NHWC_TO_NCHW = [0, 3, 1, 2]
_NCHW_TO_NHWC = [0, 2, 3, 1]


class _Graph:
    """Nodes and initializers as they are added, and where the running tensor is.

    ``layout`` says how the current tensor is laid out: ``"flat"`` (N, F),
    ``"nhwc"`` (fastnn's images) or ``"nchw"`` (after a Transpose for ONNX's
    image operators); ``shape`` is its fastnn (NHWC or flat) shape with batch 1."""

    def __init__(self, dtype: np.dtype[Any], current: str, layout: str,
                 shape: Tuple[int, ...]) -> None:
        import onnx.helper
        self.helper = onnx.helper
        self.dtype = dtype
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.current = current
        self.layout = layout
        self.shape = shape
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs: Any) -> str:
        """Append a node reading ``inputs`` (the current tensor first when it is one of
        them); its single output becomes the current tensor."""
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [out],
                                                name=out, **attrs))
        self.current = out
        return out

    def to_layout(self, layout: str, hint: str) -> None:
        if self.layout == layout or self.layout == "flat":
            return
        perm = _NHWC_TO_NCHW if layout == "nchw" else _NCHW_TO_NHWC
        self.op("Transpose", [self.current], hint + ".to_" + layout, perm=perm)
        self.layout = layout


def _activation(g: _Graph, act: Optional[str], hint: str) -> None:
    ops = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    if act is not None:
        g.op(ops[act], [g.current], hint + "." + act)


def _dense(g: _Graph, layer: Any, hint: str) -> None:
    # y = act(x @ W + b), W (in, out): Gemm's B without transposition
    w = g.const(hint + ".weight", layer.weight.data.astype(g.dtype, copy=False))
    inputs = [g.current, w]
    if layer.bias is not None:
        inputs.append(g.const(hint + ".bias", layer.bias.data.astype(g.dtype, copy=False)))
    g.op("Gemm", inputs, hint + ".gemm")
    _activation(g, layer.activation, hint)
    g.shape = layer.output_shape(g.shape)


def _elementwise(kind: str) -> Callable[[_Graph, Any, str], None]:
    def emit(g: _Graph, layer: Any, hint: str) -> None:
        g.op(kind, [g.current], hint + "." + kind.lower())
    return emit


def _softmax(g: _Graph, layer: Any, hint: str) -> None:
    g.op("Softmax", [g.current], hint + ".softmax", axis=-1)


def _dropout(g: _Graph, layer: Any, hint: str) -> None:
    """The identity at inference: no node."""


def _flatten(g: _Graph, layer: Any, hint: str) -> None:
    # back to NHWC first: fastnn's Flatten orders features (h, w, c), and the Dense
    # weights that follow were trained in that order
    g.to_layout("nhwc", hint)
    g.op("Flatten", [g.current], hint + ".flatten", axis=1)
    g.layout = "flat"
    g.shape = layer.output_shape(g.shape)


def _image_input(g: _Graph, layer: Any, i: int, hint: str) -> None:
    if g.layout == "flat":
        raise ValueError(f"export_onnx: layer {i} ({type(layer).__name__}) needs NHWC images "
                         f"but its input is flat {g.shape}; give input_shape=(H, W, C)")
    g.to_layout("nchw", hint)


def _conv2d(g: _Graph, layer: Any, hint: str) -> None:
    top, bottom, left, right = layer.padding_for(g.shape[1], g.shape[2])
    w = layer.weight.data.transpose(3, 2, 0, 1).astype(g.dtype)       # HWIO -> OIHW
    inputs = [g.current, g.const(hint + ".weight", w)]
    if layer.bias is not None:
        inputs.append(g.const(hint + ".bias", layer.bias.data.astype(g.dtype, copy=False)))
    g.op("Conv", inputs, hint + ".conv", kernel_shape=list(layer.kernel_size),
         strides=list(layer.stride), pads=[top, left, bottom, right])
    _activation(g, layer.activation, hint)
    g.shape = layer.output_shape(g.shape)


def _pool(op_type: str) -> Callable[[_Graph, Any, str], None]:
    def emit(g: _Graph, layer: Any, hint: str) -> None:
        g.op(op_type, [g.current], hint + "." + op_type.lower(),
             kernel_shape=list(layer.pool_size), strides=list(layer.stride))
        g.shape = layer.output_shape(g.shape)
    return emit


def _global_avg_pool(g: _Graph, layer: Any, hint: str) -> None:
    # (N, C, H, W) -> (N, C, 1, 1) -> (N, C): channels alone, no reordering needed
    g.op("GlobalAveragePool", [g.current], hint + ".gap")
    g.op("Flatten", [g.current], hint + ".flatten", axis=1)
    g.layout = "flat"
    g.shape = layer.output_shape(g.shape)


def _batchnorm2d(g: _Graph, layer: Any, hint: str) -> None:
    inputs = [g.current] + [g.const(f"{hint}.{name}", a.astype(g.dtype, copy=False)) for name, a in
                            (("gamma", layer.gamma.data), ("beta", layer.beta.data),
                             ("running_mean", layer.running_mean),
                             ("running_var", layer.running_var))]
    g.op("BatchNormalization", inputs, hint + ".bn", epsilon=float(layer.eps))


def _emitters() -> Dict[type, Callable[[_Graph, Any, str], None]]:
    from . import layers as L
    return {L.Dense: _dense, L.ReLU: _elementwise("Relu"), L.Sigmoid: _elementwise("Sigmoid"),
            L.Tanh: _elementwise("Tanh"), L.Softmax: _softmax, L.Dropout: _dropout,
            L.Flatten: _flatten, L.Conv2D: _conv2d, L.MaxPool2D: _pool("MaxPool"),
            L.AvgPool2D: _pool("AveragePool"), L.GlobalAvgPool2D: _global_avg_pool,
            L.BatchNorm2D: _batchnorm2d}


def _image_layer_types() -> Tuple[type, ...]:
    from . import layers as L
    return (L.Conv2D, L.MaxPool2D, L.AvgPool2D, L.GlobalAvgPool2D, L.BatchNorm2D)


def _input_shape(model: Any, input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    """Per-sample input shape: ``input_shape``, else the first Dense's in_features for an
    MLP, else MNIST-sized NHWC images (28, 28, C) for a convolutional model."""
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"export_onnx: input_shape must be positive sizes without the "
                             f"batch, e.g. (784,) or (28, 28, 1), got {input_shape!r}")
        return shape
    first = model.layers[0]
    if getattr(first, "INPUT_RANK", 2) == 4:
        channels = getattr(first, "in_channels", getattr(first, "num_features", 1))
        return (28, 28, int(channels))
    for layer in model.layers:
        if hasattr(layer, "in_features"):
            return (int(layer.in_features),)
    raise ValueError("export_onnx: cannot tell the model's input shape; give input_shape")


def to_onnx(model: Any, batch: Optional[int] = None, softmax: bool = False,
            input_shape: Optional[Sequence[int]] = None) -> onnx.ModelProto:
    """The ONNX model (``onnx.ModelProto``) that ``export_onnx`` writes; checked by
    ``onnx.checker.check_model`` before it is returned."""
    import onnx
    from onnx import TensorProto, helper

    from .sequential import Sequential
    if not isinstance(model, Sequential):
        raise TypeError(f"export_onnx: model must be a fastnn Sequential (or MLP), "
                        f"got {type(model).__name__}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                              or batch < 1):
        raise ValueError(f"export_onnx: batch must be a positive integer or None, got {batch!r}")
    dtype = np.dtype(model.dtype)
    elem = {np.dtype(np.float32): TensorProto.FLOAT,
            np.dtype(np.float64): TensorProto.DOUBLE}[dtype]
    sample = _input_shape(model, input_shape)
    emitters = _emitters()
    image_types = _image_layer_types()
    for i, layer in enumerate(model.layers):      # refuse before building anything
        if type(layer) not in emitters:
            raise ValueError(f"export_onnx: layer {i} ({type(layer).__name__}) cannot be "
                             f"exported to ONNX; supported: "
                             f"{', '.join(sorted(t.__name__ for t in emitters))}")

    g = _Graph(dtype, "input", "flat" if len(sample) == 1 else "nhwc", (1,) + sample)
    for i, layer in enumerate(model.layers):
        hint = f"layer{i}.{type(layer).__name__}"
        if isinstance(layer, image_types):
            _image_input(g, layer, i, hint)
        emitters[type(layer)](g, layer, hint)
    g.to_layout("nhwc", "output")
    if softmax:
        g.op("Softmax", [g.current], "softmax", axis=-1)
    if not g.nodes:                                # e.g. Sequential([Dropout(0.5)])
        g.op("Identity", [g.current], "identity")
    g.nodes[-1].output[0] = "output"               # the last node's output is the graph's

    n: Union[int, str] = "N" if batch is None else int(batch)
    out_shape = [n] + list(g.shape[1:])
    graph = helper.make_graph(
        g.nodes, "fastnn",
        [helper.make_tensor_value_info("input", elem, [n] + list(sample))],
        [helper.make_tensor_value_info("output", elem, out_shape)],
        initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastnn", ir_version=_IR_VERSION)
    from . import __version__
    proto.producer_version = __version__
    proto.doc_string = (f"fastnn {type(model).__name__}: {len(model.layers)} layers; input "
                        f"{'(N, F)' if len(sample) == 1 else '(N, H, W, C) NHWC'}, pixels / 255")
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model: Any, path: Union[str, os.PathLike[str]], batch: Optional[int] = None,
                softmax: bool = False, input_shape: Optional[Sequence[int]] = None) -> None:
    """Write ``model`` (a ``Sequential``) to ``path`` as an ONNX graph (see the module
    docstring for the input, output, layers and layout).

    ``batch``: a fixed batch size (default: a symbolic ``N``).  ``softmax``: end with a
    Softmax node (probabilities instead of logits).  ``input_shape``: the input without
    the batch, e.g. (784,) or (32, 32, 3).  ValueError names a layer that cannot be
    exported; the file is written atomically."""
    from ._fileio import atomic_write
    proto = to_onnx(model, batch=batch, softmax=softmax, input_shape=input_shape)
    data = proto.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))
