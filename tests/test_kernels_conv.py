"""The conv family: every variant against the float64 reference, the reference
against plain loops, the backward kernels against finite differences, paths
(scalar/AVX2, 1/2 threads, chunked batches), pooling ties/NaN and validation."""
import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from fastnn.errors import DTypeError, ShapeError
from fastnn.kernels.conv import reference as ref
from kernel_paths import variant_fixture

TOL = {np.float32: dict(rtol=2e-4, atol=2e-4), np.float64: dict(rtol=1e-10, atol=1e-10)}

# (variant, SIMD level): the c variant runs on both its AVX2 and scalar paths
variant = variant_fixture("conv")

# (N, H, W, Cin, KH, KW, Cout, stride, padding)
SHAPES = [
    (2, 7, 6, 3, 3, 3, 4, (1, 1), (0, 0, 0, 0)),
    (3, 9, 8, 2, 3, 3, 5, (2, 2), (1, 1, 1, 1)),       # stride 2, symmetric padding
    (2, 8, 7, 3, 3, 2, 4, (2, 1), (1, 0, 2, 1)),       # asymmetric stride and padding
    (4, 5, 5, 6, 1, 1, 3, (1, 1), (0, 0, 0, 0)),       # 1x1: no columns (direct GEMM)
    (2, 6, 7, 4, 1, 1, 5, (2, 2), (1, 0, 0, 1)),       # 1x1 with stride and padding
    (1, 11, 13, 1, 7, 7, 2, (2, 3), (3, 3, 3, 3)),     # 7x7, one channel, batch 1
    (1, 3, 3, 1, 3, 3, 1, (1, 1), (0, 0, 0, 0)),       # one output pixel
    (2, 4, 5, 2, 2, 2, 3, (3, 3), (5, 0, 0, 4)),       # windows entirely in the padding
    (5, 13, 11, 5, 5, 5, 17, (1, 1), (2, 2, 2, 2)),    # odd sizes, several GEMM groups
    (3, 12, 21, 1, 5, 5, 6, (2, 1), (2, 1, 2, 3)),     # one channel: the direct forward
    (2, 9, 10, 1, 3, 3, 8, (1, 1), (0, 0, 0, 0)),      # one channel, widest direct forward
    (3, 10, 12, 1, 3, 3, 32, (1, 1), (0, 0, 0, 0)),    # one channel, channels in vectors
    (2, 11, 9, 1, 5, 3, 16, (2, 3), (2, 1, 0, 2)),     # ... with stride and padding
    (2, 7, 8, 1, 3, 3, 40, (1, 2), (1, 1, 1, 1)),      # ... 4 + 1 channel vectors, odd OW
    (2, 9, 9, 1, 3, 3, 12, (1, 1), (1, 1, 1, 1)),      # 12: GEMM in float32, vectors in float64
    (2, 14, 14, 6, 5, 5, 16, (1, 1), (0, 0, 0, 0)),    # lenet5's conv2 (Cout % 32 == 16)
    (2, 7, 7, 3, 3, 3, 48, (1, 1), (1, 1, 1, 1)),      # Cout % 32 == 16 again, padded
    (2, 5, 6, 2, 2, 3, 5, (1, 1), (3, 0, 1, 4)),       # padding wider than the kernel
    (2, 6, 19, 8, 3, 2, 3, (1, 1), (0, 2, 1, 0)),      # 8 channels: the direct dx's widest
    (2, 5, 32, 1, 2, 2, 16, (1, 1), (0, 0, 0, 1)),     # one channel, 16: 4-pixel tiles + 2 + 1
    (2, 9, 11, 1, 3, 3, 24, (1, 1), (1, 1, 1, 1)),     # one channel, 3 channel vectors
]
IDS = ["3x3", "s2-pad", "asym", "1x1", "1x1-s2-pad", "7x7-c1-b1", "1px", "all-pad", "5x5-odd",
       "c1-direct", "c1-direct-8", "c1-wide-32", "c1-wide-s2", "c1-wide-40", "c1-wide-12",
       "lenet5-conv2", "cout48", "wide-pad", "cin8", "c1-wide-16-tiles", "c1-wide-24"]


def _data(shape, dtype, seed=0):
    N, H, W, Cin, KH, KW, Cout, st, pd = shape
    rng = np.random.default_rng(seed + N * 7 + H * 13 + KH * 101 + Cout)
    OH, OW = ref.out_size(H, W, KH, KW, st, pd)
    x = rng.standard_normal((N, H, W, Cin)).astype(dtype)
    w = rng.standard_normal((KH, KW, Cin, Cout)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)
    dy = rng.standard_normal((N, OH, OW, Cout)).astype(dtype)
    mask = rng.standard_normal(x.shape).astype(dtype)
    return x, w, b, dy, mask


def _conv_loops(x, w, b, st, pd):
    """The definition, one output pixel at a time (independent of im2col)."""
    N, H, W, Cin = x.shape
    KH, KW, _, Cout = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pd[0], pd[1]), (pd[2], pd[3]), (0, 0)))
    OH, OW = ref.out_size(H, W, KH, KW, st, pd)
    y = np.zeros((N, OH, OW, Cout))
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                win = xp[n, i * st[0]:i * st[0] + KH, j * st[1]:j * st[1] + KW]
                y[n, i, j] = np.einsum("abc,abco->o", win, w) + (0 if b is None else b)
    return y


# ---------------------------------------------------------------- the reference itself

@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_reference_matches_loops(shape):
    x, w, b, dy, mask = _data(shape, np.float64)
    st, pd = shape[7], shape[8]
    y = K.conv2d_forward(x, w, b, st, pd, variant="reference")
    np.testing.assert_allclose(y, _conv_loops(x, w, b, st, pd), rtol=1e-12, atol=1e-12)
    # backward kernels are the adjoints: <dy, conv(x)> = <dx, x> = <dw, w>
    dx = K.conv2d_backward_data(dy, w, x.shape, st, pd, variant="reference")
    dw = np.zeros_like(w)
    K.conv2d_backward_weights(x, dy, w.shape, st, pd, dw, variant="reference")
    y0 = K.conv2d_forward(x, w, None, st, pd, variant="reference")
    assert np.isclose(np.vdot(dy, y0), np.vdot(dx, x), rtol=1e-10)
    assert np.isclose(np.vdot(dy, y0), np.vdot(dw, w), rtol=1e-10)


def _fd(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        hi = f()
        a[i] = old - eps
        lo = f()
        a[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize("v", ["reference", "c"])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[4], (1, 5, 4, 2, 3, 3, 2, (2, 1), (1, 2, 0, 1))],
                         ids=["asym", "1x1-s2-pad", "small"])
def test_backward_matches_finite_differences(v, shape):
    x, w, b, dy, mask = _data(shape, np.float64, seed=4)
    st, pd = shape[7], shape[8]

    def loss():
        return float(np.vdot(dy, K.conv2d_forward(x, w, b, st, pd, variant=v)))

    dx = K.conv2d_backward_data(dy, w, x.shape, st, pd, variant=v)
    dw = np.zeros_like(w)
    db = np.zeros_like(b)
    K.conv2d_backward_weights(x, dy, w.shape, st, pd, dw, db, variant=v)
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- variants against the reference

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_conv_matches_reference(variant, dtype, shape):
    x, w, b, dy, mask = _data(shape, dtype)
    st, pd = shape[7], shape[8]
    for bias, act in ((b, None), (None, "relu"), (b, "relu")):
        want = K.conv2d_forward(x, w, bias, st, pd, act, variant="reference")
        got = K.conv2d_forward(x, w, bias, st, pd, act, variant=variant)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, **TOL[dtype])
    for m in (None, mask):
        want = K.conv2d_backward_data(dy, w, x.shape, st, pd, mask=m, variant="reference")
        got = K.conv2d_backward_data(dy, w, x.shape, st, pd, mask=m, variant=variant)
        np.testing.assert_allclose(got, want, **TOL[dtype])
    for acc in (True, False):
        start_w = np.full(w.shape, 0.5, dtype)
        start_b = np.full(b.shape, -0.25, dtype)
        want_w, want_b = start_w.copy(), start_b.copy()
        K.conv2d_backward_weights(x, dy, w.shape, st, pd, want_w, want_b, accumulate=acc,
                                  variant="reference")
        got_w, got_b = start_w.copy(), start_b.copy()
        assert K.conv2d_backward_weights(x, dy, w.shape, st, pd, got_w, got_b, accumulate=acc,
                                         variant=variant) is got_w
        np.testing.assert_allclose(got_w, want_w, **TOL[dtype])
        np.testing.assert_allclose(got_b, want_b, **TOL[dtype])
    only_w = np.zeros_like(w)      # dbias=None
    K.conv2d_backward_weights(x, dy, w.shape, st, pd, only_w, variant=variant)
    np.testing.assert_allclose(only_w, want_w - start_w if acc else want_w, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs(variant, dtype):
    shape = SHAPES[2]
    x, w, b, dy, mask = _data(shape, dtype, seed=9)
    st, pd = shape[7], shape[8]
    # the same values seen through strided views: every input is copied or read by stride
    xs = np.asfortranarray(x)
    ws = np.ascontiguousarray(w.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    bs = np.repeat(b, 2)[::2]
    dys = np.ascontiguousarray(dy[:, ::-1])[:, ::-1]
    ms = np.asfortranarray(mask)
    assert not (xs.flags.c_contiguous or ws.flags.c_contiguous or bs.flags.c_contiguous
                or dys.flags.c_contiguous)
    np.testing.assert_allclose(K.conv2d_forward(xs, ws, bs, st, pd, variant=variant),
                               K.conv2d_forward(x, w, b, st, pd, variant="reference"), **TOL[dtype])
    np.testing.assert_allclose(K.conv2d_backward_data(dys, ws, x.shape, st, pd, mask=ms,
                                                      variant=variant),
                               K.conv2d_backward_data(dy, w, x.shape, st, pd, mask=mask,
                                                      variant="reference"), **TOL[dtype])
    got, want = np.zeros_like(w), np.zeros_like(w)
    K.conv2d_backward_weights(xs, dys, w.shape, st, pd, got, variant=variant)
    K.conv2d_backward_weights(x, dy, w.shape, st, pd, want, variant="reference")
    np.testing.assert_allclose(got, want, **TOL[dtype])


# a shape with many GEMM groups and weight-gradient blocks
BIG = (9, 20, 18, 5, 3, 3, 7, (1, 1), (1, 1, 1, 1))


def _all_outputs(v, x, w, b, dy, mask, st, pd):
    y = K.conv2d_forward(x, w, b, st, pd, "relu", variant=v)
    dx = K.conv2d_backward_data(dy, w, x.shape, st, pd, mask=mask, variant=v)
    dw, db = np.ones_like(w), np.ones_like(b)
    K.conv2d_backward_weights(x, dy, w.shape, st, pd, dw, db, variant=v)
    return y, dx, dw, db


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [BIG, SHAPES[3], (6, 16, 40, 1, 5, 5, 6, (1, 1), (2, 2, 2, 2)),
                                   (7, 16, 18, 1, 3, 3, 32, (1, 1), (0, 0, 0, 0))],
                         ids=["3x3", "1x1", "c1-direct", "c1-wide"])
@pytest.mark.parametrize("small_plan", [False, True], ids=["plan", "chunked"])
def test_one_and_two_threads_identical(variant, dtype, shape, small_plan, monkeypatch):
    if small_plan:
        # many chunks of few images and many small row blocks: the same bits
        monkeypatch.setattr(ref, "COLS_CAP", 700)
        monkeypatch.setattr(ref, "ROW_BLOCK", 40)
        monkeypatch.setattr(ref, "MAX_BLOCKS", 5)
    x, w, b, dy, mask = _data(shape, dtype, seed=2)
    st, pd = shape[7], shape[8]
    with fastnn.threads(1):
        one = _all_outputs(variant, x, w, b, dy, mask, st, pd)
    with fastnn.threads(2):
        two = _all_outputs(variant, x, w, b, dy, mask, st, pd)
    want = _all_outputs("reference", x, w, b, dy, mask, st, pd)
    for a, c, r in zip(one, two, want):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_allclose(a, r, **TOL[dtype])


def test_buffers_are_reused(variant):
    shape = SHAPES[1]
    x, w, b, dy, mask = _data(shape, np.float32, seed=5)
    st, pd = shape[7], shape[8]
    n = K.conv2d_workspace_size(x.shape, w.shape, st, pd)
    ws = np.full(n + 3, np.nan, np.float32)         # larger than needed is fine
    y = np.empty(K.conv2d_forward(x, w, b, st, pd, variant="reference").shape, np.float32)
    dx = np.empty_like(x)
    dw = np.zeros_like(w)
    for _ in range(2):                               # the workspace's old contents never leak in
        assert K.conv2d_forward(x, w, b, st, pd, out=y, workspace=ws, variant=variant) is y
        assert K.conv2d_backward_data(dy, w, x.shape, st, pd, out=dx, workspace=ws,
                                      variant=variant) is dx
        K.conv2d_backward_weights(x, dy, w.shape, st, pd, dw, accumulate=False, workspace=ws,
                                  variant=variant)
    np.testing.assert_allclose(y, K.conv2d_forward(x, w, b, st, pd, variant="reference"),
                               **TOL[np.float32])
    np.testing.assert_allclose(dx, K.conv2d_backward_data(dy, w, x.shape, st, pd,
                                                          variant="reference"), **TOL[np.float32])
    with pytest.raises(ShapeError, match="workspace has 3 elements"):
        K.conv2d_forward(x, w, b, st, pd, workspace=ws[:3], variant=variant)
    with pytest.raises(DTypeError, match="workspace must have dtype float32"):
        K.conv2d_forward(x, w, b, st, pd, workspace=ws.astype(np.float64), variant=variant)


# ---------------------------------------------------------------- pooling

POOLS = [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 2)), ((1, 1), (1, 1)), ((2, 3), (3, 1))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xshape", [(3, 9, 8, 5), (1, 4, 4, 1), (2, 7, 5, 17)])
@pytest.mark.parametrize("pool,stride", POOLS)
def test_pooling_matches_reference(variant, dtype, xshape, pool, stride):
    rng = np.random.default_rng(sum(xshape) + pool[0])
    x = rng.standard_normal(xshape).astype(dtype)
    y, a = K.maxpool2d_forward(x, pool, stride, variant="reference")
    gy, ga = K.maxpool2d_forward(x, pool, stride, variant=variant)
    np.testing.assert_array_equal(gy, y)
    np.testing.assert_array_equal(ga, a)
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_allclose(K.maxpool2d_backward(dy, ga, x.shape, variant=variant),
                               K.maxpool2d_backward(dy, a, x.shape, variant="reference"),
                               **TOL[dtype])
    np.testing.assert_allclose(K.avgpool2d_forward(x, pool, stride, variant=variant),
                               K.avgpool2d_forward(x, pool, stride, variant="reference"),
                               **TOL[dtype])
    np.testing.assert_allclose(K.avgpool2d_backward(dy, x.shape, pool, stride, variant=variant),
                               K.avgpool2d_backward(dy, x.shape, pool, stride,
                                                    variant="reference"), **TOL[dtype])


def test_maxpool_ties_nan_and_overlaps(variant):
    # ties: the first maximum in row-major window order wins
    x = np.zeros((1, 3, 3, 2), np.float32)
    y, a = K.maxpool2d_forward(x, (2, 2), (1, 1), variant=variant)
    assert a[0, :, :, 0].tolist() == [[0, 1], [3, 4]]
    x[0, 1, 1, 0] = 5.0                     # shared by all four overlapping windows
    x[0, 2, 0, 1] = np.nan                  # a NaN wins over numbers
    x[0, 0, 0, 1] = 9.0
    y, a = K.maxpool2d_forward(x, (2, 2), (1, 1), variant=variant)
    assert a[0, :, :, 0].tolist() == [[4, 4], [4, 4]]
    assert a[0, :, :, 1].tolist() == [[0, 1], [6, 4]]
    assert np.isnan(y[0, 1, 0, 1]) and y[0, 0, 0, 1] == 9.0
    dx = K.maxpool2d_backward(np.ones_like(y), a, x.shape, variant=variant)
    assert dx[0, 1, 1, 0] == 4.0 and dx[..., 0].sum() == 4.0   # overlapping windows add
    assert K.maxpool2d_backward(np.ones_like(y), a, x.shape,
                                variant="reference")[0, 1, 1, 0] == 4.0


@pytest.mark.parametrize("v", ["reference", "c"])
def test_avgpool_backward_matches_finite_differences(v):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3))
    dy = rng.standard_normal(K.avgpool2d_forward(x, (3, 2), (1, 2)).shape)
    g = _fd(lambda: float(np.vdot(dy, K.avgpool2d_forward(x, (3, 2), (1, 2), variant=v))), x)
    np.testing.assert_allclose(K.avgpool2d_backward(dy, x.shape, (3, 2), (1, 2), variant=v), g,
                               rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pooling_threads_identical(variant, dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 28, 30, 12)).astype(dtype)
    outs = []
    for nt in (1, 2):
        with fastnn.threads(nt):
            y, a = K.maxpool2d_forward(x, (3, 3), (2, 2), variant=variant)
            dy = np.cos(y)
            outs.append((y, a, K.maxpool2d_backward(dy, a, x.shape, variant=variant),
                         K.avgpool2d_forward(x, (3, 3), (2, 2), variant=variant),
                         K.avgpool2d_backward(dy, x.shape, (3, 3), (2, 2), variant=variant)))
    for p, q in zip(*outs):
        np.testing.assert_array_equal(p, q)


# ---------------------------------------------------------------- validation

def test_bad_inputs_raise_clear_errors():
    x = np.zeros((2, 5, 5, 3), np.float32)
    w = np.zeros((3, 3, 3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"conv2d_forward: x must be 4-D"):
        K.conv2d_forward(x[0], w)
    with pytest.raises(ShapeError, match=r"w has 2 input channels .* x has 3"):
        K.conv2d_forward(x, w[:, :, :2])
    with pytest.raises(ShapeError, match=r"kernel 7x7 .* larger than the padded input 6x6"):
        K.conv2d_forward(x, np.zeros((7, 7, 3, 1), np.float32), padding=(1, 0, 0, 1))
    with pytest.raises(DTypeError, match=r"w has dtype float64 but x has float32"):
        K.conv2d_forward(x, w.astype(np.float64))
    with pytest.raises(ValueError, match=r"padding entries must be >= 0"):
        K.conv2d_forward(x, w, padding=(0, -1, 0, 0))
    with pytest.raises(TypeError, match=r"stride must hold ints"):
        K.conv2d_forward(x, w, stride=(1.5, 1))
    with pytest.raises(ValueError, match=r"must be C-contiguous"):
        K.conv2d_forward(x, w, out=np.zeros((2, 3, 3, 4, 2), np.float32)[..., 0])
    with pytest.raises(ShapeError, match=r"dy must have shape \(2, 3, 3, 4\)"):
        K.conv2d_backward_data(np.zeros((2, 3, 3, 5), np.float32), w, x.shape)
    with pytest.raises(ShapeError, match=r"pool \(6, 2\) does not fit"):
        K.maxpool2d_forward(x, (6, 2))
    with pytest.raises(ValueError, match=r"argmax entries must be in \[0, H\*W\)"):
        K.maxpool2d_backward(np.ones((1, 1, 1, 1)), np.array([[[[4]]]], np.int32), (1, 2, 2, 1))


# ---------------------------------------------------------------- every SIMD level (AVX-512 too)

LEVEL_SHAPES = [SHAPES[i] for i in (0, 8, 11, 12, 13, 15, 16, 19, 20)] + [
    (3, 13, 13, 32, 3, 3, 64, (1, 1), (0, 0, 0, 0)),   # convnet's conv2
    (2, 28, 28, 1, 5, 5, 6, (1, 1), (2, 2, 2, 2)),     # lenet5's conv1
]


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512", "avx512_bf16"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_every_simd_level_matches_reference(level, dtype):
    """set_simd_level clamps to the CPU: on an AVX-512 machine the GEMM's AVX-512
    tiles run here (a Cout % 32 == 16 float32 bug appeared there once)."""
    K.set_simd_level(level)
    try:
        for shape in LEVEL_SHAPES:
            x, w, b, dy, mask = _data(shape, dtype, seed=11)
            st, pd = shape[7], shape[8]
            outs = []
            for nt in (1, 2):
                with fastnn.threads(nt):
                    outs.append(_all_outputs("c", x, w, b, dy, mask, st, pd))
            want = _all_outputs("reference", x, w, b, dy, mask, st, pd)
            for a, c, r in zip(*outs, want):
                np.testing.assert_array_equal(a, c)
                np.testing.assert_allclose(a, r, **TOL[dtype], err_msg=f"{level} {shape}")
    finally:
        K.set_simd_level(1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_backward_relu_mask(variant, dtype):
    """mask > 0 keeps a gradient: the ReLU backward of the layer before the pool, fused."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((3, 9, 8, 5)), 0).astype(dtype)   # ReLU outputs
    x[0, :4, :4, :] = 0                   # whole windows of zeros: their gradient is dropped
    for pool, stride in POOLS:
        y, a = K.maxpool2d_forward(x, pool, stride, variant=variant)
        dy = rng.standard_normal(y.shape).astype(dtype)
        got = K.maxpool2d_backward(dy, a, x.shape, mask=y, variant=variant)
        want = K.maxpool2d_backward(dy, a, x.shape, variant="reference") * (x > 0)
        np.testing.assert_allclose(got, want, **TOL[dtype])
        np.testing.assert_allclose(K.maxpool2d_backward(dy, a, x.shape, mask=y,
                                                        variant="reference"), want, **TOL[dtype])
    with pytest.raises(ShapeError, match="mask must have dy's shape"):
        K.maxpool2d_backward(dy, a, x.shape, mask=x, variant=variant)


# ---------------------------------------------------------------- max pooling: every path

# (N, H, W, C, pool, stride): the 2x2 direct paths (C below, at and above a vector, odd
# H/W with a gap row/column, batch 1) and shapes whose OH = H // 2, OW = W // 2 although
# the pool is not 2x2 stride 2 (the backward tries the 2x2 path and falls back)
POOL_SHAPES = [
    (3, 8, 8, 1, (2, 2), (2, 2)), (2, 7, 9, 3, (2, 2), (2, 2)), (2, 6, 6, 4, (2, 2), (2, 2)),
    (2, 9, 7, 6, (2, 2), (2, 2)), (1, 10, 10, 8, (2, 2), (2, 2)), (2, 5, 6, 13, (2, 2), (2, 2)),
    (2, 6, 5, 16, (2, 2), (2, 2)), (2, 7, 7, 17, (2, 2), (2, 2)), (1, 4, 6, 40, (2, 2), (2, 2)),
    (2, 9, 9, 6, (3, 3), (2, 2)), (2, 8, 8, 5, (1, 1), (2, 2)), (2, 9, 8, 7, (2, 2), (3, 3)),
    (2, 8, 9, 6, (2, 2), (1, 1)), (2, 8, 6, 9, (3, 2), (2, 2)), (1, 2, 2, 6, (2, 2), (2, 2)),
]


def _pool_case(shape, dtype, seed=5, relu=False):
    N, H, W, C, pool, stride = shape
    rng = np.random.default_rng(seed + N + H * 3 + W * 7 + C)
    x = rng.standard_normal((N, H, W, C))
    if relu:
        x = np.maximum(x, 0)
    x = x.astype(dtype)
    x[0, 0, :2, 0] = 1.5                    # a tie inside a window: the first wins
    y, _ = K.maxpool2d_forward(x, pool, stride, variant="reference")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[..., -1] = -0.0                      # lands as +0.0 (0 + dy), as the scatter
    return x, dy


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_every_simd_level_matches_reference(level, dtype):
    """Forward values and argmax bit-equal to the reference, backward (plain and with
    the ReLU mask) bit-equal too where windows do not overlap (one addition per
    element), at 1 and 2 threads."""
    K.set_simd_level(level)
    try:
        for shape in POOL_SHAPES:
            pool, stride = shape[4], shape[5]
            x, dy = _pool_case(shape, dtype, relu=True)
            y, a = K.maxpool2d_forward(x, pool, stride, variant="reference")
            want = K.maxpool2d_backward(dy, a, x.shape, variant="reference")
            want_m = K.maxpool2d_backward(dy, a, x.shape, mask=y, variant="reference")
            for nt in (1, 2):
                with fastnn.threads(nt):
                    gy, ga = K.maxpool2d_forward(x, pool, stride, variant="c")
                    got = K.maxpool2d_backward(dy, ga, x.shape, variant="c")
                    got_m = K.maxpool2d_backward(dy, ga, x.shape, mask=gy, variant="c")
                msg = f"{level} {shape} {nt} threads"
                np.testing.assert_array_equal(gy, y, err_msg=msg)
                np.testing.assert_array_equal(ga, a, err_msg=msg)
                if stride[0] >= pool[0] and stride[1] >= pool[1]:   # no sums: exact
                    np.testing.assert_array_equal(got, want.astype(dtype), err_msg=msg)
                    np.testing.assert_array_equal(got_m, want_m.astype(dtype), err_msg=msg)
                np.testing.assert_allclose(got, want, **TOL[dtype], err_msg=msg)
                np.testing.assert_allclose(got_m, want_m, **TOL[dtype], err_msg=msg)
                assert not np.signbit(got[dy.shape[0] - 1, ..., -1]).any(), msg
    finally:
        K.set_simd_level(1)


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
def test_maxpool_nan_at_every_simd_level(level):
    K.set_simd_level(level)
    try:
        for C in (6, 16, 17):
            x = np.zeros((1, 4, 4, C), np.float32)
            x[0, 0, 0, :] = 1.0
            x[0, 0, 1, :] = np.nan              # beats the number before it
            x[0, 1, 0, :] = np.nan              # a later NaN does not replace the first
            x[0, 3, 3, :] = np.inf
            y, a = K.maxpool2d_forward(x, (2, 2), (2, 2), variant="c")
            ry, ra = K.maxpool2d_forward(x, (2, 2), (2, 2), variant="reference")
            np.testing.assert_array_equal(a, ra)
            np.testing.assert_array_equal(y, ry)
            assert a[0, 0, 0, 0] == 1 and a[0, 1, 1, 0] == 15
    finally:
        K.set_simd_level(1)


@pytest.mark.parametrize("level", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_backward_foreign_argmax(level, dtype):
    """argmax entries that are not in their 2x2 window (a hand-made argmax, or another
    pool's) still scatter where they point; out-of-range entries still raise."""
    K.set_simd_level(level)
    try:
        rng = np.random.default_rng(2)
        for C in (1, 6, 16, 19):
            dy = rng.standard_normal((3, 3, 4, C)).astype(dtype)
            a = rng.integers(0, 6 * 8, dy.shape).astype(np.int32)
            a[0] = K.maxpool2d_forward(rng.standard_normal((1, 6, 8, C)).astype(dtype))[1][0]
            want = K.maxpool2d_backward(dy, a, (3, 6, 8, C), variant="reference")
            outs = []
            for nt in (1, 2):
                with fastnn.threads(nt):
                    outs.append(K.maxpool2d_backward(dy, a, (3, 6, 8, C), variant="c"))
                np.testing.assert_allclose(outs[-1], want, **TOL[dtype])   # entries may share
            np.testing.assert_array_equal(outs[0], outs[1])
            a[2, 1, 1, 0] = 6 * 8
            with pytest.raises(ValueError, match=r"argmax entries must be in \[0, H\*W\)"):
                K.maxpool2d_backward(dy, a, (3, 6, 8, C), variant="c")
    finally:
        K.set_simd_level(1)


def test_maxpool_non_contiguous_input(variant):
    rng = np.random.default_rng(4)
    big = rng.standard_normal((2, 10, 12, 14)).astype(np.float32)
    x = big[:, ::2, 1::2, 3:9]                      # (2, 5, 6, 6), strided
    y, a = K.maxpool2d_forward(x, (2, 2), variant=variant)
    ry, ra = K.maxpool2d_forward(np.ascontiguousarray(x), (2, 2), variant="reference")
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(a, ra)
    dy = rng.standard_normal((4, 2, 3, 6)).astype(np.float32)[::2]
    np.testing.assert_array_equal(K.maxpool2d_backward(dy, a, x.shape, mask=y, variant=variant),
                                  K.maxpool2d_backward(np.ascontiguousarray(dy), ra, x.shape,
                                                       mask=ry, variant="reference"))
