"""Optimizers (fused vs per-parameter, state, validation) and learning-rate schedules.

Update rules themselves are checked against PyTorch in test_torch_reference.py."""
import json
import math

import numpy as np
import pytest

from fastnn import kernels, optim
from fastnn.layers import Dense
from fastnn.sequential import Sequential

SETTINGS = [
    (optim.SGD, dict(lr=0.1)),
    (optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    (optim.AdamW, dict(lr=1e-2)),
]


def model(dtype=np.float64, seed=0):
    return Sequential([Dense(7, 5, activation="relu", dtype=dtype), Dense(5, 3, dtype=dtype)],
                      seed=seed)


def fake_grads(m, step):
    m.flat_grads[:] = np.sin(np.arange(m.flat_grads.size) * 0.37 + step)


@pytest.mark.parametrize("cls,kw", SETTINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_equals_per_parameter(cls, kw, dtype):
    a, b = model(dtype), model(dtype)
    fused = cls(a.parameters(), **kw)
    split = cls(b.parameters()[::-1], **kw)
    assert fused.fused and not split.fused
    for step in range(4):
        fake_grads(a, step)
        fake_grads(b, step)
        fused.step()
        split.step()
    # Equal up to rounding: the SIMD kernel may take a vector lane in one call and
    # the scalar tail in the other for the same element (FMA vs mul+add).
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a.flat_params, b.flat_params, **tol)


@pytest.mark.parametrize("cls,kw", SETTINGS)
def test_one_kernel_call_when_fused(cls, kw, monkeypatch):
    name = "sgd_update" if cls is optim.SGD else "adam_update"
    calls = []
    real = getattr(kernels, name)

    def spy(p, *args, **kwargs):
        calls.append(p.size)
        return real(p, *args, **kwargs)

    monkeypatch.setattr(kernels, name, spy)
    m = model()
    cls(m, **kw).step()                          # a Sequential counts as its parameters
    assert calls == [m.flat_params.size]
    calls.clear()
    cls(m.parameters()[:3], **kw).step()         # a subset: one call per parameter
    assert calls == [p.size for p in m.parameters()[:3]]


def test_subset_updates_only_its_parameters():
    m = model()
    before = m.flat_params.copy()
    fake_grads(m, 0)
    opt = optim.SGD([m[1].weight], lr=0.5)
    opt.step()
    w = m[1].weight
    changed = np.flatnonzero(m.flat_params != before)
    assert changed.min() >= w.offset and changed.max() < w.offset + w.size
    opt.zero_grad()
    assert not w.grad.any() and m[0].weight.grad.any()


@pytest.mark.parametrize("cls,kw", SETTINGS)
def test_state_dict_resume_is_exact(cls, kw):
    a, b = model(), model()
    opt_a = cls(a, **kw)
    for step in range(2):
        fake_grads(a, step)
        opt_a.step()
    state = json.loads(json.dumps({k: v for k, v in opt_a.state_dict().items()
                                   if k != "buffers"}))
    state["buffers"] = opt_a.state_dict()["buffers"]
    assert state["class"] == cls.__name__ and state["step"] == 2
    b.flat_params[:] = a.flat_params
    opt_b = optim.optimizer_from_state(b, state)
    for step in range(2, 4):
        for m, o in ((a, opt_a), (b, opt_b)):
            fake_grads(m, step)
            o.step()
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_state_dict_validation():
    m = model()
    adam = optim.Adam(m)
    with pytest.raises(ValueError, match="state is for 'SGD'"):
        adam.load_state_dict(optim.SGD(m, lr=0.1).state_dict())
    other = optim.Adam(Sequential([Dense(2, 2, dtype=np.float64)])).state_dict()
    with pytest.raises(ValueError, match="buffer 'm' has shape"):
        adam.load_state_dict(other)
    with pytest.raises(ValueError, match="keys class, hyper, step, buffers"):
        adam.load_state_dict({"class": "Adam"})
    bad = adam.state_dict()
    bad["hyper"]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr must be finite"):
        adam.load_state_dict(bad)
    assert adam.lr == 1e-3                       # nothing changed by the failed load
    sgd = optim.SGD(m, lr=0.1)
    with pytest.raises(ValueError, match=r"buffers must be \[\]"):
        sgd.load_state_dict(optim.SGD(m, lr=0.1, momentum=0.5).state_dict())


def test_hyperparameter_validation():
    m = model()
    with pytest.raises(ValueError, match="lr must be finite"):
        optim.SGD(m, lr=float("nan"))
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optim.Adam(m, lr=-1e-3)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        optim.SGD(m, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        optim.SGD(m, lr=0.1, momentum=-0.1)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        optim.SGD(m, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\)"):
        optim.Adam(m, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"betas\[0\] must be finite"):
        optim.AdamW(m, betas=(float("nan"), 0.9))
    with pytest.raises(ValueError, match="betas must be a pair"):
        optim.Adam(m, betas=0.9)
    with pytest.raises(ValueError, match="eps must be > 0"):
        optim.Adam(m, eps=0.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        optim.AdamW(m, weight_decay=-0.1)
    with pytest.raises(TypeError, match="lr must be a real number"):
        optim.SGD(m, lr="0.1")
    with pytest.raises(ValueError, match="params is empty"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a fastnn Parameter"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="more than once"):
        optim.SGD([m[0].weight, m[0].weight], lr=0.1)
    opt = optim.SGD(m, lr=0.1)
    with pytest.raises(ValueError, match="lr must be finite"):
        opt.lr = float("inf")
    opt.lr = 0.05
    assert opt.lr == 0.05 and "SGD(lr=0.05" in repr(opt)


# ============================================================================ schedules

def sgd(lr=1.0):
    return optim.SGD(Sequential([Dense(2, 2)]), lr=lr)


def run(sched, n):
    return [sched.optimizer.lr] + [sched.step() for _ in range(n)]


def test_step_decay_values():
    s = optim.StepDecay(sgd(0.8), step_size=3, gamma=0.1)
    np.testing.assert_allclose(run(s, 7), [0.8] * 3 + [0.08] * 3 + [0.008] * 2)


def test_cosine_decay_values():
    s = optim.CosineDecay(sgd(1.0), total_steps=4, min_lr=0.2)
    expect = [0.2 + 0.8 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)] + [0.2]
    np.testing.assert_allclose(run(s, 5), expect, rtol=1e-12)


def test_linear_warmup_then_cosine():
    opt = sgd(1.0)
    s = optim.LinearWarmup(opt, 4, after=optim.CosineDecay(opt, total_steps=2))
    np.testing.assert_allclose(run(s, 7), [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-12)
    plain = optim.LinearWarmup(sgd(0.4), 2)
    np.testing.assert_allclose(run(plain, 3), [0.2, 0.4, 0.4, 0.4])


def test_one_cycle_shape():
    s = optim.OneCycle(sgd(), max_lr=1.0, total_steps=11, pct_start=0.3)
    lrs = run(s, 12)
    assert lrs[0] == pytest.approx(1 / 25)
    peak = int(np.argmax(lrs))
    assert lrs[peak] == pytest.approx(1.0, rel=0.05) and 1 <= peak <= 3
    assert lrs[10] == pytest.approx(1 / 25 / 1e4) and lrs[11] == lrs[10]
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:11], lrs[peak + 1:11]))


def test_schedules_match_torch():
    torch = pytest.importorskip("torch")
    p = [torch.nn.Parameter(torch.zeros(1))]

    def torch_lrs(make, n, lr=1.0):
        opt = torch.optim.SGD(p, lr=lr)
        sch = make(opt)
        out = [opt.param_groups[0]["lr"]]
        for _ in range(n):
            opt.step()
            sch.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    cases = [
        (lambda o: optim.StepDecay(o, 3, 0.5),
         lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5), 9),
        (lambda o: optim.CosineDecay(o, 8, 0.01),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 8, eta_min=0.01), 8),
        (lambda o: optim.OneCycle(o, 0.7, 20, pct_start=0.25),
         lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.7, total_steps=20, pct_start=0.25,
                                                        anneal_strategy="cos",
                                                        cycle_momentum=False), 19),
    ]
    for ours, theirs, n in cases:
        np.testing.assert_allclose(run(ours(sgd()), n), torch_lrs(theirs, n), rtol=1e-9,
                                   atol=1e-12)


def test_schedule_state_and_validation():
    opt = sgd(1.0)
    s = optim.CosineDecay(opt, total_steps=10)
    for _ in range(3):
        s.step()
    state = json.loads(json.dumps(s.state_dict()))
    opt2 = sgd(1.0)
    s2 = optim.CosineDecay(opt2, total_steps=10)
    s2.load_state_dict(state)
    assert opt2.lr == opt.lr and s2.step() == s.step()
    with pytest.raises(ValueError, match="not for StepDecay"):
        optim.StepDecay(sgd(), 2, 0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        optim.StepDecay(sgd(), 0, 0.5)
    with pytest.raises(ValueError, match="gamma must be finite"):
        optim.StepDecay(sgd(), 1, float("nan"))
    with pytest.raises(ValueError, match=r"pct_start must be in \(0, 1\)"):
        optim.OneCycle(sgd(), 1.0, 10, pct_start=1.0)
    with pytest.raises(TypeError, match="optimizer must be a fastnn optimizer"):
        optim.CosineDecay("sgd", 10)
    with pytest.raises(ValueError, match="same optimizer"):
        optim.LinearWarmup(sgd(), 2, after=optim.CosineDecay(sgd(), 5))
