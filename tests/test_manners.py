"""fastnn as a dependency leaves the process as it found it (issue 14): ``import fastnn``
changes neither numpy's BLAS thread pool, nor the environment, nor signal handlers,
nor numpy's error state; and ``fit`` / ``evaluate`` / ``predict`` hand numpy's BLAS pool
back as they found it, even where fastnn's own BLAS calls limited it while they ran
(the convolution path does: its GEMMs may run on numpy's BLAS).

Each check runs in a fresh interpreter (the state before the first import is the point),
with ``FASTNN_NUM_THREADS=1`` on a process whose BLAS pool has more threads (or the
reverse, a user's own BLAS limit), so that a limit fastnn left behind is visible."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return sorted((p["internal_api"], p["filepath"], p["num_threads"])
                      for p in threadpool_info() if p["user_api"] == "blas")

    def handlers():
        out = {}
        for s in signal.valid_signals():
            try:
                h = signal.getsignal(s)
            except (OSError, ValueError):
                continue
            out[int(s)] = repr(h)
        return out

    def state():
        return {"blas": blas(), "env": dict(os.environ), "signals": handlers(),
                "numpy_err": np.geterr(), "switch": sys.getswitchinterval()}

    def data(images):
        rng = np.random.default_rng(0)
        x = (rng.random((192, 28, 28)) * 255).astype(np.uint8)
        y = rng.integers(0, 10, 192)
        return (x[..., None] if images else x.reshape(192, -1)), y
""")


def run(*parts, threads="1"):
    """Run PRELUDE + parts in a fresh interpreter; its last stdout line, as JSON."""
    env = dict(os.environ, FASTNN_NUM_THREADS=threads, PYTHONPATH=ROOT)
    env.pop("OMP_NUM_THREADS", None)
    code = PRELUDE + "".join(textwrap.dedent(p) for p in parts)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_changes_nothing():
    res = run("""
        np.ones((64, 64)) @ np.ones((64, 64))        # numpy's BLAS is loaded and has run
        before = state()
        import fastnn
        after_import = state()
        import fastnn.layers, fastnn.training, fastnn.kernels, fastnn.optim  # noqa: E401
        fastnn.kernels.matmul                         # the registry, kernels looked up
        after_submodules = state()
        print(json.dumps([before, after_import, after_submodules]))
    """)
    before, after_import, after_submodules = res
    assert before["blas"], "numpy's BLAS pool is invisible to threadpoolctl"
    assert after_import == before
    assert after_submodules == before


FIT = """
    import fastnn
    from fastnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D
    loss = fastnn.losses.SoftmaxCrossEntropy()

    def fit(model, images):
        x, y = data(images)
        h = model.fit(x, y, epochs=1, batch_size=64, verbose=0, loss=loss,
                      optimizer=fastnn.optim.Adam(model.parameters(), lr=1e-3))
        return h.params["engine"]

    conv = fastnn.Sequential([Conv2D(1, 4, 3, activation="relu"), MaxPool2D(2), Flatten(),
                              Dense(13 * 13 * 4, 10)], seed=0)
    mlp = fastnn.models.MLP([784, 32, 10], seed=0)
    general_mlp = fastnn.Sequential([Dense(784, 32, activation="relu"), Dropout(0.2),
                                     Dense(32, 10)], seed=0)
"""


@pytest.mark.parametrize("user_limit", [None, 1], ids=["blas-default", "user-limited-blas"])
def test_fit_evaluate_predict_hand_blas_back(user_limit):
    """fastnn runs on 1 thread (``FASTNN_NUM_THREADS=1``) while numpy's BLAS has its
    default; or fastnn runs on 2 while the user limited BLAS to 1 with threadpoolctl."""
    limit = "" if user_limit is None else f"_keep = threadpool_limits({user_limit}, 'blas')\n"
    res = run(limit, "before = state()\n", FIT, """
        seen = {}
        seen["engines"] = [fit(mlp, False), fit(general_mlp, False), fit(conv, True)]
        seen["after_fit"] = state()
        x, y = data(True)
        conv.evaluate(x, y); conv.predict(x)
        seen["after_predict"] = state()
        # fastnn still limits BLAS to its count while it runs: its next BLAS GEMM re-applies
        a = np.ones((64, 64), np.float32)
        fastnn.kernels.matmul(a, a, variant="blas")
        seen["during"] = blas()
        print(json.dumps([before, seen]))
    """, threads="1" if user_limit is None else "2")
    before, seen = res
    assert seen["engines"] == ["fused", "general", "general"]
    assert before["blas"]
    assert seen["after_fit"] == before
    assert seen["after_predict"] == before
    want = 1 if user_limit is None else 2
    assert [b[2] for b in seen["during"]] == [want] * len(before["blas"])
