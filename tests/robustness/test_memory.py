"""Training does not leak: resident memory stays flat over many epochs, and a
training step allocates nothing it does not document.

* RSS (``/proc/self/statm``) after each of 50 epochs of the ``mlp`` preset's
  model on 6,000 MNIST images stays within 5% of its value after a warm-up
  epoch (native allocations -- the fused trainer's workspace, OpenMP pools --
  are only visible here, not to tracemalloc).
* The fused path (``fastnn._fused.FusedPlan.run``): running 2N steps retains
  no more Python/numpy memory than running N, and the transient peak grows by
  no more than the two int64 copies of the permutation slice the wrapper
  makes per call (row indices and their labels, 16 bytes per row).
* The general path (``model(x) -> loss -> backward -> optimizer.step``):
  after the first step, a step's transient peak is at most the output array
  ``Sequential.forward`` documents as freshly allocated (every workspace and
  gradient buffer is reused), and nothing is retained between steps.
"""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn import _fused
from fastnn.presets import build_loss, build_model, build_optimizer, get_preset

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="needs Linux /proc/self/statm")

N_SAMPLES = 6000
EPOCHS = 50
RSS_TOLERANCE = 0.05
# Python objects a step may create and free (floats, kwargs dicts, small tuples)
SLACK = 16 << 10


@pytest.fixture(scope="module")
def mnist_subset():
    from fastnn.datasets import mnist
    # the checkout ships data/mnist: not finding it is a failure, not a skip
    (x, y), _ = mnist.load_data(download=False)
    return np.ascontiguousarray(x[:N_SAMPLES]), np.ascontiguousarray(y[:N_SAMPLES])


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _preset_run(seed=0):
    preset = get_preset("mlp")
    model = build_model(preset, seed=seed)
    return preset, model, build_optimizer(preset, model), build_loss(preset)


class _RSSRecorder(fastnn.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rss = []

    def on_epoch_end(self, epoch, logs):
        gc.collect()
        self.rss.append(rss_bytes())


def test_rss_flat_over_50_epochs(mnist_subset):
    """50 epochs of the mlp preset (fused engine, one native call per epoch): RSS after
    every epoch within 5% of RSS after the warm-up epoch."""
    x, y = mnist_subset
    preset, model, opt, loss = _preset_run()
    rec = _RSSRecorder()
    hist = model.fit(x, y, epochs=EPOCHS + 1, batch_size=preset.batch_size, loss=loss,
                     optimizer=opt, seed=0, callbacks=[rec], verbose=0)
    assert hist.params["engine"] == "fused"
    base = rec.rss[0]                                   # after the warm-up epoch
    worst = max(rec.rss[1:])
    growth = (worst - base) / base
    print(f"\nRSS after warm-up {base / 2**20:.1f} MiB, max over {EPOCHS} epochs "
          f"{worst / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth <= RSS_TOLERANCE, (
        f"RSS grew {growth:.1%} over {EPOCHS} epochs ({base >> 20} MiB -> {worst >> 20} MiB; "
        f"per epoch: {[r >> 10 for r in rec.rss]} KiB)")
    # and the last 10 epochs are not still climbing (a slow leak inside the tolerance)
    tail = rec.rss[-10:]
    assert tail[-1] - tail[0] <= 0.01 * base, f"RSS still rising at the end: {tail}"
    assert hist.history["accuracy"][-1] > 0.9           # it really trained


def _traced(fn):
    """(retained bytes, peak bytes above the start) of ``fn()`` under tracemalloc."""
    gc.collect()
    start, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    fn()
    gc.collect()
    now, peak = tracemalloc.get_traced_memory()
    return now - start, peak - start


@pytest.fixture
def traced():
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def test_fused_steps_allocate_nothing_per_step(mnist_subset, traced):
    """FusedPlan.run: N vs 2N steps retain the same (nothing), and the peak differs only
    by the wrapper's int64 index/label copies of the longer permutation slice."""
    x, y = mnist_subset
    preset, model, opt, loss = _preset_run()
    b = preset.batch_size
    plan = _fused.plan(model, loss, opt, b)
    assert plan is not None
    perm = np.random.default_rng(0).permutation(x.shape[0])
    n = 40
    plan.run(x, y, perm, 0, n)                          # warm-up: first-call costs
    _traced(lambda: plan.run(x, y, perm, 0, n))         # first traced call: interpreter caches
    kept_n, peak_n = _traced(lambda: plan.run(x, y, perm, 0, n))
    kept_2n, peak_2n = _traced(lambda: plan.run(x, y, perm, 0, 2 * n))
    assert kept_n <= SLACK and kept_2n <= SLACK, (kept_n, kept_2n)
    per_call_copies = 2 * 8 * n * b                     # idx + labels for n more steps
    assert peak_2n - peak_n <= per_call_copies + SLACK, (
        f"{n} more steps raised the peak by {peak_2n - peak_n} bytes "
        f"(allowed: {per_call_copies} for the index copies)")


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_general_step_allocates_only_its_output(mnist_subset, traced, opt_name):
    """The layer-by-layer step: peak transient allocation per step <= the fresh output
    array Sequential.forward documents; nothing retained over 2N vs N steps."""
    x, y = mnist_subset
    preset = get_preset("mlp").replace(optimizer=opt_name, lr=1e-3 if opt_name == "adam"
                                       else 0.05)
    model = build_model(preset, seed=0)
    opt = build_optimizer(preset, model)
    loss = build_loss(preset)
    b = preset.batch_size
    xb = np.multiply(x[:b].reshape(b, -1), np.float32(1 / 255), dtype=np.float32)
    yb = y[:b].astype(np.int64)
    out_bytes = b * 10 * 4                              # (B, 10) float32 logits

    def step():
        model.zero_grad()
        out = model(xb)
        loss(out, yb)
        model.backward(loss.backward(), input_grad=False)
        opt.step()

    def steps(k):
        return lambda: [step() for _ in range(k)]

    for _ in range(3):                                  # workspaces, autotuner, first calls
        step()
    _traced(steps(1))                                   # first traced call: interpreter caches
    kept_1, peak_1 = _traced(steps(1))
    assert kept_1 <= SLACK, f"one step retained {kept_1} bytes"
    assert peak_1 <= out_bytes + SLACK, (
        f"one step's peak allocation was {peak_1} bytes; only the {out_bytes}-byte output "
        f"is documented as fresh")
    kept_n, _ = _traced(steps(10))
    kept_2n, _ = _traced(steps(20))
    assert kept_n <= SLACK and kept_2n <= SLACK, (kept_n, kept_2n)
    assert np.isfinite(model.flat_params).all()
