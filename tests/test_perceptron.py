"""The Perceptron (Numba kernel vs the plain-Python rule) and the model factories."""
import numpy as np
import pytest

import fastnn
from fastnn import models
from fastnn.errors import DTypeError, ShapeError


def separable(rng, n, d, margin=0.1):
    """Binary data separated by a random hyperplane with a margin."""
    w = rng.standard_normal(d)
    x = rng.standard_normal((n, d))
    s = x @ w
    keep = np.abs(s) > margin * np.linalg.norm(w)
    return x[keep], (s[keep] > 0).astype(np.int64)


def blobs(rng, n_per, k, d, spread=0.3):
    centers = rng.standard_normal((k, d)) * 4
    x = np.concatenate([c + spread * rng.standard_normal((n_per, d)) for c in centers])
    y = np.repeat(np.arange(k), n_per)
    return x, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_matches_python_rule(dtype):
    rng = np.random.default_rng(0)
    x, y = blobs(rng, 15, 3, 5)
    x = x.astype(dtype)
    order = rng.permutation(len(y)).astype(np.int64)
    for binary, yy in ((True, (y == 1).astype(np.int64)), (False, y)):
        units = 1 if binary else 3
        w1, b1 = np.zeros((units, 5)), np.zeros(units)
        w2, b2 = w1.copy(), b1.copy()
        m1 = models._kernel()(x, yy, order, w1, b1, 0.5, binary)
        m2 = models._perceptron_epoch_py(x, yy, order, w2, b2, 0.5, binary)
        assert m1 == m2 > 0
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)


def test_binary_converges_on_separable_data():
    rng = np.random.default_rng(1)
    x, y = separable(rng, 400, 10)
    p = models.Perceptron(10, seed=0).fit(x, y, epochs=200)
    assert p.errors_[-1] == 0                   # an epoch without mistakes: separated
    assert p.score(x, y) == 1.0
    assert p.predict(x).dtype == np.int64


def test_logical_and_or_but_not_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    for y in ([0, 0, 0, 1], [0, 1, 1, 1]):
        assert models.Perceptron(2, seed=0).fit(x, np.array(y), epochs=50).score(x, y) == 1.0
    xor = models.Perceptron(2, seed=0).fit(x, np.array([0, 1, 1, 0]), epochs=50)
    assert xor.errors_[-1] > 0 and len(xor.errors_) == 50     # never separates XOR


def test_one_vs_rest_multiclass():
    rng = np.random.default_rng(2)
    x, y = blobs(rng, 50, 4, 6)
    p = models.Perceptron(6, n_classes=4, lr=0.5, seed=3).fit(x, y, epochs=100)
    assert p.weights.shape == (4, 6)
    assert p.score(x, y) == 1.0
    assert p.decision_function(x).shape == (200, 4)


def test_mnist_shaped_uint8_images():
    """(N, 28, 28) uint8 'digits': class k lights up the k-th 7x7 block of a 4x4 grid."""
    rng = np.random.default_rng(4)
    n, k = 300, 10
    y = rng.integers(0, k, n)
    img = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 4)
        img[i, 7 * r:7 * r + 7, 7 * q:7 * q + 7] = 255
    p = models.Perceptron(784, n_classes=k, seed=0).fit(img, y, epochs=20)
    assert p.score(img, y) == 1.0
    assert p.predict(img[:5]).tolist() == y[:5].tolist()


def test_fit_is_reproducible_with_seed():
    rng = np.random.default_rng(5)
    x, y = separable(rng, 100, 4)
    a = models.Perceptron(4, seed=9).fit(x, y, epochs=3)
    b = models.Perceptron(4, seed=9).fit(x, y, epochs=3)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert a.errors_ == b.errors_


def test_perceptron_bad_calls():
    p = models.Perceptron(3)
    with pytest.raises(ShapeError, match="3 features"):
        p.fit(np.zeros((4, 2)), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"y\[1\] = 2 is not a label in \[0, 2\)"):
        p.fit(np.zeros((3, 3)), np.array([0, 2, 1]))
    with pytest.raises(DTypeError, match="integer class labels"):
        p.fit(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ShapeError, match="empty batch"):
        p.predict(np.zeros((0, 3)))
    with pytest.raises(ShapeError, match=r"shape \(4,\)"):
        p.fit(np.zeros((4, 3)), np.zeros(3, int))
    with pytest.raises(ValueError, match="lr must be"):
        models.Perceptron(3, lr=float("nan"))
    with pytest.raises(ValueError, match="n_classes"):
        models.Perceptron(3, n_classes=1)
    with pytest.raises(DTypeError, match="float or uint8"):
        p.predict(np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError, match="epochs"):
        p.fit(np.zeros((2, 3)), np.array([0, 1]), epochs=0)


def test_softmax_regression_and_mlp_factories():
    sr = models.SoftmaxRegression(784, 10, dtype=np.float64)
    assert isinstance(sr, fastnn.Sequential) and sr.dtype == np.float64
    assert sr.count_params() == 7850 and not sr.flat_params.any()
    mlp = models.MLP([20, 16, 12, 5], seed=1)
    assert [l.activation for l in mlp] == ["relu", "relu", None]
    assert mlp.dtype == np.float32
    again = models.MLP([20, 16, 12, 5], seed=1)
    np.testing.assert_array_equal(mlp.flat_params, again.flat_params)
    # "torch" init: uniform(+-1/sqrt(fan_in)) for weights and biases
    w = mlp[0].weight.data
    assert np.abs(w).max() <= 1 / np.sqrt(20) and np.abs(mlp[0].bias.data).max() > 0
    with pytest.raises(ValueError, match="at least"):
        models.MLP([5])
