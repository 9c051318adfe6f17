"""`fastnn bench kernels`: the FMA peak is the best of probes interleaved with the
rounds, and a figure above it is flagged, never printed as a plain 123 % (issue 10).

Timing is injected: ``bench._fma_probe`` and ``bench._time_block`` are replaced
by scripts, so these tests assert on the bookkeeping, never on real speed.
"""
import io
import json

import pytest

from fastnn import bench, cli
from fastnn.kernels import _registry

SHAPES = [(8, 16, 8, "NN"), (16, 8, 8, "NT")]
GFLOP = 1e9


@pytest.fixture
def fake_timing(monkeypatch):
    """Install a scripted probe and kernel speeds; return the probe calls made."""
    def install(probe_rates, kernel_gflops):
        rates = iter(probe_rates)
        calls = []

        def probe(nthreads, iters, clock):
            rate = next(rates, probe_rates[-1])
            calls.append((nthreads, iters, rate))
            return rate * GFLOP, 1.0          # 1 s: calibration stops at once

        speed = {_registry.get("matmul", v): g for v, g in kernel_gflops.items()}

        def time_block(fn, args, calls_, clock=None):
            if fn not in speed:                 # the call-overhead table
                return 1e-6
            a, out = args[0], args[2]
            return 2.0 * out.shape[0] * out.shape[1] * a.shape[1] / (speed[fn] * GFLOP)

        monkeypatch.setattr(bench, "_fma_probe", probe)
        monkeypatch.setattr(bench, "_time_block", time_block)
        return calls
    return install


def run(**kw):
    buf = io.StringIO()
    info = bench.bench_kernels(threads=1, repeat=3, variants=["c", "blas"], file=buf,
                               shapes=SHAPES, **kw)
    return info, buf.getvalue()


def test_peak_probed_in_every_round_is_the_best_seen(fake_timing):
    """The machine was busy while the first probes ran (10 GFLOP/s) and not later:
    the peak is the best probe, so no kernel lands above 100 %."""
    # fma_peak: warm-up, calibration, 2 more; then the per-round calibration (warm-up,
    # one probe); then one probe per round: 3 rounds x 2 shapes
    calls = fake_timing([10, 10, 10, 10, 10, 10, 30, 40, 35, 20, 25, 30],
                        {"c": 36.0, "blas": 24.0})
    info, text = run()
    assert info["fma_peak_gflops"] == {"1": pytest.approx(40.0)}
    assert info["fma_peak_probes"] == {"1": 6}
    assert len(calls) == 12
    assert info["peak_exceeded"] == []
    fracs = {r["variant"]: r["frac_peak"] for r in info["results"]}
    assert fracs == {"c": pytest.approx(0.9), "blas": pytest.approx(0.6)}
    assert all(r["frac_peak"] <= 1.0 for r in info["results"])
    assert "90%" in text and "!" not in text and "unreliable" not in text
    assert "best of a long probe and one per round" in text


def test_kernel_above_every_probe_is_flagged(fake_timing):
    fake_timing([20.0], {"c": 25.0, "blas": 15.0})       # the probe never gets above 20
    info, text = run()
    assert info["fma_peak_gflops"] == {"1": pytest.approx(20.0)}
    assert [(e["variant"], e["M"]) for e in info["peak_exceeded"]] == [("c", 8), ("c", 16)]
    assert all(e["frac_peak"] == pytest.approx(1.25) for e in info["peak_exceeded"])
    assert text.count("125%!") == 2 and "75% " in text
    warning = [ln for ln in text.splitlines() if ln.startswith("WARNING")]
    assert len(warning) == 1
    assert "2 figure(s) marked ! beat the best FMA peak" in warning[0]
    assert "unreliable" in warning[0]


def test_json_carries_the_flag(fake_timing):
    fake_timing([20.0], {"c": 25.0, "blas": 15.0})
    buf = io.StringIO()
    bench.bench_kernels(threads=1, repeat=2, variants=["c", "blas"], file=buf, shapes=SHAPES,
                        as_json=True)
    info = json.loads(buf.getvalue())
    assert len(info["peak_exceeded"]) == 2 and info["fma_peak_probes"] == {"1": 4}


def test_fma_peak_is_the_best_of_its_probes(monkeypatch):
    rates = iter([5.0, 1.0, 2.0, 9.0, 3.0])            # warm-up (ignored), then timed probes
    sizes = []

    def probe(nthreads, iters, clock):
        sizes.append(iters)
        return next(rates) * GFLOP, (0.2 if iters > 200_000 else 0.001)

    monkeypatch.setattr(bench, "_fma_probe", probe)
    assert bench.fma_peak(2, seconds=0.2) == pytest.approx(9.0 * GFLOP)
    assert sizes == [200_000, 200_000, 800_000, 800_000, 800_000]


def test_cli_bench_kernels_threads_above_cpus_warns(monkeypatch, capsys, fake_timing):
    from fastnn import _threads
    fake_timing([20.0], {})
    monkeypatch.setattr(_threads, "_cpus_cache", 2)
    monkeypatch.setattr(_threads, "_oversub_warned", False)
    seen = {}

    def fake_bench(threads=None, as_json=False):
        seen["threads"] = threads
    monkeypatch.setattr(bench, "bench_kernels", fake_bench)
    assert cli.main(["bench", "kernels", "--threads", "64"]) == 0
    err = capsys.readouterr().err
    assert seen["threads"] == 64
    assert err.splitlines() == [
        ("fastnn: warning: --threads asks for 64 threads but this process may use only 2 "
         "CPU(s); the extra threads share CPUs and slow every parallel kernel down "
         "(use at most 2)")]
