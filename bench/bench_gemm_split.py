"""The GEMM engine's two 2-thread splits and numpy side by side (issue 12).

    python bench/bench_gemm_split.py [--threads 2] [--rounds 9] [--configs old,new,numpy]

Configurations, alternated within every round (medians over the rounds):

- ``old``: the per-block split (``set_shared_split(False)``): C cut into one block
  per thread, each thread packing the A rows and B columns of its block (with the
  usual split over N every thread packs all of A);
- ``new``: the shared-A split (the default): N cut into chunks of a few tiles,
  claimed dynamically, all sharing one packed A;
- ``numpy``: ``np.matmul`` (OpenBLAS), its pool limited to the same thread count;
- ``newC`` (``C`` a number): the shared split with at least C multiply-adds per chunk.

Every measurement starts after a 0.15 s pause (longer than OpenBLAS's ~0.1 s spin:
no pool of the other configuration is spinning); its first call is timed alone
("cold": the engine's worker is asleep and must be woken) and then ``calls``
back-to-back calls (about 10 ms, at least 3: "steady", the median over rounds of
each block's mean).  "p25" is the 25th percentile of every steady call on its own:
on a machine shared with other jobs, what the configuration does in the moments
when nothing else runs (the per-round medians mix in rounds where another process
held a core).  Results are bitwise the
same for old and new (checked once per shape).  Prints GFLOP/s and the load
average before and after: on a shared machine compare only figures of one run.
"""
import argparse
import os
import statistics
import time

import numpy as np

from fastnn.bench import MATMUL_SHAPES, _operands
from fastnn.kernels._registry import native_module

QUIET_S = 0.15


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--configs", default="old,new,numpy")
    ap.add_argument("--shapes", default=None,
                    help="MxKxN[:layout],... (default: fastnn.bench.MATMUL_SHAPES)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads, user_api="blas")
    mc = native_module("matmul_c")
    nt = args.threads
    configs = args.configs.split(",")
    shapes = MATMUL_SHAPES
    if args.shapes:
        shapes = []
        for s in args.shapes.split(","):
            dims, _, layout = s.partition(":")
            m, k, n = (int(v) for v in dims.split("x"))
            shapes.append((m, k, n, layout or "NN"))

    def select(c):
        if c == "old":
            mc.set_shared_split(False)
        elif c.startswith("new"):
            mc.set_shared_split(True, float(c[3:]) if c[3:] else 1024.0 * 1024.0)

    print(f"threads {nt}, rounds {args.rounds}, load average {os.getloadavg()}")
    print(f"{'shape':<20}" + "".join(f"{c + ' steady':>14}" for c in configs)
          + "".join(f"{c + ' cold':>12}" for c in configs)
          + "".join(f"{c + ' p25':>12}" for c in configs))
    rng = np.random.default_rng(0)
    try:
        for (m, k, n, layout) in shapes:
            a, b = _operands(m, k, n, layout, np.float32, rng)
            out = np.empty((m, n), np.float32)
            flops = 2.0 * m * k * n
            fns, ref = {}, None
            for c in configs:
                if c == "numpy":
                    fns[c] = lambda: np.matmul(a, b, out=out)
                else:
                    fns[c] = lambda: mc.matmul(a, b, out, None, False, nt)
                select(c)
                fns[c]()
                if c != "numpy":
                    if ref is None:
                        ref = out.copy()
                    elif not np.array_equal(ref, out):
                        raise AssertionError(f"{c} differs bitwise on {m}x{k}x{n}")
            t0 = time.perf_counter()
            fns[configs[0]]()
            calls = max(3, int(0.010 / (time.perf_counter() - t0)))
            steady = {c: [] for c in configs}
            cold = {c: [] for c in configs}
            each = {c: [] for c in configs}
            for _ in range(args.rounds):
                for c in configs:
                    select(c)
                    time.sleep(QUIET_S)
                    t0 = time.perf_counter()
                    fns[c]()
                    t1 = t = time.perf_counter()
                    for _ in range(calls):
                        fns[c]()
                        t_ = time.perf_counter()
                        each[c].append(t_ - t)
                        t = t_
                    cold[c].append(t1 - t0)
                    steady[c].append((t - t1) / calls)
            print(f"{m}x{k}x{n} {layout:<8}"
                  + "".join(f"{flops / statistics.median(steady[c]) / 1e9:14.1f}"
                            for c in configs)
                  + "".join(f"{flops / statistics.median(cold[c]) / 1e9:12.1f}"
                            for c in configs)
                  + "".join(f"{flops / np.percentile(each[c], 25) / 1e9:12.1f}"
                            for c in configs),
                  flush=True)
    finally:
        mc.set_shared_split(True, 1024.0 * 1024.0)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
