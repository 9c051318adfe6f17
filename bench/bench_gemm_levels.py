"""GEMM engines side by side at 2 threads: AVX2 fp32, AVX-512 fp32 and bf16, interleaved.

For every shape of ``fastnn bench kernels`` (fastnn.bench.MATMUL_SHAPES) each engine runs
enough repetitions of the raw C call for ~3 ms, 21 rounds with the engines alternating inside
each round (a short pause before each timing), and the median and best GFLOP/s are printed.
This is where BENCHMARKS.md's two-thread "GEMM at every SIMD level" table comes from:

    python bench/bench_gemm_levels.py [--threads 2] [--rounds 21]

Needs a CPU with AVX-512 (the bf16 engine is emulated without AVX512_BF16).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from fastnn._ext import matmul_c as mc            # noqa: E402
from fastnn.bench import MATMUL_SHAPES, _operands  # noqa: E402

ENGINES = [("avx2", "avx2", False), ("avx512", "avx512", False), ("bf16", "auto", True)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    try:
        for (m, k, n, lay) in MATMUL_SHAPES:
            a, b = _operands(m, k, n, lay, np.float32, rng)
            out = np.empty((m, n), np.float32)
            flop = 2 * m * n * k
            reps = {}
            for name, engine, bf16 in ENGINES:
                mc.set_fp32_engine(engine)
                mc.gemm_raw(a, b, out, args.threads, 1, bf16)            # warm up
                t0 = time.perf_counter()
                mc.gemm_raw(a, b, out, args.threads, 1, bf16)
                reps[name] = max(1, int(0.003 / (time.perf_counter() - t0)))
            times = {name: [] for name, _, _ in ENGINES}
            for _ in range(args.rounds):
                for name, engine, bf16 in ENGINES:
                    mc.set_fp32_engine(engine)
                    time.sleep(0.003)
                    t0 = time.perf_counter()
                    mc.gemm_raw(a, b, out, args.threads, reps[name], bf16)
                    times[name].append((time.perf_counter() - t0) / reps[name])
            med = {k_: flop / statistics.median(v) / 1e9 for k_, v in times.items()}
            best = {k_: flop / min(v) / 1e9 for k_, v in times.items()}
            print(f"{m}x{k}x{n} {lay} {args.threads} threads: median avx2 {med['avx2']:.0f} "
                  f"avx512 {med['avx512']:.0f} bf16 {med['bf16']:.0f} | best avx2 "
                  f"{best['avx2']:.0f} avx512 {best['avx512']:.0f} "
                  f"({best['avx512'] / best['avx2']:.2f}x) bf16 {best['bf16']:.0f}", flush=True)
    finally:
        mc.set_fp32_engine("auto")


if __name__ == "__main__":
    main()
