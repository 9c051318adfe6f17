"""Inference speed: fastnn's ``model.predict`` against onnxruntime on the exported graph
(issue 14).  Same weights (a preset built with seed 0), float32, 2 threads for both
(``fastnn.set_num_threads(2)``; onnxruntime ``intra_op_num_threads=2``,
``inter_op_num_threads=1``).

    python bench/bench_inference.py --presets mlp mlp-keras --threads 2 [--repeats 5] [--json]

Figures, per preset:

* throughput: the 10,000 MNIST test images (pixels / 255, float32, flattened for an
  MLP) in batches of 1000, best of ``--repeats`` passes, images/s;
* latency: one image, the median of 1000 calls (after 100 warm-up calls), in µs, Python
  overhead included; for fastnn both ``predict(x)`` and ``predict(x, out=buf)``;
* native: the same single-image forward as bare calls of the C GEMM (``matmul_c.matmul``
  with preallocated outputs, no validation), in µs; ``predict``'s Python overhead is
  its latency minus this.

Before timing, the two outputs are compared (max |difference| / max |logit|).  The
machine and thread counts are printed with the figures; on shared cores, expect noise
of ±20 %.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fastnn  # noqa: E402
from fastnn.datasets import mnist  # noqa: E402
from fastnn.layers import Dense  # noqa: E402
from fastnn.presets import build_model, get_preset  # noqa: E402


def _median_us(fn, calls=1000, warmup=100):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _best_pass_s(fn, batches, repeats):
    fn(batches[0])                                   # warm-up: buffers, autotuner
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        best = min(best, time.perf_counter() - t0)
    return best


def _native_chain(model, x1):
    """A closure running the model's Dense layers as bare C GEMM calls (MLPs only)."""
    from fastnn._ext import matmul_c
    layers = [layer for layer in model if isinstance(layer, Dense)]
    if len(layers) != len(model.layers):
        return None
    bufs = [np.empty((x1.shape[0], layer.out_features), np.float32) for layer in layers]
    n = fastnn.get_num_threads()
    args = [(layer.weight.data, buf, layer.bias.data if layer.bias is not None else None,
             layer.activation == "relu") for layer, buf in zip(layers, bufs)]

    def run():
        x = x1
        for w, buf, bias, relu in args:
            matmul_c.matmul(x, w, buf, bias, relu, n)
            x = buf
        return x
    return run


def bench_preset(name, x_all, threads, repeats):
    import onnxruntime as ort
    model = build_model(get_preset(name), seed=0).eval()
    xin = x_all.reshape(x_all.shape[0], -1) if model.input_features() else x_all[..., None]
    path = os.path.join(tempfile.mkdtemp(), name + ".onnx")
    fastnn.export_onnx(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def ort_run(b):
        return sess.run(None, {"input": b})[0]

    want, got = model.predict(xin[:1000]), ort_run(xin[:1000])
    rel = float(np.abs(want - got).max() / np.abs(want).max())

    batches = [np.ascontiguousarray(xin[s:s + 1000]) for s in range(0, xin.shape[0], 1000)]
    t_fast = _best_pass_s(model.predict, batches, repeats)
    t_ort = _best_pass_s(ort_run, batches, repeats)
    x1 = np.ascontiguousarray(xin[:1])
    out1 = np.empty((1, want.shape[1]), np.float32)
    lat_fast = _median_us(lambda: model.predict(x1))
    try:
        lat_out = _median_us(lambda: model.predict(x1, out=out1))
    except TypeError:                               # predict has no out= (older fastnn)
        lat_out = None
    lat_ort = _median_us(lambda: ort_run(x1))
    chain = _native_chain(model, x1)
    native = _median_us(chain) if chain is not None else None
    return {"model": name, "arch": get_preset(name).arch_text(), "threads": threads,
            "max_rel_diff": rel, "ort_img_s": xin.shape[0] / t_ort,
            "fastnn_img_s": xin.shape[0] / t_fast,
            "ort_latency_us": lat_ort, "fastnn_latency_us": lat_fast,
            "fastnn_latency_out_us": lat_out, "native_us": native,
            "python_overhead_us": None if native is None else lat_fast - native,
            "python_overhead_out_us": None if native is None or lat_out is None
            else lat_out - native}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["mlp", "mlp-keras"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import onnxruntime as ort
    fastnn.set_num_threads(args.threads)
    (_, _), (x_test, _) = mnist.load_data()
    x = np.multiply(x_test, np.float32(1.0 / 255.0), dtype=np.float32)
    rows = [bench_preset(name, x, args.threads, args.repeats) for name in args.presets]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible; "
          f"threads {args.threads}; onnxruntime {ort.__version__}; fastnn {fastnn.__version__}")
    print("| model | onnxruntime img/s | fastnn img/s | ratio | onnxruntime 1 image µs | "
          "fastnn 1 image µs | fastnn out= µs | native µs | overhead µs | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(v, fmt="{:.1f}"):
            return "-" if v is None else fmt.format(v)
        print(f"| {r['model']} ({r['arch']}) | {r['ort_img_s'] / 1e3:.0f}k | "
              f"{r['fastnn_img_s'] / 1e3:.0f}k | {r['fastnn_img_s'] / r['ort_img_s']:.2f}x | "
              f"{r['ort_latency_us']:.1f} | {r['fastnn_latency_us']:.1f} | "
              f"{f(r['fastnn_latency_out_us'])} | {f(r['native_us'])} | "
              f"{f(r['python_overhead_us'])} | {r['max_rel_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
