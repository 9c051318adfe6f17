"""Conv kernels in fp32 and bf16 side by side (issue 12): the presets' layers at batch 128,
ms per call, 2 threads, medians of alternating rounds:

    python bench/bench_conv_precision.py [--rounds 15] [--threads 2]

Layers with one input channel stay fp32 under precision="bf16" (see conv2d_forward), so
their two columns measure the same kernels.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fastnn  # noqa: E402
from fastnn.kernels import (conv2d_backward_data, conv2d_backward_weights,  # noqa: E402
                            conv2d_forward)

LAYERS = {  # name: (N, H, W, Cin, K, Cout, padding)
    "convnet conv1": (128, 28, 28, 1, 3, 32, 0),
    "convnet conv2": (128, 13, 13, 32, 3, 64, 0),
    "lenet5 conv1": (128, 28, 28, 1, 5, 6, 2),
    "lenet5 conv2": (128, 14, 14, 6, 5, 16, 0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fastnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"ms per call (fp32 / bf16), {args.threads} threads, medians of {args.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.2f}")
    for name, (N, H, W, Cin, K, Cout, p) in LAYERS.items():
        pad = (p,) * 4
        x = rng.random((N, H, W, Cin), np.float32)
        w = rng.standard_normal((K, K, Cin, Cout)).astype(np.float32)
        y = conv2d_forward(x, w, None, (1, 1), pad)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dw = np.zeros_like(w)
        phases = {
            "fwd": lambda prec: conv2d_forward(x, w, None, (1, 1), pad, precision=prec),
            "bwd-data": lambda prec: conv2d_backward_data(dy, w, x.shape, (1, 1), pad,
                                                          precision=prec),
            "bwd-w": lambda prec: conv2d_backward_weights(x, dy, w.shape, (1, 1), pad, dw,
                                                          precision=prec),
        }
        res = {}
        for _ in range(args.rounds):
            for prec in ("fp32", "bf16"):
                for ph, f in phases.items():
                    time.sleep(0.002)
                    t0 = time.perf_counter()
                    f(prec)
                    res.setdefault((prec, ph), []).append(time.perf_counter() - t0)
        print(f"{name}: " + "  ".join(
            f"{ph} {np.median(res[('fp32', ph)]) * 1e3:.2f} / {np.median(res[('bf16', ph)]) * 1e3:.2f}"
            for ph in phases), flush=True)


if __name__ == "__main__":
    main()
