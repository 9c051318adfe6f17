"""Where a convnet training step goes: per-layer and per-kernel timers, and cProfile.

    python bench/profile_convnet.py --preset lenet5 --threads 2 --steps 100
    python bench/profile_convnet.py --preset convnet --threads 2 --steps 60 --cprofile 15

Runs the general training path's step (``_GeneralEngine.run``: feed the batch,
zero_grad, model(x), loss, backward, optimizer.step) on MNIST batches of the
preset's size, after warm-up steps, with every layer's ``forward``/``backward``
and every conv/pool kernel call wrapped in a timer.  Prints, per phase, the
milliseconds per step, the share of the step and, for the conv kernels, GFLOP/s
(FLOPs = 2 * N*OH*OW * KH*KW*Cin * Cout per conv op).  The layer rows include
the kernels they call; "outside kernels" is a layer's time minus its kernels
(argument checks, Python).  ``--cprofile K`` also prints cProfile's top K
functions by total time.  The timers add a few microseconds per call: compare
the "step" row with ``--no-timers`` for the untimed step.
"""
from __future__ import annotations

import argparse
import cProfile
import collections
import functools
import io
import platform
import pstats
import time
from typing import Any, Callable, DefaultDict, Dict, List, Tuple

import numpy as np

import fastnn
from fastnn import kernels as K
from fastnn import presets
from fastnn.datasets import mnist

T: DefaultDict[str, float] = collections.defaultdict(float)
FLOPS: DefaultDict[str, float] = collections.defaultdict(float)


def _timed(name: str, fn: Callable[..., Any], flops: Callable[..., float] = lambda *a, **k: 0.0
           ) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        r = fn(*args, **kw)
        T[name] += time.perf_counter() - t0
        FLOPS[name] += flops(*args, **kw)
        return r
    return wrapper


def _conv_flops(x_shape: Tuple[int, ...], w_shape: Tuple[int, ...], stride: Any,
                padding: Any) -> float:
    n, h, w, cin = x_shape
    kh, kw, _, cout = w_shape
    pt, pb, pl, pr = padding
    oh = (h + pt + pb - kh) // stride[0] + 1
    ow = (w + pl + pr - kw) // stride[1] + 1
    return 2.0 * n * oh * ow * kh * kw * cin * cout


def instrument(model: Any) -> List[str]:
    """Wrap the model's layers and the conv/pool kernels in timers; return the row names."""
    names = []
    conv_ids: Dict[Tuple[int, ...], str] = {}
    for i, layer in enumerate(model.layers):
        name = f"L{i} {type(layer).__name__}"
        if isinstance(layer, fastnn.layers.Conv2D):
            conv_ids[tuple(layer.weight.shape)] = name
        layer.forward = _timed(name + " fwd", layer.forward)
        layer.backward = _timed(name + " bwd", layer.backward)
        names += [name + " fwd", name + " bwd"]

    def who(w_shape: Tuple[int, ...]) -> str:
        return conv_ids.get(tuple(w_shape), "conv")

    real_f, real_d, real_w = K.conv2d_forward, K.conv2d_backward_data, K.conv2d_backward_weights

    def fwd(x: Any, w: Any, *a: Any, **kw: Any) -> Any:
        name = "kernel " + who(w.shape) + " conv forward"
        return _timed(name, real_f, lambda *a_, **k_: _conv_flops(
            x.shape, w.shape, kw["stride"], kw["padding"]))(x, w, *a, **kw)

    def bwd_d(dy: Any, w: Any, x_shape: Any, stride: Any, pads: Any, **kw: Any) -> Any:
        name = "kernel " + who(w.shape) + " conv backward-data"
        return _timed(name, real_d, lambda *a_, **k_: _conv_flops(
            x_shape, w.shape, stride, pads))(dy, w, x_shape, stride, pads, **kw)

    def bwd_w(x: Any, dy: Any, w_shape: Any, stride: Any, pads: Any, **kw: Any) -> Any:
        name = "kernel " + who(w_shape) + " conv backward-weights"
        return _timed(name, real_w, lambda *a_, **k_: _conv_flops(
            x.shape, w_shape, stride, pads))(x, dy, w_shape, stride, pads, **kw)

    K.conv2d_forward, K.conv2d_backward_data, K.conv2d_backward_weights = fwd, bwd_d, bwd_w
    for k in ("maxpool2d_forward", "maxpool2d_backward", "activation_backward", "matmul"):
        setattr(K, k, _timed("kernel " + k, getattr(K, k)))
    return names


_KERNELS = {k: getattr(K, k) for k in (
    "conv2d_forward", "conv2d_backward_data", "conv2d_backward_weights", "maxpool2d_forward",
    "maxpool2d_backward", "activation_backward", "matmul")}


def uninstrument() -> None:
    for k, f in _KERNELS.items():
        setattr(K, k, f)


def run(preset_name: str, steps: int, warmup: int, timers: bool, prof: int,
        batch: int = 0) -> None:
    (x, y), _ = mnist.load_data()
    p = presets.get_preset(preset_name)
    model = presets.build_model(p, seed=0)
    opt = presets.build_optimizer(p, model)
    loss = presets.build_loss(p)
    b = batch or p.batch_size
    from fastnn.training import _BatchFeeder
    feed = _BatchFeeder(x, b, model.dtype)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    if timers:
        instrument(model)
        opt.step = _timed("optimizer step", opt.step)
        model.zero_grad = _timed("zero_grad", model.zero_grad)
        loss_fwd = _timed("loss forward", loss.__call__)
        loss_bwd = _timed("loss backward", loss.backward)
        feed = _timed("feed batch", feed)
    else:
        loss_fwd, loss_bwd = loss.__call__, loss.backward

    def step(s: int) -> None:
        idx = perm[(s * b) % (len(x) - b):][:b]
        xb = feed(idx)
        model.zero_grad()
        out = model(xb)
        float(loss_fwd(out, y[idx]))
        model.backward(loss_bwd(), input_grad=False)
        opt.step()

    for s in range(warmup):
        step(s)
    T.clear()
    FLOPS.clear()
    pr = cProfile.Profile() if prof else None
    t0 = time.perf_counter()
    if pr:
        pr.enable()
    for s in range(steps):
        step(s)
    if pr:
        pr.disable()
    total = time.perf_counter() - t0
    ms = 1e3 * total / steps
    print(f"## {preset_name}: batch {b}, {fastnn.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, conv variant "
          f"{K.conv.pick('conv', None).__name__.rsplit('.', 1)[-1]}")
    print(f"step {ms:.2f} ms ({b / ms * 1e3:,.0f} samples/s, epoch of 60,000 ~ "
          f"{60000 / b * ms / 1e3:.2f} s){'' if timers else ' (no timers)'}")
    if timers:
        print()
        print("| phase | ms/step | share | GFLOP/s |")
        print("|---|---:|---:|---:|")
        kernel_t = 0.0
        for name in sorted(T, key=lambda k: -T[k]):
            t = T[name] / steps * 1e3
            gf = f"{FLOPS[name] / T[name] / 1e9:.1f}" if FLOPS[name] else ""
            print(f"| {name} | {t:.3f} | {100 * t / ms:.1f} % | {gf} |")
            if name.startswith("kernel "):
                kernel_t += T[name]
        layer_t = sum(v for k, v in T.items() if k.startswith("L"))
        outside = sum(v for k, v in T.items() if not k.startswith(("L", "kernel")))
        rest = total - layer_t - outside
        print(f"| layers outside conv/pool/relu/matmul kernels | "
              f"{(layer_t - kernel_t) / steps * 1e3:.3f} | "
              f"{100 * (layer_t - kernel_t) / total:.1f} % | |")
        print(f"| step outside layers, loss, optimizer, feed | {rest / steps * 1e3:.3f} | "
              f"{100 * rest / total:.1f} % | |")
        conv_flops = sum(v for k, v in FLOPS.items() if "conv " in k)
        print(f"\nconv FLOPs per step {conv_flops / steps / 1e9:.3f} GFLOP; "
              f"over the whole step {conv_flops / total / 1e9:.1f} GFLOP/s")
    uninstrument()
    if pr:
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(prof)
        print(s.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="lenet5")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-timers", action="store_true")
    ap.add_argument("--cprofile", type=int, default=0, metavar="K")
    ap.add_argument("--batch-size", type=int, default=0, help="default: the preset's")
    a = ap.parse_args()
    fastnn.set_num_threads(a.threads)
    for name in a.preset.split(","):
        run(name, a.steps, a.warmup, not a.no_timers, a.cprofile, a.batch_size)


if __name__ == "__main__":
    main()
