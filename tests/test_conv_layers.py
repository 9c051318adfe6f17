"""Image layers (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D, BatchNorm2D) and convnets.

Every layer is checked against a plain numpy spec written here (loops over the
kernel window, no im2col: independent of the kernels' own reference) and its
backward against central finite differences in float64.  Then the plumbing:
Sequential (image input, ReLU-mask fusion, summary), get_config, PyTorch
weight layouts, BatchNorm's buffers in checkpoints, the lenet5/convnet presets.
"""
import os

import numpy as np
import pytest

import fastnn
from fastnn import layers as L
from fastnn.errors import DTypeError, ShapeError
from fastnn.fusion import NotFusable

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------ numpy specs

def conv_spec(x, w, b, stride, pads, relu=False):
    """y[n,i,j,o] = b[o] + sum_{kh,kw,c} xp[n, i*sh+kh, j*sw+kw, c] w[kh,kw,c,o]."""
    t, bo, le, r = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (t, bo), (le, r), (0, 0)))
    kh_, kw_, _, cout = w.shape
    sh, sw = stride
    oh = (xp.shape[1] - kh_) // sh + 1
    ow = (xp.shape[2] - kw_) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, cout))
    for kh in range(kh_):
        for kw in range(kw_):
            patch = xp[:, kh:kh + sh * (oh - 1) + 1:sh, kw:kw + sw * (ow - 1) + 1:sw, :]
            y += patch @ w[kh, kw].astype(np.float64)
    if b is not None:
        y += b
    return np.maximum(y, 0) if relu else y


def pool_spec(x, pool, stride, op):
    ph, pw = pool
    sh, sw = stride
    oh, ow = (x.shape[1] - ph) // sh + 1, (x.shape[2] - pw) // sw + 1
    y = np.empty((x.shape[0], oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            y[:, i, j, :] = op(x[:, i * sh:i * sh + ph, j * sw:j * sw + pw, :], axis=(1, 2))
    return y


def bn_spec(x, gamma, beta, mean, var, eps):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def numeric_grad(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (in place)."""
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ Conv2D

CONV_CASES = [
    # (N, H, W, Cin, Cout, kernel, stride, padding)
    (2, 6, 5, 2, 3, 3, 1, "valid"),
    (2, 6, 5, 2, 3, 3, 1, "same"),
    (1, 7, 7, 1, 2, 3, 2, "same"),       # stride 2, same, batch 1, one channel
    (2, 7, 6, 3, 2, 3, 2, "valid"),
    (2, 5, 5, 2, 2, 2, 1, "same"),       # even kernel: 0 before, 1 after
    (3, 4, 4, 3, 5, 1, 1, 0),            # 1x1
    (2, 5, 6, 2, 3, (3, 2), (2, 1), 1),  # int padding, rectangular kernel and stride
    (1, 4, 4, 1, 1, 5, 1, (1, 0, 2, 1)),  # 4-tuple padding, kernel larger than the input
]


def _pads(layer, x):
    return layer.padding_for(x.shape[1], x.shape[2])


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", [None, "relu"])
def test_conv_forward_matches_spec(case, dtype, act):
    n, h, w, cin, cout, k, s, p = case
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, activation=act, dtype=dtype)
    layer.reset_parameters(1)
    x = rng().standard_normal((n, h, w, cin)).astype(dtype)
    y = layer.forward(x)
    want = conv_spec(x, layer.weight.data, layer.bias.data, layer.stride, _pads(layer, x),
                     relu=act == "relu")
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    assert y.shape == layer.output_shape(x.shape)


def test_same_padding_rule():
    # stride 1: (K-1)//2 before, the rest after; stride 2: output ceil(H / 2)
    assert L.Conv2D(1, 1, 5, padding="same").padding_for(28, 28) == (2, 2, 2, 2)
    assert L.Conv2D(1, 1, 4, padding="same").padding_for(9, 9) == (1, 2, 1, 2)
    assert L.Conv2D(1, 1, 3, stride=2, padding="same").output_shape((1, 7, 8, 1)) == (1, 4, 4, 1)
    assert L.Conv2D(1, 1, 3, padding=(1, 2)).padding_for(5, 5) == (1, 1, 2, 2)


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_conv_backward_finite_differences(case):
    n, h, w, cin, cout, k, s, p = case
    layer = L.Conv2D(cin, cout, k, stride=s, padding=p, dtype=np.float64)
    layer.reset_parameters(2)
    x = rng(3).standard_normal((n, h, w, cin))
    g = rng(4).standard_normal(layer.output_shape(x.shape))

    def loss():
        return float((layer.forward(x) * g).sum())

    loss()
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(layer.weight.grad, numeric_grad(loss, layer.weight.data),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(layer.bias.grad, numeric_grad(loss, layer.bias.data),
                               rtol=1e-6, atol=1e-8)
    # gradients accumulate
    wg = layer.weight.grad.copy()
    loss()
    layer.backward(g, input_grad=False)
    np.testing.assert_allclose(layer.weight.grad, 2 * wg, rtol=1e-12)


def test_conv_relu_backward_and_masks():
    layer = L.Conv2D(2, 3, 3, padding="same", activation="relu", dtype=np.float64)
    layer.reset_parameters(5)
    x = rng(6).standard_normal((2, 5, 5, 2))
    y = layer.forward(x)
    assert layer.relu_output() is y
    g = rng(7).standard_normal(y.shape)
    mask = rng(8).standard_normal(x.shape)
    dx = layer.backward(g, dx_mask=mask)
    plain = L.Conv2D(2, 3, 3, padding="same", dtype=np.float64)
    plain.weight.data[...] = layer.weight.data
    plain.bias.data[...] = layer.bias.data
    plain.forward(x)
    want = plain.backward(g * (y > 0))
    np.testing.assert_allclose(dx, want * (mask > 0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.weight.grad, plain.weight.grad, rtol=1e-12)
    # premasked: dout is already dL/dz
    layer.zero = layer.weight.grad.fill(0)
    layer.forward(x)
    dx2 = layer.backward(g * (y > 0), premasked=True)
    np.testing.assert_allclose(dx2, want, rtol=1e-12, atol=1e-14)
    assert L.Conv2D(1, 1, 3).relu_output() is None


def test_conv_one_channel_three_d_input_and_no_bias():
    layer = L.Conv2D(1, 2, 3, use_bias=False, dtype=np.float64)
    layer.reset_parameters(3)          # seeded: the same weights on every run
    assert [p.local_name for p in layer.parameters()] == ["weight"]
    x = rng().standard_normal((2, 5, 5))
    y = layer.forward(x)
    # atol: the kernel and the reference sum in different orders, so an output that
    # cancels to ~1e-8 can differ by ~1e-17 (failed once at rtol alone, random weights)
    np.testing.assert_allclose(y, conv_spec(x[..., None], layer.weight.data, None, (1, 1),
                                            (0, 0, 0, 0)), rtol=1e-12, atol=1e-14)
    dx = layer.backward(np.ones_like(y))
    assert dx.shape == x.shape


def test_conv_out_workspace_is_used():
    layer = L.Conv2D(2, 3, 3)
    x = rng().standard_normal((2, 5, 5, 2)).astype(np.float32)
    out = np.empty((2, 3, 3, 3), np.float32)
    assert layer.forward(x, out=out) is out
    dx = np.empty_like(x)
    assert layer.backward(np.ones_like(out), dx=dx) is dx


# ------------------------------------------------------------------ PyTorch layouts

def test_torch_weight_round_trip():
    layer = L.Conv2D(3, 4, (5, 2))
    t = layer.weight_to_torch()
    assert t.shape == (4, 3, 5, 2)
    assert t[1, 2, 3, 0] == layer.weight.data[3, 0, 2, 1]
    np.testing.assert_array_equal(L.Conv2D.weight_from_torch(t), layer.weight.data)
    # Dense after Flatten: torch flattens NCHW (c, h, w), fastnn NHWC (h, w, c)
    x = rng().standard_normal((2, 3, 4, 5))          # NHWC, C = 5
    wt = rng(1).standard_normal((7, 60))              # torch Linear (out, in) over NCHW features
    torch_out = x.transpose(0, 3, 1, 2).reshape(2, -1) @ wt.T
    wf = L.dense_weight_from_torch(wt, chw=(5, 3, 4))
    np.testing.assert_allclose(x.reshape(2, -1) @ wf, torch_out, rtol=1e-12)
    np.testing.assert_array_equal(L.dense_weight_to_torch(wf, hwc=(3, 4, 5)), wt)
    np.testing.assert_array_equal(L.dense_weight_to_torch(L.dense_weight_from_torch(wt)), wt)


def test_conv_torch_init_bounds():
    layer = L.Conv2D(6, 16, 5)                        # fan_in 150: U(+-1/sqrt(150))
    layer.reset_parameters(0)
    a = 1 / np.sqrt(150)
    for p in (layer.weight.data, layer.bias.data):
        assert np.abs(p).max() <= a and np.abs(p).max() > 0.9 * a
    he = L.Conv2D(6, 16, 5, init="he")
    assert 0.8 < he.weight.data.std() / np.sqrt(2 / 150) < 1.2
    assert not L.Conv2D(2, 2, 3, init="zeros").weight.data.any()


# ------------------------------------------------------------------ pooling

POOL_CASES = [((2, 6, 6, 3), 2, None), ((1, 7, 5, 2), 3, 2), ((2, 5, 4, 1), (2, 3), (1, 1)),
              ((1, 4, 4, 2), 4, None)]


@pytest.mark.parametrize("shape,pool,stride", POOL_CASES)
@pytest.mark.parametrize("cls,op", [(L.MaxPool2D, np.max), (L.AvgPool2D, np.mean)])
def test_pool_forward_and_backward(shape, pool, stride, cls, op):
    layer = cls(pool, stride)
    x = rng(1).standard_normal(shape)        # distinct values: max is differentiable
    y = layer.forward(x)
    np.testing.assert_allclose(y, pool_spec(x, layer.pool_size, layer.stride, op), rtol=1e-12)
    assert y.shape == layer.output_shape(shape)
    g = rng(2).standard_normal(y.shape)

    def loss():
        return float((layer.forward(x) * g).sum())

    loss()
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    y32 = cls(pool, stride).forward(x.astype(np.float32))
    np.testing.assert_allclose(y32, y, rtol=1e-6, atol=1e-6)


def test_global_avg_pool():
    layer = L.GlobalAvgPool2D()
    x = rng().standard_normal((2, 3, 4, 5))
    y = layer.forward(x)
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)), rtol=1e-12)
    assert layer.output_shape(x.shape) == (2, 5)
    g = rng(1).standard_normal(y.shape)
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, np.broadcast_to(g[:, None, None, :] / 12, x.shape),
                               rtol=1e-12)


# ------------------------------------------------------------------ BatchNorm2D

def test_batchnorm_train_and_eval_semantics():
    bn = L.BatchNorm2D(3, momentum=0.2, eps=1e-3, dtype=np.float64)
    bn.gamma.data[...] = [1.0, 2.0, 0.5]
    bn.beta.data[...] = [0.0, -1.0, 3.0]
    x = rng().normal(2.0, 3.0, (4, 5, 6, 3))
    y = bn.forward(x)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))      # biased, for normalising
    np.testing.assert_allclose(y, bn_spec(x, bn.gamma.data, bn.beta.data, mean, var, 1e-3),
                               rtol=1e-12, atol=1e-12)
    m = 4 * 5 * 6
    np.testing.assert_allclose(bn.running_mean, 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.8 + 0.2 * var * m / (m - 1), rtol=1e-12)
    # eval: running statistics, and they do not move
    bn.eval()
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    x2 = rng(1).standard_normal((2, 5, 6, 3))
    y2 = bn.forward(x2)
    np.testing.assert_allclose(y2, bn_spec(x2, bn.gamma.data, bn.beta.data, rm, rv, 1e-3),
                               rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, rm)
    np.testing.assert_array_equal(bn.running_var, rv)
    assert [n for n, _ in bn.buffers()] == ["running_mean", "running_var"]
    assert [p.local_name for p in bn.parameters()] == ["gamma", "beta"]


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_backward_finite_differences(training):
    bn = L.BatchNorm2D(2, dtype=np.float64)
    bn.gamma.data[...] = [1.5, -0.7]
    bn.beta.data[...] = [0.2, 0.1]
    bn.running_mean[...] = [0.3, -0.2]
    bn.running_var[...] = [1.7, 0.6]
    bn.train(training)
    x = rng(2).standard_normal((3, 2, 3, 2))
    g = rng(3).standard_normal(x.shape)
    state = (bn.running_mean.copy(), bn.running_var.copy())

    def loss():
        bn.running_mean[...], bn.running_var[...] = state    # no drift between probes
        return float((bn.forward(x) * g).sum())

    loss()
    dx = bn.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(bn.gamma.grad, numeric_grad(loss, bn.gamma.data), rtol=1e-6)
    np.testing.assert_allclose(bn.beta.grad, numeric_grad(loss, bn.beta.data), rtol=1e-6)


def test_batchnorm_in_a_model_state_dict_and_checkpoint(tmp_path):
    model = fastnn.Sequential([L.Conv2D(1, 4, 3, padding="same"), L.BatchNorm2D(4),
                               L.ReLU(), L.GlobalAvgPool2D(), L.Dense(4, 3)], seed=0)
    x = rng().standard_normal((6, 5, 5, 1)).astype(np.float32)
    model(x)
    model(x * 2 + 1)
    bn = model[1]
    assert bn.running_mean.any() and not np.allclose(bn.running_var, 1)
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var"]
    sd = model.state_dict()
    assert "1.running_var" in sd
    path = fastnn.save(model, tmp_path / "bn.npz")
    loaded = fastnn.load(path)
    np.testing.assert_array_equal(loaded[1].running_mean, bn.running_mean)
    np.testing.assert_array_equal(loaded[1].running_var, bn.running_var)
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded(x), model(x))
    other = fastnn.Sequential.from_config(model.get_config())
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other[1].running_var, bn.running_var)


# ------------------------------------------------------------------ config, fusion contract

IMAGE_LAYERS = [
    lambda: L.Conv2D(3, 4, (3, 2), stride=(2, 1), padding="same", activation="relu",
                     use_bias=False, init="he", dtype=np.float64),
    lambda: L.Conv2D(1, 2, 5, padding=(1, 2, 3, 4)),
    lambda: L.MaxPool2D(3, 2), lambda: L.AvgPool2D((2, 3)), lambda: L.GlobalAvgPool2D(),
    lambda: L.BatchNorm2D(5, momentum=0.3, eps=1e-4, dtype=np.float64),
]


@pytest.mark.parametrize("make", IMAGE_LAYERS)
def test_get_config_round_trip_and_not_fusable(make):
    layer = make()
    cfg = layer.get_config()
    again = L.layer_from_config(cfg)
    assert type(again) is type(layer) and again.get_config() == cfg
    import json
    assert json.loads(json.dumps(cfg)) == cfg
    with pytest.raises(NotFusable):
        layer.fusion_spec()


# ------------------------------------------------------------------ Sequential

def small_convnet(dtype=np.float64, seed=0):
    return fastnn.Sequential([
        L.Conv2D(1, 3, 3, padding="same", activation="relu", dtype=dtype),
        L.Conv2D(3, 4, 3, stride=2, activation="relu", dtype=dtype),
        L.MaxPool2D(2), L.Flatten(), L.Dense(16, 5, dtype=dtype)], seed=seed)


def test_sequential_convnet_gradients_match_finite_differences():
    # Conv2D(relu) -> Conv2D fuses the ReLU mask into the second layer's dx kernel
    model = small_convnet()
    x = rng(1).standard_normal((2, 9, 9, 1))
    g = rng(2).standard_normal((2, 5))

    def loss():
        return float((model(x) * g).sum())

    loss()
    model.zero_grad()
    dx = model.backward(g)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-5, atol=1e-8)
    num = numeric_grad(loss, model.flat_params)
    np.testing.assert_allclose(model.flat_grads, num, rtol=1e-5, atol=1e-8)


def test_sequential_feeds_uint8_images():
    model = small_convnet(np.float32)
    imgs = rng().integers(0, 256, (3, 9, 9)).astype(np.uint8)
    y = model(imgs)
    want = model(imgs[..., None].astype(np.float32) / 255)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    assert model.input_features() is None


def test_sequential_checks_channels():
    with pytest.raises(ShapeError, match=r"layer 2 \(Conv2D\) expects 5 input channels but "
                                         r"the previous layer gives 4"):
        fastnn.Sequential([L.Conv2D(1, 4, 3), L.MaxPool2D(2), L.Conv2D(5, 2, 3)])
    with pytest.raises(ShapeError, match=r"layer 1 \(BatchNorm2D\) expects 3"):
        fastnn.Sequential([L.Conv2D(1, 4, 3), L.BatchNorm2D(3)])
    with pytest.raises(ShapeError, match=r"layer 2 \(Dense\) expects 5 input features"):
        fastnn.Sequential([L.Conv2D(1, 4, 3), L.GlobalAvgPool2D(), L.Dense(5, 2)])


BAD = [
    (lambda: L.Conv2D(3, 4, 3).forward(np.zeros((2, 5, 5), np.float32)), ShapeError,
     r"Conv2D: x must be 4-D NHWC"),
    (lambda: L.Conv2D(3, 4, 3).forward(np.zeros((2, 5, 5, 2), np.float32)), ShapeError,
     r"Conv2D: x must have 3 channels .* got shape \(2, 5, 5, 2\)"),
    (lambda: L.Conv2D(1, 4, 7, padding=1).forward(np.zeros((2, 4, 4, 1), np.float32)),
     ShapeError, r"Conv2D: the kernel 7x7 is larger than the padded input 6x6"),
    (lambda: L.Conv2D(1, 4, 3).forward(np.zeros((2, 5, 5, 1))), DTypeError,
     r"Conv2D: x must have dtype float32"),
    (lambda: L.MaxPool2D(3).forward(np.zeros((1, 2, 5, 1), np.float32)), ShapeError,
     r"MaxPool2D: the pool 3x3 is larger than the input 2x5"),
    (lambda: L.AvgPool2D(2).forward(np.zeros((4, 4), np.float32)), ShapeError,
     r"AvgPool2D: x must be 4-D NHWC"),
    (lambda: L.BatchNorm2D(3).forward(np.zeros((1, 1, 1, 3), np.float32)), ShapeError,
     r"BatchNorm2D: training needs more than one value per channel"),
    (lambda: L.Conv2D(1, 2, 0), ValueError, r"Conv2D: kernel_size must be a positive integer"),
    (lambda: L.Conv2D(1, 2, 3, padding="full"), ValueError, r"Conv2D: padding must be"),
    (lambda: L.MaxPool2D(2, stride=0), ValueError, r"MaxPool2D: stride must be a positive"),
    (lambda: L.Conv2D(1, 2, 3, activation="tanh"), ValueError, r"activation must be one of"),
    (lambda: L.Conv2D(1, 2, 3).backward(np.zeros((1, 1, 1, 2), np.float32)), RuntimeError,
     r"Conv2D.backward called before forward"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_is_refused_clearly(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------ presets, fit, callbacks

LENET5_SUMMARY = """\
#  Layer         Output shape        Params
-------------------------------------------
0  Conv2D(relu)  (None, 28, 28, 6)      156
1  MaxPool2D     (None, 14, 14, 6)        0
2  Conv2D(relu)  (None, 10, 10, 16)   2,416
3  MaxPool2D     (None, 5, 5, 16)         0
4  Flatten       (None, 400)              0
5  Dense(relu)   (None, 120)         48,120
6  Dense(relu)   (None, 84)          10,164
7  Dense         (None, 10)             850
-------------------------------------------
Total params: 61,706 (float32, 246,824 bytes)"""


def test_lenet5_summary():
    from fastnn import presets
    model = presets.build_model(presets.get_preset("lenet5"), seed=0)
    assert model.summary(input_shape=(28, 28, 1), print_fn=None) == LENET5_SUMMARY
    assert model.summary(input_shape=(28, 28), print_fn=None) == LENET5_SUMMARY
    assert "?" in model.summary(print_fn=None)          # no input seen yet: shapes unknown
    model(np.zeros((2, 28, 28), np.uint8))
    assert model.summary(print_fn=None) == LENET5_SUMMARY   # inferred from the last input


def test_convnet_preset_shapes_and_config_round_trip():
    from fastnn import presets
    p = presets.get_preset("convnet")
    model = presets.build_model(p, seed=0)
    assert model.count_params() == 34826                  # Keras' mnist_convnet: 34,826
    assert model(np.zeros((3, 28, 28), np.uint8)).shape == (3, 10)
    again = fastnn.Sequential.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    assert presets.Preset.from_dict(p.to_dict()) == p
    old = {k: v for k, v in presets.get_preset("mlp").to_dict().items() if k != "arch"}
    assert presets.Preset.from_dict(old).arch == "mlp"     # recipes stored before `arch`


@pytest.fixture(scope="module")
def mnist_small():
    from fastnn.datasets import mnist
    (x, y), (xt, yt) = mnist.load_data()
    return (x[:2000], y[:2000]), (xt[:1000], yt[:1000])


def test_lenet5_learns_mnist_subset(mnist_small):
    from fastnn import presets
    (x, y), (xt, yt) = mnist_small
    p = presets.get_preset("lenet5")
    model = presets.build_model(p, seed=0)
    opt = presets.build_optimizer(p, model)
    hist = model.fit(x, y, epochs=2, batch_size=32, loss=presets.build_loss(p), optimizer=opt,
                     validation_data=(xt, yt), seed=0, verbose=0)
    assert hist.params["engine"] == "general"
    assert "Conv2D" in hist.params["why_not_fused"]
    assert hist.history["val_accuracy"][-1] > 0.8
    assert model.evaluate(xt, yt)["accuracy"] == hist.history["val_accuracy"][-1]
    assert model.predict(xt[:5]).shape == (5, 10)


def test_convnet_fit_callbacks_and_bitwise_resume(mnist_small, tmp_path):
    from fastnn import callbacks as cbs
    from fastnn import optim
    from fastnn.losses import SoftmaxCrossEntropy
    from fastnn.tensorboard import read_events
    (x, y), (xt, yt) = mnist_small
    x, y, xt, yt = x[:256], y[:256], xt[:100], yt[:100]

    def build():
        model = fastnn.Sequential([
            L.Conv2D(1, 4, 3, activation="relu"), L.MaxPool2D(2), L.BatchNorm2D(4),
            L.Conv2D(4, 8, 3, stride=2, padding="same", activation="relu"),
            L.Flatten(), L.Dropout(0.3, seed=1), L.Dense(392, 10)], seed=0)
        return model, optim.Adam(model.parameters(), lr=1e-3)

    kw = dict(batch_size=64, loss=SoftmaxCrossEntropy(), validation_data=(xt, yt), seed=0,
              verbose=0)
    model, opt = build()
    model.fit(x, y, epochs=3, optimizer=opt, **kw)

    part, popt = build()
    ck = str(tmp_path / "ck.npz")
    log = tmp_path / "runs"
    part.fit(x, y, epochs=2, optimizer=popt, callbacks=[
        cbs.ModelCheckpoint(ck), cbs.CSVLogger(str(tmp_path / "log.csv")),
        cbs.TensorBoard(str(log)), cbs.EarlyStopping(monitor="val_loss", patience=5)], **kw)
    loaded, ostate, extra = fastnn.load(ck, with_optimizer=True)
    lopt = optim.optimizer_from_state(loaded.parameters(), ostate)
    loaded.fit(x, y, epochs=3, optimizer=lopt, resume=extra, **kw)
    np.testing.assert_array_equal(loaded.flat_params, model.flat_params)
    for (_, a), (_, b) in zip(loaded.named_buffers(), model.named_buffers()):
        np.testing.assert_array_equal(a, b)
    assert len(open(tmp_path / "log.csv").read().strip().splitlines()) == 3   # header + 2
    histos = {v["tag"]: v["histo"] for ev in read_events(log / "train")
              for v in ev.get("summary", []) if "histo" in v}
    conv_w = [t for t in histos if "0.weight" in t or "0/weight" in t]
    assert conv_w and histos[conv_w[0]]["num"] == 3 * 3 * 1 * 4      # the conv kernel's values


# ------------------------------------------------------------------ against PyTorch

TORCH_FIXTURE = os.path.join(HERE, "fixtures", "lenet5_torch.npz")


def _live_torch_reference():
    pytest.importorskip("torch")
    import sys
    sys.path.insert(0, os.path.join(HERE, "..", "bench"))
    try:
        import make_lenet5_torch_fixture as mk
    finally:
        sys.path.pop(0)
    return mk.torch_reference()


@pytest.fixture(scope="module", params=["fixture", "live"])
def torch_ref(request):
    """bench/make_lenet5_torch_fixture.py's numbers: the committed file, then live torch
    (when it imports)."""
    if request.param == "live":
        return _live_torch_reference()
    with np.load(TORCH_FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _lenet5(ref, dtype):
    from fastnn import presets
    model = presets.build_model(presets.get_preset("lenet5"), dtype=dtype)
    model.flat_params[:] = ref["params"]
    return model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_lenet5_gradients_match_torch(torch_ref, dtype):
    from fastnn.losses import SoftmaxCrossEntropy
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-5)
    model = _lenet5(torch_ref, dtype)
    loss = SoftmaxCrossEntropy()
    logits = model(torch_ref["x"])
    value = loss(logits, torch_ref["y"])
    model.zero_grad()
    dx = model.backward(loss.backward())
    np.testing.assert_allclose(logits, torch_ref["logits"], **tol)
    np.testing.assert_allclose(value, torch_ref["loss"], **tol)
    np.testing.assert_allclose(model.flat_grads, torch_ref["grads"], **tol)
    np.testing.assert_allclose(dx, torch_ref["dx"], **tol)


def test_lenet5_adam_steps_match_torch(torch_ref):
    from fastnn import optim
    from fastnn.losses import SoftmaxCrossEntropy
    model = _lenet5(torch_ref, np.float64)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss = SoftmaxCrossEntropy()
    for step in range(len(torch_ref["adam_losses"])):
        opt.zero_grad()
        value = loss(model(torch_ref["x"]), torch_ref["y"])
        model.backward(loss.backward(), input_grad=False)
        opt.step()
        np.testing.assert_allclose(value, torch_ref["adam_losses"][step], rtol=1e-10)
    np.testing.assert_allclose(model.flat_params, torch_ref["adam_params"], rtol=1e-8,
                               atol=1e-12)


def test_torch_fixture_converts_with_fastnn_helpers():
    # the generator's plain transposes agree with Conv2D.weight_from_torch and
    # dense_weight_from_torch (flatten order NCHW -> NHWC)
    import sys
    sys.path.insert(0, os.path.join(HERE, "..", "bench"))
    try:
        import make_lenet5_torch_fixture as mk
    finally:
        sys.path.pop(0)
    _, _, weights = mk.make_inputs()
    parts = []
    for i, (w, b) in enumerate(weights):
        if w.ndim == 4:
            w = L.Conv2D.weight_from_torch(w)
        else:
            w = L.dense_weight_from_torch(w, chw=(16, 5, 5) if i == 2 else None)
        parts += [w.ravel(), b]
    np.testing.assert_array_equal(np.concatenate(parts), mk.to_fastnn(weights))


# ------------------------------------------------------------------ fused paths and buffers

def test_relu_backward_fused_into_maxpool_matches_unfused():
    """Sequential hands MaxPool2D the previous Conv2D's ReLU output as dx_mask: the pool
    keeps dy where its own output is > 0 and the conv skips its ReLU backward."""
    for dtype in (np.float32, np.float64):
        conv = L.Conv2D(1, 16, 3, activation="relu", dtype=dtype)
        pool = L.MaxPool2D(2)
        model = fastnn.Sequential([conv, pool, L.Flatten(), L.Dense(16 * 4 * 4, 3, dtype=dtype)],
                                  seed=3)
        x = rng(4).standard_normal((5, 10, 10, 1)).astype(dtype)
        g = rng(5).standard_normal((5, 3)).astype(dtype)
        model(x)
        model.zero_grad()
        model.backward(g, input_grad=False)
        fused = model.flat_grads.copy()
        # the same step layer by layer, the ReLU backward as its own pass
        y = conv.forward(x)
        p = pool.forward(y)
        d = model.layers[3]
        d.forward(p.reshape(5, -1))
        model.zero_grad()
        dp = d.backward(g).reshape(p.shape)
        dy = pool.backward(dp)
        assert pool.backward(dp, input_grad=False) is None
        conv.backward(dy)          # applies dy * (y > 0) itself
        np.testing.assert_allclose(fused, model.flat_grads,
                                   **({"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32
                                      else {"rtol": 1e-12, "atol": 1e-12}))
        with pytest.raises(ShapeError, match="dx_mask"):
            pool.backward(dp, dx_mask=y[:2])


@pytest.mark.parametrize("name", ["lenet5", "speedrun-cnn"])
def test_training_step_allocates_no_activation_sized_arrays(name):
    """After a warm-up step every forward/backward writes into reused buffers: the
    traced peak of five more steps stays far below one activation tensor."""
    import tracemalloc
    from fastnn import presets
    p = presets.get_preset(name)
    model = presets.build_model(p, seed=0)
    opt, loss = presets.build_optimizer(p, model), presets.build_loss(p)
    x = rng(6).integers(0, 256, (64, 28, 28)).astype(np.uint8)
    xb = np.multiply(x, np.float32(1 / 255), dtype=np.float32)
    y = rng(7).integers(0, 10, 64)

    def step():
        model.zero_grad()
        loss(model(xb), y)
        model.backward(loss.backward(), input_grad=False)
        opt.step()

    step()
    step()
    smallest_activation = 64 * 7 * 7 * 16 * 4        # bytes of the smallest conv output
    tracemalloc.start()
    try:
        for _ in range(5):
            step()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < smallest_activation / 2, peak


def test_batchnorm_reuses_its_buffers():
    bn = L.BatchNorm2D(4)
    x = rng(8).standard_normal((6, 5, 5, 4)).astype(np.float32)
    out = np.empty_like(x)
    bn.forward(x, out=out)
    xhat = bn._xhat
    y = bn.forward(x, out=out)
    assert y is out and bn._xhat is xhat
    np.testing.assert_allclose(xhat.reshape(x.shape), (x - x.mean((0, 1, 2)))
                               / np.sqrt(x.var((0, 1, 2)) + 1e-5), rtol=1e-4, atol=1e-5)


def test_speedrun_cnn_preset():
    from fastnn import presets
    p = presets.get_preset("speedrun-cnn")
    assert p.target_accuracy == 0.99 and p.arch == "speedrun-cnn"
    model = presets.build_model(p, seed=0)
    assert model(np.zeros((2, 28, 28), np.uint8)).shape == (2, 10)
    again = fastnn.Sequential.from_config(model.get_config())
    assert again.get_config() == model.get_config()
    assert p.arch_text().startswith(presets._ARCH_PREFIX["speedrun-cnn"])
