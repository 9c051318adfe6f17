"""The xent family: every variant against the float64 reference, the reference
against PyTorch, paths (scalar/AVX2, 1/2 threads), extremes and validation."""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from kernel_paths import variant_fixture
from fastnn.errors import DTypeError, ShapeError

FAST = [v for v in K.variants("xent") if v != "reference"]
SHAPES = [(0, 10), (1, 1), (1, 10), (7, 13), (64, 10), (31, 1000), (3, 9)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-12)}


# (variant, SIMD level): native variants run on both their AVX2 and scalar paths
variant = variant_fixture("xent")


@pytest.fixture(params=[0, 1], ids=["scalar", "avx2"])
def simd(request):
    K.set_simd_level(request.param)
    yield request.param
    K.set_simd_level(1)


def _data(B, C, dtype, seed=0, scale=4.0):
    rng = np.random.default_rng(seed + 31 * B + C)
    x = (rng.standard_normal((B, C)) * scale).astype(dtype)
    idx = rng.integers(0, C, B)
    probs = rng.random((B, C)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True) if B else 1
    return x, idx, probs


def _run(variant, x, labels, ls=0.0, scale=1.0, with_grad=True):
    d = np.full(x.shape, np.nan, x.dtype) if with_grad else None
    loss = K.softmax_xent(x, labels, dlogits=d, grad_scale=scale, label_smoothing=ls,
                          variant=variant)
    return loss, d


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,C", SHAPES)
def test_xent_matches_reference(variant, dtype, B, C):
    x, idx, probs = _data(B, C, dtype)
    for labels in (idx, probs):
        for ls, scale in ((0.0, 1.0), (0.1, 0.25)):
            want_l, want_d = _run("reference", x, labels, ls, scale)
            got_l, got_d = _run(variant, x, labels, ls, scale)
            np.testing.assert_allclose(got_l, want_l, **TOL[dtype])
            np.testing.assert_allclose(got_d, want_d, **TOL[dtype])
            only_l, _ = _run(variant, x, labels, ls, scale, with_grad=False)
            np.testing.assert_allclose(only_l, want_l, **TOL[dtype])
            assert got_l.dtype == dtype and got_d.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,C", [(0, 4), (1, 1), (3, 7), (17, 8), (9, 1000), (40, 500)])
def test_softmax_log_softmax_match_reference(variant, dtype, B, C):
    x, _, _ = _data(B, C, dtype, seed=3, scale=10.0)
    for name in ("softmax", "log_softmax"):
        fn = getattr(K, name)
        want = fn(x, variant="reference")
        got = fn(x, variant=variant)
        np.testing.assert_allclose(got, want, **TOL[dtype])
        inplace = x.copy()
        assert fn(inplace, inplace, variant=variant) is inplace
        np.testing.assert_allclose(inplace, want, **TOL[dtype])


def test_softmax_zero_classes():
    for v in K.variants("xent"):
        assert K.softmax(np.zeros((3, 0), np.float32), variant=v).shape == (3, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_and_two_threads_identical(variant, dtype):
    x, idx, probs = _data(257, 130, dtype, seed=5)
    for labels in (idx, probs):
        res = []
        for n in (1, 2):
            with fastnn.threads(n):
                loss, d = _run(variant, x, labels, 0.05, 0.5)
                res.append((loss, d, K.softmax(x, variant=variant),
                            K.log_softmax(x, variant=variant)))
        for a, b in zip(*res):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", K.variants("xent"))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_logits_stay_finite(variant, dtype, simd):
    x = np.array([[1e4, -1e4, 0.0, 3.0], [-1e4, -1e4, -1e4, -1e4], [7.0, 7.0, 7.0, 7.0],
                  [-1e4, 1e4, 1e4, -5.0]], dtype)
    idx = np.array([1, 2, 0, 3])
    loss, d = _run(variant, x, idx)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d))
    np.testing.assert_allclose(loss, [2e4, np.log(4), np.log(4), 1e4 + 5 + np.log(2)],
                               rtol=1e-6)
    np.testing.assert_allclose(d[1], [0.25, 0.25, -0.75, 0.25], atol=1e-6)
    np.testing.assert_allclose(d[3], [0.0, 0.5, 0.5, -1.0], atol=1e-6)
    np.testing.assert_allclose(K.softmax(x, variant=variant)[3], [0, 0.5, 0.5, 0], atol=1e-7)
    assert np.all(np.isfinite(K.log_softmax(x, variant=variant)))


@pytest.mark.parametrize("variant", K.variants("xent"))
def test_nan_row_gives_nan_only_there(variant, simd):
    x = np.zeros((3, 20), np.float32)
    x[1, 7] = np.nan
    loss, d = _run(variant, x, np.array([0, 1, 2]))
    assert np.isnan(loss[1]) and np.all(np.isnan(d[1]))
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isfinite(d[[0, 2]]))
    sm = K.softmax(x, variant=variant)
    assert np.all(np.isnan(sm[1])) and np.all(np.isfinite(sm[[0, 2]]))


@pytest.mark.parametrize("variant", FAST)
def test_strided_and_any_int_labels(variant):
    x, idx, _ = _data(12, 30, np.float32)
    strided = np.asfortranarray(x)
    want, _ = _run("reference", x, idx)
    for lab in (idx.astype(np.uint8), idx.astype(np.int16), idx.astype(np.int32)):
        got, _ = _run(variant, strided, lab)
        np.testing.assert_allclose(got, want, **TOL[np.float32])
    wide = np.zeros((12, 60), np.float32)
    wide[:, ::2] = x
    got, _ = _run(variant, wide[:, ::2], idx)
    np.testing.assert_allclose(got, want, **TOL[np.float32])


def test_reference_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, idx, probs = _data(9, 13, np.float64, seed=11)
    xt = torch.tensor(x, requires_grad=True)
    for labels, tl in ((idx, torch.tensor(idx)), (probs, torch.tensor(probs))):
        for ls in (0.0, 0.2):
            xt.grad = None
            loss = F.cross_entropy(xt, tl, label_smoothing=ls, reduction="none")
            loss.sum().backward()
            got_l, got_d = _run("reference", x, labels, ls, 1.0)
            np.testing.assert_allclose(got_l, loss.detach().numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got_d, xt.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(K.log_softmax(x, variant="reference"),
                               F.log_softmax(torch.tensor(x), dim=1).numpy(), rtol=1e-12)


def test_validation_errors():
    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"labels\[2\] = 7 is not a class index in \[0, 3\)"):
        K.softmax_xent(x, np.array([0, 1, 7, 0]))
    with pytest.raises(ValueError, match=r"labels\[1\] = -1"):
        K.softmax_xent(x, np.array([0, -1, 2, 0]))
    with pytest.raises(DTypeError, match="logits must be float32 or float64"):
        K.softmax_xent(x.astype(np.int32), y)
    with pytest.raises(DTypeError, match="integer class indices"):
        K.softmax_xent(x, y.astype(np.float32))
    with pytest.raises(DTypeError, match="probability labels must have the logits' dtype"):
        K.softmax_xent(x, np.zeros((4, 3), np.float64))
    with pytest.raises(ShapeError, match="probability labels must have the logits' shape"):
        K.softmax_xent(x, np.zeros((4, 2), np.float32))
    with pytest.raises(ShapeError, match="labels has 3 entries but logits has 4 rows"):
        K.softmax_xent(x, y[:3])
    with pytest.raises(ShapeError, match="logits must be 2-D"):
        K.softmax_xent(x[0], y)
    with pytest.raises(ShapeError, match="at least one class"):
        K.softmax_xent(np.zeros((4, 0), np.float32), y)
    with pytest.raises(ShapeError, match=r"losses must have shape \(4,\)"):
        K.softmax_xent(x, y, losses=np.zeros(3, np.float32))
    with pytest.raises(DTypeError, match="dlogits must have dtype float32"):
        K.softmax_xent(x, y, dlogits=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dlogits overlaps logits"):
        K.softmax_xent(x, y, dlogits=x)
    with pytest.raises(ValueError, match="dlogits is read-only"):
        ro = np.zeros_like(x)
        ro.flags.writeable = False
        K.softmax_xent(x, y, dlogits=ro)
    with pytest.raises(ValueError, match="dlogits must be C-contiguous"):
        K.softmax_xent(x, y, dlogits=np.zeros((3, 4), np.float32).T)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        K.softmax_xent(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="grad_scale must be finite"):
        K.softmax_xent(x, y, grad_scale=float("nan"))
    with pytest.raises(TypeError, match="grad_scale must be a real number"):
        K.softmax_xent(x, y, grad_scale="1")
    with pytest.raises(ValueError, match="unknown xent variant 'nope'"):
        K.softmax_xent(x, y, variant="nope")
    with pytest.raises(ValueError, match="out overlaps x"):
        big = np.zeros((5, 3), np.float32)
        K.softmax(big[:4], big[1:])
    with pytest.raises(TypeError, match="softmax_xent.*keyword|positional"):
        K.softmax_xent(x, y, None)


def test_default_variant_is_native_when_built():
    from fastnn.kernels._checks import pick
    avail = K.variants("xent")
    want = "c" if "c" in avail else "cython" if "cython" in avail else "reference"
    assert pick("xent", None) is K.get("xent", want)


def test_default_variants_never_import_numba():
    """Training must not pay Numba's import/compile unless asked: run every public
    kernel of the four families with variant=None in a fresh interpreter."""
    import os
    import subprocess
    import sys
    code = (
        "import sys, numpy as np, fastnn\n"
        "from fastnn import kernels as K\n"
        "x = np.ones((4, 3), np.float32)\n"
        "K.softmax_xent(x, np.array([0, 1, 2, 0]), dlogits=np.empty_like(x))\n"
        "K.softmax(x); K.log_softmax(x); fastnn.softmax(x)\n"
        "y = K.activation_forward('tanh', x); K.activation_backward('tanh', y, x)\n"
        "K.column_sums(x)\n"
        "p = np.zeros(3); K.sgd_update(p, np.ones(3), lr=0.1)\n"
        "K.adam_update(p, np.ones(3), np.zeros(3), np.zeros(3), step=1, lr=0.1)\n"
        "print('numba' in sys.modules)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
