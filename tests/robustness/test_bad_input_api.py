"""Every public function, layer, loss and optimizer refuses bad input clearly.

``CASES`` is one table: each row is (entry point, bad input, call, expected
exception, regex).  The test runs the call and checks that it raises exactly
that exception class (a ``fastnn.errors`` subclass, ``ValueError`` or
``TypeError``) and that the message matches the regex -- which always names
the argument at fault -- never a crash, a hang, a numpy/Python internal
error, or a silently wrong result.

``docs/errors.md`` is generated from the same table (the message column is
what each call really says):

    python tests/robustness/test_bad_input_api.py        # rewrites docs/errors.md

and ``test_errors_doc_lists_every_row`` fails when the document misses a row.
"""
import os
import re
import sys

import numpy as np
import pytest

if __name__ == "__main__":      # run as a script: import the checkout's fastnn
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import fastnn  # noqa: E402
from fastnn import callbacks, plot  # noqa: E402
from fastnn import kernels as K  # noqa: E402
from fastnn.kernels import elementwise as KE  # noqa: E402
from fastnn.datasets import load_idx  # noqa: E402
from fastnn.errors import DTypeError, ShapeError  # noqa: E402
from fastnn.layers import (AvgPool2D, BatchNorm2D, Conv2D, Dense, Dropout,  # noqa: E402
                           Flatten, GlobalAvgPool2D, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh,
                           layer_from_config)
from fastnn.losses import (BinaryCrossEntropyWithLogits, MeanSquaredError,  # noqa: E402
                           SoftmaxCrossEntropy, get_loss, loss_from_config)
from fastnn.models import MLP, Perceptron, SoftmaxRegression  # noqa: E402
from fastnn.optim import (SGD, Adam, AdamW, CosineDecay, LinearWarmup, OneCycle,  # noqa: E402
                          StepDecay, optimizer_from_state)
from fastnn.presets import get_preset  # noqa: E402

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "errors.md")
F32, F64 = np.float32, np.float64
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------ small builders
# Every row builds its own objects (lambdas), so rows never share state.

def arr(shape, dtype=F32, fill=None, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if fill is not None:
        a[...] = fill
    return a


def ro(a):
    """A read-only view."""
    a = a.view()
    a.flags.writeable = False
    return a


def fcols(shape, dtype=F32):
    """A non-contiguous (every other column) array of ``shape``."""
    r, c = shape
    return np.zeros((r, 2 * c), dtype)[:, ::2]


def mlp():
    return fastnn.Sequential([Dense(4, 5, activation="relu"), Dense(5, 3)], seed=0)


X = arr((8, 4))
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def fit(model=None, x=X, y=Y, **kw):
    model = model if model is not None else mlp()
    args = dict(epochs=1, batch_size=4, loss=SoftmaxCrossEntropy(), verbose=0)
    if "optimizer" not in kw:
        args["optimizer"] = SGD(model, lr=0.1)
    args.update(kw)
    return model.fit(x, y, **args)


def forwarded(layer, x):
    layer.forward(x)
    return layer


def sgd(**kw):
    p = kw.pop("params", arr(6))
    g = kw.pop("grads", arr(6, seed=1))
    kw.setdefault("lr", 0.1)
    return K.sgd_update(p, g, **kw)


def adam(**kw):
    n = 6
    p = kw.pop("params", arr(n))
    g = kw.pop("grads", arr(n, seed=1))
    m = kw.pop("m", np.zeros(n, F32))
    v = kw.pop("v", np.zeros(n, F32))
    kw.setdefault("step", 1)
    kw.setdefault("lr", 1e-3)
    return K.adam_update(p, g, m, v, **kw)


def xent(logits=None, labels=None, **kw):
    logits = arr((4, 3)) if logits is None else logits
    labels = np.array([0, 1, 2, 0]) if labels is None else labels
    return K.softmax_xent(logits, labels, **kw)


def opt_state(**changes):
    s = SGD(mlp(), lr=0.1, momentum=0.9).state_dict()
    s.update(changes)
    return s


def overlap_out():
    a = arr((4, 4))
    return K.matmul(a, arr((4, 4), seed=1), out=a)


_TMP = []


def _writer():
    """A SummaryWriter in a scratch directory removed at exit."""
    import tempfile
    from fastnn.tensorboard import SummaryWriter
    if not _TMP:
        _TMP.append(tempfile.TemporaryDirectory(prefix="fastnn-errors-",
                                                ignore_cleanup_errors=True))
    return SummaryWriter(tempfile.mkdtemp(dir=_TMP[0].name))


def same_buffers_sgd():
    p = arr(6)
    return K.sgd_update(p, p, lr=0.1)


# ------------------------------------------------------------------ the table

class Case:
    __slots__ = ("entry", "bad", "call", "exc", "match")

    def __init__(self, entry, bad, call, exc, match):
        self.entry, self.bad, self.call, self.exc, self.match = entry, bad, call, exc, match

    @property
    def id(self):
        return f"{self.entry}: {self.bad}"


def C(entry, bad, call, exc, match):
    return Case(entry, bad, call, exc, match)


CASES = [
    # ---------------------------------------------------------------- fastnn.one_hot
    C("fastnn.one_hot", "depth = 0", lambda: fastnn.one_hot([0], 0), ValueError, r"depth"),
    C("fastnn.one_hot", "depth < 0", lambda: fastnn.one_hot([0], -3), ValueError, r"depth"),
    C("fastnn.one_hot", "depth not an integer (2.5)", lambda: fastnn.one_hot([0], 2.5),
      TypeError, r"depth"),
    C("fastnn.one_hot", "depth is a bool", lambda: fastnn.one_hot([0], True), TypeError, r"depth"),
    C("fastnn.one_hot", "float indices", lambda: fastnn.one_hot([0.0, 1.0], 3), DTypeError,
      r"indices"),
    C("fastnn.one_hot", "bool indices", lambda: fastnn.one_hot([True], 3), DTypeError, r"indices"),
    C("fastnn.one_hot", "index >= depth", lambda: fastnn.one_hot([0, 3], 3), ValueError,
      r"indices\[1\] = 3"),
    C("fastnn.one_hot", "negative index", lambda: fastnn.one_hot([-1], 3), ValueError,
      r"indices\[0\] = -1"),
    C("fastnn.one_hot", "dtype not a dtype", lambda: fastnn.one_hot([0], 3, dtype="float77"),
      DTypeError, r"dtype"),
    # ---------------------------------------------------------------- fastnn.softmax / log_softmax
    C("fastnn.softmax", "int array", lambda: fastnn.softmax(np.ones((2, 3), int)), DTypeError,
      r"x must be float"),
    C("fastnn.softmax", "object array", lambda: fastnn.softmax(np.array([[1, None]], object)),
      DTypeError, r"x must be float"),
    C("fastnn.softmax", "bool array", lambda: fastnn.softmax(np.ones(3, bool)), DTypeError,
      r"x must be float"),
    C("fastnn.softmax", "scalar (rank 0)", lambda: fastnn.softmax(np.float32(1.0)), ShapeError,
      r"x must have at least one dimension"),
    C("fastnn.softmax", "axis out of range", lambda: fastnn.softmax(arr((2, 3)), axis=2),
      ShapeError, r"axis 2"),
    C("fastnn.softmax", "axis not an integer", lambda: fastnn.softmax(arr((2, 3)), axis=1.0),
      TypeError, r"axis"),
    C("fastnn.log_softmax", "int array", lambda: fastnn.log_softmax(np.ones((2, 3), int)),
      DTypeError, r"x must be float"),
    C("fastnn.log_softmax", "axis out of range", lambda: fastnn.log_softmax(arr(3), axis=-2),
      ShapeError, r"axis -2"),
    # ---------------------------------------------------------------- cross-entropy ops
    C("fastnn.softmax_cross_entropy_with_logits", "logits 1-D",
      lambda: fastnn.softmax_cross_entropy_with_logits(labels=arr(3), logits=arr(3)), ShapeError,
      r"logits must be 2-D"),
    C("fastnn.softmax_cross_entropy_with_logits", "logits with 0 classes",
      lambda: fastnn.softmax_cross_entropy_with_logits(labels=arr((2, 0)), logits=arr((2, 0))),
      ShapeError, r"logits must have at least one class"),
    C("fastnn.softmax_cross_entropy_with_logits", "labels and logits shapes differ",
      lambda: fastnn.softmax_cross_entropy_with_logits(labels=arr((2, 4)), logits=arr((2, 3))),
      ShapeError, r"labels and logits must have the same shape"),
    C("fastnn.softmax_cross_entropy_with_logits", "labels and logits dtypes differ",
      lambda: fastnn.softmax_cross_entropy_with_logits(labels=arr((2, 3), F64),
                                                       logits=arr((2, 3))),
      DTypeError, r"labels and logits must have the same dtype"),
    C("fastnn.softmax_cross_entropy_with_logits", "int logits",
      lambda: fastnn.softmax_cross_entropy_with_logits(labels=np.ones((2, 3), int),
                                                       logits=np.ones((2, 3), int)),
      DTypeError, r"logits must be float"),
    C("fastnn.sparse_softmax_cross_entropy_with_logits", "label out of range",
      lambda: fastnn.sparse_softmax_cross_entropy_with_logits(labels=[0, 3], logits=arr((2, 3))),
      ValueError, r"labels\[1\] = 3"),
    C("fastnn.sparse_softmax_cross_entropy_with_logits", "negative label",
      lambda: fastnn.sparse_softmax_cross_entropy_with_logits(labels=[-1, 0], logits=arr((2, 3))),
      ValueError, r"labels\[0\] = -1"),
    C("fastnn.sparse_softmax_cross_entropy_with_logits", "float labels",
      lambda: fastnn.sparse_softmax_cross_entropy_with_logits(labels=[0.0, 1.0],
                                                              logits=arr((2, 3))),
      DTypeError, r"labels must be integers"),
    C("fastnn.sparse_softmax_cross_entropy_with_logits", "batch sizes differ",
      lambda: fastnn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1, 2], logits=arr((2, 3))),
      ShapeError, r"labels must have shape \[batch\] = \(2,\)"),
    # ---------------------------------------------------------------- argmax / accuracy
    C("fastnn.argmax", "axis of length 0", lambda: fastnn.argmax(arr((2, 0))), ShapeError,
      r"axis -1 has length 0"),
    C("fastnn.argmax", "axis out of range", lambda: fastnn.argmax(arr((2, 3)), axis=3),
      ShapeError, r"axis 3"),
    C("fastnn.argmax", "scalar", lambda: fastnn.argmax(3.0), ShapeError, r"x must have at least"),
    C("fastnn.accuracy", "empty batch", lambda: fastnn.accuracy(arr((0, 3)), np.array([], int)),
      ValueError, r"empty batch"),
    C("fastnn.accuracy", "logits 1-D", lambda: fastnn.accuracy(arr(3), [0]), ShapeError,
      r"logits_or_probs must be 2-D"),
    C("fastnn.accuracy", "bool logits", lambda: fastnn.accuracy(np.ones((2, 2), bool), [0, 1]),
      DTypeError, r"logits_or_probs must be numeric"),
    C("fastnn.accuracy", "label out of range", lambda: fastnn.accuracy(arr((2, 3)), [0, 5]),
      ValueError, r"labels\[1\] = 5"),
    C("fastnn.accuracy", "float 1-D labels", lambda: fastnn.accuracy(arr((2, 3)), [0.0, 1.0]),
      DTypeError, r"labels must be integer"),
    C("fastnn.accuracy", "batch sizes differ", lambda: fastnn.accuracy(arr((2, 3)), [0, 1, 2]),
      ShapeError, r"labels has 3 entries for 2 rows"),
    C("fastnn.accuracy", "one-hot labels of the wrong shape",
      lambda: fastnn.accuracy(arr((2, 3)), np.eye(4)[:2]), ShapeError, r"one-hot labels"),
    C("fastnn.accuracy", "string one-hot labels",
      lambda: fastnn.accuracy(arr((2, 2)), np.array([["a", "b"], ["c", "d"]])), DTypeError,
      r"labels must be numeric"),
    # ---------------------------------------------------------------- kernels.matmul
    C("kernels.matmul", "int operand", lambda: K.matmul(np.ones((2, 2), int), arr((2, 2))),
      DTypeError, r"a must be float32 or float64"),
    C("kernels.matmul", "float16 operand (unsupported)",
      lambda: K.matmul(arr((2, 2)), arr((2, 2), np.float16)), DTypeError, r"b must be float32"),
    C("kernels.matmul", "bool operand", lambda: K.matmul(np.ones((2, 2), bool), arr((2, 2))),
      DTypeError, r"a must be float32"),
    C("kernels.matmul", "object operand",
      lambda: K.matmul(np.ones((2, 2), object), arr((2, 2))), DTypeError, r"a must be float32"),
    C("kernels.matmul", "1-D operand", lambda: K.matmul(arr(3), arr((3, 2))), ShapeError,
      r"a must be 2-D"),
    C("kernels.matmul", "3-D operand", lambda: K.matmul(arr((2, 2)), arr((2, 2, 2))), ShapeError,
      r"b must be 2-D"),
    C("kernels.matmul", "mixed dtypes", lambda: K.matmul(arr((2, 2)), arr((2, 2), F64)),
      DTypeError, r"a and b must have the same dtype"),
    C("kernels.matmul", "inner dimensions differ", lambda: K.matmul(arr((2, 3)), arr((2, 3))),
      ShapeError, r"inner dimensions differ"),
    C("kernels.matmul", "inner dimensions differ after trans_a",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), trans_a=True), ShapeError,
      r"inner dimensions.*trans_a=True"),
    C("kernels.matmul", "bias of the wrong length",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), bias=arr(3)), ShapeError, r"bias must have shape"),
    C("kernels.matmul", "bias of another dtype",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), bias=arr(4, F64)), DTypeError,
      r"bias must have dtype"),
    C("kernels.matmul", "unknown activation",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), activation="gelu"), ValueError, r"activation"),
    C("kernels.matmul", "out of the wrong shape",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), out=arr((4, 2))), ShapeError,
      r"out must have shape \(2, 4\)"),
    C("kernels.matmul", "out of another dtype",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), out=arr((2, 4), F64)), DTypeError,
      r"out must have dtype"),
    C("kernels.matmul", "read-only out",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), out=ro(arr((2, 4)))), ValueError,
      r"out is read-only"),
    C("kernels.matmul", "out is a list",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), out=[[0.0] * 4] * 2), TypeError,
      r"out must be a numpy array"),
    C("kernels.matmul", "out overlaps an input", overlap_out, ValueError, r"out overlaps input a"),
    C("kernels.matmul", "unknown variant",
      lambda: K.matmul(arr((2, 3)), arr((3, 4)), variant="gpu"), ValueError, r"variant 'gpu'"),
    # ---------------------------------------------------------------- kernels.softmax_xent
    C("kernels.softmax_xent", "int logits", lambda: xent(np.ones((4, 3), int)), DTypeError,
      r"logits must be float32 or float64"),
    C("kernels.softmax_xent", "float16 logits", lambda: xent(arr((4, 3), np.float16)), DTypeError,
      r"logits must be float32"),
    C("kernels.softmax_xent", "logits 1-D", lambda: xent(arr(3), [0]), ShapeError,
      r"logits must be 2-D"),
    C("kernels.softmax_xent", "0 classes", lambda: xent(arr((4, 0)), [0, 0, 0, 0]), ShapeError,
      r"at least one class"),
    C("kernels.softmax_xent", "label >= classes", lambda: xent(labels=np.array([0, 1, 3, 0])),
      ValueError, r"labels\[2\] = 3"),
    C("kernels.softmax_xent", "negative label", lambda: xent(labels=np.array([0, -1, 2, 0])),
      ValueError, r"labels\[1\] = -1"),
    C("kernels.softmax_xent", "float 1-D labels", lambda: xent(labels=np.array([0.0, 1, 2, 0])),
      DTypeError, r"labels must be integer"),
    C("kernels.softmax_xent", "bool labels", lambda: xent(labels=np.array([True] * 4)),
      DTypeError, r"labels must be integer"),
    C("kernels.softmax_xent", "batch sizes differ", lambda: xent(labels=np.array([0, 1])),
      ShapeError, r"labels has 2 entries but logits has 4 rows"),
    C("kernels.softmax_xent", "probability labels of another dtype",
      lambda: xent(labels=arr((4, 3), F64)), DTypeError, r"probability labels must have"),
    C("kernels.softmax_xent", "probability labels of another shape",
      lambda: xent(labels=arr((4, 2))), ShapeError, r"probability labels must have the logits"),
    C("kernels.softmax_xent", "3-D labels", lambda: xent(labels=np.zeros((4, 3, 1), int)),
      ShapeError, r"labels must be class indices"),
    C("kernels.softmax_xent", "grad_scale NaN", lambda: xent(grad_scale=NAN), ValueError,
      r"grad_scale must be finite"),
    C("kernels.softmax_xent", "grad_scale a string", lambda: xent(grad_scale="1"), TypeError,
      r"grad_scale must be a real number"),
    C("kernels.softmax_xent", "label_smoothing > 1", lambda: xent(label_smoothing=1.5), ValueError,
      r"label_smoothing must be in \[0, 1\]"),
    C("kernels.softmax_xent", "label_smoothing < 0", lambda: xent(label_smoothing=-0.1),
      ValueError, r"label_smoothing"),
    C("kernels.softmax_xent", "non-contiguous dlogits", lambda: xent(dlogits=fcols((4, 3))),
      ValueError, r"dlogits must be C-contiguous"),
    C("kernels.softmax_xent", "read-only dlogits", lambda: xent(dlogits=ro(arr((4, 3)))),
      ValueError, r"dlogits is read-only"),
    C("kernels.softmax_xent", "read-only losses", lambda: xent(losses=ro(arr(4))), ValueError,
      r"losses is read-only"),
    C("kernels.softmax_xent", "losses of the wrong shape", lambda: xent(losses=arr(3)),
      ShapeError, r"losses must have shape \(4,\)"),
    C("kernels.softmax_xent", "dlogits is the logits array",
      lambda: (lambda z: xent(z, dlogits=z))(arr((4, 3))), ValueError, r"dlogits overlaps logits"),
    C("kernels.softmax_xent", "variant not a string", lambda: xent(variant=1), TypeError,
      r"variant must be a string"),
    C("kernels.softmax", "int x", lambda: K.softmax(np.ones((2, 2), int)), DTypeError,
      r"x must be float32"),
    C("kernels.softmax", "x 3-D", lambda: K.softmax(arr((2, 2, 2))), ShapeError, r"x must be 2-D"),
    C("kernels.softmax", "out overlaps x shifted",
      lambda: (lambda b: K.softmax(b[:2], out=b[1:]))(arr((3, 3))), ValueError,
      r"out overlaps x"),
    C("kernels.log_softmax", "read-only out",
      lambda: K.log_softmax(arr((2, 2)), out=ro(arr((2, 2)))), ValueError, r"out is read-only"),
    # ---------------------------------------------------------------- kernels.activation_*
    C("kernels.activation_forward", "unknown kind",
      lambda: K.activation_forward("gelu", arr(3)), ValueError, r"kind must be one of"),
    C("kernels.activation_forward", "int x",
      lambda: K.activation_forward("relu", np.arange(3)), DTypeError, r"x must be float32"),
    C("kernels.activation_forward", "out of another shape",
      lambda: K.activation_forward("relu", arr(3), out=arr(4)), ShapeError,
      r"out must have shape \(3,\)"),
    C("kernels.activation_forward", "non-contiguous out",
      lambda: K.activation_forward("relu", arr((2, 2)), out=fcols((2, 2))), ValueError,
      r"out must be C-contiguous"),
    C("kernels.activation_backward", "dout of another dtype",
      lambda: K.activation_backward("relu", arr(3), arr(3, F64)), DTypeError,
      r"dout must have y's dtype"),
    C("kernels.activation_backward", "dout of another shape",
      lambda: K.activation_backward("relu", arr(3), arr(4)), ShapeError,
      r"dout must have y's shape"),
    C("kernels.activation_backward", "accumulate=True without dx",
      lambda: K.activation_backward("relu", arr(3), arr(3), accumulate=True), ValueError,
      r"accumulate=True needs a dx"),
    C("kernels.activation_backward", "dx a shifted view of y",
      lambda: (lambda buf: K.activation_backward("relu", buf[:3], arr(3), dx=buf[1:]))(arr(4)),
      ValueError, r"dx overlaps y"),
    # ---------------------------------------------------------------- kernels.column_sums
    C("kernels.column_sums", "x 1-D", lambda: K.column_sums(arr(3)), ShapeError, r"x must be 2-D"),
    C("kernels.column_sums", "object x", lambda: K.column_sums(np.ones((2, 2), object)),
      DTypeError, r"x must be float32"),
    C("kernels.column_sums", "accumulate=True without out",
      lambda: K.column_sums(arr((2, 2)), accumulate=True), ValueError, r"accumulate=True needs"),
    C("kernels.column_sums", "out of the wrong shape",
      lambda: K.column_sums(arr((2, 3)), out=arr(2)), ShapeError, r"out must have shape \(3,\)"),
    C("kernels.column_sums", "read-only out", lambda: K.column_sums(arr((2, 3)), out=ro(arr(3))),
      ValueError, r"out is read-only"),
    # ---------------------------------------------------------------- kernels.elementwise dropout
    C("kernels.elementwise.dropout_forward", "rate 1", lambda: KE.dropout_forward(arr(4), 1.0, 0),
      ValueError, r"dropout_forward: rate must be in \[0, 1\), got 1.0"),
    C("kernels.elementwise.dropout_forward", "negative key",
      lambda: KE.dropout_forward(arr(4), 0.5, -3), ValueError,
      r"dropout_forward: key must be in \[0, 2\*\*64\), got -3"),
    C("kernels.elementwise.dropout_backward", "bool mask",
      lambda: KE.dropout_backward(arr(4), np.ones(4, bool), 0.5), DTypeError,
      r"dropout_backward: mask must be a uint8 numpy array"),
    # ---------------------------------------------------------------- kernels.conv2d_*, pooling
    C("kernels.conv2d_forward", "x 3-D", lambda: K.conv2d_forward(arr((5, 5, 3)),
                                                                  arr((3, 3, 3, 4))),
      ShapeError, r"conv2d_forward: x must be 4-D, got shape \(5, 5, 3\)"),
    C("kernels.conv2d_forward", "channel mismatch",
      lambda: K.conv2d_forward(arr((2, 5, 5, 3)), arr((3, 3, 2, 4))), ShapeError,
      r"w has 2 input channels \(shape \(3, 3, 2, 4\)\) but x has 3"),
    C("kernels.conv2d_forward", "kernel larger than the padded input",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((7, 7, 1, 1)), padding=(1, 1, 1, 1)),
      ShapeError, r"kernel 7x7 .* larger than the padded input 6x6"),
    C("kernels.conv2d_forward", "w of another dtype",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1), F64)), DTypeError,
      r"w has dtype float64 but x has float32"),
    C("kernels.conv2d_forward", "bias of the wrong length",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 2)), arr(3)), ShapeError,
      r"bias must have shape \(2,\)"),
    C("kernels.conv2d_forward", "negative padding",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), padding=(0, -1, 0, 0)),
      ValueError, r"padding entries must be >= 0"),
    C("kernels.conv2d_forward", "padding of 3 entries",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), padding=(1, 1, 1)),
      ValueError, r"padding must have 4 entries"),
    C("kernels.conv2d_forward", "stride 0",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), stride=(0, 1)),
      ValueError, r"stride entries must be >= 1"),
    C("kernels.conv2d_forward", "float stride",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), stride=(1.5, 1)),
      TypeError, r"stride must hold ints"),
    C("kernels.conv2d_forward", "activation 'tanh'",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), activation="tanh"),
      ValueError, r"activation must be None or 'relu'"),
    C("kernels.conv2d_forward", "non-contiguous out",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)),
                               out=arr((1, 2, 2, 2))[..., :1]),
      ValueError, r"out must be C-contiguous"),
    C("kernels.conv2d_forward", "precision 'fp16'",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), precision="fp16"),
      ValueError, r"conv2d_forward: precision must be one of \('fp32', 'bf16'\), got 'fp16'"),
    C("kernels.conv2d_forward", "bf16 with float64 arrays",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1), F64), arr((3, 3, 1, 1), F64), precision="bf16"),
      DTypeError, r"conv2d_forward: precision='bf16' needs float32 arrays, got float64"),
    C("kernels.conv2d_forward", "workspace too small",
      lambda: K.conv2d_forward(arr((1, 4, 4, 1)), arr((3, 3, 1, 1)), workspace=arr(2)),
      ShapeError, r"workspace has 2 elements, needs"),
    C("kernels.conv2d_backward_data", "dy of the wrong shape",
      lambda: K.conv2d_backward_data(arr((2, 3, 3, 5)), arr((3, 3, 3, 4)), (2, 5, 5, 3)),
      ShapeError, r"dy must have shape \(2, 3, 3, 4\)"),
    C("kernels.conv2d_backward_data", "mask of another shape",
      lambda: K.conv2d_backward_data(arr((2, 3, 3, 4)), arr((3, 3, 3, 4)), (2, 5, 5, 3),
                                     mask=arr((2, 5, 5, 2))),
      ShapeError, r"mask must have x's shape"),
    C("kernels.conv2d_backward_data", "x_shape of 3 entries",
      lambda: K.conv2d_backward_data(arr((2, 3, 3, 4)), arr((3, 3, 3, 4)), (5, 5, 3)),
      ValueError, r"x_shape must have 4 entries"),
    C("kernels.conv2d_backward_weights", "dw of another shape",
      lambda: K.conv2d_backward_weights(arr((2, 5, 5, 3)), arr((2, 3, 3, 4)), (3, 3, 3, 4),
                                        (1, 1), (0, 0, 0, 0), arr((3, 3, 3, 5))),
      ShapeError, r"dw must have shape \(3, 3, 3, 4\)"),
    C("kernels.conv2d_backward_weights", "dw a list",
      lambda: K.conv2d_backward_weights(arr((2, 5, 5, 3)), arr((2, 3, 3, 4)), (3, 3, 3, 4),
                                        (1, 1), (0, 0, 0, 0), [0.0]),
      TypeError, r"dw must be a numpy array"),
    C("kernels.conv2d_backward_weights", "dy of another dtype",
      lambda: K.conv2d_backward_weights(arr((2, 5, 5, 3)), arr((2, 3, 3, 4), F64), (3, 3, 3, 4),
                                        (1, 1), (0, 0, 0, 0), arr((3, 3, 3, 4))),
      DTypeError, r"dy has dtype float64 but x has float32"),
    C("kernels.maxpool2d_forward", "pool larger than the input",
      lambda: K.maxpool2d_forward(arr((1, 4, 4, 1)), (5, 2)), ShapeError,
      r"pool \(5, 2\) does not fit in the input of shape \(1, 4, 4, 1\)"),
    C("kernels.maxpool2d_forward", "int64 argmax",
      lambda: K.maxpool2d_forward(arr((1, 4, 4, 1)), (2, 2),
                                  argmax=np.zeros((1, 2, 2, 1), np.int64)),
      DTypeError, r"argmax must have dtype int32"),
    C("kernels.maxpool2d_backward", "argmax out of range",
      lambda: K.maxpool2d_backward(arr((1, 1, 1, 1)), np.array([[[[4]]]], np.int32),
                                   (1, 2, 2, 1)),
      ValueError, r"argmax entries must be in \[0, H\*W\)"),
    C("kernels.maxpool2d_backward", "float argmax",
      lambda: K.maxpool2d_backward(arr((1, 1, 1, 1)), arr((1, 1, 1, 1)), (1, 2, 2, 1)),
      DTypeError, r"argmax must be int32"),
    C("kernels.avgpool2d_forward", "pool of 3 entries",
      lambda: K.avgpool2d_forward(arr((1, 4, 4, 1)), (2, 2, 2)), ValueError,
      r"pool must have 2 entries"),
    C("kernels.avgpool2d_backward", "dy of the wrong shape",
      lambda: K.avgpool2d_backward(arr((1, 3, 3, 1)), (1, 4, 4, 1), (2, 2)), ShapeError,
      r"dy must have shape \(1, 2, 2, 1\)"),
    # ---------------------------------------------------------------- kernels.sgd/adam_update
    C("kernels.sgd_update", "negative lr", lambda: sgd(lr=-0.1), ValueError,
      r"lr must be >= 0"),
    C("kernels.sgd_update", "NaN lr", lambda: sgd(lr=NAN), ValueError, r"lr must be finite"),
    C("kernels.sgd_update", "inf lr", lambda: sgd(lr=INF), ValueError, r"lr must be finite"),
    C("kernels.sgd_update", "lr a string", lambda: sgd(lr="0.1"), TypeError,
      r"lr must be a real number"),
    C("kernels.sgd_update", "momentum = 1", lambda: sgd(momentum=1.0, velocity=np.zeros(6, F32)),
      ValueError, r"momentum must be in \[0, 1\)"),
    C("kernels.sgd_update", "momentum without velocity", lambda: sgd(momentum=0.9), ValueError,
      r"needs a velocity buffer"),
    C("kernels.sgd_update", "nesterov without momentum", lambda: sgd(nesterov=True), ValueError,
      r"nesterov=True needs momentum"),
    C("kernels.sgd_update", "negative weight_decay", lambda: sgd(weight_decay=-1e-4), ValueError,
      r"weight_decay"),
    C("kernels.sgd_update", "params a list", lambda: sgd(params=[1.0] * 6), TypeError,
      r"params must be a numpy array"),
    C("kernels.sgd_update", "int params", lambda: sgd(params=np.zeros(6, int)), DTypeError,
      r"params must be float32"),
    C("kernels.sgd_update", "2-D params", lambda: sgd(params=arr((2, 3)), grads=arr((2, 3))),
      ShapeError, r"params must be a flat 1-D buffer"),
    C("kernels.sgd_update", "grads of another length", lambda: sgd(grads=arr(5)), ShapeError,
      r"grads has shape \(5,\) but params has \(6,\)"),
    C("kernels.sgd_update", "grads of another dtype", lambda: sgd(grads=arr(6, F64)), DTypeError,
      r"grads has dtype float64 but params has float32"),
    C("kernels.sgd_update", "read-only params", lambda: sgd(params=ro(arr(6))), ValueError,
      r"params is read-only"),
    C("kernels.sgd_update", "non-contiguous params", lambda: sgd(params=arr(12)[::2]), ValueError,
      r"params must be C-contiguous"),
    C("kernels.sgd_update", "non-contiguous grads", lambda: sgd(grads=arr(12)[::2]), ValueError,
      r"grads must be C-contiguous"),
    C("kernels.sgd_update", "params and grads the same buffer", same_buffers_sgd, ValueError,
      r"params and grads share memory"),
    C("kernels.adam_update", "step = 0", lambda: adam(step=0), ValueError,
      r"step must be an integer >= 1"),
    C("kernels.adam_update", "step a float", lambda: adam(step=1.5), TypeError,
      r"step must be an integer"),
    C("kernels.adam_update", "beta1 = 1", lambda: adam(beta1=1.0), ValueError, r"beta1"),
    C("kernels.adam_update", "beta2 < 0", lambda: adam(beta2=-0.1), ValueError, r"beta2"),
    C("kernels.adam_update", "eps = 0", lambda: adam(eps=0.0), ValueError, r"eps must be > 0"),
    C("kernels.adam_update", "NaN lr", lambda: adam(lr=NAN), ValueError, r"lr must be finite"),
    C("kernels.adam_update", "m of another length", lambda: adam(m=np.zeros(5, F32)), ShapeError,
      r"m has shape"),
    C("kernels.adam_update", "read-only v", lambda: adam(v=ro(np.zeros(6, F32))), ValueError,
      r"v is read-only"),
    # ---------------------------------------------------------------- registry, threads
    C("kernels.variants", "unknown family", lambda: K.variants("conv3d"), ValueError,
      r"unknown kernel family 'conv3d'"),
    C("kernels.get", "unknown variant", lambda: K.get("matmul", "gpu"), ValueError,
      r"unknown matmul variant 'gpu'"),
    C("kernels.set_simd_level", "level 4", lambda: K.set_simd_level(4), ValueError,
      r"SIMD level must be 0"),
    C("fastnn.set_num_threads", "0 threads", lambda: fastnn.set_num_threads(0), ValueError,
      r"number of threads must be >= 1"),
    C("fastnn.set_num_threads", "negative", lambda: fastnn.set_num_threads(-2), ValueError,
      r"number of threads must be >= 1"),
    C("fastnn.set_num_threads", "absurdly many (100000: libgomp crashed)",
      lambda: fastnn.set_num_threads(100000), ValueError, r"number of threads must be <= 4096"),
    C("fastnn.set_num_threads", "a float", lambda: fastnn.set_num_threads(2.0), TypeError,
      r"number of threads must be an integer"),
    C("fastnn.threads", "0 threads", lambda: fastnn.threads(0).__enter__(), ValueError,
      r"number of threads must be >= 1"),
    C("fastnn.threads", "a string", lambda: fastnn.threads("2").__enter__(), TypeError,
      r"number of threads must be an integer"),
    # ---------------------------------------------------------------- layers.Dense
    C("layers.Dense", "in_features = 0", lambda: Dense(0, 3), ValueError, r"in_features"),
    C("layers.Dense", "out_features negative", lambda: Dense(3, -1), ValueError, r"out_features"),
    C("layers.Dense", "in_features a float", lambda: Dense(2.5, 3), ValueError, r"in_features"),
    C("layers.Dense", "in_features a bool", lambda: Dense(True, 3), ValueError, r"in_features"),
    C("layers.Dense", "unknown activation", lambda: Dense(3, 2, activation="gelu"), ValueError,
      r"activation must be one of"),
    C("layers.Dense", "unknown init", lambda: Dense(3, 2, init="xavier"), ValueError,
      r"init must be one of"),
    C("layers.Dense", "float16 dtype (unsupported)", lambda: Dense(3, 2, dtype=np.float16),
      DTypeError, r"dtype must be float32 or float64"),
    C("layers.Dense", "int dtype", lambda: Dense(3, 2, dtype=int), DTypeError, r"dtype must be"),
    C("layers.Dense", "not a dtype", lambda: Dense(3, 2, dtype="floaty"), DTypeError,
      r"dtype must be"),
    C("Dense.forward", "a list", lambda: Dense(3, 2).forward([[1.0, 2.0, 3.0]]), TypeError,
      r"x must be a numpy array"),
    C("Dense.forward", "wrong number of features", lambda: Dense(3, 2).forward(arr((2, 4))),
      ShapeError, r"x must have 3 features per row"),
    C("Dense.forward", "1-D x", lambda: Dense(3, 2).forward(arr(3)), ShapeError, r"x must be 2-D"),
    C("Dense.forward", "empty batch", lambda: Dense(3, 2).forward(arr((0, 3))), ShapeError,
      r"x is an empty batch"),
    C("Dense.forward", "float64 x for a float32 layer",
      lambda: Dense(3, 2).forward(arr((2, 3), F64)), DTypeError, r"x must have dtype float32"),
    C("Dense.forward", "int x", lambda: Dense(3, 2).forward(np.ones((2, 3), int)), DTypeError,
      r"x must have dtype float32"),
    C("Dense.backward", "before forward", lambda: Dense(3, 2).backward(arr((2, 2))), RuntimeError,
      r"Dense.backward called before forward"),
    C("Dense.backward", "batch size differs from the forward's",
      lambda: forwarded(Dense(3, 2), arr((2, 3))).backward(arr((5, 2))), ShapeError,
      r"dout has 5 rows but the forward batch had 2"),
    C("Dense.backward", "dout of the wrong width",
      lambda: forwarded(Dense(3, 2), arr((2, 3))).backward(arr((2, 3))), ShapeError,
      r"dout must have 2 features"),
    C("Dense.backward", "dout a list",
      lambda: forwarded(Dense(3, 2), arr((2, 3))).backward([[1.0, 2.0]] * 2), TypeError,
      r"dout must be a numpy array"),
    # ---------------------------------------------------------------- activation layers
    C("ReLU.forward", "int x", lambda: ReLU().forward(np.ones((2, 2), int)), DTypeError,
      r"x must be float32"),
    C("Sigmoid.forward", "3-D x", lambda: Sigmoid().forward(arr((2, 2, 2))), ShapeError,
      r"x must be 2-D"),
    C("Tanh.forward", "empty batch", lambda: Tanh().forward(arr((0, 2))), ShapeError,
      r"x is an empty batch"),
    C("Tanh.backward", "dout of another shape",
      lambda: forwarded(Tanh(), arr((2, 3))).backward(arr((2, 4))), ShapeError,
      r"Tanh.backward: dout must have"),
    C("ReLU.backward", "before forward", lambda: ReLU().backward(arr((2, 2))), RuntimeError,
      r"ReLU.backward called before forward"),
    C("Softmax.forward", "1-D x", lambda: Softmax().forward(arr(3)), ShapeError, r"x must be 2-D"),
    C("Softmax.backward", "int dout",
      lambda: forwarded(Softmax(), arr((2, 3))).backward(np.ones((2, 3), int)), DTypeError,
      r"dout must have dtype"),
    # ---------------------------------------------------------------- Dropout, Flatten
    C("layers.Dropout", "rate = 1", lambda: Dropout(1.0), ValueError, r"rate must be in \[0, 1\)"),
    C("layers.Dropout", "negative rate", lambda: Dropout(-0.5), ValueError, r"rate"),
    C("layers.Dropout", "NaN rate", lambda: Dropout(NAN), ValueError, r"rate"),
    C("layers.Dropout", "rate a string", lambda: Dropout("half"), TypeError,
      r"rate must be a real number"),
    C("layers.Dropout", "rate None", lambda: Dropout(None), TypeError,
      r"rate must be a real number"),
    C("Dropout.forward", "int x", lambda: Dropout(0.5).forward(np.ones((2, 2), int)), DTypeError,
      r"x must be float32"),
    C("Dropout.forward", "empty batch", lambda: Dropout(0.5).forward(arr((0, 2))), ShapeError,
      r"x must be a non-empty batch"),
    C("Dropout.backward", "dout of another shape",
      lambda: forwarded(Dropout(0.5, seed=0), arr((2, 3))).backward(arr((2, 4))), ShapeError,
      r"dout must have shape \(2, 3\)"),
    C("Dropout.backward", "int dout",
      lambda: forwarded(Dropout(0.5, seed=0), arr((2, 3))).backward(np.ones((2, 3), int)),
      DTypeError, r"dout must be float32 or float64"),
    C("Dropout.backward", "dout a list",
      lambda: forwarded(Dropout(0.5, seed=0), arr((2, 3))).backward([[1.0] * 3] * 2), TypeError,
      r"dout must be a numpy array"),
    C("Flatten.forward", "a list", lambda: Flatten().forward([[1.0]]), TypeError,
      r"x must be a numpy array"),
    C("Flatten.forward", "empty batch", lambda: Flatten().forward(arr((0, 2, 2))), ShapeError,
      r"non-empty batch"),
    C("Flatten.backward", "dout of another size",
      lambda: forwarded(Flatten(), arr((2, 3, 3))).backward(arr((2, 8))), ShapeError,
      r"dout of shape \(2, 8\) cannot be reshaped"),
    C("Flatten.backward", "dout a list",
      lambda: forwarded(Flatten(), arr((2, 3))).backward([[1.0] * 3] * 2), TypeError,
      r"dout must be a numpy array"),
    # ---------------------------------------------------------------- image layers (NHWC)
    C("Conv2D.forward", "x 2-D", lambda: Conv2D(3, 4, 3).forward(arr((2, 25))), ShapeError,
      r"Conv2D: x must be 4-D NHWC \(batch, height, width, channels\), got shape \(2, 25\)"),
    C("Conv2D.forward", "(N, H, W) x with 3 in_channels",
      lambda: Conv2D(3, 4, 3).forward(arr((2, 5, 5))), ShapeError, r"Conv2D: x must be 4-D"),
    C("Conv2D.forward", "channels differ from in_channels",
      lambda: Conv2D(3, 4, 3).forward(arr((2, 5, 5, 2))), ShapeError,
      r"Conv2D: x must have 3 channels \(NHWC, last axis\), got shape \(2, 5, 5, 2\)"),
    C("Conv2D.forward", "kernel larger than the padded input",
      lambda: Conv2D(1, 2, 7, padding=1).forward(arr((2, 4, 4, 1))), ShapeError,
      r"Conv2D: the kernel 7x7 is larger than the padded input 6x6 \(input shape "
      r"\(2, 4, 4, 1\), padding \(1, 1, 1, 1\)\)"),
    C("Conv2D.forward", "float64 x, float32 layer",
      lambda: Conv2D(1, 2, 3).forward(arr((1, 4, 4, 1), F64)), DTypeError,
      r"Conv2D: x must have dtype float32"),
    C("Conv2D.forward", "empty batch", lambda: Conv2D(1, 2, 3).forward(arr((0, 4, 4, 1))),
      ShapeError, r"Conv2D: x is empty"),
    C("Conv2D.backward", "dout of another shape",
      lambda: forwarded(Conv2D(1, 2, 3), arr((2, 5, 5, 1))).backward(arr((2, 3, 3, 3))),
      ShapeError, r"Conv2D.backward: dout must have the output's shape \(2, 3, 3, 2\)"),
    C("Conv2D.backward", "before forward",
      lambda: Conv2D(1, 2, 3).backward(arr((1, 1, 1, 2))), RuntimeError,
      r"Conv2D.backward called before forward"),
    C("Conv2D", "kernel_size 0", lambda: Conv2D(1, 2, 0), ValueError,
      r"Conv2D: kernel_size must be a positive integer or a pair of them, got 0"),
    C("Conv2D", "stride (1, 2, 3)", lambda: Conv2D(1, 2, 3, stride=(1, 2, 3)), ValueError,
      r"Conv2D: stride must be a positive integer or a pair"),
    C("Conv2D", "padding 'full'", lambda: Conv2D(1, 2, 3, padding="full"), ValueError,
      r"Conv2D: padding must be 'valid', 'same', an int or a tuple, got 'full'"),
    C("Conv2D", "padding -1", lambda: Conv2D(1, 2, 3, padding=-1), ValueError,
      r"Conv2D: padding must be 'valid', 'same', an integer >= 0"),
    C("Conv2D", "in_channels 0", lambda: Conv2D(0, 2, 3), ValueError,
      r"Conv2D: in_channels must be a positive integer"),
    C("Conv2D", "activation 'tanh'", lambda: Conv2D(1, 2, 3, activation="tanh"), ValueError,
      r"Conv2D: activation must be one of"),
    C("MaxPool2D.forward", "pool larger than the input",
      lambda: MaxPool2D(3).forward(arr((1, 2, 5, 1))), ShapeError,
      r"MaxPool2D: the pool 3x3 is larger than the input 2x5 \(input shape \(1, 2, 5, 1\)"),
    C("MaxPool2D.forward", "x 3-D", lambda: MaxPool2D(2).forward(arr((2, 4, 4))), ShapeError,
      r"MaxPool2D: x must be 4-D NHWC"),
    C("MaxPool2D.backward", "dout of another shape",
      lambda: forwarded(MaxPool2D(2), arr((1, 4, 4, 2))).backward(arr((1, 2, 2, 3))),
      ShapeError, r"MaxPool2D.backward: dout must have the output's shape \(1, 2, 2, 2\)"),
    C("MaxPool2D", "pool_size 0", lambda: MaxPool2D(0), ValueError,
      r"MaxPool2D: pool_size must be a positive integer"),
    C("AvgPool2D.forward", "int x", lambda: AvgPool2D(2).forward(np.ones((1, 4, 4, 1), int)),
      DTypeError, r"AvgPool2D: x must be float32 or float64"),
    C("AvgPool2D", "stride 0", lambda: AvgPool2D(2, stride=0), ValueError,
      r"AvgPool2D: stride must be a positive integer"),
    C("GlobalAvgPool2D.forward", "x 2-D", lambda: GlobalAvgPool2D().forward(arr((2, 3))),
      ShapeError, r"GlobalAvgPool2D: x must be 4-D NHWC"),
    C("BatchNorm2D.forward", "channels differ from num_features",
      lambda: BatchNorm2D(3).forward(arr((2, 4, 4, 2))), ShapeError,
      r"BatchNorm2D: x must have 3 channels"),
    C("BatchNorm2D.forward", "one value per channel in training",
      lambda: BatchNorm2D(3).forward(arr((1, 1, 1, 3))), ShapeError,
      r"BatchNorm2D: training needs more than one value per channel"),
    C("BatchNorm2D", "momentum 1.5", lambda: BatchNorm2D(3, momentum=1.5), ValueError,
      r"momentum"),
    C("BatchNorm2D", "eps 0", lambda: BatchNorm2D(3, eps=0), ValueError, r"eps"),
    C("Sequential", "Conv2D channels differ from the previous layer's",
      lambda: fastnn.Sequential([Conv2D(1, 4, 3), MaxPool2D(2), Conv2D(5, 2, 3)]), ShapeError,
      r"Sequential: layer 2 \(Conv2D\) expects 5 input channels but the previous layer "
      r"gives 4"),
    C("Sequential.forward", "flat rows into a Conv2D model",
      lambda: fastnn.Sequential([Conv2D(1, 2, 3)])(arr((2, 784))), ShapeError,
      r"Conv2D: x must be 4-D NHWC"),
    C("layers.layer_from_config", "not a dict", lambda: layer_from_config("Dense"), ValueError,
      r"layer config must be a dict"),
    C("layers.layer_from_config", "unknown class", lambda: layer_from_config({"class": "Conv3D"}),
      ValueError, r"unknown layer class 'Conv3D'"),
    C("layers.layer_from_config", "missing argument",
      lambda: layer_from_config({"class": "Dense", "in_features": 3}), ValueError,
      r"bad config for Dense.*out_features"),
    # ---------------------------------------------------------------- Sequential
    C("Sequential", "no layers", lambda: fastnn.Sequential([]), ValueError,
      r"layers must be a non-empty list"),
    C("Sequential", "a non-layer in layers", lambda: fastnn.Sequential([Dense(3, 2), "relu"]),
      TypeError, r"layers\[1\] must be a fastnn.layers.Layer"),
    C("Sequential", "the same layer twice", lambda: (lambda d: fastnn.Sequential([d, d]))(
        Dense(2, 2)), ValueError, r"the same layer object appears twice"),
    C("Sequential", "widths do not chain",
      lambda: fastnn.Sequential([Dense(3, 4), Dense(5, 2)]), ShapeError,
      r"layer 1 \(Dense\) expects 5 input features but the previous layer gives 4"),
    C("Sequential", "layers of mixed dtypes",
      lambda: fastnn.Sequential([Dense(3, 4), Dense(4, 2, dtype=F64)]), DTypeError,
      r"layers mix dtypes"),
    C("Sequential", "dtype int", lambda: fastnn.Sequential([ReLU()], dtype="int32"), DTypeError,
      r"dtype must be float32 or float64"),
    C("Sequential", "negative seed", lambda: fastnn.Sequential([Dense(2, 2)], seed=-1), ValueError,
      r"seed"),
    C("Sequential", "seed a string", lambda: fastnn.Sequential([Dense(2, 2)], seed="abc"),
      TypeError, r"seed"),
    C("Sequential.__call__", "int x", lambda: mlp()(np.ones((2, 4), int)), DTypeError,
      r"input must be a float array or uint8 images"),
    C("Sequential.__call__", "bool x", lambda: mlp()(np.ones((2, 4), bool)), DTypeError,
      r"input must be a float array"),
    C("Sequential.__call__", "object x", lambda: mlp()(np.array([[1.0, None, 2, 3]], object)),
      DTypeError, r"input must be a float array"),
    C("Sequential.__call__", "complex x", lambda: mlp()(np.ones((2, 4), np.complex64)), DTypeError,
      r"input must be a float array"),
    C("Sequential.__call__", "1-D x", lambda: mlp()(arr(4)), ShapeError,
      r"input must be a batch \(N, features\)"),
    C("Sequential.__call__", "empty batch", lambda: mlp()(arr((0, 4))), ShapeError,
      r"input is an empty batch"),
    C("Sequential.__call__", "wrong number of features", lambda: mlp()(arr((2, 5))), ShapeError,
      r"x must have 4 features"),
    C("Sequential.__call__", "images of the wrong size", lambda: mlp()(arr((2, 3, 3))), ShapeError,
      r"input of shape \(2, 3, 3\) cannot feed the first layer"),
    C("Sequential.backward", "before forward", lambda: mlp().backward(arr((2, 3))), RuntimeError,
      r"backward called before forward"),
    C("Sequential.backward", "dout of another shape",
      lambda: (lambda m: (m(X), m.backward(arr((8, 4))))[1])(mlp()), ShapeError,
      r"dout must have the output's shape \(8, 3\)"),
    C("Sequential.backward", "dout of another dtype",
      lambda: (lambda m: (m(X), m.backward(arr((8, 3), F64)))[1])(mlp()), DTypeError,
      r"dout must have dtype float32"),
    C("Sequential.backward", "dout a list",
      lambda: (lambda m: (m(X), m.backward([[0.0] * 3] * 8))[1])(mlp()), TypeError,
      r"dout must be a numpy array"),
    C("Sequential.load_state_dict", "missing parameter",
      lambda: mlp().load_state_dict({"0.weight": np.zeros((4, 5))}), ValueError,
      r"missing \['0.bias'"),
    C("Sequential.load_state_dict", "parameter of the wrong shape",
      lambda: (lambda m: m.load_state_dict({**m.state_dict(), "1.bias": np.zeros(4)}))(mlp()),
      ShapeError, r"1.bias must have shape \(3,\)"),
    C("Sequential.from_config", "not a Sequential config",
      lambda: fastnn.Sequential.from_config({"class": "Dense"}), ValueError,
      r"expected a dict with class 'Sequential'"),
    C("Parameter.data", "assigned another shape",
      lambda: setattr(mlp().parameters()[0], "data", np.zeros((3, 3))), ShapeError,
      r"Parameter '0.weight': data must have shape \(4, 5\)"),
    # ---------------------------------------------------------------- losses
    C("losses.SoftmaxCrossEntropy", "label_smoothing > 1",
      lambda: SoftmaxCrossEntropy(label_smoothing=1.5), ValueError,
      r"label_smoothing must be in \[0, 1\]"),
    C("losses.SoftmaxCrossEntropy", "label_smoothing NaN",
      lambda: SoftmaxCrossEntropy(label_smoothing=NAN), ValueError, r"label_smoothing"),
    C("losses.SoftmaxCrossEntropy", "label_smoothing a string",
      lambda: SoftmaxCrossEntropy(label_smoothing="lots"), TypeError,
      r"label_smoothing must be a real number"),
    C("SoftmaxCrossEntropy.__call__", "logits a list", lambda: SoftmaxCrossEntropy()([[0.0]], [0]),
      TypeError, r"outputs must be a numpy array"),
    C("SoftmaxCrossEntropy.__call__", "int logits",
      lambda: SoftmaxCrossEntropy()(np.zeros((2, 3), int), [0, 1]), DTypeError,
      r"outputs must be float32 or float64"),
    C("SoftmaxCrossEntropy.__call__", "empty batch",
      lambda: SoftmaxCrossEntropy()(arr((0, 3)), np.array([], int)), ShapeError,
      r"outputs is an empty batch"),
    C("SoftmaxCrossEntropy.__call__", "label out of range",
      lambda: SoftmaxCrossEntropy()(arr((2, 3)), [0, 3]), ValueError, r"labels\[1\] = 3"),
    C("SoftmaxCrossEntropy.__call__", "negative label",
      lambda: SoftmaxCrossEntropy()(arr((2, 3)), [-1, 0]), ValueError, r"labels\[0\] = -1"),
    C("SoftmaxCrossEntropy.__call__", "float 1-D targets",
      lambda: SoftmaxCrossEntropy()(arr((2, 3)), [0.5, 1.0]), DTypeError,
      r"labels must be integer class indices"),
    C("SoftmaxCrossEntropy.__call__", "batch sizes differ",
      lambda: SoftmaxCrossEntropy()(arr((2, 3)), [0, 1, 2]), ShapeError,
      r"labels has 3 entries but logits has 2 rows"),
    C("SoftmaxCrossEntropy.__call__", "string one-hot targets",
      lambda: SoftmaxCrossEntropy()(arr((2, 3)), np.full((2, 3), "a")), DTypeError,
      r"targets must be numeric"),
    C("SoftmaxCrossEntropy.backward", "before the loss", lambda: SoftmaxCrossEntropy().backward(),
      RuntimeError, r"backward called before the loss"),
    C("MeanSquaredError.__call__", "targets of another shape",
      lambda: MeanSquaredError()(arr((2, 3)), arr((2, 2))), ShapeError,
      r"targets must have the outputs' shape"),
    C("MeanSquaredError.__call__", "string targets",
      lambda: MeanSquaredError()(arr((2, 1)), np.array(["a", "b"])), DTypeError,
      r"targets must be numeric"),
    C("MeanSquaredError.__call__", "outputs with no columns",
      lambda: MeanSquaredError()(arr((2, 0)), arr((2, 0))), ShapeError, r"outputs has no columns"),
    C("BinaryCrossEntropyWithLogits.__call__", "targets outside [0, 1]",
      lambda: BinaryCrossEntropyWithLogits()(arr((2, 1)), np.array([0.0, 2.0])), ValueError,
      r"targets must lie in \[0, 1\]"),
    C("BinaryCrossEntropyWithLogits.__call__", "3-D logits",
      lambda: BinaryCrossEntropyWithLogits()(arr((2, 1, 1)), arr((2, 1, 1))), ShapeError,
      r"outputs must be 2-D"),
    C("losses.get_loss", "unknown name", lambda: get_loss("hinge"), ValueError,
      r"unknown loss 'hinge'"),
    C("losses.get_loss", "not a name", lambda: get_loss(42), ValueError, r"unknown loss 42"),
    C("losses.loss_from_config", "unknown class", lambda: loss_from_config({"class": "Hinge"}),
      ValueError, r"unknown loss config"),
    # ---------------------------------------------------------------- optimizers
    C("optim.SGD", "negative lr", lambda: SGD(mlp(), lr=-0.1), ValueError, r"lr must be >= 0"),
    C("optim.SGD", "NaN lr", lambda: SGD(mlp(), lr=NAN), ValueError, r"lr must be finite"),
    C("optim.SGD", "inf lr", lambda: SGD(mlp(), lr=INF), ValueError, r"lr must be finite"),
    C("optim.SGD", "lr a string", lambda: SGD(mlp(), lr="0.1"), TypeError,
      r"lr must be a real number"),
    C("optim.SGD", "momentum = 1", lambda: SGD(mlp(), lr=0.1, momentum=1.0), ValueError,
      r"momentum must be in \[0, 1\)"),
    C("optim.SGD", "negative momentum", lambda: SGD(mlp(), lr=0.1, momentum=-0.5), ValueError,
      r"momentum must be in \[0, 1\), got -0.5"),
    C("optim.SGD", "nesterov without momentum", lambda: SGD(mlp(), lr=0.1, nesterov=True),
      ValueError, r"nesterov=True needs momentum"),
    C("optim.SGD", "negative weight_decay", lambda: SGD(mlp(), lr=0.1, weight_decay=-1.0),
      ValueError, r"weight_decay must be >= 0"),
    C("optim.SGD", "no parameters", lambda: SGD([], lr=0.1), ValueError, r"params is empty"),
    C("optim.SGD", "params None", lambda: SGD(None, lr=0.1), TypeError,
      r"params must be a Sequential or an iterable of Parameters"),
    C("optim.SGD", "params a layer", lambda: SGD(Dense(2, 2), lr=0.1), TypeError,
      r"params must be a Sequential"),
    C("optim.SGD", "params not Parameters", lambda: SGD([np.zeros(3)], lr=0.1), TypeError,
      r"params\[0\] must be a fastnn Parameter"),
    C("optim.SGD", "a parameter twice",
      lambda: (lambda p: SGD([p, p], lr=0.1))(mlp().parameters()[0]), ValueError,
      r"a parameter appears more than once"),
    C("optim.SGD", "params of mixed dtypes",
      lambda: SGD(Dense(2, 2).parameters() + Dense(2, 2, dtype=F64).parameters(), lr=0.1), DTypeError,
      r"params mix dtypes"),
    C("optim.Adam", "betas not a pair", lambda: Adam(mlp(), betas=(0.9,)), ValueError,
      r"betas must be a pair"),
    C("optim.Adam", "beta1 = 1", lambda: Adam(mlp(), betas=(1.0, 0.999)), ValueError,
      r"betas\[0\] must be in \[0, 1\)"),
    C("optim.Adam", "beta2 NaN", lambda: Adam(mlp(), betas=(0.9, NAN)), ValueError,
      r"betas\[1\] must be finite"),
    C("optim.Adam", "eps = 0", lambda: Adam(mlp(), eps=0.0), ValueError, r"eps must be > 0"),
    C("optim.Adam", "negative lr", lambda: Adam(mlp(), lr=-1e-3), ValueError, r"lr must be >= 0"),
    C("optim.AdamW", "negative weight_decay", lambda: AdamW(mlp(), weight_decay=-0.01),
      ValueError, r"weight_decay must be >= 0"),
    C("Optimizer.lr", "set to NaN", lambda: setattr(SGD(mlp(), lr=0.1), "lr", NAN), ValueError,
      r"lr must be finite"),
    C("Optimizer.lr", "set negative", lambda: setattr(Adam(mlp()), "lr", -1.0), ValueError,
      r"lr must be >= 0"),
    C("Optimizer.load_state_dict", "state of another optimizer class",
      lambda: Adam(mlp()).load_state_dict(opt_state()), ValueError,
      r"state is for 'SGD', not 'Adam'"),
    C("Optimizer.load_state_dict", "buffer of another size",
      lambda: SGD(mlp(), lr=0.1, momentum=0.9).load_state_dict(
          opt_state(buffers={"velocity": np.zeros(3)})), ValueError,
      r"buffer 'velocity' has shape \(3,\)"),
    C("Optimizer.load_state_dict", "negative step",
      lambda: SGD(mlp(), lr=0.1, momentum=0.9).load_state_dict(opt_state(step=-1)), ValueError,
      r"step must be >= 0"),
    C("optim.optimizer_from_state", "unknown class",
      lambda: optimizer_from_state(mlp(), {"class": "Lion"}), ValueError,
      r"optimizer state must name one of"),
    # ---------------------------------------------------------------- schedules
    C("optim.StepDecay", "step_size = 0", lambda: StepDecay(SGD(mlp(), lr=0.1), 0, 0.5),
      ValueError, r"step_size must be >= 1"),
    C("optim.StepDecay", "step_size a float", lambda: StepDecay(SGD(mlp(), lr=0.1), 1.5, 0.5),
      TypeError, r"step_size must be an integer"),
    C("optim.StepDecay", "negative gamma", lambda: StepDecay(SGD(mlp(), lr=0.1), 2, -0.5),
      ValueError, r"gamma must be >= 0"),
    C("optim.StepDecay", "not an optimizer", lambda: StepDecay("sgd", 2, 0.5), TypeError,
      r"optimizer must be a fastnn optimizer"),
    C("optim.CosineDecay", "total_steps = 0", lambda: CosineDecay(SGD(mlp(), lr=0.1), 0),
      ValueError, r"total_steps must be >= 1"),
    C("optim.CosineDecay", "negative min_lr",
      lambda: CosineDecay(SGD(mlp(), lr=0.1), 10, min_lr=-1.0), ValueError,
      r"min_lr must be >= 0"),
    C("optim.LinearWarmup", "warmup_steps = 0", lambda: LinearWarmup(SGD(mlp(), lr=0.1), 0),
      ValueError, r"warmup_steps must be >= 1"),
    C("optim.LinearWarmup", "after not a schedule",
      lambda: LinearWarmup(SGD(mlp(), lr=0.1), 5, after="cosine"), TypeError,
      r"after must be an LRSchedule"),
    C("optim.OneCycle", "total_steps = 1", lambda: OneCycle(SGD(mlp(), lr=0.1), 0.1, 1),
      ValueError, r"total_steps must be >= 2"),
    C("optim.OneCycle", "pct_start = 0", lambda: OneCycle(SGD(mlp(), lr=0.1), 0.1, 10,
                                                          pct_start=0.0),
      ValueError, r"pct_start must be in \(0, 1\)"),
    C("optim.OneCycle", "NaN max_lr", lambda: OneCycle(SGD(mlp(), lr=0.1), NAN, 10), ValueError,
      r"max_lr must be finite"),
    # ---------------------------------------------------------------- models, presets
    C("models.MLP", "a single width", lambda: MLP([784]), ValueError,
      r"sizes must list at least the input and output"),
    C("models.MLP", "sizes not a list", lambda: MLP(784), TypeError, r"sizes must be a list"),
    C("models.MLP", "a width of 0", lambda: MLP([784, 0, 10]), ValueError, r"out_features"),
    C("models.MLP", "unknown activation", lambda: MLP([4, 5, 3], activation="swish"), ValueError,
      r"activation must be one of"),
    C("models.MLP", "unknown init", lambda: MLP([4, 3], init="orthogonal"), ValueError,
      r"init must be one of"),
    C("models.MLP", "int dtype", lambda: MLP([4, 3], dtype=np.int32), DTypeError, r"dtype"),
    C("models.SoftmaxRegression", "0 classes", lambda: SoftmaxRegression(784, 0), ValueError,
      r"out_features"),
    C("models.Perceptron", "n_features = 0", lambda: Perceptron(0), ValueError, r"n_features"),
    C("models.Perceptron", "n_classes = 1", lambda: Perceptron(4, n_classes=1), ValueError,
      r"n_classes must be an integer >= 2"),
    C("models.Perceptron", "lr = 0", lambda: Perceptron(4, lr=0.0), ValueError, r"lr"),
    C("models.Perceptron", "lr NaN", lambda: Perceptron(4, lr=NAN), ValueError, r"lr"),
    C("models.Perceptron", "lr a string", lambda: Perceptron(4, lr="fast"), TypeError,
      r"lr must be a real number"),
    C("Perceptron.fit", "label out of range",
      lambda: Perceptron(4).fit(X, np.array([0, 1, 2, 0, 1, 0, 0, 1])), ValueError,
      r"y\[2\] = 2 is not a label in \[0, 2\)"),
    C("Perceptron.fit", "float labels", lambda: Perceptron(4).fit(X, Y.astype(float)), DTypeError,
      r"y must be integer class labels"),
    C("Perceptron.fit", "batch sizes differ", lambda: Perceptron(4).fit(X, np.zeros(3, int)),
      ShapeError, r"y must have shape \(8,\)"),
    C("Perceptron.fit", "wrong number of features", lambda: Perceptron(5).fit(X, Y % 2),
      ShapeError, r"each sample must have 5 features"),
    C("Perceptron.fit", "epochs = 0", lambda: Perceptron(4).fit(X, Y % 2, epochs=0), ValueError,
      r"epochs must be an integer >= 1"),
    C("Perceptron.fit", "NaN in x",
      lambda: Perceptron(4).fit(np.where(np.eye(8, 4) > 0, np.nan, X), Y % 2), ValueError,
      r"x holds NaN or inf"),
    C("Perceptron.fit", "int x", lambda: Perceptron(4).fit(np.ones((8, 4), int), Y % 2),
      DTypeError, r"x must be float or uint8"),
    C("Perceptron.predict", "empty batch", lambda: Perceptron(4).predict(arr((0, 4))), ShapeError,
      r"x is an empty batch"),
    C("presets.get_preset", "unknown preset", lambda: get_preset("huge"), ValueError,
      r"unknown preset 'huge'"),
    # ---------------------------------------------------------------- training: fit
    C("fit", "batch_size = 0", lambda: fit(batch_size=0), ValueError,
      r"batch_size must be >= 1, got 0"),
    C("fit", "negative batch_size", lambda: fit(batch_size=-4), ValueError,
      r"batch_size must be >= 1"),
    C("fit", "batch_size a float", lambda: fit(batch_size=4.0), TypeError,
      r"batch_size must be an integer"),
    C("fit", "batch_size a bool", lambda: fit(batch_size=True), TypeError,
      r"batch_size must be an integer"),
    C("fit", "negative epochs", lambda: fit(epochs=-1), ValueError, r"epochs must be >= 0"),
    C("fit", "negative seed", lambda: fit(seed=-1), ValueError, r"seed must be >= 0"),
    C("fit", "verbose = 5", lambda: fit(verbose=5), ValueError, r"verbose must be 0, 1 or 2"),
    C("fit", "x a list", lambda: fit(x=X.tolist()), DTypeError, r"x must be a numpy array"),
    C("fit", "int x", lambda: fit(x=np.ones((8, 4), int)), DTypeError,
      r"x must be uint8 images or a float array"),
    C("fit", "1-D x", lambda: fit(x=arr(8), y=Y), ShapeError, r"x must have shape \(N, features"),
    C("fit", "empty x", lambda: fit(x=arr((0, 4)), y=np.array([], int)), ShapeError,
      r"x is empty"),
    C("fit", "x with the wrong number of features", lambda: fit(x=arr((8, 5))), ShapeError,
      r"x has shape \(8, 5\) \(5 features per row\) but the model's first layer expects 4"),
    C("fit", "float labels", lambda: fit(y=Y.astype(float)), DTypeError,
      r"y must hold integer class labels"),
    C("fit", "bool labels", lambda: fit(y=Y > 0), DTypeError, r"y must hold integer class labels"),
    C("fit", "labels a list", lambda: fit(y=Y.tolist()), DTypeError, r"y must be a numpy array"),
    C("fit", "2-D labels", lambda: fit(y=np.eye(3)[Y].astype(int)), ShapeError,
      r"y must have shape \(N,\)"),
    C("fit", "x and y lengths differ", lambda: fit(y=Y[:5]), ShapeError,
      r"x and y have different lengths: 8 vs 5"),
    C("fit", "label >= classes", lambda: fit(y=np.where(Y == 2, 3, Y)), ValueError,
      r"y holds labels in \[0, 3\] but the model has 3 outputs"),
    C("fit", "negative label", lambda: fit(y=np.where(Y == 2, -1, Y)), ValueError,
      r"y holds labels in \[-1, 1\]"),
    C("fit", "validation_data not a pair", lambda: fit(validation_data=(X,)), TypeError,
      r"validation_data must be a pair"),
    C("fit", "validation labels out of range",
      lambda: fit(validation_data=(X, Y + 1)), ValueError, r"validation y holds labels"),
    C("fit", "a callback without on_epoch_end", lambda: fit(callbacks=[object()]), TypeError,
      r"callbacks must be fastnn.callbacks.Callback"),
    C("fit", "schedule not callable", lambda: fit(schedule=0.1), TypeError,
      r"schedule must be a callable"),
    C("fit", "loss not a loss", lambda: fit(loss="crossentropy"), TypeError,
      r"loss must be a fastnn loss"),
    C("fit", "optimizer missing", lambda: fit(optimizer=None), TypeError,
      r"optimizer must be a fastnn optimizer"),
    C("fit", "optimizer of another model", lambda: fit(optimizer=SGD(mlp(), lr=0.1)), ValueError,
      r"optimizer updates parameters that are not the model's"),
    C("fit", "fused=True for a model the fused path cannot run",
      lambda: (lambda m: fit(m, x=X.astype(F64), optimizer=SGD(m, lr=0.1), fused=True))(
          fastnn.Sequential([Dense(4, 3, dtype=F64)])), ValueError,
      r"fused=True but the fused trainer cannot run.*float64"),
    # ---------------------------------------------------------------- evaluate, predict
    C("evaluate", "batch_size = 0", lambda: mlp().evaluate(X, Y, batch_size=0), ValueError,
      r"batch_size must be >= 1"),
    C("evaluate", "label out of range", lambda: mlp().evaluate(X, Y + 1), ValueError,
      r"y holds labels in \[1, 3\]"),
    C("evaluate", "x and y lengths differ", lambda: mlp().evaluate(X, Y[:3]), ShapeError,
      r"x and y have different lengths"),
    C("evaluate", "loss not a loss", lambda: mlp().evaluate(X, Y, loss="mse"), TypeError,
      r"loss must be a fastnn loss"),
    C("predict", "batch_size negative", lambda: mlp().predict(X, batch_size=-1), ValueError,
      r"batch_size must be >= 1"),
    C("predict", "complex x", lambda: mlp().predict(np.ones((2, 4), np.complex64)), DTypeError,
      r"x must be uint8 images or a float array"),
    C("predict", "empty x", lambda: mlp().predict(arr((0, 4))), ShapeError, r"x is empty"),
    # ---------------------------------------------------------------- callbacks
    C("callbacks.TensorBoard", "logdir not a path", lambda: callbacks.TensorBoard(5), TypeError,
      r"logdir must be a path"),
    C("callbacks.TensorBoard", "negative histogram_freq",
      lambda: callbacks.TensorBoard(os.devnull, histogram_freq=-1), ValueError,
      r"histogram_freq must be an integer >= 0"),
    C("callbacks.TensorBoard", "update_freq 0", lambda: callbacks.TensorBoard(os.devnull,
                                                                              update_freq=0),
      ValueError, r"update_freq must be 'epoch' or an integer >= 1"),
    C("callbacks.CSVLogger", "path not a path", lambda: callbacks.CSVLogger(3), TypeError,
      r"path must be a file path"),
    C("callbacks.ModelCheckpoint", "path None", lambda: callbacks.ModelCheckpoint(None),
      TypeError, r"path must be a file path"),
    C("callbacks.ModelCheckpoint", "unknown mode",
      lambda: callbacks.ModelCheckpoint("ckpt.npz", mode="sideways"), ValueError,
      r"mode must be 'auto', 'min' or 'max'"),
    C("callbacks.EarlyStopping", "negative patience",
      lambda: callbacks.EarlyStopping(patience=-1), ValueError, r"patience must be an integer"),
    C("callbacks.EarlyStopping", "monitor not a name", lambda: callbacks.EarlyStopping(monitor=5),
      TypeError, r"monitor must be a metric name"),
    C("callbacks.EarlyStopping", "NaN min_delta",
      lambda: callbacks.EarlyStopping(min_delta=NAN), ValueError, r"min_delta must be finite"),
    C("callbacks.EarlyStopping", "min_delta a string",
      lambda: callbacks.EarlyStopping(min_delta="small"), TypeError,
      r"min_delta must be a real number"),
    C("callbacks.EarlyStopping", "baseline a string",
      lambda: callbacks.EarlyStopping(baseline="high"), TypeError,
      r"baseline must be a real number"),
    C("callbacks.EarlyStopping", "NaN baseline", lambda: callbacks.EarlyStopping(baseline=NAN),
      ValueError, r"baseline must be finite"),
    C("callbacks.StopAtAccuracy", "target > 1", lambda: callbacks.StopAtAccuracy(1.5),
      ValueError, r"target must be in \(0, 1\]"),
    C("callbacks.StopAtAccuracy", "target a string", lambda: callbacks.StopAtAccuracy("all"),
      TypeError, r"target must be a real number"),
    # ---------------------------------------------------------------- save / load
    C("fastnn.save", "not a model", lambda: fastnn.save("model", os.devnull), TypeError,
      r"model must have get_config"),
    C("fastnn.save", "extra not JSON-serialisable",
      lambda: fastnn.save(mlp(), os.devnull, extra={"x": object()}), TypeError,
      r"extra must be JSON-serialisable"),
    C("datasets.load_idx", "missing file", lambda: load_idx("/nonexistent/train-images"),
      FileNotFoundError, r"/nonexistent/train-images"),
    C("plot.read_history", "missing source", lambda: plot.read_history("/nonexistent/log.csv"),
      FileNotFoundError, r"history source '/nonexistent/log.csv' does not exist"),
    C("SummaryWriter.add_scalar", "value a string",
      lambda: _writer().add_scalar("loss", "low", 1), TypeError,
      r"add_scalar\('loss'\): value must be a real number"),
    C("SummaryWriter.add_scalar", "tag not a string", lambda: _writer().add_scalar(5, 1.0, 1),
      TypeError, r"tag must be a non-empty str"),
    C("SummaryWriter.add_histogram", "object values",
      lambda: _writer().add_histogram("w", np.array([1, None], object), 0), TypeError,
      r"values must be numeric"),
    C("fastnn.load", "missing file", lambda: fastnn.load("/nonexistent/fastnn-model.npz"),
      FileNotFoundError, r"checkpoint '/nonexistent/fastnn-model.npz' does not exist"),
]

ALLOWED = (fastnn.FastnnError, ValueError, TypeError, RuntimeError, FileNotFoundError)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused(case):
    """The call raises exactly the documented class, with a message naming the argument."""
    assert issubclass(case.exc, ALLOWED)
    with pytest.raises(case.exc, match=case.match) as info:
        case.call()
    assert type(info.value) is case.exc, f"{case.id}: raised a {type(info.value).__name__}"
    # numpy's own errors (UFuncTypeError, AxisError...) subclass TypeError/ValueError: the
    # error must come from fastnn's checks, not from deep inside numpy or Python
    assert type(info.value).__module__.split(".")[0] in ("fastnn", "builtins"), (
        f"{case.id}: raised {type(info.value).__module__}.{type(info.value).__name__}")


def test_table_covers_every_kind_of_bad_input():
    """A sanity floor on the table itself, so rows are not silently dropped."""
    assert len(CASES) >= 200
    assert len({c.id for c in CASES}) == len(CASES), "duplicate row ids"
    entries = {c.entry for c in CASES}
    for must in ("fastnn.one_hot", "kernels.matmul", "kernels.softmax_xent", "kernels.sgd_update",
                 "layers.Dense", "Sequential.__call__", "losses.SoftmaxCrossEntropy", "optim.SGD",
                 "models.MLP", "fit", "evaluate", "predict"):
        assert must in entries


def test_fit_accepts_float_rows_of_another_width():
    """Not an error: float64 (or float16) rows train a float32 model (cast batch by batch).
    The fused plan only reads uint8/float32, and used to refuse them instead of stepping
    aside for the general path."""
    for dtype in (F64, np.float16):
        model = mlp()
        before = model.flat_params.copy()
        h = fit(model, x=X.astype(dtype), optimizer=SGD(model, lr=0.1))
        assert h.params["engine"] == "general"
        assert not np.array_equal(model.flat_params, before)
        assert np.isfinite(h.history["loss"][0])


# ------------------------------------------------------------------ docs/errors.md

def _message(case):
    try:
        case.call()
    except Exception as exc:                      # noqa: BLE001 - we report whatever it says
        return type(exc).__name__, str(exc)
    return "(no error)", ""


def _cell(text):
    text = " ".join(text.split())
    text = re.sub(r" at 0x[0-9a-f]+>", ">", text)      # object addresses change every run
    return text.replace("|", "\\|")


def render_markdown():
    """docs/errors.md from CASES: one table per entry point group."""
    lines = [
        "# Errors: what fastnn raises for bad input",
        "",
        "Every public entry point checks its arguments in Python before any native code",
        "runs, and raises a specific exception whose message names the argument and what",
        "was expected.  The classes (``fastnn.errors``) subclass the built-in exception you",
        "would catch anyway:",
        "",
        "| Class | Subclass of | Raised when |",
        "|---|---|---|",
        "| `ShapeError` | `ValueError` | an array has the wrong rank or shape, or two shapes "
        "disagree |",
        "| `DTypeError` | `TypeError` | an array has an unsupported dtype, or dtypes are mixed |",
        "| `DataFormatError` | `ValueError` | a data file (IDX, checkpoint) is truncated, corrupt "
        "or foreign |",
        "| `DatasetNotFoundError` | `FileNotFoundError` | a dataset is neither on disk nor "
        "downloadable |",
        "| `DivergenceError` | `FloatingPointError` | training produced NaN/inf (loss or "
        "weights) |",
        "| `NotBuiltError` | `ImportError` | a native extension was not compiled |",
        "",
        "Out-of-range values (a negative learning rate, depth 0, a label >= the number of",
        "classes) raise plain `ValueError`; a value of the wrong Python type (a string",
        "learning rate, a float batch size) raises `TypeError`.  Nothing is silently",
        "clipped or ignored: unlike TensorFlow, an out-of-range class index is an error.",
        "",
        f"The tables below list {len(CASES)} bad inputs, one per row, with the message",
        "each really produces.  They are generated from the table that",
        "`tests/robustness/test_bad_input_api.py` runs (regenerate with",
        "`python tests/robustness/test_bad_input_api.py`), so they stay true.",
        "",
    ]
    groups = {}
    for case in CASES:
        groups.setdefault(case.entry, []).append(case)
    for entry, cases in groups.items():
        lines += [f"## `{entry}`", "", "| Bad input | Exception | Example message |",
                  "|---|---|---|"]
        for case in cases:
            name, msg = _message(case)
            lines.append(f"| {_cell(case.bad)} | `{name}` | {_cell(msg)} |")
        lines.append("")
    # the hand-written command-line section at the end is kept as it is
    old = open(DOC, encoding="utf-8").read() if os.path.exists(DOC) else ""
    i = old.find(CLI_SECTION)
    return "\n".join(lines) + (old[i:] if i >= 0 else "")


CLI_SECTION = "\n## Command line (`fastnn ...`)"


def _doc_rows():
    """{(entry, bad input): exception name} as listed in docs/errors.md."""
    rows, entry = {}, None
    with open(DOC, encoding="utf-8") as fh:
        for line in fh:
            m = re.match(r"## `(.+)`", line)
            if m:
                entry = m.group(1)
                continue
            m = re.match(r"\| (.+?) \| `(\w+)` \|", line)
            if m and entry is not None:
                rows[(entry, m.group(1))] = m.group(2)
    return rows


def test_errors_doc_lists_every_row():
    """docs/errors.md documents every row of the table with the class really raised."""
    rows = _doc_rows()
    missing = [c.id for c in CASES if rows.get((c.entry, _cell(c.bad))) != c.exc.__name__]
    assert not missing, (f"docs/errors.md is out of date for {len(missing)} row(s), e.g. "
                         f"{missing[:3]}; run python tests/robustness/test_bad_input_api.py")
    stale = set(rows) - {(c.entry, _cell(c.bad)) for c in CASES}
    assert not stale, f"docs/errors.md lists rows the table no longer has: {sorted(stale)[:3]}"


if __name__ == "__main__":
    text = render_markdown()
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"wrote {os.path.normpath(DOC)} ({len(CASES)} rows)")
