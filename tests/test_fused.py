"""The fused native training loop (fastnn._fused, kernels/train/trainer.c)
against its float64 numpy spec (``_fused.reference_run``) and the
layer-by-layer path, for both SIMD levels, 1 and 2 threads, awkward shapes."""
import numpy as np
import pytest

import fastnn
from fastnn import _fused
from fastnn._ext import train       # not built: an error, never a skip (see conftest.py)
from fastnn.errors import DTypeError, ShapeError
from fastnn.layers import Dense, Flatten, ReLU, Sigmoid
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import SGD, Adam, AdamW

# What a run computes, whatever the scheduling: the other keys of plan.run's
# result ("single_thread_fallback", "single_thread_chunks") count how often a
# busy machine made a thread go on alone, which varies from run to run.
DETERMINISTIC = ("loss_sum", "correct", "count", "steps")


def outcome(res):
    """The deterministic part of a plan.run result."""
    return {k: res[k] for k in DETERMINISTIC}


@pytest.fixture(params=[0, 1], ids=["scalar", "avx2"])
def simd(request):
    from fastnn import kernels as K
    K.set_simd_level(request.param)
    if request.param and train.simd_level() < 1:
        K.set_simd_level(1)
        pytest.skip("no AVX2+FMA on this CPU")
    yield request.param
    K.set_simd_level(1)


def make_model(sizes, seed=0, relu=True, bias=True, dtype=np.float32):
    layers = [Dense(sizes[i], sizes[i + 1], use_bias=bias, init="torch", dtype=dtype,
                    activation="relu" if relu and i < len(sizes) - 2 else None)
              for i in range(len(sizes) - 1)]
    return fastnn.Sequential(layers, seed=seed)


def make_opt(model, cfg):
    kind, kw = cfg
    return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[kind](model, **kw)


def make_data(n, d, classes, u8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, d), dtype=np.uint8) if u8 else \
        rng.standard_normal((n, d)).astype(np.float32)
    return x, rng.integers(0, classes, n), rng.permutation(n)


def snapshot(model):
    return [(l.weight.data.copy(), None if l.bias is None else l.bias.data.copy())
            for l in model.layers if isinstance(l, Dense)]


def reference_kwargs(opt):
    if isinstance(opt, SGD):
        return dict(kind="sgd", lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov,
                    weight_decay=opt.weight_decay)
    return dict(kind=type(opt).__name__.lower(), lr=opt.lr, beta1=opt.betas[0],
                beta2=opt.betas[1], eps=opt.eps, weight_decay=opt.weight_decay)


OPTS = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("adam", dict(lr=1e-2, weight_decay=1e-3)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
]

# (sizes, batch, samples): primes, widths around the 16-column panel and the
# 6-row tile, more than 16 classes (the unfused loss phase), batch 1, partial
# batches, 17+ column panels per layer, forward and dX GEMMs deeper than 384
# (run in K blocks) over more than 16 row tiles
SHAPES = [
    ((784, 10), 100, 250),
    ((37, 29, 13, 5), 7, 50),
    ((16, 17, 40), 6, 23),
    ((5, 3), 1, 4),
    ((64, 96, 64, 10), 13, 40),
    ((23, 257, 300, 11), 14, 45),
    ((23, 400, 390, 11), 110, 250),
]


@pytest.mark.parametrize("sizes,batch,n", SHAPES, ids=[str(s[0]) for s in SHAPES])
@pytest.mark.parametrize("cfg", OPTS, ids=[f"{k}-{'-'.join(kw)}" for k, kw in OPTS])
@pytest.mark.parametrize("u8", [True, False], ids=["uint8", "float32"])
def test_matches_float64_reference(simd, sizes, batch, n, cfg, u8):
    model = make_model(sizes)
    opt = make_opt(model, cfg)
    x, y, perm = make_data(n, sizes[0], sizes[-1], u8)
    before = snapshot(model)
    ref = _fused.reference_run([w for w, _ in before], [b for _, b in before],
                               [True] * (len(sizes) - 2) + [False], x, y, perm, batch,
                               **reference_kwargs(opt))
    plan = _fused.plan(model, SoftmaxCrossEntropy(), opt, batch)
    assert plan is not None
    res = plan.run(x, y, perm)
    steps = -(-n // batch)
    assert res["steps"] == steps and res["count"] == n and opt.step_count == steps
    assert res["correct"] == ref[4]
    np.testing.assert_allclose(res["loss_sum"], ref[3], rtol=1e-5)
    # Adam divides by sqrt(v): a weight whose gradient (plus its L2 term) is ~0
    # moves by up to ~lr on float32 rounding alone, so its tolerance scales
    # with lr.  3 % of lr: with weight_decay=1e-3, (23, 400, 390, 11) has two
    # such weights, which end 1.3 % of lr from the float64 spec after 3 steps
    # (the layer-by-layer float32 path: 0.6 %; without weight decay both stay
    # within 0.03 %).  A wrong update rule moves every weight by ~lr per step.
    atol = 2e-6 if cfg[0] == "sgd" else 3e-2 * cfg[1]["lr"]
    for (w, b), rw, rb in zip(snapshot(model), ref[0], ref[1]):
        np.testing.assert_allclose(w, rw, rtol=1e-4, atol=atol)
        np.testing.assert_allclose(b, rb, rtol=1e-4, atol=atol)
    # the optimizer's flat state buffers were updated in place too (plain SGD has none)
    if cfg[0] != "sgd":
        names = ["m", "v"]
    else:
        names = ["velocity"] if cfg[1].get("momentum") else []
    assert sorted(opt.state_buffers()) == sorted(names)
    for name, key in zip(names, ["s1", "s2"]):
        flat = np.concatenate([s.ravel() for s in ref[2][key]])
        np.testing.assert_allclose(opt.state_buffers()[name], flat, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("cfg", OPTS[1:4], ids=["momentum", "nesterov", "adam"])
def test_matches_layer_by_layer_path(cfg):
    sizes, batch, n = (50, 32, 24, 10), 16, 70
    x, y, perm = make_data(n, sizes[0], sizes[-1], True)
    general, fused = make_model(sizes, seed=3), make_model(sizes, seed=3)
    g_opt, f_opt = make_opt(general, cfg), make_opt(fused, cfg)
    loss = SoftmaxCrossEntropy()
    total = 0.0
    for s in range(0, n, batch):
        idx = perm[s:s + batch]
        general.zero_grad()
        total += loss(general(x[idx]), y[idx]) * len(idx)
        general.backward(loss.backward(), input_grad=False)
        g_opt.step()
    res = _fused.plan(fused, SoftmaxCrossEntropy(), f_opt, batch).run(x, y, perm)
    np.testing.assert_allclose(fused.flat_params, general.flat_params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res["loss_sum"], total, rtol=1e-5)
    assert f_opt.step_count == g_opt.step_count


def _train(threads, sizes=(30, 40, 33, 7), batch=9, n=100, cfg=OPTS[2], chunks=None):
    model = make_model(sizes, seed=5)
    opt = make_opt(model, cfg)
    x, y, perm = make_data(n, sizes[0], sizes[-1], True)
    plan = _fused.plan(model, SoftmaxCrossEntropy(), opt, batch)
    assert plan is not None
    steps = -(-n // batch)
    bounds = chunks or [0, steps]
    out = []
    with fastnn.threads(threads):
        for a, b in zip(bounds[:-1], bounds[1:]):
            out.append(outcome(plan.run(x, y, perm, a, b)))
    assert sum(r["steps"] for r in out) == steps           # the runs really ran
    return model.flat_params.copy(), opt, out


def test_bitwise_repeatable_and_thread_independent(simd):
    p1, _, r1 = _train(1)
    p1b, _, r1b = _train(1)
    p2, _, r2 = _train(2)
    p2b, _, r2b = _train(2)
    assert np.array_equal(p1, p1b) and r1 == r1b
    assert np.array_equal(p2, p2b) and r2 == r2b
    # every task computes the same numbers whichever thread runs it
    assert np.array_equal(p1, p2) and r1 == r2


@pytest.mark.parametrize("threads", [5, 8])
@pytest.mark.filterwarnings("ignore:fastnn. threads.*asks for:RuntimeWarning")   # on purpose
def test_more_threads_than_tasks_gives_the_same_bits(threads):
    """More threads than cores and than the tasks of most phases: threads
    that own nothing only steal, past 4 threads the batch is gathered once
    (shared) instead of per thread; the same bits as one thread."""
    for sizes, batch, n in (((5, 3), 4, 30), ((30, 40, 33, 7), 9, 100)):
        p1, _, r1 = _train(1, sizes=sizes, batch=batch, n=n)
        pn, _, rn = _train(threads, sizes=sizes, batch=batch, n=n)
        assert np.array_equal(p1, pn) and r1 == rn


@pytest.mark.parametrize("threads", [2, 3])
def test_packed_weight_gradient_gives_the_same_bits(threads):
    """A 200-wide layer has 13 dW column panels: one thread copies a^T into
    strips for its tiles (>= 8 panels per thread), two or three threads read
    a^T in place.  Same FMAs, same order: the same bits."""
    sizes = (50, 200, 130, 10)
    p1, _, r1 = _train(1, sizes=sizes, batch=20, n=90)
    pn, _, rn = _train(threads, sizes=sizes, batch=20, n=90)
    assert np.array_equal(p1, pn) and r1 == rn


@pytest.mark.parametrize("cfg", [OPTS[2], OPTS[4]], ids=["nesterov", "adamw"])
def test_chunks_of_steps_equal_one_call(cfg):
    whole, opt_a, ra = _train(2, cfg=cfg)
    parts, opt_b, rb = _train(2, cfg=cfg, chunks=[0, 1, 5, 11, 12])
    assert np.array_equal(whole, parts)
    assert opt_a.step_count == opt_b.step_count == 12
    assert sum(r["steps"] for r in rb) == 12 and sum(r["count"] for r in rb) == 100
    np.testing.assert_allclose(sum(r["loss_sum"] for r in rb), ra[0]["loss_sum"], rtol=1e-12)


def test_lr_per_step_equals_setting_lr_each_step():
    sizes, batch, n = (20, 16, 4), 8, 40
    lrs = np.array([0.1, 0.05, 0.2, 0.0, 0.01], np.float32)
    x, y, perm = make_data(n, sizes[0], sizes[-1], False)
    a, b = make_model(sizes, seed=2), make_model(sizes, seed=2)
    oa, ob = SGD(a, lr=1.0, momentum=0.9), SGD(b, lr=1.0, momentum=0.9)
    pa = _fused.plan(a, SoftmaxCrossEntropy(), oa, batch)
    pb = _fused.plan(b, SoftmaxCrossEntropy(), ob, batch)
    pa.run(x, y, perm, lrs=lrs)
    for s, lr in enumerate(lrs):
        ob.lr = float(lr)
        pb.run(x, y, perm, s, s + 1)
    assert np.array_equal(a.flat_params, b.flat_params)


def test_uint8_scaling_matches_sequential():
    src = np.arange(256, dtype=np.uint8)
    dst = np.empty(256, np.float32)
    train.u8_to_f32(src, dst)
    model = make_model((256, 2))
    assert np.array_equal(dst, model._prepare_input(src[None])[0])


def test_image_shaped_uint8_input_and_folded_relu_layer():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 4, 5), dtype=np.uint8)
    y = rng.integers(0, 3, 30)
    perm = rng.permutation(30)
    folded = fastnn.Sequential([Flatten(), Dense(20, 8, init="torch"), ReLU(),
                                Dense(8, 3, init="torch")], seed=1)
    fused_act = fastnn.Sequential([Dense(20, 8, activation="relu", init="torch"),
                                   Dense(8, 3, init="torch")], seed=1)
    assert np.array_equal(folded.flat_params, fused_act.flat_params)
    outs = []
    for m in (folded, fused_act):
        opt = SGD(m, lr=0.1, momentum=0.5)
        res = _fused.plan(m, SoftmaxCrossEntropy(), opt, 7).run(x, y, perm)
        outs.append(outcome(res))
    assert outs[0] == outs[1]
    assert np.array_equal(folded.flat_params, fused_act.flat_params)


def test_no_bias_layers():
    model = make_model((12, 10, 4), bias=False)
    opt = SGD(model, lr=0.1, momentum=0.9)
    x, y, perm = make_data(20, 12, 4, False)
    ref = _fused.reference_run([l.weight.data for l in model.layers], [None, None],
                               [True, False], x, y, perm, 6, kind="sgd", lr=0.1, momentum=0.9)
    _fused.plan(model, SoftmaxCrossEntropy(), opt, 6).run(x, y, perm)
    for layer, rw in zip(model.layers, ref[0]):
        np.testing.assert_allclose(layer.weight.data, rw, rtol=1e-4, atol=1e-6)


def test_divergence_stops_after_the_first_non_finite_loss():
    model = make_model((10, 8, 3))
    opt = SGD(model, lr=1e30)
    x, y, perm = make_data(60, 10, 3, False)
    x *= 1e3
    res = _fused.plan(model, SoftmaxCrossEntropy(), opt, 5).run(x, y, perm)
    assert res["steps"] < 12
    assert not np.isfinite(res["loss_sum"])
    assert opt.step_count == res["steps"] + 1


def test_empty_range_does_nothing():
    model = make_model((6, 3))
    before = model.flat_params.copy()
    opt = SGD(model, lr=0.1)
    x, y, perm = make_data(10, 6, 3, False)
    res = _fused.plan(model, SoftmaxCrossEntropy(), opt, 4).run(x, y, perm, 2, 2)
    assert set(res) == set(DETERMINISTIC) | {"single_thread_fallback", "single_thread_chunks"}
    assert outcome(res) == {"loss_sum": 0.0, "correct": 0, "count": 0, "steps": 0}
    # no step ran, so no thread can have gone on alone
    assert res["single_thread_fallback"] is False and res["single_thread_chunks"] == 0
    assert np.array_equal(before, model.flat_params) and opt.step_count == 0


def test_unsupported_combinations_have_no_plan():
    loss = SoftmaxCrossEntropy()
    m = make_model((6, 5, 3))
    # the control: the same model, loss and optimizer with a valid batch size do get a
    # plan (else every "is None" below would hold for any reason, a missing trainer too)
    assert _fused.plan(m, loss, SGD(m, lr=0.1), 4) is not None
    assert _fused.plan(m, loss, SGD(m, lr=0.1), 0) is None
    assert _fused.plan(m, SoftmaxCrossEntropy(label_smoothing=0.1), SGD(m, lr=0.1), 4) is None
    assert _fused.plan(m, loss, SGD(m.parameters()[:2], lr=0.1), 4) is None
    m64 = make_model((6, 5, 3), dtype=np.float64)
    assert _fused.plan(m64, loss, SGD(m64, lr=0.1), 4) is None
    sig = fastnn.Sequential([Dense(6, 5, activation="sigmoid"), Dense(5, 3)])
    assert _fused.plan(sig, loss, SGD(sig, lr=0.1), 4) is None
    last_relu = fastnn.Sequential([Dense(6, 5), Dense(5, 3, activation="relu")])
    assert _fused.plan(last_relu, loss, SGD(last_relu, lr=0.1), 4) is None
    sig2 = fastnn.Sequential([Dense(6, 5), Sigmoid(), Dense(5, 3)])
    assert _fused.plan(sig2, loss, SGD(sig2, lr=0.1), 4) is None


@pytest.fixture
def plan_and_data():
    model = make_model((8, 6, 3))
    opt = SGD(model, lr=0.1)
    x, y, perm = make_data(20, 8, 3, True)
    return _fused.plan(model, SoftmaxCrossEntropy(), opt, 4), model, x, y, perm


@pytest.mark.parametrize("change,exc,word", [
    (lambda x, y, p: (x.astype(np.float64), y, p), DTypeError, "x"),
    (lambda x, y, p: (x.astype(np.int32), y, p), DTypeError, "x"),
    (lambda x, y, p: (x[:, :5], y, p), ShapeError, "x"),
    (lambda x, y, p: (x, y.astype(np.float32), p), DTypeError, "y"),
    (lambda x, y, p: (x, y[:5], p), ShapeError, "y"),
    (lambda x, y, p: (x, np.where(y == 0, 3, y), p), ValueError, "labels"),
    (lambda x, y, p: (x, np.where(y == 0, -1, y), p), ValueError, "labels"),
    (lambda x, y, p: (x, y, p.astype(np.float64)), DTypeError, "perm"),
    (lambda x, y, p: (x, y, np.where(p == 0, 20, p)), ValueError, "perm"),
])
def test_bad_inputs_raise_before_touching_the_model(plan_and_data, change, exc, word):
    plan, model, x, y, perm = plan_and_data
    before = model.flat_params.copy()
    with pytest.raises(exc, match=word):
        plan.run(*change(x, y, perm))
    assert np.array_equal(before, model.flat_params)
    assert plan.optimizer.step_count == 0


def test_bad_step_range_and_lrs(plan_and_data):
    plan, model, x, y, perm = plan_and_data
    with pytest.raises(ValueError, match="start"):
        plan.run(x, y, perm, 3, 2)
    with pytest.raises(ValueError, match="stop"):
        plan.run(x, y, perm, 0, 6)
    with pytest.raises(ShapeError, match="lrs"):
        plan.run(x, y, perm, 0, 2, lrs=[0.1])
    with pytest.raises(ValueError, match="lrs"):
        plan.run(x, y, perm, 0, 1, lrs=[float("nan")])


def test_non_contiguous_inputs(plan_and_data):
    plan, model, x, y, perm = plan_and_data
    wide = np.zeros((20, 16), np.uint8)
    wide[:, ::2] = x
    xs = wide[:, ::2]
    assert not xs.flags.c_contiguous
    res = plan.run(xs, y, perm)
    assert res["steps"] == 5


def _raw_sgd_run(seed, nesterov, **run_kw):
    """One native run of the (30, 40, 33, 7) MLP with SGD momentum 0.9, batch 9 over 100
    uint8 rows (12 steps, the last one partial), straight through the trainer so the
    test-only knobs (_solo_after, _chunk_steps) can be set.  Returns (model, velocity
    views, the trainer's result tuple)."""
    sizes, batch, n = (30, 40, 33, 7), 9, 100
    model = make_model(sizes, seed=seed)
    opt = SGD(model, lr=0.05, momentum=0.9, nesterov=nesterov)
    x, y, perm = make_data(n, sizes[0], sizes[-1], True)
    plan = _fused.plan(model, SoftmaxCrossEntropy(), opt, batch)
    W = [l.weight.data for l in plan.layers]
    b = [l.bias.data for l in plan.layers]
    s1W, s1b = plan._slot_views(opt.state_buffers()["velocity"])
    none = [None] * len(W)
    idx = perm.astype(np.int64)
    res = plan._trainer.run(W, b, s1W, s1b, none, none, x, True, sizes[0],
                            y[idx].astype(np.int64), idx, "sgd", 0.05, momentum=0.9,
                            nesterov=nesterov, **run_kw)
    return model, s1W, res


@pytest.mark.parametrize("after", [0, 7, 40])
def test_single_thread_fallback_gives_the_same_numbers(after):
    """The fallback (a thread goes on alone when its partner keeps losing its
    core) forced at a given task: same weights as a plain 2-thread run."""
    outs = []
    for solo_after in (-1, after):
        model, _, res = _raw_sgd_run(5, False, nthreads=2, _solo_after=solo_after)
        outs.append((model.flat_params.copy(), res[:3]))
        if solo_after >= 0:
            assert res[3] == 1
    assert np.array_equal(outs[0][0], outs[1][0]) and outs[0][1] == outs[1][1]


@pytest.mark.parametrize("chunk_steps", [1, 2, 3, 11])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_fallback_lasts_one_chunk_and_changes_nothing(chunk_steps, nthreads):
    """The run goes in chunks of steps; a fallback to one thread (forced here
    in every chunk, at its 5th ticket) ends with its chunk and the next chunk
    starts with the whole team.  Weights, optimizer state, loss and counts
    equal a plain run without fallback or chunking, for any chunk size."""
    outs = []
    for solo_after, chunks in ((-1, 0), (5, chunk_steps)):
        model, s1W, res = _raw_sgd_run(6, True, nthreads=nthreads, _solo_after=solo_after,
                                       _chunk_steps=chunks)
        if solo_after >= 0:
            assert res[3] == -(-12 // chunk_steps)
        outs.append((model.flat_params.copy(), [v.copy() for v in s1W], res[:3]))
    assert np.array_equal(outs[0][0], outs[1][0]) and outs[0][2] == outs[1][2]
    assert all(np.array_equal(u, v) for u, v in zip(outs[0][1], outs[1][1]))


def test_calls_from_two_python_threads_take_turns():
    import threading
    model = make_model((12, 16, 4))
    opt = SGD(model, lr=0.01, momentum=0.9)
    x, y, perm = make_data(200, 12, 4, True)
    plan = _fused.plan(model, SoftmaxCrossEntropy(), opt, 8)
    results = []
    workers = [threading.Thread(target=lambda: results.append(plan.run(x, y, perm)))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [r["steps"] for r in results] == [25, 25] and opt.step_count == 50
    assert np.all(np.isfinite(model.flat_params))


def test_adam_moments_match_the_general_optimizer():
    """Adam's (1 - beta) factors and bias corrections come from the betas in
    double precision on both paths: after one step v = (1 - beta2) g^2, so a
    1 - beta2 formed in float32 (0.00099998713 for 0.999) shows as a 1.3e-5
    relative error in every v, far above the paths' summation-order noise
    (median 2e-7)."""
    sizes, batch = (30, 20, 10), 16
    x, y, perm = make_data(batch, sizes[0], sizes[-1], True)
    general, fused = make_model(sizes, seed=5), make_model(sizes, seed=5)
    g_opt = Adam(general, lr=1e-3)
    f_opt = Adam(fused, lr=1e-3)
    loss = SoftmaxCrossEntropy()
    general.zero_grad()
    loss(general(x[perm]), y[perm])
    general.backward(loss.backward(), input_grad=False)
    g_opt.step()
    _fused.plan(fused, SoftmaxCrossEntropy(), f_opt, batch).run(x, y, perm)
    for name in ("m", "v"):
        a, b = f_opt.state_buffers()[name], g_opt.state_buffers()[name]
        nz = b != 0
        rel = np.abs(a[nz] - b[nz]) / np.abs(b[nz])
        # the median: a few gradients with cancellation differ by ~1e-5 on
        # summation order alone; a wrong factor shifts every element
        assert np.median(rel) < 1e-6, (name, np.median(rel))
