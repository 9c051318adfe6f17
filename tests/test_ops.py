"""fastnn.ops (the tutorial's TensorFlow-named ops) against plain numpy formulas."""
import numpy as np
import pytest

import fastnn
from fastnn.errors import DTypeError, ShapeError


def np_softmax(x, axis):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_one_hot_basic_and_options():
    got = fastnn.one_hot(np.array([[0, 2], [1, 1]]), 3)
    assert got.shape == (2, 2, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.eye(3, dtype=np.float32)[[[0, 2], [1, 1]]])
    got = fastnn.one_hot([1, 0], 2, on_value=5, off_value=-1, dtype=np.int16)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, [[-1, 5], [5, -1]])
    assert fastnn.one_hot(np.zeros(0, np.int64), 4).shape == (0, 4)
    assert fastnn.one_hot(np.uint8(3), 5).tolist() == [0, 0, 0, 1, 0]


def test_one_hot_errors():
    with pytest.raises(ValueError, match=r"indices\[1\] = 3 is outside \[0, 3\)"):
        fastnn.one_hot([0, 3], 3)
    with pytest.raises(ValueError, match=r"indices\[0, 1\] = -1 is outside"):
        fastnn.one_hot([[0, -1]], 3)
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        fastnn.one_hot([0], 0)
    with pytest.raises(TypeError, match="depth must be a positive integer"):
        fastnn.one_hot([0], 2.0)
    with pytest.raises(DTypeError, match="indices must be integers"):
        fastnn.one_hot([0.0, 1.0], 2)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((5,), -1), ((4, 7), -1), ((4, 7), 0), ((2, 3, 5), 1),
                                        ((2, 3, 5), -3), ((3, 0), 0), ((0, 4), 1)])
def test_softmax_log_softmax_any_axis(dtype, shape, axis):
    x = (np.random.default_rng(len(shape)).standard_normal(shape) * 3).astype(dtype)
    tol = {np.float16: 2e-3, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    for fn, want in ((fastnn.softmax, np_softmax(x, axis)),
                     (fastnn.log_softmax, np.log(np_softmax(x, axis)))):
        before = x.copy()
        got = fn(x, axis=axis)
        assert got.shape == shape and got.dtype == dtype
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)
        np.testing.assert_array_equal(x, before)          # input untouched


def test_softmax_errors():
    with pytest.raises(DTypeError, match="x must be float16, float32 or float64"):
        fastnn.softmax(np.zeros(3, np.int32))
    with pytest.raises(ShapeError, match="axis 2 is out of range for an array of rank 2"):
        fastnn.softmax(np.zeros((2, 2)), axis=2)
    with pytest.raises(TypeError, match="axis must be an integer"):
        fastnn.log_softmax(np.zeros((2, 2)), axis=1.0)
    with pytest.raises(ShapeError, match="at least one dimension"):
        fastnn.softmax(np.float64(1.0))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cross_entropy_with_probabilities(dtype):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((6, 5)) * 2).astype(dtype)
    t = rng.random((6, 5))
    t = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    got = fastnn.softmax_cross_entropy_with_logits(labels=t, logits=z)
    want = -(t.astype(np.float64) * np.log(np_softmax(z, 1))).sum(axis=1)
    assert got.shape == (6,) and got.dtype == dtype
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol)
    assert fastnn.softmax_cross_entropy_with_logits(
        labels=np.zeros((0, 3), dtype), logits=np.zeros((0, 3), dtype)).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sparse_cross_entropy(dtype):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((9, 4)) * 3).astype(dtype)
    y = rng.integers(0, 4, 9)
    got = fastnn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)
    want = -np.log(np_softmax(z, 1))[np.arange(9), y]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float64), want,
                               rtol=2e-3 if dtype == np.float16 else 1e-5)
    dense = fastnn.softmax_cross_entropy_with_logits(labels=fastnn.one_hot(y, 4, dtype=dtype),
                                                     logits=z)
    np.testing.assert_allclose(dense.astype(np.float64), got.astype(np.float64), rtol=2e-3)
    big = np.array([[1e4, -1e4]], np.float32)
    assert np.isfinite(fastnn.sparse_softmax_cross_entropy_with_logits(labels=[1], logits=big))


def test_cross_entropy_errors():
    z = np.zeros((3, 4), np.float32)
    t = np.zeros((3, 4), np.float32)
    xent = fastnn.softmax_cross_entropy_with_logits
    sparse = fastnn.sparse_softmax_cross_entropy_with_logits
    with pytest.raises(TypeError, match="positional"):
        xent(t, z)
    with pytest.raises(ShapeError, match="same shape"):
        xent(labels=t[:2], logits=z)
    with pytest.raises(DTypeError, match="same dtype"):
        xent(labels=t.astype(np.float64), logits=z)
    with pytest.raises(DTypeError, match="logits must be float16, float32 or float64"):
        xent(labels=t, logits=z.astype(np.int32))
    with pytest.raises(ShapeError, match="logits must be 2-D"):
        xent(labels=t[0], logits=z[0])
    with pytest.raises(ValueError, match=r"labels\[2\] = 4 is not a class index in \[0, 4\)"):
        sparse(labels=[0, 1, 4], logits=z)
    with pytest.raises(DTypeError, match="labels must be integers"):
        sparse(labels=[0.0, 1.0, 2.0], logits=z)
    with pytest.raises(ShapeError, match=r"labels must have shape \[batch\] = \(3,\)"):
        sparse(labels=[0, 1], logits=z)
    with pytest.raises(ShapeError, match="at least one class"):
        sparse(labels=[0], logits=np.zeros((1, 0), np.float32))


def test_argmax_and_accuracy():
    x = np.array([[1, 3, 3], [5, 0, 1]])
    np.testing.assert_array_equal(fastnn.argmax(x), [1, 0])
    np.testing.assert_array_equal(fastnn.argmax(x, axis=0), [1, 0, 0])
    assert fastnn.argmax(x).dtype == np.int64
    with pytest.raises(ShapeError, match="has length 0"):
        fastnn.argmax(np.zeros((2, 0)))
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    acc = fastnn.accuracy(probs, [1, 1, 1, 0])
    assert acc == 0.75 and type(acc) is float
    assert fastnn.accuracy(probs, fastnn.one_hot([1, 0, 1, 0], 2)) == 1.0
    with pytest.raises(ValueError, match="empty batch"):
        fastnn.accuracy(np.zeros((0, 2)), np.zeros(0, np.int64))
    with pytest.raises(ShapeError, match="labels has 3 entries for 4 rows"):
        fastnn.accuracy(probs, [1, 1, 1])
    with pytest.raises(ValueError, match=r"labels\[0\] = 2 is not a class index"):
        fastnn.accuracy(probs, [2, 1, 1, 0])
    with pytest.raises(DTypeError, match="1-D labels must be integer"):
        fastnn.accuracy(probs, [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ShapeError, match=r"one-hot labels must have shape \(4, 2\)"):
        fastnn.accuracy(probs, np.zeros((4, 3)))
    with pytest.raises(ShapeError, match="must be 2-D"):
        fastnn.accuracy(probs[0], [1])
