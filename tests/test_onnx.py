"""ONNX export (fastnn/onnx_export.py, ``fastnn export``), checked by onnx's checker with
strict shape inference and by onnxruntime against ``model.predict`` on MNIST test images:
argmax identical, outputs within 1e-5 relative (to the largest |logit|), float32.

onnx and onnxruntime are required test dependencies (the ``test`` extra installs them):
imported outright, so a missing one fails this file instead of skipping it."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fastnn
from fastnn import cli
from fastnn.datasets import mnist
from fastnn.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten,
                           GlobalAvgPool2D, Layer, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh)
from fastnn.presets import PRESETS, build_model, get_preset, model_input

RTOL = 1e-5


@pytest.fixture(scope="module")
def test_images():
    """The first 1,000 MNIST test images, scaled as fastnn scales uint8 (x * float32(1/255))."""
    (x_train, y_train), (x_test, _) = mnist.load_data()
    scale = np.float32(1.0 / 255.0)
    x = np.multiply(x_test[:1000], scale, dtype=np.float32)
    return x, (x_train[:512], y_train[:512])


def export_checked(model, path, **kw):
    """Export, then the full checker and strict shape inference; the loaded proto."""
    fastnn.export_onnx(model, path, **kw)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True,
                                                 data_prop=True)
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    return inferred


def run_ort(path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x})[0]


def assert_matches(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))


def quick_fit(model, train, steps_of=128):
    """A few optimizer steps, so that the weights are not just their initial draw."""
    x, y = train
    model.fit(model_input(model, x), y, epochs=1, batch_size=steps_of, verbose=0,
              loss=fastnn.losses.SoftmaxCrossEntropy(),
              optimizer=fastnn.optim.Adam(model.parameters(), lr=1e-3))
    return model.eval()


def images_for(model, x):
    return x.reshape(x.shape[0], -1) if model.input_features() is not None else x[..., None]


# ------------------------------------------------------------------ every preset

@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_matches_onnxruntime(name, test_images, tmp_path):
    x, train = test_images
    model = build_model(get_preset(name), seed=0)
    if name in ("mlp", "lenet5"):
        quick_fit(model, train)
    path = tmp_path / f"{name}.onnx"
    inferred = export_checked(model, path)
    xin = images_for(model, x if model.input_features() is not None else x[:300])
    want = model.predict(xin)
    assert_matches(run_ort(path, xin), want)
    # the inferred output type: (N, 10) float32 with N symbolic
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["N", 10]


def test_mlp_node_list_and_input(tmp_path):
    model = build_model(get_preset("mlp-keras"), seed=0)
    proto = export_checked(model, tmp_path / "m.onnx")
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 784]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["layer0.Dense.weight"], model[0].weight.data)


# ------------------------------------------------------------------ image layers

def bn_convnet():
    """Every image layer: Conv2D (same, explicit and strided padding), BatchNorm2D with
    non-trivial running statistics, both pools, GlobalAvgPool2D in a second branch below."""
    net = fastnn.Sequential([
        Conv2D(1, 8, 3, padding="same"), BatchNorm2D(8), ReLU(), MaxPool2D(2),   # 14x14x8
        Conv2D(8, 12, 3, stride=2, padding=(1, 0, 1, 0), activation="relu"),     # 7x7x12
        BatchNorm2D(12), AvgPool2D(2, stride=1),                                 # 6x6x12
        Flatten(), Tanh(), Dropout(0.3, seed=0), Dense(432, 32, activation="sigmoid"),
        Dense(32, 10, activation="tanh"), Dense(10, 10)], seed=0)
    rng = np.random.default_rng(1)
    for layer in net:
        if isinstance(layer, BatchNorm2D):
            c = layer.num_features
            layer.running_mean[:] = rng.normal(0, 0.3, c)
            layer.running_var[:] = rng.uniform(0.5, 2.0, c)
            layer.gamma.data[:] = rng.uniform(0.5, 1.5, c)
            layer.beta.data[:] = rng.normal(0, 0.2, c)
    return net.eval()


def test_batchnorm_convnet_matches_onnxruntime(test_images, tmp_path):
    x, train = test_images
    net = bn_convnet()
    quick_fit(net, train)                    # trains the running statistics too
    path = tmp_path / "bn.onnx"
    proto = export_checked(net, path)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("BatchNormalization") == 2 and ops.count("Transpose") == 2
    assert "Dropout" not in ops
    xin = x[:300, :, :, None]
    assert_matches(run_ort(path, xin), net.predict(xin))


def test_global_avg_pool_softmax_layer_and_input_shape(tmp_path):
    """(32, 32, 3) images, GlobalAvgPool2D, a Softmax layer at the end."""
    net = fastnn.Sequential([Conv2D(3, 6, 5, stride=2, padding="same", activation="relu"),
                             GlobalAvgPool2D(), Dense(6, 4), Sigmoid(), Dense(4, 3), Softmax()],
                            seed=2).eval()
    x = np.random.default_rng(0).random((64, 32, 32, 3), dtype=np.float32)
    path = tmp_path / "gap.onnx"
    export_checked(net, path, input_shape=(32, 32, 3))
    got = run_ort(path, x)
    assert_matches(got, net.predict(x))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ options

def test_softmax_option_and_fixed_batch(test_images, tmp_path):
    x, _ = test_images
    model = build_model(get_preset("mlp"), seed=0)
    path = tmp_path / "p.onnx"
    proto = export_checked(model, path, softmax=True, batch=25)
    assert proto.graph.node[-1].op_type == "Softmax"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [25, 784]
    xin = x[:25].reshape(25, -1)
    got = run_ort(path, xin)
    assert_matches(got, fastnn.softmax(model.predict(xin)))
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_ort(path, x[:26].reshape(26, -1))         # the batch is fixed at 25


class Square(Layer):
    def forward(self, x, out=None):
        return x * x


class MyReLU(ReLU):
    """A subclass may compute something else: refused, not exported as Relu."""


@pytest.mark.parametrize("bad", [Square, MyReLU])
def test_unsupported_layer_is_named(bad, tmp_path):
    net = fastnn.Sequential([Dense(4, 4), bad(), Dense(4, 2)], seed=0)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match=rf"layer 1 \({bad.__name__}\) cannot be exported"):
        fastnn.export_onnx(net, path)
    assert not path.exists()


def test_bad_arguments(tmp_path):
    model = build_model(get_preset("softmax"), seed=0)
    with pytest.raises(ValueError, match="batch"):
        fastnn.export_onnx(model, tmp_path / "a.onnx", batch=0)
    with pytest.raises(TypeError, match="Sequential"):
        fastnn.export_onnx(object(), tmp_path / "a.onnx")


# ------------------------------------------------------------------ command line

def test_cli_export(test_images, tmp_path, capsys):
    x, _ = test_images
    model = build_model(get_preset("lenet5"), seed=0)
    npz, path = tmp_path / "l.npz", tmp_path / "l.onnx"
    fastnn.save(model, npz)
    assert cli.main(["export", str(npz), str(path), "--softmax", "--batch", "16"]) == 0
    out, err = capsys.readouterr()
    assert f"wrote {path}" in out and err == ""
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    xin = x[:16, :, :, None]
    assert_matches(run_ort(path, xin), fastnn.softmax(model.predict(xin)))


def test_cli_export_errors(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path / "missing.npz"), str(tmp_path / "m.onnx")]) == 1
    assert "no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", "a.npz", "b.onnx", "--batch", "0"])
    assert exc.value.code == 2
