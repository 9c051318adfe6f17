"""Data-parallel scaling beyond this machine, on paper, from inputs measured here (issue 13).

A synchronous data-parallel step on N ranks (fastnn.distributed) is

    T_step(N, b) = t_rank(b) + t_allreduce(N)         b: the per-rank batch
    t_allreduce(N) = 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency      (ring; 0 for N = 1)

``t_rank(b)``: one rank's step without the allreduce, measured here on one
thread: the native gradient-only step of b rows, ``optimizer.step()`` and the
data-parallel engine's Python (``training._DistributedEngine`` run on a
one-rank communicator, whose allreduce is a no-op).  The reference is one
process on one thread running the fused trainer (gradient and update in one
native call per epoch): ``t_fused(b)``.  The difference,
``t_rank(b) - t_fused(b)``, is fastnn's overhead per step outside the
allreduce, so the model charges it.  bytes: the float32 gradient
(4 x parameters).  No overlap of the allreduce with the backward pass is
assumed (the conservative case).

Two tables per preset:

* the preset's global batch B split over N ranks (b = ceil(B/N)): epoch time
  ``steps x T_step`` and efficiency ``t_fused(B) / (N T_step)`` (strong scaling);
* the smallest per-rank batch b (a power of two) at which the efficiency of
  N ranks, ``t_fused(b) / T_step(N, b)`` (Horovod's definition: throughput of N
  ranks over N times one rank's at the same per-rank batch), stays >= 80 % for
  every N up to 64 (t_allreduce grows with N, so N = 64 decides).

    python bench/scaling_model.py                          # measure here, print the tables
    python bench/scaling_model.py --save inputs.json       # ... and keep the measurements
    python bench/scaling_model.py --inputs inputs.json     # the tables from saved ones
    python bench/scaling_model.py --latency-us 10 --presets mlp-keras

The bandwidths are the link's (10, 25, 100 Gbit/s); the latency per message
(default 25 us, kernel TCP on Ethernet) is an assumption, not measured here:
this machine has no network between machines.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time
import types
from typing import Dict, List, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

RANKS = (1, 2, 4, 8, 16, 32, 64)
GBITS = (10, 25, 100)
PRESETS = ("mlp", "mlp-keras", "softmax")
TARGET_EFFICIENCY = 0.8
SAMPLES = 60000                      # MNIST training rows: steps per epoch = ceil(SAMPLES / B)


# ------------------------------------------------------------------ the model

def ring_allreduce_s(nbytes: float, n: int, gbit_per_s: float, latency_s: float) -> float:
    """Seconds of a ring allreduce of ``nbytes`` over ``n`` ranks on links of
    ``gbit_per_s`` Gbit/s with ``latency_s`` per message:
    ``2(n-1)/n * bytes / bandwidth + 2(n-1) * latency``; 0 for one rank."""
    if n < 1 or nbytes < 0 or gbit_per_s <= 0 or latency_s < 0:
        raise ValueError(f"ring_allreduce_s: needs n >= 1, bytes >= 0, bandwidth > 0, "
                         f"latency >= 0; got {n}, {nbytes}, {gbit_per_s}, {latency_s}")
    if n == 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes * 8.0 / (gbit_per_s * 1e9) + 2.0 * (n - 1) * latency_s


def step_s(t_rank: float, nbytes: float, n: int, gbit_per_s: float, latency_s: float) -> float:
    """One data-parallel step: the rank's own work, then the allreduce (no overlap)."""
    return t_rank + ring_allreduce_s(nbytes, n, gbit_per_s, latency_s)


def strong_scaling(m: Dict, n: int, gbit_per_s: float, latency_s: float) -> Dict[str, float]:
    """The preset's global batch over n ranks: per-rank batch, epoch seconds, efficiency
    against one process running the fused trainer on the whole batch."""
    B = int(m["global_batch"])
    b = -(-B // n)
    steps = -(-int(m.get("samples", SAMPLES)) // B)
    one = _at(m["fused"], B)
    t = one if n == 1 else step_s(_at(m["rank"], b), 4.0 * m["params"], n, gbit_per_s, latency_s)
    return {"per_rank_batch": b, "epoch_s": steps * t, "efficiency": one / (n * t)}


def weak_efficiency(m: Dict, b: int, n: int, gbit_per_s: float, latency_s: float) -> float:
    """Per-rank batch b on n ranks: throughput over n times one process's (fused) at b."""
    if n == 1:
        return 1.0
    return _at(m["fused"], b) / step_s(_at(m["rank"], b), 4.0 * m["params"], n, gbit_per_s,
                                       latency_s)


def batch_for_efficiency(m: Dict, gbit_per_s: float, latency_s: float,
                         ranks: Sequence[int] = RANKS,
                         target: float = TARGET_EFFICIENCY):
    """The smallest measured per-rank batch whose efficiency is >= target for every n in
    ranks, or None when none of the measured batches reaches it."""
    for b in sorted(int(k) for k in m["rank"]):
        if all(weak_efficiency(m, b, n, gbit_per_s, latency_s) >= target for n in ranks):
            return b
    return None


def _at(times: Dict, b: int) -> float:
    """The measured seconds per step at batch b (keys may be str after JSON)."""
    for k, v in times.items():
        if int(k) == b:
            return float(v)
    raise KeyError(f"no measurement at batch {b} (have {sorted(int(k) for k in times)})")


# ------------------------------------------------------------------ measuring here

def _per_step(run_steps, steps_hint: int, budget_s: float) -> float:
    """Median seconds per step over repeats of run_steps(k) filling about budget_s."""
    t0 = time.perf_counter()
    run_steps(2)                                  # warm-up, and a first estimate
    first = max((time.perf_counter() - t0) / 2, 1e-6)
    k = max(2, min(steps_hint, int(budget_s / 5 / first)))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        run_steps(k)
        times.append((time.perf_counter() - t0) / k)
    return statistics.median(times)


def measure(preset_name: str, batches: Sequence[int], budget_s: float = 0.5) -> Dict:
    """t_fused(b) and t_rank(b) on one thread for the preset's architecture/optimizer."""
    import fastnn
    from fastnn import _fused, presets
    from fastnn.datasets import mnist
    from fastnn.distributed import Communicator
    from fastnn.losses import SoftmaxCrossEntropy
    from fastnn.training import _make_distributed_engine

    fastnn.set_num_threads(1)
    p = presets.get_preset(preset_name)
    (x, y), _ = mnist.load_data()
    x = x.reshape(x.shape[0], -1)
    comm = Communicator()
    if comm.size != 1:
        raise RuntimeError("measure one rank: run scaling_model.py without mpirun")
    rng = np.random.default_rng(0)
    perm = np.concatenate([rng.permutation(x.shape[0]) for _ in range(4)])
    out = {"preset": p.name, "global_batch": p.batch_size, "samples": int(x.shape[0]),
           "fused": {}, "rank": {}}
    for b in sorted(set(batches)):
        model = presets.build_model(p, seed=0)
        out["params"] = int(model.flat_params.size)
        opt = presets.build_optimizer(p, model)
        plan = _fused.plan(model, SoftmaxCrossEntropy(), opt, b)
        if plan is None:
            raise RuntimeError(f"{p.name}: the fused trainer declines batch {b}")
        max_steps = len(perm) // b

        def fused_steps(k, plan=plan, b=b):
            plan.run(x, y, perm[:k * b])
        out["fused"][b] = _per_step(fused_steps, max_steps, budget_s)

        model = presets.build_model(p, seed=0)
        opt = presets.build_optimizer(p, model)
        engine, why = _make_distributed_engine(comm, model, SoftmaxCrossEntropy(), opt, x, y,
                                               b, None, True)
        state = types.SimpleNamespace(global_step=0)

        def rank_steps(k, engine=engine, state=state):
            engine.run(perm, 0, k, state)
        out["rank"][b] = _per_step(rank_steps, max_steps, budget_s)
        print(f"  {p.name} b={b}: fused {out['fused'][b] * 1e3:.3f} ms, rank step "
              f"{out['rank'][b] * 1e3:.3f} ms", file=sys.stderr, flush=True)
    return out


def needed_batches(global_batch: int, ranks: Sequence[int] = RANKS, max_pow2: int = 2048):
    """Per-rank batches the tables read: ceil(B/N) for each N, and powers of two."""
    want = {-(-global_batch // n) for n in ranks}
    want |= {1 << k for k in range(int(math.log2(max_pow2)) + 1)}
    return sorted(want)


# ------------------------------------------------------------------ tables

def tables(inputs: List[Dict], latency_s: float, ranks: Sequence[int] = RANKS,
           gbits: Sequence[float] = GBITS) -> str:
    """The markdown tables of the model."""
    lines = [f"Ring allreduce `2(N-1)/N x bytes / bandwidth + 2(N-1) x latency`, latency "
             f"{latency_s * 1e6:g} us, no overlap; per-step times measured on one thread.", ""]
    lines += ["| preset | params | global batch | t_fused(B) ms | t_rank(B) ms | "
              "overhead outside the allreduce ms |", "|---|---|---|---|---|---|"]
    for m in inputs:
        B = int(m["global_batch"])
        f, r = _at(m["fused"], B), _at(m["rank"], B)
        lines.append(f"| {m['preset']} | {m['params']} | {B} | {f * 1e3:.3f} | {r * 1e3:.3f} | "
                     f"{(r - f) * 1e3:.3f} |")
    lines.append("")
    head = " | ".join(f"{g:g} Gbit/s: epoch s, eff." for g in gbits)
    lines += [f"| preset | N | per-rank batch | allreduce ms ({', '.join(f'{g:g}' for g in gbits)}"
              f" Gbit/s) | {head} |",
              "|---|---|---|---|" + "---|" * len(gbits)]
    for m in inputs:
        for n in ranks:
            cells, ar = [], []
            for g in gbits:
                s = strong_scaling(m, n, g, latency_s)
                cells.append(f"{s['epoch_s']:.3f}, {100 * s['efficiency']:.0f} %")
                ar.append(f"{ring_allreduce_s(4.0 * m['params'], n, g, latency_s) * 1e3:.3f}")
            lines.append(f"| {m['preset']} | {n} | {-(-int(m['global_batch']) // n)} | "
                         f"{', '.join(ar)} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["Smallest per-rank batch (power of two) with efficiency >= "
              f"{100 * TARGET_EFFICIENCY:.0f} % for every N up to {max(ranks)}:", "",
              "| preset | " + " | ".join(f"{g:g} Gbit/s" for g in gbits) + " |",
              "|---|" + "---|" * len(gbits)]
    for m in inputs:
        cells = []
        for g in gbits:
            b = batch_for_efficiency(m, g, latency_s, ranks)
            cells.append(f"> {max(int(k) for k in m['rank'])}" if b is None else str(b))
        lines.append(f"| {m['preset']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--latency-us", type=float, default=25.0)
    ap.add_argument("--inputs", help="JSON of saved measurements (skip measuring)")
    ap.add_argument("--save", help="write the measurements to this JSON file")
    ap.add_argument("--max-batch", type=int, default=2048, help="largest per-rank batch measured")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per measurement")
    args = ap.parse_args(argv)
    if args.latency_us < 0 or args.max_batch < 1 or args.budget <= 0:
        ap.error("--latency-us >= 0, --max-batch >= 1 and --budget > 0")
    names = [s for s in args.presets.split(",") if s]
    if args.inputs:
        with open(args.inputs) as fh:
            inputs = [m for m in json.load(fh) if m["preset"] in names]
    else:
        from fastnn import presets
        inputs = []
        for name in names:
            B = presets.get_preset(name).batch_size
            inputs.append(measure(name, needed_batches(B, max_pow2=args.max_batch), args.budget))
        if args.save:
            with open(args.save, "w") as fh:
                json.dump(inputs, fh, indent=1)
    print(tables(inputs, args.latency_us * 1e-6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
