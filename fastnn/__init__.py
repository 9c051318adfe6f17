"""fastnn: train neural networks fast on multicore CPUs.

Native kernels (C with AVX2/FMA intrinsics, Cython + OpenMP, Numba) under a
small Python API that follows TensorFlow's op names and PyTorch/Keras shapes.

Where the code for a public name lives:

    fastnn.kernels.*           fastnn/kernels/<family>/ (Python) and kernels/<family>/ (C, Cython)
    one_hot, softmax, ...      fastnn/ops.py
    Parameter                  fastnn/parameter.py
    layers, Sequential         fastnn/layers.py, fastnn/sequential.py
    fusion contract            fastnn/fusion.py (what runs on the fused trainer, and why not)
    losses, optim              fastnn/losses.py, fastnn/optim.py
    models (Perceptron, MLP)   fastnn/models.py
    datasets                   fastnn/datasets/
    save, load                 fastnn/serialize.py
    export_onnx                fastnn/onnx_export.py (needs the onnx extra)
    callbacks                  fastnn/callbacks.py
    threads                    fastnn/_threads.py
    show_config                fastnn/_config.py
    command line               fastnn/cli.py

Submodules load on first use, so ``import fastnn`` stays cheap (Numba is
imported only when a Numba kernel first runs).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

from ._threads import get_num_threads, set_num_threads, threads  # noqa: F401
from .errors import (DataFormatError, DatasetNotFoundError, DivergenceError,  # noqa: F401
                     DTypeError, FastnnError, ShapeError)

__version__ = "0.1.0"

if TYPE_CHECKING:       # what type checkers see of the lazy names below (not imported)
    from ._config import show_config  # noqa: F401
    from .ops import (accuracy, argmax, log_softmax, one_hot, softmax,  # noqa: F401
                      softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy_with_logits)
    from .onnx_export import export_onnx  # noqa: F401
    from .parameter import Parameter  # noqa: F401
    from .sequential import Sequential  # noqa: F401
    from .serialize import load, save  # noqa: F401

_LAZY_ATTRS = {
    "show_config": "fastnn._config",
    "one_hot": "fastnn.ops",
    "softmax": "fastnn.ops",
    "log_softmax": "fastnn.ops",
    "softmax_cross_entropy_with_logits": "fastnn.ops",
    "sparse_softmax_cross_entropy_with_logits": "fastnn.ops",
    "argmax": "fastnn.ops",
    "accuracy": "fastnn.ops",
    "Sequential": "fastnn.sequential",
    "Parameter": "fastnn.parameter",
    "save": "fastnn.serialize",
    "load": "fastnn.serialize",
    "export_onnx": "fastnn.onnx_export",
}
_LAZY_MODULES = ("kernels", "ops", "layers", "losses", "optim", "models", "sequential",
                 "parameter", "fusion", "model", "datasets", "callbacks", "serialize",
                 "tensorboard", "plot", "training", "cli")


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module("fastnn." + name)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRS) | set(_LAZY_MODULES))
