"""Inference speed: fastnn's ``model.predict`` against onnxruntime on the exported graph
(issue 14).  Same weights (a preset built with seed 0), float32, 2 threads for both
(``fastnn.set_num_threads(2)``; onnxruntime ``intra_op_num_threads=2``,
``inter_op_num_threads=1``).

    python bench/bench_inference.py --presets mlp mlp-keras --threads 2 [--repeats 5] [--json]

Figures, per preset:

* throughput: the 10,000 MNIST test images (pixels / 255, float32, flattened for an
  MLP) in batches of 1000, images/s: ``--repeats`` passes of each engine, the engines
  alternating pass by pass; the median pass (the best one in ``--json``);
* latency: one image, the median of 1000 calls (10 rounds of 100 calls, the engines
  alternating round by round, after warm-up calls), in µs, Python overhead included;
  for fastnn ``predict(x)``, ``predict(x, out=buf)``, and ``predict(x)`` with the GEMM
  engine's small-M path switched off (``matmul_c.set_small_path(0)``: the packed
  engine every product used before it, "packed" in the table);
* native: the same single-image forward with no Python around it (the model's
  ``LeanMLP`` chain run 10 times in one native call, alternating with the others), in
  µs; ``predict``'s Python overhead is its latency minus this.

Before timing, the two outputs are compared (max |difference| / max |logit|).  The
machine, load average and thread counts are printed with the figures; on shared cores,
expect noise of ±20 % and more.
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
from fastnn.presets import build_model, get_preset  # noqa: E402


def _alternating(fns, rounds, inner, warmup=0, gap_s=0.03):
    """{name: sorted per-call seconds}: ``rounds`` rounds in which every fn runs
    ``inner`` times in a row, the fns taking turns (so load changes hit all alike).
    ``gap_s`` of idle time before each turn: the previous engine's pool threads spin
    for a while after its last call (onnxruntime's, fastnn's GEMM pool, libgomp's) and
    would take the cores from the next one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            time.sleep(gap_s)
            fn()                                  # wakes this engine's pool (untimed)
            for _ in range(inner):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: sorted(v) for k, v in times.items()}


_NATIVE_REPEAT = 10


def bench_preset(name, x_all, threads, repeats):
    import onnxruntime as ort
    from fastnn import training
    from fastnn._ext import matmul_c
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
    outs = [np.empty((len(b), want.shape[1]), np.float32) for b in batches]

    def fast_pass():
        for b, o in zip(batches, outs):
            model.predict(b, out=o)

    def ort_pass():
        for b in batches:
            ort_run(b)

    thr = _alternating({"fastnn": fast_pass, "ort": ort_pass}, repeats, 1, warmup=1)
    x1 = np.ascontiguousarray(xin[:1])
    out1 = np.empty((1, want.shape[1]), np.float32)

    def packed():
        old = matmul_c.set_small_path(0)
        try:
            return model.predict(x1)
        finally:
            matmul_c.set_small_path(old)

    fns = {"ort": lambda: ort_run(x1), "fastnn": lambda: model.predict(x1),
           "out": lambda: model.predict(x1, out=out1), "packed": packed}
    runner = training._lean_plan(model, x1, 1000)
    if runner is not None:         # the chain 10 times per call, no Python in between
        fns["native"] = lambda: runner.run(x1, out1, 1000, threads, _NATIVE_REPEAT)
    lat = _alternating(fns, 10, 100, warmup=100)
    med = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
    native = med["native"] / _NATIVE_REPEAT if runner is not None else None
    n = xin.shape[0]
    return {"model": name, "arch": get_preset(name).arch_text(), "threads": threads,
            "max_rel_diff": rel,
            "ort_img_s": n / statistics.median(thr["ort"]),
            "fastnn_img_s": n / statistics.median(thr["fastnn"]),
            "ort_img_s_best": n / thr["ort"][0], "fastnn_img_s_best": n / thr["fastnn"][0],
            "ort_latency_us": med["ort"], "fastnn_latency_us": med["fastnn"],
            "fastnn_latency_out_us": med["out"], "fastnn_packed_latency_us": med["packed"],
            "native_us": native,
            "python_overhead_us": None if native is None else med["fastnn"] - native,
            "python_overhead_out_us": None if native is None else med["out"] - native}


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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"load average {load:.2f}; threads {args.threads}; onnxruntime {ort.__version__}; "
          f"fastnn {fastnn.__version__}")
    print("| model | onnxruntime img/s | fastnn img/s | ratio | onnxruntime 1 image µs | "
          "fastnn 1 image µs | ratio | fastnn out= µs | packed engine µs | native µs | "
          "overhead µs | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(v, fmt="{:.1f}"):
            return "-" if v is None else fmt.format(v)
        print(f"| {r['model']} ({r['arch']}) | {r['ort_img_s'] / 1e3:.0f}k | "
              f"{r['fastnn_img_s'] / 1e3:.0f}k | {r['fastnn_img_s'] / r['ort_img_s']:.2f}x | "
              f"{r['ort_latency_us']:.1f} | {r['fastnn_latency_us']:.1f} | "
              f"{r['fastnn_latency_us'] / r['ort_latency_us']:.2f}x | "
              f"{f(r['fastnn_latency_out_us'])} | {f(r['fastnn_packed_latency_us'])} | "
              f"{f(r['native_us'])} | {f(r['python_overhead_us'])} | "
              f"{r['max_rel_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
