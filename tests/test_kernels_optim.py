"""The optim family (fused SGD / Adam / AdamW): every variant and path against
the reference and a plain numpy loop over several steps, against
torch.optim when PyTorch is installed, threads, and every validation error."""

import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from kernel_paths import variant_fixture
from fastnn.errors import DTypeError, ShapeError

VARIANTS = K.variants("optim")
FAST = [v for v in VARIANTS if v != "reference"]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
SIZES = [0, 1, 7, 13, 70001]
SGD_CASES = [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
             dict(momentum=0.5, weight_decay=0.01), dict(weight_decay=0.1)]
ADAM_CASES = [dict(), dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled=True),
              dict(beta1=0.0, beta2=0.5, eps=1e-3)]


variant = variant_fixture("optim", with_reference=True)


def _stream(n, dtype, steps, seed=0):
    rng = np.random.default_rng(seed + n)
    p = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    return p, grads


def numpy_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """The plain formulas, float64, one step at a time."""
    p = p.astype(np.float64)
    v = np.zeros_like(p)
    for g in grads:
        d = g + weight_decay * p
        if momentum:
            v = momentum * v + d
            d = d + momentum * v if nesterov else v
        p = p - lr * d
    return p


def numpy_adam(p, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
               decoupled=False):
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        mhat = m / (1 - beta1 ** t)
        vhat = v / (1 - beta2 ** t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_sgd_matches_numpy_loop(variant, dtype, n):
    for case in SGD_CASES:
        p, grads = _stream(n, dtype, 4)
        want = numpy_sgd(p, grads, 0.05, **case)
        vel = np.zeros_like(p)
        for g in grads:
            K.sgd_update(p, g, lr=0.05, velocity=vel, variant=variant, **case)
        np.testing.assert_allclose(p, want, **TOL[dtype], err_msg=str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_adam_matches_numpy_loop(variant, dtype, n):
    for case in ADAM_CASES:
        p, grads = _stream(n, dtype, 4)
        want = numpy_adam(p, grads, 0.01, **case)
        m, v = np.zeros_like(p), np.zeros_like(p)
        for t, g in enumerate(grads, start=1):
            K.adam_update(p, g, m, v, step=t, lr=0.01, variant=variant, **case)
        # float32: 1 - beta must be formed in double (1 - 0.999f is 1.3e-5 off), else this fails
        tol = dict(rtol=3e-5, atol=3e-6) if dtype == np.float32 else TOL[dtype]
        np.testing.assert_allclose(p, want, **tol, err_msg=str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(variant, dtype):
    res = []
    for nt in (1, 2):
        p, grads = _stream(200003, dtype, 2, seed=5)
        m, v, vel = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        q = p.copy()
        with fastnn.threads(nt):
            for t, g in enumerate(grads, start=1):
                K.adam_update(p, g, m, v, step=t, lr=1e-3, weight_decay=0.01, variant=variant)
                K.sgd_update(q, g, lr=0.1, momentum=0.9, velocity=vel, nesterov=True,
                             variant=variant)
        res.append((p, m, v, q, vel))
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_torch_optim(variant):
    torch = pytest.importorskip("torch")
    n = 37
    configs = [
        ("sgd", dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
        ("sgd", dict(lr=0.1, momentum=0.9), torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
        ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD,
         dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
        ("adam", dict(lr=0.01, weight_decay=0.05), torch.optim.Adam,
         dict(lr=0.01, weight_decay=0.05)),
        ("adam", dict(lr=0.01, beta1=0.8, beta2=0.99, eps=1e-6), torch.optim.Adam,
         dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
        ("adam", dict(lr=0.01, weight_decay=0.1, decoupled=True), torch.optim.AdamW,
         dict(lr=0.01, weight_decay=0.1)),
    ]
    for dtype, tol in ((np.float64, dict(rtol=1e-10, atol=1e-12)),
                       (np.float32, dict(rtol=2e-5, atol=2e-6))):
        for kind, ours, cls, theirs in configs:
            p, grads = _stream(n, dtype, 5, seed=7)
            tp = torch.nn.Parameter(torch.tensor(p.copy()))
            opt = cls([tp], **theirs)
            m, v, vel = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
            for t, g in enumerate(grads, start=1):
                tp.grad = torch.tensor(g)
                opt.step()
                if kind == "sgd":
                    K.sgd_update(p, g, velocity=vel, variant=variant, **ours)
                else:
                    K.adam_update(p, g, m, v, step=t, variant=variant, **ours)
            np.testing.assert_allclose(p, tp.detach().numpy(), **tol,
                                       err_msg=f"{cls.__name__} {theirs} {dtype.__name__}")


def test_reference_matches_numpy_loop_exactly_in_float64():
    p, grads = _stream(50, np.float64, 3)
    q = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        K.adam_update(q, g, m, v, step=t, lr=0.02, variant="reference")
    np.testing.assert_allclose(q, numpy_adam(p, grads, 0.02), rtol=1e-14)


def test_validation_errors():
    p = np.zeros(5, np.float32)
    g = np.ones(5, np.float32)
    m, v = np.zeros(5, np.float32), np.zeros(5, np.float32)
    sgd = K.sgd_update
    with pytest.raises(ValueError, match=r"lr must be >= 0"):
        sgd(p, g, lr=-1.0)
    with pytest.raises(ValueError, match="lr must be finite"):
        sgd(p, g, lr=float("inf"))
    with pytest.raises(TypeError, match="lr must be a real number"):
        sgd(p, g, lr=None)
    with pytest.raises(TypeError, match="positional argument"):
        sgd(p, g, 0.1)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        sgd(p, g, lr=0.1, momentum=1.0, velocity=m)
    with pytest.raises(ValueError, match="needs a velocity buffer"):
        sgd(p, g, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        sgd(p, g, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"weight_decay must be >= 0"):
        sgd(p, g, lr=0.1, weight_decay=-0.1)
    with pytest.raises(ValueError, match="params and grads share memory"):
        sgd(p, p, lr=0.1)
    with pytest.raises(ValueError, match="params and velocity share memory"):
        sgd(p, g, lr=0.1, momentum=0.9, velocity=p)
    with pytest.raises(ShapeError, match=r"grads has shape \(4,\) but params has \(5,\)"):
        sgd(p, g[:4], lr=0.1)
    with pytest.raises(DTypeError, match="grads has dtype float64 but params has float32"):
        sgd(p, g.astype(np.float64), lr=0.1)
    with pytest.raises(DTypeError, match="params must be float32 or float64"):
        sgd(p.astype(np.int32), g, lr=0.1)
    with pytest.raises(ShapeError, match="params must be a flat 1-D buffer"):
        sgd(p.reshape(1, 5), g.reshape(1, 5), lr=0.1)
    with pytest.raises(TypeError, match="params must be a numpy array"):
        sgd([0.0] * 5, g, lr=0.1)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="params is read-only"):
        sgd(ro, g, lr=0.1)
    with pytest.raises(ValueError, match="params must be C-contiguous"):
        sgd(np.zeros(10, np.float32)[::2], g, lr=0.1)
    with pytest.raises(ValueError, match="grads must be C-contiguous"):
        sgd(p, np.ones(10, np.float32)[::2], lr=0.1)
    adam = K.adam_update
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        adam(p, g, m, v, step=0, lr=0.1)
    with pytest.raises(TypeError, match="step must be an integer"):
        adam(p, g, m, v, step=1.0, lr=0.1)
    with pytest.raises(ValueError, match=r"beta1 must be in \[0, 1\)"):
        adam(p, g, m, v, step=1, lr=0.1, beta1=1.0)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\)"):
        adam(p, g, m, v, step=1, lr=0.1, beta2=-0.1)
    with pytest.raises(ValueError, match=r"eps must be > 0"):
        adam(p, g, m, v, step=1, lr=0.1, eps=0.0)
    with pytest.raises(ValueError, match="m and v share memory"):
        adam(p, g, m, m, step=1, lr=0.1)
    with pytest.raises(ValueError, match="grads and m share memory"):
        adam(p, g, g, v, step=1, lr=0.1)
    big = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="params and v share memory"):
        adam(big[:5], g, m, big[4:9], step=1, lr=0.1)
    with pytest.raises(ValueError, match="unknown optim variant"):
        adam(p, g, m, v, step=1, lr=0.1, variant="fused")


def test_adam_float32_forms_one_minus_beta_in_double(variant):
    """Regression: 1 - 0.999f in float32 is 1.3e-5 off in relative terms, which moved
    every float32 Adam step by ~6e-6 (relative); the first step is ~lr*sign(g)."""
    g = np.linspace(-1, 1, 21).astype(np.float32) + np.float32(0.01)
    p, m, v = np.zeros(21, np.float32), np.zeros(21, np.float32), np.zeros(21, np.float32)
    K.adam_update(p, g, m, v, step=1, lr=1.0, variant=variant)
    want = np.zeros(21, np.float32)
    K.adam_update(want, g, np.zeros_like(m), np.zeros_like(v), step=1, lr=1.0,
                  variant="reference")
    np.testing.assert_allclose(p, want, rtol=1e-6)
