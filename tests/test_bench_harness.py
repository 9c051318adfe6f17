"""`fastnn bench kernels` at more than one thread (issue 12): every block starts
after a pause (no other pool spinning), its first call is timed alone (cold) and
the steady figure comes from back-to-back calls.  Timing and sleeping are
injected, so these tests check the protocol, never real speed."""
import io
import warnings

import pytest

from fastnn import bench
from fastnn.kernels import _registry

SHAPES = [(8, 16, 8, "NN"), (16, 8, 8, "NT")]


def test_two_threads_pause_before_every_block_and_report_cold(monkeypatch):
    events = []
    speed = {_registry.get("matmul", "c"): (50.0, 20.0),          # (steady, cold) GFLOP/s
             _registry.get("matmul", "blas"): (40.0, 25.0)}

    def probe(nthreads, iters, clock):
        events.append(("probe", nthreads))
        return 100e9, 1.0

    def time_block(fn, args, calls, clock=None):
        if fn not in speed:                         # the call-overhead table
            return 1e-6
        events.append(("block", calls))
        steady, cold = speed[fn]
        a, out = args[0], args[2]
        flops = 2.0 * out.shape[0] * out.shape[1] * a.shape[1]
        # one call alone is the cold call of the block (calls >= 3 otherwise)
        return flops / ((cold if calls == 1 else steady) * 1e9)

    monkeypatch.setattr(bench, "_fma_probe", probe)
    monkeypatch.setattr(bench, "_time_block", time_block)
    monkeypatch.setattr(bench.time, "sleep", lambda s: events.append(("sleep", s)))
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # a 1-CPU runner: oversubscribed
        info = bench.bench_kernels(threads=2, repeat=3, variants=["c", "blas"], file=buf,
                                   shapes=SHAPES)
    two = [r for r in info["results"] if r["threads"] == 2]
    one = [r for r in info["results"] if r["threads"] == 1]
    assert {r["variant"]: r["gflops"] for r in two} == {"c": pytest.approx(50.0),
                                                          "blas": pytest.approx(40.0)}
    assert {r["variant"]: r["cold_gflops"] for r in two} == {"c": pytest.approx(20.0),
                                                               "blas": pytest.approx(25.0)}
    assert all(r["cold_gflops"] is None and r["cold_vs_blas"] is None for r in one)
    assert all(r["calls"] >= bench._MIN_CALLS for r in info["results"])
    assert info["geomean_vs_blas"]["2"]["c"] == pytest.approx(1.25)
    assert info["geomean_cold_vs_blas"]["2"]["c"] == pytest.approx(0.8)
    # at 2 threads, every timed block (and every round's probe) follows a full pause
    start = next(i for i, e in enumerate(events) if e == ("sleep", bench._QUIET_S))
    end = max(i for i, e in enumerate(events) if e[0] == "sleep") + 3   # then the
    timed = events[start:end]                                            # overhead table
    steady = 0
    for i, e in enumerate(timed):
        if e[0] == "probe":
            assert timed[i - 1] == ("sleep", bench._QUIET_S), (i, timed[i - 3:i + 1])
        if e[0] == "block" and e[1] > 1:            # the steady block follows its cold call
            assert timed[i - 2:i] == [("sleep", bench._QUIET_S), ("block", 1)], \
                (i, timed[i - 3:i + 1])
            steady += 1
    assert steady == 2 * len(SHAPES) * 3
    text = buf.getvalue()
    assert "cold, threads=2" in text and "0.80x" in text and "1.25x" in text
