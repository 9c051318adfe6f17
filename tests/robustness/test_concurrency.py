"""fastnn from several Python threads at once, and after ``fork``.

Threads: the native kernels release the GIL and run their own OpenMP teams,
so Python threads really overlap.  Each thread's result must equal (bitwise:
same variant, same thread count) what the same call gives single-threaded:

* ``kernels.matmul`` (autotuned default and the C variant) and
  ``kernels.softmax_xent`` on per-thread inputs;
* ``model.predict`` on ONE shared model (its workspaces are shared, so
  ``Sequential`` serialises forward/backward with a per-model lock) and on
  per-thread models (no lock between them);
* one loss object called from every thread: ``backward()`` returns the
  calling thread's gradient (the loss keeps its buffers per thread).

Fork: GNU OpenMP cannot start a team in a child forked after the parent used
one (the child hangs).  ``fastnn._threads`` notices the fork
(``_after_fork_in_child``) and runs every kernel on one thread there.  A
subprocess (``subprocess.run(timeout=...)``, so a regression fails instead of
hanging CI) starts OpenMP teams, then forks a child with ``os.fork()`` and a
``multiprocessing`` "fork" pool; the children must compute the parent's
results without hanging.
"""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from fastnn.models import MLP

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
N_WORKERS = 4
ROUNDS = 5


def run_concurrently(fn, n=N_WORKERS):
    """fn(i) in n threads released together by a barrier; returns results by i
    (re-raising the first exception a thread hit)."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def worker(i):
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except BaseException as exc:        # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.fixture(params=[1, 2], ids=["omp1", "omp2"])
def nthreads(request):
    with fastnn.threads(request.param):
        yield request.param


def _inputs(i, dtype=np.float32):
    rng = np.random.default_rng(100 + i)
    m, k, n = 150 + 13 * i, 200 + 7 * i, 90 + 5 * i        # past the GEMM's block sizes
    return (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype),
            rng.standard_normal(n).astype(dtype))


@pytest.mark.parametrize("variant", [None, "c"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_from_threads(nthreads, variant, dtype):
    # an unbuilt C variant is a failure, not a skip
    assert variant is None or variant in K.variants("matmul"), \
        f"matmul variant {variant!r} does not load: {K.describe('matmul')}"
    inputs = [_inputs(i, dtype) for i in range(N_WORKERS)]

    def call(i):
        a, b, bias = inputs[i]
        return K.matmul(a, b, bias=bias, activation="relu", variant=variant)

    want = [call(i) for i in range(N_WORKERS)]             # serial, also tunes every shape
    for _ in range(ROUNDS):
        got = run_concurrently(lambda i: [call(i) for _ in range(3)])
        for i in range(N_WORKERS):
            for g in got[i]:
                np.testing.assert_array_equal(g, want[i], err_msg=f"thread {i}")
    a, b, bias = inputs[0]
    ref = np.maximum(a.astype(np.float64) @ b + bias, 0)
    np.testing.assert_allclose(want[0], ref, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-3 if dtype == np.float32 else 1e-10)


def test_softmax_xent_from_threads(nthreads):
    rng = np.random.default_rng(7)
    data = [(rng.standard_normal((500 + 31 * i, 10 + i)).astype(np.float32),)
            for i in range(N_WORKERS)]
    data = [(z, rng.integers(0, z.shape[1], z.shape[0])) for (z,) in data]

    def call(i):
        z, y = data[i]
        d = np.empty_like(z)
        losses = K.softmax_xent(z, y, dlogits=d, grad_scale=1.0 / z.shape[0])
        return losses, d

    want = [call(i) for i in range(N_WORKERS)]
    for _ in range(ROUNDS):
        got = run_concurrently(call)
        for i in range(N_WORKERS):
            np.testing.assert_array_equal(got[i][0], want[i][0], err_msg=f"losses, thread {i}")
            np.testing.assert_array_equal(got[i][1], want[i][1], err_msg=f"dlogits, thread {i}")
    z, y = data[0]
    ref = -K.log_softmax(z.astype(np.float64), variant="reference")[np.arange(len(y)), y]
    np.testing.assert_allclose(want[0][0], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_name", ["SoftmaxCrossEntropy", "MeanSquaredError",
                                       "BinaryCrossEntropyWithLogits"])
def test_one_loss_object_from_threads(loss_name):
    """One loss object shared by threads: each thread's backward() is the
    gradient of ITS last call (the buffers are per thread), for every loss."""
    from fastnn import losses
    loss = losses.LOSS_CLASSES[loss_name]()
    rng = np.random.default_rng(11)
    data = []
    for i in range(N_WORKERS):
        z = rng.standard_normal((40 + 9 * i, 6)).astype(np.float32)
        t = rng.integers(0, 6, z.shape[0]) if loss_name == "SoftmaxCrossEntropy" else \
            rng.random(z.shape).astype(np.float32)
        data.append((z, t))

    def call(i):
        z, t = data[i]
        out = []
        for _ in range(20):          # many call/backward pairs interleave across threads
            value = loss(z, t)
            out.append((value, loss.backward().copy()))
        return out

    solo = losses.LOSS_CLASSES[loss_name]()
    want = [(solo(z, t), solo.backward().copy()) for z, t in data]
    for _ in range(ROUNDS):
        got = run_concurrently(call)
        for i in range(N_WORKERS):
            for value, grad in got[i]:
                assert value == want[i][0], f"thread {i}"
                np.testing.assert_array_equal(grad, want[i][1], err_msg=f"thread {i}")


def test_loss_survives_copy_and_pickle():
    import copy
    import pickle
    from fastnn.losses import SoftmaxCrossEntropy
    loss = SoftmaxCrossEntropy(label_smoothing=0.1)
    z = np.zeros((2, 3), np.float32)
    loss(z, np.array([0, 1]))
    for other in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert other.label_smoothing == 0.1
        assert other(z, np.array([2, 2])) == loss(z, np.array([2, 2]))
        np.testing.assert_array_equal(other.backward(), loss.backward())


@pytest.mark.parametrize("shared", [True, False], ids=["one-shared-model", "model-per-thread"])
def test_predict_from_threads(nthreads, shared):
    """predict on one shared Sequential (serialised by its lock) or one model per thread:
    every thread gets exactly the single-threaded outputs, whatever its batch size."""
    models = [MLP([784, 256, 128, 10], seed=0)] * N_WORKERS if shared else \
        [MLP([784, 256, 128, 10], seed=i) for i in range(N_WORKERS)]
    rng = np.random.default_rng(3)
    xs = [rng.integers(0, 256, (700 + 37 * i, 28, 28), dtype=np.uint8) for i in range(N_WORKERS)]
    sizes = [64 + 17 * i for i in range(N_WORKERS)]      # different batch shapes per thread

    def call(i):
        return models[i].predict(xs[i], batch_size=sizes[i])

    want = [call(i) for i in range(N_WORKERS)]
    for _ in range(ROUNDS):
        got = run_concurrently(call)
        for i in range(N_WORKERS):
            np.testing.assert_array_equal(got[i], want[i], err_msg=f"thread {i}")


def test_sequential_lock_is_documented():
    """The lock that makes the shared-model case correct is part of the documented API."""
    doc = fastnn.Sequential.__doc__
    assert "lock" in doc and "thread" in doc.lower()


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_model_has_its_own_lock_and_flat_buffers(how):
    """A copy (e.g. one model per worker thread) gets a fresh lock and parameters that are
    views of ITS flat buffers: training the copy changes its outputs, not the original's."""
    import copy
    import pickle
    from fastnn.optim import SGD
    model = MLP([6, 5, 3], seed=0)
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)
    want = model(x)
    twin = copy.deepcopy(model) if how == "deepcopy" else pickle.loads(pickle.dumps(model))
    assert twin._lock is not model._lock
    np.testing.assert_array_equal(twin(x), want)
    for p in twin.parameters():
        assert np.shares_memory(p.data, twin.flat_params)
        assert np.shares_memory(p.grad, twin.flat_grads)
    twin.flat_grads[:] = 1.0
    SGD(twin, lr=0.1).step()
    assert not np.array_equal(twin(x), want)             # the layers read the stepped buffer
    np.testing.assert_array_equal(model(x), want)         # the original is untouched


# ------------------------------------------------------------------ fork

FORK_SCRIPT = textwrap.dedent(r"""
    import multiprocessing as mp
    import os, sys, time, traceback, warnings
    import numpy as np
    import fastnn
    from fastnn import _threads, kernels as K
    from fastnn.layers import Dense
    from fastnn.losses import SoftmaxCrossEntropy
    from fastnn.optim import SGD

    USE_NUMBA = os.environ.get("FORK_TEST_NUMBA") == "1"
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 257)).astype(np.float32)
    B = rng.standard_normal((257, 129)).astype(np.float32)
    Z = rng.standard_normal((70000, 10)).astype(np.float32)     # past the kernels' parallel
    YZ = rng.integers(0, 10, Z.shape[0])                         # thresholds: real OpenMP teams
    P = rng.standard_normal(300000).astype(np.float32)
    G = rng.standard_normal(300000).astype(np.float32)
    X = rng.random((512, 64), dtype=np.float32)
    Y = rng.integers(0, 10, 512)

    def kernels(nthreads):
        with fastnn.threads(nthreads) if nthreads else _noop():
            out = {"matmul": K.matmul(A, B, variant="c"),
                   "xent": K.softmax_xent(Z, YZ),
                   "colsum": K.column_sums(Z),
                   "softmax": K.softmax(Z)}
            p = P.copy()
            K.sgd_update(p, G, lr=0.1)
            out["sgd"] = p
            return out

    def numba_in_parent():
        # starts Numba's GNU OpenMP pool in the parent
        with fastnn.threads(2):
            K.matmul(A, B, variant="numba")
            K.softmax_xent(Z, YZ, variant="numba")

    def numba_in_child():
        # Numba itself would SIGTERM the child here; fastnn must refuse first, clearly
        for call in (lambda: K.matmul(A, B, variant="numba"),
                     lambda: K.softmax_xent(Z, YZ, variant="numba")):
            try:
                call()
            except RuntimeError as exc:
                assert "forked" in str(exc) and "spawn" in str(exc), str(exc)
            else:
                raise AssertionError("a Numba kernel ran in a child forked after its pool")

    class _noop:
        def __enter__(self): return None
        def __exit__(self, *a): return False

    def train():
        model = fastnn.Sequential([Dense(64, 32, activation="relu"), Dense(32, 10)], seed=1)
        hist = model.fit(X, Y, epochs=2, batch_size=32, loss=SoftmaxCrossEntropy(),
                         optimizer=SGD(model, lr=0.1, momentum=0.9), seed=0, verbose=0)
        assert hist.params["engine"] == "fused"
        return hist.params["engine"], model.flat_params.copy()

    def check(got, want, where):
        for k in want:
            if k == "train":
                eng, w = got[k]
                if eng != want[k][0] or not np.allclose(w, want[k][1], rtol=1e-4, atol=1e-5):
                    return f"{where}: training result differs"
            elif not np.array_equal(got[k], want[k]):
                return f"{where}: {k} differs (max {np.abs(got[k] - want[k]).max()})"
        return None

    def in_child():
        assert _threads._forked_child, "fork not noticed"
        assert fastnn.get_num_threads() == 1, fastnn.get_num_threads()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fastnn.set_num_threads(2)
        assert any(issubclass(x.category, RuntimeWarning) for x in w), "no RuntimeWarning"
        assert fastnn.get_num_threads() == 1
        res = kernels(None)
        res["train"] = train()
        if USE_NUMBA:
            numba_in_child()
        return res

    def pool_task(_):
        res = in_child()
        return {k: v for k, v in res.items()}

    # Parent: start real OpenMP (and Numba) teams on 2 threads.
    fastnn.set_num_threads(2)
    want = kernels(2)
    assert _threads._parallel_used
    with fastnn.threads(1):
        want1 = kernels(1)
        want1["train"] = train()
    train()                                    # the fused trainer's team, on 2 threads
    if USE_NUMBA:
        numba_in_parent()
    for k in want:                             # our kernels: the same bits on 1 and 2 threads
        assert np.array_equal(want[k], want1[k]), k

    # 1. os.fork()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            msg = check(in_child(), want1, "os.fork child")
            if msg:
                print(msg, flush=True)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 2
        os._exit(code)
    deadline = time.monotonic() + 45
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            print("os.fork child hung", flush=True)
            sys.exit(3)
        time.sleep(0.05)
    if os.waitstatus_to_exitcode(status) != 0:
        print("os.fork child failed", os.waitstatus_to_exitcode(status), flush=True)
        sys.exit(4)

    # 2. a multiprocessing pool with the fork start method
    ctx = mp.get_context("fork")
    with ctx.Pool(2) as pool:
        try:
            results = pool.map_async(pool_task, range(2)).get(timeout=45)
        except mp.TimeoutError:
            print("fork-context pool hung", flush=True)
            pool.terminate()
            sys.exit(5)
    for i, r in enumerate(results):
        msg = check(r, want1, f"pool worker {i}")
        if msg:
            print(msg, flush=True)
            sys.exit(6)

    # 3. the parent still runs on 2 threads afterwards
    assert fastnn.get_num_threads() == 2
    again = kernels(2)
    for k in want:
        assert np.array_equal(again[k], want[k]), k
    print("FORK-OK", flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("numba", [False, True], ids=["native", "with-numba"])
def test_fork_after_openmp_runs_single_threaded_without_hanging(numba):
    if numba and os.environ.get("FASTNN_SANITIZED") == "1":
        pytest.skip("Numba under ASan is too slow")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FORK_TEST_NUMBA="1" if numba else "0")
    env.pop("FASTNN_NUM_THREADS", None)
    try:
        proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"fork test hung (killed after {exc.timeout}s): {exc.stdout!r:.2000}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "FORK-OK" in proc.stdout, f"rc={proc.returncode}\n{out[-4000:]}"
