"""``fastnn bench kernels``: GFLOP/s of every matmul variant, side by side.

    GFLOP/s = 2 M N K / t        t = median over rounds of one call's time

For each thread count (1 and all) and each shape, every variant is timed in
interleaved rounds (round r runs variant 1, 2, ... in turn), so drifting
clocks or a busy neighbour hit all variants alike; the first call of each
variant (Numba's compile or cache load, first-touch of buffers) is a warm-up
and not timed, and Numba's first-call time is reported on its own line.
Each figure is also given as a fraction of the FMA peak measured here by
``fastnn._ext._common.fma_probe`` at the same thread count, and as a ratio to
the ``blas`` variant (numpy's ``a @ b``) measured in the same rounds.

The peak is the best of many probes: one long probe before the timings and
a short one (about as long as a kernel's timed block) at the start of every
round, so a neighbour that slows some probes down slows the kernels of those
rounds too and cannot leave a low peak behind (a busy machine once gave a
BLAS figure of 123 % of a peak probed in a slow moment).  Should a kernel
still beat the best probe (a busy machine throughout, or a BLAS using wider
vectors than the probe's AVX2 FMA), its cell is marked ``!`` and the output
says the percentages are unreliable (``peak_exceeded`` in the JSON).

Two pools spinning on two cores: OpenBLAS's idle workers spin for ~0.1 s
after a call, OpenMP's (the FMA probe) for a few ms, the GEMM engine's for
~60 us; timing one right after the other would measure that contention, not
the kernels.  At more than one thread every block (the probe's and each
variant's) therefore starts after a pause of ``_QUIET_S`` (0.15 s), so no
other pool is spinning when it runs.  A block is then:

- one call, timed on its own: the *cold* figure (``cold_gflops``, the first
  call after a pause: the engine's workers are asleep and must be woken);
- ``calls`` back-to-back calls (at least 3, about 10 ms): the *steady* figure,
  ``gflops``, the one the table and the ratios report.

Both are medians over the rounds, the variants alternating within each round.
At one thread there is nothing to wake, no pause and no cold figure.

>>> from fastnn.bench import bench_kernels
>>> res = bench_kernels(threads=1, repeat=3, variants=["c", "blas"])   # doctest: +SKIP
"""
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from . import _threads
from .kernels import _registry

__all__ = ["bench_kernels", "MATMUL_SHAPES", "fma_peak", "SIMD_VARIANTS"]

# The `c` variant on one code path each (issue 12), timed in the same rounds
# as the registry's variants: name -> (fp32 engine, bf16?).  "c" itself runs
# the dispatcher's choice; "c@bf16" is matmul(..., precision="bf16") and its
# % column is of the vdpbf16ps peak (bf16_probe), not of the fp32 FMA peak.
SIMD_VARIANTS = {"c@avx2": ("avx2", False), "c@avx512": ("avx512", False),
                 "c@bf16": ("auto", True)}

# (M, K, N, layout): op(a) is (M, K), op(b) is (K, N); "T" means that operand
# is a transposed view of a C-ordered array (as in a backward pass)
MATMUL_SHAPES = [
    (128, 784, 512, "NN"),     # MLP layer 1 forward, batch 128
    (128, 512, 512, "NN"),     # hidden layer forward
    (128, 512, 10, "NN"),      # output layer forward
    (784, 128, 512, "TN"),     # dW = X^T dY
    (128, 512, 784, "NT"),     # dX = dY W^T
    (64, 784, 128, "NN"),      # small batch
    (1024, 1024, 1024, "NN"),  # large square: how close to the FMA peak
]

# variants that may be skipped on 1024^3 when one call takes longer than this
_SLOW_SKIP_S = 0.25
_QUIET_S = 0.15            # pause before each block at > 1 thread: OpenBLAS's workers
                           # spin ~0.1 s after a call, libgomp's a few ms
_BLOCK_S = 0.010           # a steady-state block: about this long, at least _MIN_CALLS
_MIN_CALLS = 3


_PROBE_S = 0.004           # the per-round peak probe: as long as a kernel's timed block


def _fma_probe(nthreads, iters, clock):
    """One timed run of the FMA probe: ``(FLOP/s, seconds)``.  Tests replace this."""
    common = _registry.native_module("_common")
    t0 = clock()
    flops = common.fma_probe(iters, nthreads)
    dt = max(clock() - t0, 1e-9)
    return flops / dt, dt


def _calibrate_probe(nthreads, seconds, clock):
    """``(iters, seconds per probe, best FLOP/s seen)`` for probes of about ``seconds``."""
    iters = 200_000
    _fma_probe(nthreads, iters, clock)                   # wake the team, warm clocks
    best = 0.0
    while True:
        rate, dt = _fma_probe(nthreads, iters, clock)
        best = max(best, rate)
        if dt >= seconds or iters > 10**10:
            return iters, dt, best
        iters *= 4


def fma_peak(nthreads, seconds=0.2, clock=time.perf_counter):
    """FLOP/s of the FMA probe on ``nthreads`` threads, timed for about ``seconds``
    (best of the timings: the peak, not an average)."""
    iters, _, best = _calibrate_probe(nthreads, seconds / 4, clock)
    for _ in range(2):
        best = max(best, _fma_probe(nthreads, iters, clock)[0])
    return best


def _simd_variant(name):
    """The kernel function of a SIMD_VARIANTS name (or of "c" at the dispatcher's
    choice, when it is benchmarked beside them)."""
    mc = _registry.native_module("matmul_c")
    engine, bf16 = SIMD_VARIANTS.get(name, ("auto", False))
    run = mc.matmul_bf16 if bf16 else mc.matmul

    def fn(a, b, out, bias, relu, nthreads=1):
        mc.set_fp32_engine(engine)
        return run(a, b, out, bias, relu, nthreads)
    return fn


def _bf16_peak(nthreads, clock, iters=200_000, tries=5):
    """FLOP/s of vdpbf16ps on ``nthreads`` threads (best of ``tries``), 0 without
    AVX512_BF16.  Like the FMA peak, it is also probed in every round."""
    common = _registry.native_module("_common")
    best = 0.0
    for _ in range(tries):
        t0 = clock()
        flops = common.bf16_probe(iters, nthreads)
        best = max(best, flops / max(clock() - t0, 1e-9))
    return best


def _mark_peaks(results, peaks, bf16_peaks=None):
    """Fill ``frac_peak`` from the final peaks; the results that beat their peak."""
    exceeded = []
    for r in results:
        peak = peaks[r["threads"]]
        if r["variant"] == "c@bf16" and bf16_peaks and bf16_peaks.get(r["threads"]):
            peak = bf16_peaks[r["threads"]]
        r["frac_peak"] = r["gflops"] * 1e9 / peak
        if r["frac_peak"] > 1.0:
            exceeded.append(r)
    return exceeded


def _operands(m, k, n, layout, dtype, rng):
    a = rng.standard_normal((k, m) if layout[0] == "T" else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if layout[1] == "T" else (k, n)).astype(dtype)
    return (a.T if layout[0] == "T" else a), (b.T if layout[1] == "T" else b)


def _blas_info():
    """Every BLAS threadpoolctl sees (numpy's is the one whose path is under numpy)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl missing)"
    libs = []
    for p in threadpool_info():
        if p.get("user_api") == "blas":
            owner = "numpy" if "numpy" in (p.get("filepath") or "") else \
                os.path.basename(os.path.dirname(p.get("filepath") or "?"))
            libs.append(f"{p.get('internal_api')} {p.get('version')} "
                        f"kernel={p.get('architecture')} threading={p.get('threading_layer')} "
                        f"[{owner}]")
    return "; ".join(libs) or "none visible to threadpoolctl"


def _header(nts, peaks, simd, numba_first):
    from ._config import _cpu_model
    try:
        feats = _registry.native_module("_common").cpu_features()
        feats = ",".join(k for k, v in feats.items() if v)
    except ImportError:
        feats = "?"
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                      "OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{_cpu_model()} ({platform.machine()}), {os.cpu_count()} logical CPUs, "
                   f"{_threads.available_cpus()} available",
        "cpu_features": feats,
        "blas": _blas_info(),
        "env": env,
        "threads": nts,
        "fma_peak_gflops": {str(nt): peaks[nt] / 1e9 for nt in nts},
        "simd": simd,
        "numba_first_call_s": numba_first,
        "dtype": "float32",
    }


def _time_block(fn, args, calls, clock=time.perf_counter):
    t0 = clock()
    for _ in range(calls):
        fn(*args)
    return (clock() - t0) / calls


def bench_kernels(threads=None, as_json=False, repeat=9, variants=None, file=None,
                  shapes=None, clock="wall"):
    """Time every matmul variant on the MLP shapes at 1 thread and at ``threads``
    (default: fastnn's thread count); print a table (or JSON) and return the
    results as a dict.

    ``repeat`` rounds per shape (medians are reported); ``variants`` limits
    the variants (default: all available); ``shapes`` overrides
    ``MATMUL_SHAPES`` (tuples (M, K, N, layout)).

    ``clock="cpu"`` times one-thread runs with the calling thread's CPU time
    (``time.thread_time``) instead of the wall clock: on a machine shared
    with other jobs it leaves out the time the thread sat descheduled (only
    meaningful at one thread, so ``threads`` is then forced to 1)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    tclock = time.thread_time if clock == "cpu" else time.perf_counter
    if clock == "cpu":
        threads = 1
    file = file or sys.stdout
    from . import kernels  # noqa: F401  (registers the families)
    names = variants or _registry.variants("matmul") + _default_simd_variants()
    names = [v for v in names if v in _registry.variants("matmul") or v in SIMD_VARIANTS]
    simd_side = any(v in SIMD_VARIANTS for v in names)
    # BLAS users last in each round (`blas`, and `reference`, whose float64 product is
    # numpy's BLAS dgemm too): with the pauses the order no longer matters at > 1
    # thread, but it keeps the tables' columns as they were
    uses_blas = [v for v in ("reference", "blas") if v in names]
    names = [v for v in names if v not in uses_blas] + uses_blas
    shapes = shapes or MATMUL_SHAPES
    nmax = threads or _threads.get_num_threads()
    nts = [1] if nmax == 1 else [1, nmax]
    peaks, probe_iters, probes = {}, {}, {}
    for nt in nts:
        peaks[nt] = fma_peak(nt, clock=tclock)
        iters, dt, best = _calibrate_probe(nt, _PROBE_S, tclock)
        probe_iters[nt] = max(1000, int(iters * _PROBE_S / dt))
        peaks[nt] = max(peaks[nt], best)
        probes[nt] = 0
    bf16_peaks = {nt: _bf16_peak(nt, tclock) for nt in nts} if "c@bf16" in names else {}
    simd = {}
    for row in _registry.describe("matmul"):
        if row["name"] in names:
            simd[row["name"]] = row["simd"]
    for name in SIMD_VARIANTS:
        if name in names:
            eng, bf = SIMD_VARIANTS[name]
            simd[name] = "bf16 (level's path)" if bf else f"fp32 engine {eng}"
    rng = np.random.default_rng(0)

    numba_first = None
    if "numba" in names:                  # compile (or load from cache) outside the timing
        a, b = _operands(8, 8, 8, "NN", np.float32, rng)
        t0 = time.perf_counter()
        with _threads.threads(1):
            _registry.get("matmul", "numba")(a, b, np.empty((8, 8), np.float32), None, False, 1)
        numba_first = time.perf_counter() - t0

    results = []
    skipped = []
    for nt in nts:
        with _threads.threads(nt):
            for (m, k, n, layout) in shapes:
                a, b = _operands(m, k, n, layout, np.float32, rng)
                flops = 2.0 * m * n * k
                fns, calls, active = {}, {}, []
                for name in names:
                    fn = _simd_variant(name) if name in SIMD_VARIANTS or \
                        (simd_side and name == "c") else _registry.get("matmul", name)
                    out = np.empty((m, n), np.float32)
                    args = (a, b, out, None, False, nt)
                    t1 = _time_block(fn, args, 1)              # warm-up, not timed
                    if m * k * n >= 1024**3 and name in ("numba", "cython", "reference") \
                            and t1 > _SLOW_SKIP_S:
                        skipped.append((name, m, k, n, nt, t1))
                        continue
                    t1 = min(t1, _time_block(fn, args, 1))
                    fns[name] = (fn, args)
                    calls[name] = max(_MIN_CALLS if t1 < 5 * _BLOCK_S else 1,
                                      int(_BLOCK_S / max(t1, 1e-7)))
                    active.append(name)
                times = {name: [] for name in active}
                cold = {name: [] for name in active}
                for _ in range(repeat):
                    if nt > 1:
                        time.sleep(_QUIET_S)        # the last block's pool is idle again
                    # the peak, probed in every round: what slows these rounds slows it too
                    peaks[nt] = max(peaks[nt], _fma_probe(nt, probe_iters[nt], tclock)[0])
                    probes[nt] += 1
                    if bf16_peaks:          # the same for the vdpbf16ps peak
                        bf16_peaks[nt] = max(bf16_peaks[nt], _bf16_peak(
                            nt, tclock, max(1000, probe_iters[nt] // 2), tries=1))
                    for name in active:
                        fn, args = fns[name]
                        if nt > 1:
                            time.sleep(_QUIET_S)    # the probe's or the last variant's pool
                            cold[name].append(_time_block(fn, args, 1, tclock))
                        times[name].append(_time_block(fn, args, calls[name], tclock))
                med = {name: statistics.median(ts) for name, ts in times.items()}
                cmed = {name: statistics.median(ts) for name, ts in cold.items() if ts}
                for name in active:
                    g = flops / med[name]
                    results.append({
                        "variant": name, "M": m, "K": k, "N": n, "layout": layout,
                        "threads": nt, "median_s": med[name], "gflops": g / 1e9,
                        "frac_peak": None,                 # once the peak is final
                        "vs_blas": (med["blas"] / med[name]) if "blas" in med else None,
                        "calls": calls[name],
                        "cold_gflops": flops / cmed[name] / 1e9 if name in cmed else None,
                        "cold_vs_blas": (cmed["blas"] / cmed[name])
                        if name in cmed and "blas" in cmed else None,
                        "simd": simd.get(name),
                    })
    if simd_side:
        _registry.native_module("matmul_c").set_fp32_engine("auto")
    exceeded = _mark_peaks(results, peaks, bf16_peaks)
    info = _header(nts, peaks, simd, numba_first)
    info["bf16_peak_gflops"] = {str(nt): v / 1e9 for nt, v in bf16_peaks.items()}
    info["fma_peak_probes"] = {str(nt): probes[nt] for nt in nts}
    info["peak_exceeded"] = [{"variant": r["variant"], "M": r["M"], "K": r["K"], "N": r["N"],
                              "threads": r["threads"], "frac_peak": r["frac_peak"]}
                             for r in exceeded]
    info["call_overhead_us"] = _call_overhead([v for v in names if v not in SIMD_VARIANTS],
                                              tclock)
    info["clock"] = clock
    info["results"] = results
    info["skipped"] = [{"variant": s[0], "M": s[1], "K": s[2], "N": s[3], "threads": s[4],
                        "one_call_s": s[5]} for s in skipped]
    info["quiet_s"] = _QUIET_S
    for key, field in (("geomean_vs_blas", "vs_blas"), ("geomean_cold_vs_blas", "cold_vs_blas")):
        info[key] = {}
        for nt in nts:
            for name in names:
                r = [x[field] for x in results if x["threads"] == nt and x["variant"] == name
                     and x[field]]
                if r:
                    info[key].setdefault(str(nt), {})[name] = \
                        math.exp(sum(math.log(v) for v in r) / len(r))
    if as_json:
        print(json.dumps(info, indent=2), file=file)
    else:
        _print_table(info, names, nts, shapes, file)
    return info


def _default_simd_variants():
    """c@avx512 and c@bf16 beside the registry's variants where the CPU has AVX-512
    (c@avx2 on request: it is what "c" runs where the dispatcher keeps AVX2)."""
    try:
        top = _registry.cpu_max_simd_level()
    except ImportError:
        return []
    return ["c@avx512", "c@bf16"] if top >= 2 else []


def _call_overhead(names, clock, sizes=(8, 64)):
    """Microseconds per call on tiny square shapes at one thread: each variant
    through the registry, and the C engine alone (``gemm_raw`` loops in C, so
    no Python call is included) -- what a small layer pays per step."""
    rows = {}
    for s in sizes:
        a = np.ones((s, s), np.float32)
        out = np.empty((s, s), np.float32)
        row = {}
        with _threads.threads(1):
            for name in names:
                fn = _registry.get("matmul", name)
                fn(a, a, out, None, False, 1)
                row[name] = 1e6 * statistics.median(
                    _time_block(fn, (a, a, out, None, False, 1), 200, clock) for _ in range(5))
            if "c" in names:
                raw = _registry.native_module("matmul_c").gemm_raw
                raw(a, a, out, 1, 10)
                row["c engine (gemm_raw)"] = 1e6 * statistics.median(
                    _time_block(raw, (a, a, out, 1, 1000), 1, clock) / 1000 for _ in range(5))
        rows[f"{s}x{s}x{s}"] = row
    return rows


def _print_table(info, names, nts, shapes, file):
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"fastnn bench kernels: matmul, float32, GFLOP/s (median of rounds, "
      f"{'thread CPU time' if info['clock'] == 'cpu' else 'wall clock'})   {info['date']}")
    p(f"machine  : {info['machine']}")
    p(f"features : {info['cpu_features']}")
    p(f"blas     : {info['blas']}")
    if info["env"]:
        p(f"env      : {info['env']}")
    p("fma peak : " + ", ".join(f"{nt} thread{'s' if nt > 1 else ''} "
                               f"{info['fma_peak_gflops'][str(nt)]:.1f} GFLOP/s"
                               for nt in nts)
      + "  (fma_probe, avx2+fma; best of a long probe and one per round)")
    if info.get("bf16_peak_gflops"):
        p("bf16 peak: " + ", ".join(f"{nt} thread{'s' if int(nt) > 1 else ''} {v:.1f} GFLOP/s"
                                    for nt, v in info["bf16_peak_gflops"].items())
          + "  (bf16_probe, vdpbf16ps; the % column of c@bf16 is of this peak)")
    p("variants : " + ", ".join(f"{v} [{info['simd'].get(v)}]" for v in names))
    if info["numba_first_call_s"] is not None:
        p(f"numba    : first call {info['numba_first_call_s']:.2f} s "
          "(compile, or load from the cache), excluded from the timings")
    p("cell     : GFLOP/s  % of FMA peak  ratio vs blas (numpy a @ b, same rounds); "
      "steady state: back-to-back calls")
    if len(nts) > 1:
        p(f"pauses   : at > 1 thread each block starts after {info['quiet_s']:.2f} s idle (no "
          "other pool spinning); its first call is timed alone (cold, listed after the table)")
    w = 22
    simd_levels = _registry.SIMD_LEVELS
    level = _registry.simd_level()
    p(f"simd     : level {simd_levels[level] if level is not None else '?'} "
      "(FASTNN_SIMD / fastnn.kernels.set_simd_level); c@avx2 / c@avx512 force the fp32 "
      "engine, c@bf16 is precision='bf16'")
    for nt in nts:
        p("")
        p(f"threads={nt}".ljust(22) + "".join(v.rjust(w) for v in names))
        for (m, k, n, layout) in shapes:
            row = f"{m}x{k}x{n} {layout}".ljust(22)
            for v in names:
                r = next((x for x in info["results"] if x["threads"] == nt and x["variant"] == v
                          and (x["M"], x["K"], x["N"], x["layout"]) == (m, k, n, layout)), None)
                if r is None:
                    cell = "skipped"
                else:
                    ratio = f" {r['vs_blas']:.2f}x" if r["vs_blas"] else ""
                    flag = "!" if r["frac_peak"] > 1.0 else ""
                    cell = f"{r['gflops']:.1f} {100 * r['frac_peak']:.0f}%{flag}{ratio}"
                row += cell.rjust(w)
            p(row)
        g = info["geomean_vs_blas"].get(str(nt), {})
        if g:
            p("geomean vs blas".ljust(22) + "".join(
                (f"{g[v]:.2f}x" if v in g else "").rjust(w) for v in names))
        if nt > 1:
            p("")
            p(f"cold, threads={nt}".ljust(22) + "".join(v.rjust(w) for v in names))
            for (m, k, n, layout) in shapes:
                row = f"{m}x{k}x{n} {layout}".ljust(22)
                for v in names:
                    r = next((x for x in info["results"] if x["threads"] == nt
                              and x["variant"] == v and x["cold_gflops"]
                              and (x["M"], x["K"], x["N"], x["layout"]) == (m, k, n, layout)),
                             None)
                    ratio = f" {r['cold_vs_blas']:.2f}x" if r and r["cold_vs_blas"] else ""
                    row += (f"{r['cold_gflops']:.1f}{ratio}" if r else "skipped").rjust(w)
                p(row)
            g = info["geomean_cold_vs_blas"].get(str(nt), {})
            if g:
                p("geomean vs blas".ljust(22) + "".join(
                    (f"{g[v]:.2f}x" if v in g else "").rjust(w) for v in names))
    p("")
    p("call overhead, 1 thread, microseconds per call:")
    for shape, row in info["call_overhead_us"].items():
        p(f"  {shape:<10}" + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    for s in info["skipped"]:
        p(f"skipped  : {s['variant']} on {s['M']}x{s['K']}x{s['N']} at {s['threads']} "
          f"thread(s): one call takes {s['one_call_s']:.2f} s")
    if info["peak_exceeded"]:
        p(f"WARNING  : {len(info['peak_exceeded'])} figure(s) marked ! beat the best FMA peak "
          f"probe: the % of peak column is unreliable (the machine was busy while probing, or "
          f"the kernel uses wider vectors than the avx2+fma probe)")
