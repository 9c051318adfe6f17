"""Benchmark of the conv kernels on the shapes of the conv presets, against PyTorch.

    python bench/bench_conv.py                 # 1 and 2 threads, markdown table
    python bench/bench_conv.py --threads 1 4 --repeat 7 --dtype float32

For every layer of the presets (lenet5, Keras' MNIST convnet, the speedrun convnet's
first layer) at batch 128:
GFLOP/s of the forward (im2col + GEMM, bias in the epilogue), backward-data
and backward-weights kernels of fastnn's fastest variant, with caller-owned
outputs and workspace (what a training step runs), and the same three ops in
PyTorch (``torch.nn.functional.conv2d`` and ``aten.convolution_backward``, NCHW,
its default layout), when torch is installed.  FLOPs = 2 * N*OH*OW * KH*KW*Cin
* Cout per op.  Each figure is the median (``--stat min``: the fastest, steadier on a
shared machine) of ``--repeat`` timings of a block of
calls lasting about 0.1 s, after a warm-up call; the header names the CPU
features, the variant and its SIMD path.  A second table times the presets' 2x2
max pools (forward, and backward with the fused ReLU mask) in ms and GB/s of the
arrays they read and write (``--no-pool`` skips it).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import fastnn
from fastnn import kernels as K
from fastnn.kernels.conv import reference as ref

# (name, x shape NHWC, w shape HWIO, stride, padding)
SHAPES: List[Tuple[str, Tuple[int, int, int, int], Tuple[int, int, int, int], Tuple[int, int],
                   Tuple[int, int, int, int]]] = [
    ("lenet5 conv1 28x28x1 5x5x6 pad2", (128, 28, 28, 1), (5, 5, 1, 6), (1, 1), (2, 2, 2, 2)),
    ("lenet5 conv2 14x14x6 5x5x16", (128, 14, 14, 6), (5, 5, 6, 16), (1, 1), (0, 0, 0, 0)),
    ("convnet conv1 28x28x1 3x3x32", (128, 28, 28, 1), (3, 3, 1, 32), (1, 1), (0, 0, 0, 0)),
    ("speedrun conv1 28x28x1 3x3x16", (128, 28, 28, 1), (3, 3, 1, 16), (1, 1), (0, 0, 0, 0)),
    ("convnet conv2 13x13x32 3x3x64", (128, 13, 13, 32), (3, 3, 32, 64), (1, 1), (0, 0, 0, 0)),
]


# the 2x2 stride-2 max pools of the presets: (name, x shape NHWC)
POOLS: List[Tuple[str, Tuple[int, int, int, int]]] = [
    ("lenet5 pool1 28x28x6", (128, 28, 28, 6)),
    ("lenet5 pool2 10x10x16", (128, 10, 10, 16)),
    ("speedrun pool1 26x26x16", (128, 26, 26, 16)),
    ("speedrun pool2 11x11x32", (128, 11, 11, 32)),
]

STAT = statistics.median


def _time(fn: Callable[[], Any], repeat: int, target: float = 0.1) -> float:
    """Median seconds per call."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    calls = max(1, int(target / one))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return STAT(times)


def _fastnn_ops(xs: Tuple[int, ...], ws: Tuple[int, ...], st: Tuple[int, int],
                pd: Tuple[int, int, int, int], dtype: Any,
                variant: Optional[str]) -> Dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[3]).astype(dtype)
    OH, OW = ref.out_size(xs[1], xs[2], ws[0], ws[1], st, pd)
    y = np.empty((xs[0], OH, OW, ws[3]), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = np.empty_like(x)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    work = np.empty(K.conv2d_workspace_size(xs, ws, st, pd), dtype)
    return {
        "forward": lambda: K.conv2d_forward(x, w, b, st, pd, None, y, work, variant=variant),
        "backward-data": lambda: K.conv2d_backward_data(dy, w, xs, st, pd, dx, work,
                                                        variant=variant),
        "backward-weights": lambda: K.conv2d_backward_weights(x, dy, ws, st, pd, dw, db, True,
                                                              work, variant=variant),
    }


def _torch_ops(torch: Any, xs: Tuple[int, ...], ws: Tuple[int, ...], st: Tuple[int, int],
               pd: Tuple[int, int, int, int], dtype: Any) -> Dict[str, Callable[[], Any]]:
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    N, H, W, Cin = xs
    KH, KW, _, Cout = ws
    x = torch.randn(N, Cin, H, W, dtype=tdt)
    w = torch.randn(Cout, Cin, KH, KW, dtype=tdt)
    b = torch.randn(Cout, dtype=tdt)
    F = torch.nn.functional
    sym = pd[0] == pd[1] and pd[2] == pd[3]
    padarg = (pd[0], pd[2])

    def pad(t: Any) -> Any:
        return t if sym else F.pad(t, (pd[2], pd[3], pd[0], pd[1]))

    xp = pad(x)
    y = F.conv2d(xp, w, b, st, padarg if sym else 0)
    dy = torch.randn_like(y)
    cb = torch.ops.aten.convolution_backward
    args = ([Cout], list(st), list(padarg) if sym else [0, 0], [1, 1], False, [0, 0], 1)
    return {
        "forward": lambda: F.conv2d(xp, w, b, st, padarg if sym else 0),
        "backward-data": lambda: cb(dy, xp, w, *args, [True, False, False]),
        "backward-weights": lambda: cb(dy, xp, w, *args, [False, True, True]),
    }


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="how the --repeat timings combine (min: steadier on a shared machine)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--variant", default=None, help="fastnn conv variant (default: fastest)")
    ap.add_argument("--no-pool", action="store_true", help="skip the max-pool table")
    a = ap.parse_args(argv)
    global STAT
    STAT = min if a.stat == "min" else statistics.median
    dtype = np.dtype(a.dtype).type
    try:
        import torch
    except ImportError:          # the comparison is optional: fastnn's figures still print
        torch = None
    var = a.variant or ("c" if "c" in K.variants("conv") else "reference")
    simd = next(r["simd"] for r in K.describe("conv") if r["name"] == var)
    print(f"# conv kernels, batch 128, {a.dtype}; fastnn variant {var} ({simd}); "
          f"CPU {platform.processor() or platform.machine()}; "
          f"torch {torch.__version__ if torch else 'not installed'}")
    print()
    print("| layer | op | threads | fastnn GFLOP/s | torch GFLOP/s | fastnn / torch |")
    print("|---|---|---:|---:|---:|---:|")
    for name, xs, ws, st, pd in SHAPES:
        OH, OW = ref.out_size(xs[1], xs[2], ws[0], ws[1], st, pd)
        flop = 2.0 * xs[0] * OH * OW * ws[0] * ws[1] * ws[2] * ws[3]
        ours = _fastnn_ops(xs, ws, st, pd, dtype, var)
        theirs = _torch_ops(torch, xs, ws, st, pd, dtype) if torch else None
        for nt in a.threads:
            for op in ("forward", "backward-data", "backward-weights"):
                with fastnn.threads(nt):
                    g = flop / _time(ours[op], a.repeat) / 1e9
                if theirs is not None:
                    torch.set_num_threads(nt)
                    t = flop / _time(theirs[op], a.repeat) / 1e9
                    tt, ratio = f"{t:.1f}", f"{g / t:.2f}"
                else:
                    tt, ratio = "-", "-"
                print(f"| {name} | {op} | {nt} | {g:.1f} | {tt} | {ratio} |", flush=True)

    if a.no_pool:
        return
    # max pooling: memory-bound, so GB/s of the arrays each call reads and writes
    # (forward: x, y, argmax; backward with the fused ReLU mask: dy, argmax, mask, dx)
    print()
    print("| pool | op | threads | ms | GB/s |")
    print("|---|---|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for name, xs in POOLS:
        x = np.maximum(rng.standard_normal(xs), 0).astype(dtype)   # ReLU outputs
        y, am = K.maxpool2d_forward(x, (2, 2), variant=var)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = np.empty_like(x)
        ops = {"forward": (lambda: K.maxpool2d_forward(x, (2, 2), out=y, argmax=am, variant=var),
                           x.nbytes + y.nbytes + am.nbytes),
               "backward (mask)": (lambda: K.maxpool2d_backward(dy, am, xs, out=dx, mask=y,
                                                                variant=var),
                                   dy.nbytes + am.nbytes + y.nbytes + dx.nbytes)}
        for nt in a.threads:
            for op, (fn, nbytes) in ops.items():
                with fastnn.threads(nt):
                    t = _time(fn, a.repeat)
                print(f"| {name} | {op} | {nt} | {t * 1e3:.3f} | {nbytes / t / 1e9:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
