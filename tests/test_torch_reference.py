"""A 20-16-12-5 ReLU MLP against PyTorch with identical weights.

The committed fixture tests/fixtures/mlp_torch.npz (bench/make_torch_fixture.py)
holds torch's loss, every gradient, dL/dx and the weights after 3 steps of
five optimizer settings; these tests need no torch.  Every test runs a
second time against torch itself when it imports (the ``ref`` fixture's
"live" parameter), and ``test_fixture_is_current`` checks the file.

Tolerances: float64 agrees to rtol 1e-10 (same formulas, different summation
order); float32 runs against the float64 reference to rtol 2e-4, atol 1e-5.
"""
import os

import numpy as np
import pytest

import fastnn
from fastnn import optim
from fastnn.layers import Dense
from fastnn.losses import SoftmaxCrossEntropy

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "mlp_torch.npz")
OPT_SETTINGS = {
    "sgd": (optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "nesterov": (optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (optim.Adam, dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
    "adam_l2": (optim.Adam, dict(lr=0.01, weight_decay=0.05)),
    "adamw": (optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
}
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-4, atol=1e-5)}


def _live_reference():
    pytest.importorskip("torch")
    import sys
    sys.path.insert(0, os.path.join(HERE, "..", "bench"))
    try:
        import make_torch_fixture as mk
    finally:
        sys.path.pop(0)
    return mk.torch_reference()


@pytest.fixture(scope="module", params=["fixture", "live"])
def ref(request):
    """The committed fixture, then the same numbers from the installed torch (if any)."""
    if request.param == "live":
        return _live_reference()
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def build(ref, dtype):
    model = fastnn.Sequential([Dense(20, 16, activation="relu", dtype=dtype),
                               Dense(16, 12, activation="relu", dtype=dtype),
                               Dense(12, 5, dtype=dtype)])
    model.flat_params[:] = ref["params"]
    return model


def forward_backward(model, x, y, smoothing=0.0):
    loss_fn = SoftmaxCrossEntropy(label_smoothing=smoothing)
    model.zero_grad()
    loss = loss_fn(model(x), y)
    dx = model.backward(loss_fn.backward())
    return loss, dx


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_loss_and_gradients(ref, dtype):
    model = build(ref, dtype)
    x = ref["x"].astype(dtype)
    loss, dx = forward_backward(model, x, ref["y"])
    assert loss == pytest.approx(float(ref["loss"]), rel=TOL[dtype]["rtol"])
    np.testing.assert_allclose(model.flat_grads, ref["grads"], **TOL[dtype])
    np.testing.assert_allclose(dx, ref["dx"], **TOL[dtype])
    # per-parameter views see the same numbers as the flat buffer
    off = 0
    for p in model.parameters():
        np.testing.assert_array_equal(p.grad.ravel(), model.flat_grads[off:off + p.size])
        off += p.size


def test_label_smoothing(ref):
    model = build(ref, np.float64)
    loss, _ = forward_backward(model, ref["x"], ref["y"], smoothing=0.1)
    assert loss == pytest.approx(float(ref["loss_ls"]), rel=1e-10)
    np.testing.assert_allclose(model.flat_grads, ref["grads_ls"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key", sorted(OPT_SETTINGS))
@pytest.mark.parametrize("fused", [True, False])
def test_optimizer_steps(ref, key, fused):
    cls, kw = OPT_SETTINGS[key]
    model = build(ref, np.float64)
    params = model.parameters() if fused else model.parameters()[::-1]   # reordered: unfused
    opt = cls(params, **kw)
    assert opt.fused is fused
    for step in range(3):
        loss, _ = forward_backward(model, ref["x"], ref["y"])
        assert loss == pytest.approx(float(ref[key + "_losses"][step]), rel=1e-9)
        opt.step()
        np.testing.assert_allclose(model.flat_params, ref[key + "_params"][step],
                                   rtol=1e-9, atol=1e-12, err_msg=f"{key} step {step + 1}")


def test_optimizer_float32(ref):
    model = build(ref, np.float32)
    opt = optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        forward_backward(model, ref["x"].astype(np.float32), ref["y"])
        opt.step()
    np.testing.assert_allclose(model.flat_params, ref["adam_params"][-1], rtol=1e-3, atol=1e-4)


def test_fixture_is_current():
    """The committed file still matches what the script computes with this torch."""
    live = _live_reference()
    with np.load(FIXTURE, allow_pickle=False) as f:
        for k, v in live.items():
            np.testing.assert_allclose(v, f[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_path_and_thread_counts_agree(dtype):
    """The same training steps on the scalar fallback (SIMD level 0) and with
    1 or 2 threads: each matches the PyTorch fixture, and 1 vs 2 threads agree."""
    from fastnn import kernels
    with np.load(FIXTURE, allow_pickle=False) as f:
        ref = {k: f[k] for k in f.files}
    results = {}
    old = kernels.simd_level()
    try:
        for level in (0, 1):
            kernels.set_simd_level(level)
            for nthreads in (1, 2):
                with fastnn.threads(nthreads):
                    model = build(ref, dtype)
                    opt = optim.Adam(model, lr=0.01)
                    for _ in range(3):
                        forward_backward(model, ref["x"].astype(dtype), ref["y"])
                        opt.step()
                results[level, nthreads] = model.flat_params.copy()
    finally:
        kernels.set_simd_level(1 if old is None else old)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-4)
    for key, params in results.items():
        np.testing.assert_allclose(params, ref["adam_params"][-1], **tol, err_msg=str(key))
    for level in (0, 1):
        np.testing.assert_array_equal(results[level, 1], results[level, 2])
