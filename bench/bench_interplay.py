"""numpy and fastnn in one process: what each one's idle threads cost the other (issue 14).

After a multithreaded call, OpenBLAS's worker threads keep spinning for a while
(``OPENBLAS_THREAD_TIMEOUT``, 2**28 cycles by default: ~0.1 s here) and GNU
OpenMP's workers spin too (``GOMP_SPINCOUNT``/``OMP_WAIT_POLICY``).  On a
machine with as many cores as threads, a parallel call made while the other
library's workers still spin shares its cores with them.

For each configuration this script starts a fresh Python process (the spin
settings are read when the libraries load) that times, side by side:

- ``fastnn alone``: ``fastnn.kernels.matmul.matmul(..., variant="c")`` called 30 times
  back to back (no numpy call for 0.3 s before), the first 5 not timed (they wake the pool);
- ``numpy alone``: ``np.matmul`` on the same shape, likewise;
- ``... after ...``: the two strictly alternating, 30 pairs (the first 5 not timed), each
  call timed right after the other library's (the issue's protocol).

Both libraries use the same thread count.  GFLOP/s, medians of ``--rounds``
alternations::

    python bench/bench_interplay.py [--threads 2] [--rounds 41] [--shape 128x784x512]

Configurations (``--configs``, comma separated):

- ``default``: nothing set;
- ``openblas-timeout``: ``OPENBLAS_THREAD_TIMEOUT=4`` (OpenBLAS's shortest spin) set
  before numpy is imported;
- ``gomp-passive``: ``OMP_WAIT_POLICY=passive`` (GNU OpenMP workers sleep at once);
- ``both``: the two together;
- ``blas1``: numpy's BLAS limited to one thread with threadpoolctl (no worker to spin);
- ``blas1-around``: numpy's BLAS set to one thread just before each fastnn call and back
  to two after it (``openblas_set_num_threads`` through threadpoolctl's controller): does
  shrinking OpenBLAS's pool stop its spinning workers?
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CONFIGS = {
    "default": {},
    "openblas-timeout": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "gomp-passive": {"OMP_WAIT_POLICY": "passive"},
    "both": {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"},
    "blas1": {},
    "blas1-around": {},
}

PAUSE = 0.3        # s: longer than either library's spin, so "alone" really is alone


def child(args):
    """Runs inside the fresh process: prints one JSON line of medians."""
    import numpy as np
    import fastnn
    from fastnn.kernels.matmul import matmul
    m, k, n = (int(v) for v in args.shape.split("x"))
    fastnn.set_num_threads(args.threads)
    limiter = None
    if args.config == "blas1":
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(1, user_api="blas")
    else:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads, user_api="blas")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out_f = np.empty((m, n), np.float32)
    out_n = np.empty((m, n), np.float32)
    flop = 2.0 * m * k * n

    blas_ctl = None
    if args.config == "blas1-around":
        from threadpoolctl import ThreadpoolController
        blas_ctl = ThreadpoolController().select(user_api="blas").lib_controllers[0]

    def fast():
        t0 = time.perf_counter()
        if blas_ctl is not None:
            blas_ctl.set_num_threads(1)
        matmul(a, b, out=out_f, variant="c")
        if blas_ctl is not None:
            blas_ctl.set_num_threads(args.threads)
        return time.perf_counter() - t0

    def nump():
        t0 = time.perf_counter()
        np.matmul(a, b, out=out_n)
        return time.perf_counter() - t0

    for _ in range(5):                     # warm up both (pools started, pages touched)
        fast(); nump()
    np.testing.assert_allclose(out_f, out_n, rtol=1e-3, atol=1e-3)
    # the protocol: each library alone, back to back (its own pool hot), then the two
    # strictly alternating with no pause (each call right after the other library's)
    res = {"fastnn alone": [], "fastnn after numpy": [],
           "numpy alone": [], "numpy after fastnn": []}
    burst, skip = 30, 5            # calls per burst; the first few wake the pools: not timed
    for _ in range(args.rounds):
        time.sleep(PAUSE)
        for i in range(burst):
            t = fast()
            if i >= skip:
                res["fastnn alone"].append(t)
        time.sleep(PAUSE)
        for i in range(burst):
            t = nump()
            if i >= skip:
                res["numpy alone"].append(t)
        time.sleep(PAUSE)
        for i in range(burst):
            tn, tf = nump(), fast()
            if i >= skip:
                res["numpy after fastnn"].append(tn)
                res["fastnn after numpy"].append(tf)
    if limiter is not None:
        limiter.restore_original_limits()
    print(json.dumps({key: flop / statistics.median(v) / 1e9 for key, v in res.items()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--shape", default="128x784x512")
    ap.add_argument("--configs",
                    default="default,openblas-timeout,gomp-passive,both,blas1,blas1-around")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default="default", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    names = args.configs.split(",")
    for name in names:
        if name not in CONFIGS:
            ap.error(f"unknown config {name!r}; choose from {', '.join(CONFIGS)}")
    print(f"shape {args.shape}, {args.threads} threads each, GFLOP/s medians of "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.2f}")
    print("| configuration | fastnn alone | fastnn after numpy | numpy alone | numpy after fastnn |")
    print("|---|---|---|---|---|")
    for name in names:
        env = dict(os.environ)
        for var in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
            env.pop(var, None)
        env.update(CONFIGS[name])
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--config", name,
               "--threads", str(args.threads), "--rounds", str(args.rounds),
               "--shape", args.shape]
        r = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1])
        print(f"| {name} | {r['fastnn alone']:.0f} | {r['fastnn after numpy']:.0f} "
              f"| {r['numpy alone']:.0f} | {r['numpy after fastnn']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
