"""The fused trainer's native module (fastnn._ext.train, kernels/train/) through
its own API: every allocation failure of fnn_trainer_new and fnn_trainer_run
is a clean MemoryError that frees what the call took and leaves the caller's
arrays alone, and the phase list comes from the C side's plan.

The failures are injected (``_fail_alloc_at=k`` refuses the call's k-th
allocation) and the leaks counted by the trainer's own allocator
(``_alloc_stats()``: blocks live now, allocations attempted so far); under
.ci/sanitize the same paths also run with AddressSanitizer."""
import numpy as np
import pytest

from fastnn._ext import train

# (20, 260, 30, 10): layer 0's dW has 17 column panels, enough at 2 threads for
# the per-thread copies of a^T strips; layer 1 has a dX; 10 classes fuse the loss.
SIZES = (20, 260, 30, 10)
BATCH, N = 8, 44            # 6 steps, the last one partial


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    L = len(SIZES) - 1
    W = [(rng.standard_normal((SIZES[l], SIZES[l + 1])) * 0.2).astype(np.float32)
         for l in range(L)]
    b = [(rng.standard_normal(SIZES[l + 1]) * 0.1).astype(np.float32) for l in range(L)]
    x = rng.integers(0, 256, (N, SIZES[0]), dtype=np.uint8)
    idx = rng.permutation(N).astype(np.int64)
    y = rng.integers(0, SIZES[-1], N).astype(np.int64)[idx]
    return W, b, x, y, idx


def _new(**kw):
    L = len(SIZES) - 1
    return train.Trainer(SIZES, [1] * (L - 1) + [0], [1] * L, BATCH, **kw)


def _run(trainer, params, data, nthreads, **kw):
    """One SGD-momentum call on copies of params; returns (the copies after the
    call, its deterministic result), the result None when the call raised MemoryError."""
    W, b, s1W, s1b = [[a.copy() for a in group] for group in params]
    x, y, idx = data
    none = [None] * len(W)
    try:
        # (loss_sum, correct, steps): the 4th value counts chunks a thread finished alone
        # because its partner lost the core -- scheduling, not results (a busy CI run had 1)
        res = trainer.run(W, b, s1W, s1b, none, none, x, True, SIZES[0], y, idx, "sgd", 0.05,
                          momentum=0.9, nthreads=nthreads, **kw)[:3]
    except MemoryError:
        res = None
    return W + b + s1W + s1b, res


def _same(arrays, others):
    return len(arrays) == len(others) and all(np.array_equal(u, v) for u, v in zip(arrays, others))


@pytest.fixture
def problem():
    W, b, x, y, idx = _problem()
    params = (W, b, [np.zeros_like(w) for w in W], [np.zeros_like(v) for v in b])
    return params, (x, y, idx)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("nthreads", [1, 2, 5])
def test_every_failed_allocation_of_a_run_frees_everything(problem, nthreads, precision):
    """Refuse each allocation of fnn_trainer_run in turn: a buffer the run
    needs gives MemoryError with the caller's arrays untouched, an optional one
    (per-thread copies of a[0] with 2-4 threads, of a^T strips) a run with the
    same bits; nothing stays allocated either way.  Afterwards the same trainer
    trains bit for bit like a fresh one.  bf16 takes no optional copies (its dW
    reads the bf16 row pairs, the threads share a[0]'s bf16 copy)."""
    params, data = problem
    start = [a.copy() for group in params for a in group]
    reference, ref_res = _run(_new(precision=precision), params, data, nthreads)
    trainer = _new(precision=precision)
    raised = fell_back = 0
    k = 1
    while True:
        live0, calls0 = train._alloc_stats()
        arrays, res = _run(trainer, params, data, nthreads, _fail_alloc_at=k)
        live1, calls1 = train._alloc_stats()
        assert live1 == live0, f"allocation {k} refused: {live1 - live0} blocks leaked"
        attempts = calls1 - calls0
        if res is None:
            raised += 1
            assert attempts >= k
            assert _same(arrays, start), f"allocation {k} refused: the arrays changed"
        else:
            assert _same(arrays, reference) and res == ref_res, f"allocation {k} refused"
            if attempts < k:
                break               # past the last allocation: every one was refused once
            fell_back += 1
        k += 1
    assert raised == 3              # the scheduler's claim slots, task lists and list offsets
    # a^T strips (+ stamps), a[0] copies
    assert fell_back == ({1: 2, 2: 3, 5: 0}[nthreads] if precision == "fp32" else 0)
    arrays, res = _run(trainer, params, data, nthreads)
    assert _same(arrays, reference) and res == ref_res


@pytest.mark.parametrize("precision, buffers", [("fp32", 30), ("bf16", 45)])
def test_every_failed_allocation_of_new_frees_everything(precision, buffers):
    live0, _ = train._alloc_stats()
    k = 1
    while True:
        _, calls0 = train._alloc_stats()
        try:
            trainer = _new(precision=precision, _fail_alloc_at=k)
        except MemoryError:
            assert train._alloc_stats()[0] == live0, f"allocation {k} refused: leaked"
            k += 1
            continue
        assert train._alloc_stats()[1] - calls0 < k     # no allocation was refused
        break
    assert k > buffers               # every buffer of the 3-layer trainer was refused once
    assert train._alloc_stats()[0] > live0
    del trainer
    assert train._alloc_stats()[0] == live0


def test_an_empty_run_allocates_nothing(problem):
    params, (x, y, idx) = problem
    trainer = _new()
    live0, calls0 = train._alloc_stats()
    arrays, res = _run(trainer, params, (x, y[:0], idx[:0]), 2)
    assert res == (0.0, 0, 0) and train._alloc_stats() == (live0, calls0)
    assert _same(arrays, [a for group in params for a in group])


@pytest.mark.parametrize("classes, fused", [(10, True), (16, True), (17, False), (40, False)])
def test_phase_names_follow_the_trainers_plan(classes, fused):
    """The loss is fused into the last forward when the logits fit one column
    panel of 16; the names say which, from the C side's own plan, and match the
    number of profile slots the run fills."""
    sizes = (12, 20, classes)
    trainer = train.Trainer(sizes, [1, 0], [1, 1], 4)
    names = trainer.phase_names()
    assert names == (["gather", "forward0", "forward1"] + ([] if fused else ["loss"])
                     + ["backward1", "backward0"])
    rng = np.random.default_rng(1)
    W = [rng.standard_normal((a, c)).astype(np.float32) for a, c in zip(sizes[:-1], sizes[1:])]
    b = [np.zeros(c, np.float32) for c in sizes[1:]]
    x = rng.standard_normal((8, 12)).astype(np.float32)
    idx = np.arange(8, dtype=np.int64)
    y = (idx % classes).astype(np.int64)
    profile = np.zeros(train.PROFILE_SLOTS)
    none = [None, None]
    trainer.run(W, b, none, none, none, none, x, False, 12, y, idx, "sgd", 0.01,
                profile=profile)
    used = np.flatnonzero(profile[:-1])
    assert used.size and used.max() < len(names)


def test_the_largest_model_fits_the_fixed_arrays():
    """MAX_LAYERS layers (the C arrays' size on both sides) build and run."""
    L = train.MAX_LAYERS
    sizes = (5,) * (L + 1)
    trainer = train.Trainer(sizes, [1] * (L - 1) + [0], [1] * L, 4)
    assert len(trainer.phase_names()) == 2 * L + 1
    W = [np.eye(5, dtype=np.float32) for _ in range(L)]
    b = [np.zeros(5, np.float32) for _ in range(L)]
    none = [None] * L
    x = np.ones((4, 5), np.float32)
    idx = np.arange(4, dtype=np.int64)
    res = trainer.run(W, b, none, none, none, none, x, False, 5, idx % 5, idx, "sgd", 0.01)
    assert res[2] == 1
    with pytest.raises(ValueError):
        train.Trainer((5,) * (L + 2), [1] * L + [0], [1] * (L + 1), 4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_allocates_the_same_for_any_number_of_steps(problem, precision):
    """The run's buffers are allocated once per call, none per step: a call of 6 steps
    and one of 1 step make the same allocations."""
    params, (x, y, idx) = problem
    trainer = _new(precision=precision)
    counts = []
    for n in (len(idx), BATCH):
        _, calls0 = train._alloc_stats()
        _, res = _run(trainer, params, (x, y[:n], idx[:n]), 2)
        counts.append(train._alloc_stats()[1] - calls0)
        assert res[2] == -(-n // BATCH)
    assert counts[0] == counts[1] > 0


def test_precision_is_checked():
    assert train.PRECISIONS == ("fp32", "bf16")
    assert _new().precision == "fp32" and _new(precision="bf16").precision == "bf16"
    with pytest.raises(ValueError, match="precision"):
        _new(precision="fp16")


# ------------------------------------------- per-layer completion of a grad step

def _grad_problem():
    W, b, x, y, idx = _problem(3)
    rows = idx[:BATCH]
    gW = [np.empty_like(w) for w in W]
    gb = [np.empty_like(v) for v in b]
    return W, b, x, y[:BATCH], rows, gW, gb


@pytest.mark.parametrize("nthreads", [1, 2])
def test_grad_signal_publishes_each_layer_last_first_when_it_is_final(nthreads):
    """GradSignal: the reduction thread's view.  A watcher thread waits for each layer
    from the last and copies its gradient at once, while the step goes on with the
    earlier layers: every copy equals the step's final gradient (the layer was done
    when published), each layer is published once (last first on one thread), and the
    gradients are bitwise those of a step without a signal."""
    import threading
    W, b, x, y, rows, gW, gb = _grad_problem()
    L = len(W)
    tr = _new()
    ref = tr.grad_step(W, b, gW, gb, x, True, SIZES[0], y, rows, 1 / BATCH, nthreads=nthreads)
    want = [a.copy() for a in gW + gb]
    sig = train.GradSignal()
    for _ in range(5):
        for a in gW + gb:
            a.fill(np.nan)
        sig.reset(L)
        seen, errors = {}, []

        def watch():
            try:
                for l in range(L - 1, -1, -1):
                    assert sig.wait(l, timeout=30.0)
                    seen[l] = (gW[l].copy(), gb[l].copy())
            except BaseException as e:          # reported by the main thread
                errors.append(e)

        t = threading.Thread(target=watch)
        t.start()
        got = tr.grad_step(W, b, gW, gb, x, True, SIZES[0], y, rows, 1 / BATCH,
                           nthreads=nthreads, signal=sig)
        t.join(30)
        assert not errors and not t.is_alive()
        assert got == ref
        # one thread finishes the layers last first; with two, the scheduler may finish
        # an earlier layer's gradient before a later one's (a scheduling fact, not a result:
        # asserted only as "each layer once")
        if nthreads == 1:
            assert sig.order() == list(range(L - 1, -1, -1))
        else:
            assert sorted(sig.order()) == list(range(L))
        assert _same(gW + gb, want)
        for l in range(L):
            assert np.array_equal(seen[l][0], want[l]) and np.array_equal(seen[l][1], want[L + l])


def test_grad_signal_refuses_bad_use_and_never_leaves_a_waiter_hanging():
    W, b, x, y, rows, gW, gb = _grad_problem()
    L = len(W)
    tr = _new()
    sig = train.GradSignal()
    with pytest.raises(RuntimeError, match="before reset"):
        sig.wait(0)
    with pytest.raises(ValueError, match="nlayers"):
        sig.reset(0)
    sig.reset(L)
    with pytest.raises(ValueError, match="layer must be"):
        sig.wait(L)
    with pytest.raises(ValueError, match="timeout"):
        sig.wait(0, timeout=-1.0)
    with pytest.raises(TimeoutError, match="layer 0"):
        sig.wait(0, timeout=0.01)
    sig.finish(False)                       # a step that failed: waiters return False
    assert sig.wait(0, timeout=1.0) is False
    # a signal reset for another depth, or too many rows: refused, and finished (failed)
    sig.reset(L + 1)
    with pytest.raises(ValueError, match="reset for"):
        tr.grad_step(W, b, gW, gb, x, True, SIZES[0], y, rows, 1 / BATCH, signal=sig)
    assert sig.wait(0, timeout=1.0) is False
    sig.reset(L)
    many = np.zeros(BATCH + 1, np.int64)
    with pytest.raises(ValueError, match="more than"):
        tr.grad_step(W, b, gW, gb, x, True, SIZES[0], many, many, 1 / BATCH, signal=sig)
    assert sig.wait(L - 1, timeout=1.0) is False
    # a finished, successful step: every wait returns True at once
    sig.reset(L)
    tr.grad_step(W, b, gW, gb, x, True, SIZES[0], y, rows, 1 / BATCH, signal=sig)
    assert all(sig.wait(l, timeout=1.0) for l in range(L))
