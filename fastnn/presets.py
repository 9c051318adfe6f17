"""Named training recipes for ``fastnn train --preset`` and the comparison bench.

Every preset is float32, pixels / 255, PyTorch's default initialisation
(``init="torch"``: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), softmax
cross-entropy on the logits, a fresh permutation each epoch and the last
partial batch kept.  ``bench/compare.py`` replays exactly these recipes in
PyTorch, so changing a number here changes the comparison.

    softmax     784-10 (the TensorFlow tutorial's softmax regression), batch 100, SGD lr 0.5
    mlp         784-128-10 ReLU, batch 64, SGD lr 0.05 momentum 0.9 (>= 97% in 3 epochs)
    mlp-keras   784-512-512-10 ReLU, batch 128, SGD lr 0.05 momentum 0.9
    speedrun    the fastest recipe found to 98% test accuracy; stops as soon as it gets there
    lenet5      LeNet-5 (ReLU, max pooling): conv5x5x6 pad 2, pool 2, conv5x5x16, pool 2,
                400-120-84-10; batch 128, Adam lr 1e-3
    convnet     Keras' "simple MNIST convnet": conv3x3x32, pool 2, conv3x3x64, pool 2,
                dropout 0.5, 1600-10; batch 128, Adam lr 1e-3
    speedrun-cnn  the fastest recipe found to 99% test accuracy: conv3x3x16, pool 2,
                batchnorm, conv3x3x32, pool 2, batchnorm, 800-128-10; batch 128, SGD
                Nesterov, OneCycle to lr 0.2 over 2 epochs; stops when reached

An MLP preset's architecture is ``sizes``; a convolutional one names a builder in
``ARCHITECTURES`` (``arch``) and keeps its Dense head's widths in ``sizes``.
Convolutional models take NHWC images ((N, 28, 28) MNIST batches are fed as
(N, 28, 28, 1)); ``model_input(model, x)`` shapes data for either kind.

>>> from fastnn.presets import get_preset, build_model
>>> p = get_preset("mlp")
>>> p.sizes, p.batch_size, p.lr
((784, 128, 10), 64, 0.05)
>>> build_model(p, seed=0).count_params()
101770
>>> build_model(get_preset("lenet5"), seed=0).count_params()
61706
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy.typing as npt

if TYPE_CHECKING:
    from .layers import Layer
    from .losses import SoftmaxCrossEntropy
    from .models import MLP
    from .optim import OneCycle, Optimizer
    from .sequential import Sequential

__all__ = ["Preset", "PRESETS", "ARCHITECTURES", "get_preset", "build_model",
           "build_optimizer", "build_schedule", "build_loss", "model_input"]

OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A complete training recipe (architecture, batches, optimizer, schedule)."""

    name: str
    sizes: Tuple[int, ...]            # (Dense) layer widths, input first, classes last
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    epochs: int = 3
    activation: str = "relu"
    init: str = "torch"
    label_smoothing: float = 0.0
    # learning-rate schedule over the whole run: None (constant), or
    # ("onecycle", pct_start) -- fastnn.optim.OneCycle over the whole run
    schedule: Optional[Tuple[Any, ...]] = None
    target_accuracy: Optional[float] = None   # stop when test accuracy reaches it
    description: str = ""
    # "mlp": Dense layers of ``sizes``; else the name of a builder in ARCHITECTURES
    arch: str = "mlp"

    def arch_text(self) -> str:
        """The architecture in one word: ``784-128-10``, ``conv5x5x6-pool2-...-10``."""
        widths = "-".join(map(str, self.sizes))
        return widths if self.arch == "mlp" else f"{_ARCH_PREFIX[self.arch]}-{widths}"

    def replace(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["sizes"] = list(self.sizes)
        d["schedule"] = list(self.schedule) if self.schedule else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preset:
        d = dict(d)
        d["sizes"] = tuple(int(s) for s in d["sizes"])
        d["schedule"] = tuple(d["schedule"]) if d.get("schedule") else None
        d.setdefault("arch", "mlp")         # recipes stored before convolutional presets
        return cls(**d)


PRESETS = {p.name: p for p in (
    Preset("softmax", (784, 10), batch_size=100, lr=0.5, epochs=3,
           description="softmax regression 784-10 (TensorFlow MNIST tutorial)"),
    Preset("mlp", (784, 128, 10), batch_size=64, lr=0.05, momentum=0.9, epochs=3,
           description="MLP 784-128-10 ReLU, SGD momentum"),
    Preset("mlp-keras", (784, 512, 512, 10), batch_size=128, lr=0.05, momentum=0.9, epochs=3,
           description="Keras mnist_mlp shape 784-512-512-10 ReLU, SGD momentum"),
    # the fused-loop engineer's recipe (bench/bench_train_native.py --speedrun): 784-256-10,
    # batch 128, OneCycle to lr 0.3 over 3 epochs: 0.9818 / 0.9832 test accuracy (seeds 0 / 1)
    # in epoch 3.  Tried and slower to 98%: batch 64 at lr 0.15 (same accuracy, more steps),
    # 784-512-10 at batch 128 and lr 0.1 (0.9794 after 4 epochs), 784-1024-10.
    Preset("speedrun", (784, 256, 10), batch_size=128, lr=0.3, momentum=0.9, nesterov=True,
           epochs=3, schedule=("onecycle", 0.25), target_accuracy=0.98,
           description="fastest recipe to 98% test accuracy (stops when reached)"),
    Preset("lenet5", (400, 120, 84, 10), batch_size=128, lr=1e-3, optimizer="adam", epochs=3,
           arch="lenet5", description="LeNet-5 with ReLU and max pooling, Adam"),
    Preset("convnet", (1600, 10), batch_size=128, lr=1e-3, optimizer="adam", epochs=3,
           arch="convnet", description="Keras simple MNIST convnet, Adam"),
    # Session 5 search (bench/speedrun_search.py; test accuracy after each epoch, OneCycle
    # over the epochs given, seeds 0 / 1 / 2).  BatchNorm2D is what makes two epochs safe:
    # this recipe (conv, ReLU, pool, then BatchNorm; batch 128, lr 0.2) 0.9922 / 0.9915 /
    # 0.9916 after epoch 2, and 9.0 s from process start against 12.1 s at batch 64 and lr
    # 0.1 (0.9931 / 0.9921 / 0.9926: more steps, each with the per-layer Python and kernel
    # start-up costs); BatchNorm before the pool (batch 64) 0.9919 / 0.9916 / 0.9925 (and 4x
    # the BatchNorm work, and the ReLU's backward no longer fused into the pool's).  Without BatchNorm: batch 128 lr 0.2
    # 0.9901 (seed 0), lr 0.3 0.9910 / 0.9835 / 0.9897; session 4's batch 64 lr 0.1 recipe
    # over 3 epochs 0.9917, over 2 epochs 0.9903.  With BatchNorm before the pool: batch 128
    # lr 0.2 0.9923 / 0.9911 / 0.9905, lr 0.4 over one epoch 0.9878; no 128-wide hidden layer
    # 0.9901 / 0.9904; conv widths 24/48 at batch 128 0.9920 / 0.9918 / 0.9928 (1.6x the
    # convolution work), over one epoch at batch 64 0.9898 / 0.9909.  Older notes: label
    # smoothing, Adam, 5x5 kernels and strided convolutions without pooling were all slower
    # to 99 %.
    Preset("speedrun-cnn", (800, 128, 10), batch_size=128, lr=0.2, momentum=0.9, nesterov=True,
           epochs=2, schedule=("onecycle", 0.25), target_accuracy=0.99, arch="speedrun-cnn",
           description="fastest recipe to 99% test accuracy (small convnet with batch "
                       "normalisation; stops when reached)"),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the choices otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def build_model(preset: Preset, seed: Optional[int] = None,
                dtype: npt.DTypeLike = "float32") -> Sequential:
    """``fastnn.models.MLP(preset.sizes)`` (Dense layers, ReLU between, logits last), or
    the convolutional network ``ARCHITECTURES[preset.arch]`` builds."""
    if preset.arch != "mlp":
        try:
            builder = ARCHITECTURES[preset.arch]
        except KeyError:
            raise ValueError(f"preset {preset.name!r}: unknown architecture {preset.arch!r}; "
                             f"choose 'mlp' or one of {', '.join(ARCHITECTURES)}") from None
        return builder(preset, seed, dtype)
    from .models import MLP
    return MLP(list(preset.sizes), activation=preset.activation, init=preset.init, dtype=dtype,
               seed=seed)


def _dense_head(preset: Preset, dtype: npt.DTypeLike) -> List[Layer]:
    from .layers import Dense
    pairs = list(zip(preset.sizes[:-1], preset.sizes[1:]))
    return [Dense(i, o, activation=preset.activation if k < len(pairs) - 1 else None,
                  init=preset.init, dtype=dtype) for k, (i, o) in enumerate(pairs)]


def _lenet5(preset: Preset, seed: Optional[int], dtype: npt.DTypeLike) -> Sequential:
    """28x28x1 -> conv5x5x6 pad 2 (28x28x6) -> pool 2 (14x14x6) -> conv5x5x16 (10x10x16)
    -> pool 2 (5x5x16) -> flatten 400 -> 120 -> 84 -> 10; ReLU after every conv and hidden
    Dense."""
    from .layers import Conv2D, Flatten, MaxPool2D
    from .sequential import Sequential
    act, init = preset.activation, preset.init
    layers = [Conv2D(1, 6, 5, padding=2, activation=act, init=init, dtype=dtype), MaxPool2D(2),
              Conv2D(6, 16, 5, activation=act, init=init, dtype=dtype), MaxPool2D(2), Flatten()]
    return Sequential(layers + _dense_head(preset, dtype), seed=seed)


def _convnet(preset: Preset, seed: Optional[int], dtype: npt.DTypeLike) -> Sequential:
    """28x28x1 -> conv3x3x32 (26x26x32) -> pool 2 (13x13x32) -> conv3x3x64 (11x11x64)
    -> pool 2 (5x5x64) -> flatten 1600 -> dropout 0.5 -> 10 (Keras' mnist_convnet)."""
    from .layers import Conv2D, Dropout, Flatten, MaxPool2D
    from .sequential import Sequential
    act, init = preset.activation, preset.init
    layers = [Conv2D(1, 32, 3, activation=act, init=init, dtype=dtype), MaxPool2D(2),
              Conv2D(32, 64, 3, activation=act, init=init, dtype=dtype), MaxPool2D(2), Flatten(),
              Dropout(0.5, seed=seed)]
    return Sequential(layers + _dense_head(preset, dtype), seed=seed)


def _speedrun_cnn(preset: Preset, seed: Optional[int], dtype: npt.DTypeLike) -> Sequential:
    """28x28x1 -> conv3x3x16 (26x26x16) -> pool 2 (13x13x16) -> batchnorm -> conv3x3x32
    (11x11x32) -> pool 2 (5x5x32) -> batchnorm -> flatten 800 -> 128 -> 10: the convnet
    preset at half its conv widths, each pool followed by BatchNorm2D (after the pool it
    normalises a quarter of the values, and the conv's ReLU backward stays fused into the
    pool's), no dropout, a ReLU hidden layer; about 1.5 MFLOP per image forward."""
    from .layers import BatchNorm2D, Conv2D, Flatten, MaxPool2D
    from .sequential import Sequential
    act, init = preset.activation, preset.init
    layers = [Conv2D(1, 16, 3, activation=act, init=init, dtype=dtype), MaxPool2D(2),
              BatchNorm2D(16, dtype=dtype),
              Conv2D(16, 32, 3, activation=act, init=init, dtype=dtype), MaxPool2D(2),
              BatchNorm2D(32, dtype=dtype), Flatten()]
    return Sequential(layers + _dense_head(preset, dtype), seed=seed)


#: Builders of the convolutional presets: ``(preset, seed, dtype) -> Sequential``.
ARCHITECTURES: Dict[str, Callable[[Preset, Optional[int], npt.DTypeLike], Sequential]] = {
    "lenet5": _lenet5, "convnet": _convnet, "speedrun-cnn": _speedrun_cnn}
_ARCH_PREFIX = {"lenet5": "conv5x5x6-pool2-conv5x5x16-pool2",
                "convnet": "conv3x3x32-pool2-conv3x3x64-pool2-dropout0.5",
                "speedrun-cnn": "conv3x3x16-pool2-bn-conv3x3x32-pool2-bn"}


def model_input(model: Any, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``x`` (N, ...) shaped for ``model``: rows (N, features) for a model whose first
    layer takes features (an MLP), the images unchanged for a convolutional one."""
    if getattr(model, "input_features", lambda: None)() is not None:
        return x.reshape(x.shape[0], -1)
    return x


def build_optimizer(preset: Preset, model: Sequential) -> Optimizer:
    from . import optim
    params = model.parameters()
    if preset.optimizer == "sgd":
        return optim.SGD(params, lr=preset.lr, momentum=preset.momentum,
                         nesterov=preset.nesterov, weight_decay=preset.weight_decay)
    if preset.optimizer == "adam":
        return optim.Adam(params, lr=preset.lr, weight_decay=preset.weight_decay)
    if preset.optimizer == "adamw":
        return optim.AdamW(params, lr=preset.lr, weight_decay=preset.weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {preset.optimizer!r}")


def build_loss(preset: Preset) -> SoftmaxCrossEntropy:
    from .losses import SoftmaxCrossEntropy
    return SoftmaxCrossEntropy(label_smoothing=preset.label_smoothing)


def build_schedule(preset: Preset, optimizer: Optimizer,
                   steps_per_epoch: int) -> Optional[OneCycle]:
    """The learning-rate schedule of ``preset`` over its whole run (None: constant lr).

    ``("onecycle", pct_start)``: ``fastnn.optim.OneCycle`` (PyTorch's
    OneCycleLR, cosine) peaking at ``preset.lr`` after ``pct_start`` of the
    ``epochs * steps_per_epoch`` steps; bench/compare.py replays it with
    ``torch.optim.lr_scheduler.OneCycleLR``."""
    if not preset.schedule:
        return None
    kind = preset.schedule[0]
    if kind == "onecycle":
        from .optim import OneCycle
        return OneCycle(optimizer, max_lr=preset.lr, total_steps=preset.epochs * steps_per_epoch,
                        pct_start=float(preset.schedule[1]))
    raise ValueError(f"unknown schedule {kind!r} in preset {preset.name!r}")
