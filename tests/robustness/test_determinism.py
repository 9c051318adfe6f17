"""Same seed + same thread count -> bitwise the same weights; 1 vs 2 threads -> the same
to float tolerance.  Both engines of ``fit`` (the fused native epoch and the
layer-by-layer general path), on 1,000 MNIST images of the ``mlp`` preset.

Across processes too: a child process trains the same run and must report the
same SHA-256 of the weights.  The general path must not depend on the matmul
autotuner, whose timing-based choice between variants that round differently
can change from one process to the next (``FASTNN_MATMUL_VARIANT`` forces the
choice it could have made).
"""
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn
from fastnn.layers import Dense, Dropout
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import Adam
from fastnn.presets import build_loss, build_model, build_optimizer, get_preset

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
N_SAMPLES = 1000
EPOCHS = 2
ENGINES = {"fused": None, "general": False}


@pytest.fixture(scope="module")
def data():
    from fastnn.datasets import mnist
    # the checkout ships data/mnist: not finding it is a failure, not a skip
    (x, y), _ = mnist.load_data(download=False)
    return np.ascontiguousarray(x[:N_SAMPLES]), np.ascontiguousarray(y[:N_SAMPLES])


def train(x, y, engine, seed=0, nthreads=1):
    """The mlp preset from ``seed`` for EPOCHS epochs; returns (weights copy, losses)."""
    preset = get_preset("mlp")
    model = build_model(preset, seed=seed)
    with fastnn.threads(nthreads):
        hist = model.fit(x, y, epochs=EPOCHS, batch_size=preset.batch_size,
                         loss=build_loss(preset), optimizer=build_optimizer(preset, model),
                         seed=seed, verbose=0, fused=ENGINES[engine])
    assert hist.params["engine"] == engine
    return model.flat_params.copy(), hist.history["loss"]


def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_same_seed_same_threads_is_bitwise(data, engine, nthreads):
    x, y = data
    w1, l1 = train(x, y, engine, nthreads=nthreads)
    w2, l2 = train(x, y, engine, nthreads=nthreads)
    np.testing.assert_array_equal(w1, w2)
    assert l1 == l2
    w3, _ = train(x, y, engine, seed=1, nthreads=nthreads)   # the check can fail
    assert not np.array_equal(w1, w3)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_one_and_two_threads_agree(data, engine):
    x, y = data
    w1, l1 = train(x, y, engine, nthreads=1)
    w2, l2 = train(x, y, engine, nthreads=2)
    np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)


def test_fused_and_general_agree(data):
    """The two engines compute the same math (to float32 rounding)."""
    x, y = data
    wf, lf = train(x, y, "fused")
    wg, lg = train(x, y, "general")
    np.testing.assert_allclose(wg, wf, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(lg, lf, rtol=1e-4)


def test_dropout_adam_general_path_is_bitwise(data):
    """Seeded Dropout masks and Adam on the general path: the same seeds, the same bits."""
    x, y = data

    def run():
        model = fastnn.Sequential([Dense(784, 64, activation="relu"), Dropout(0.3, seed=5),
                                   Dense(64, 10)], seed=3)
        with fastnn.threads(2):
            model.fit(x, y, epochs=EPOCHS, batch_size=50, loss=SoftmaxCrossEntropy(),
                      optimizer=Adam(model, lr=1e-3), seed=0, verbose=0)
        return model.flat_params.copy()

    np.testing.assert_array_equal(run(), run())


CHILD = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_determinism as T
    from fastnn.datasets import mnist
    (x, y), _ = mnist.load_data(download=False)
    x, y = np.ascontiguousarray(x[:T.N_SAMPLES]), np.ascontiguousarray(y[:T.N_SAMPLES])
    for engine in sys.argv[1:]:
        w, _ = T.train(x, y, engine, nthreads=2)
        print(engine, T.digest(w))
""")


@pytest.mark.parametrize("forced", [None, "blas", "c"])
def test_same_weights_in_another_process(data, forced):
    """A fresh process (its own autotuner, or one forced to either matmul variant)
    trains to the same bits as this one."""
    x, y = data
    want = {e: digest(train(x, y, e, nthreads=2)[0]) for e in ENGINES}
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTNN_MATMUL_VARIANT", None)
    if forced:
        env["FASTNN_MATMUL_VARIANT"] = forced
    script = CHILD.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", script, *ENGINES], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    assert got == want, f"FASTNN_MATMUL_VARIANT={forced}: {got} != {want}"
