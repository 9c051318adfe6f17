"""Faults around checkpoints: a process killed (SIGKILL) while saving in a loop, and
training that diverges after a checkpoint was written.

A SIGKILL can land anywhere: inside numpy, inside the zip writer, between
``fsync`` and ``os.replace``.  Whatever moment it hits, the checkpoint on disk
must load and be one complete save: the previous one or the new one, never
a mix (every save writes parameters all equal to its sequence number k and
``extra={"k": k}``, so a mix is visible).

Run with ``-s`` to see how many kills landed mid-write (FAULTS, printed at the
end of the module).
"""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastnn import callbacks as cbs
from fastnn import presets, serialize, training
from fastnn.errors import DivergenceError
from fastnn.losses import SoftmaxCrossEntropy
from fastnn.optim import SGD

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAULTS = {"kills": 0, "kills_mid_write": 0, "loaded_previous": 0, "loaded_new": 0,
          "divergences": 0}

SAVER = r"""
import sys
from fastnn import presets, serialize
from fastnn.optim import SGD
p = presets.get_preset("mlp-keras")                 # 670k parameters: ~5 MB per save
model = presets.build_model(p, seed=0)
opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
k = 0
while True:
    model.flat_params.fill(k)
    opt.step_count = k
    serialize.save(model, sys.argv[1], optimizer=opt, extra={"k": k})
    print(k, flush=True)
    k += 1
"""


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nFAULTS {FAULTS}")


def test_sigkill_while_saving_never_leaves_a_broken_checkpoint(tmp_path):
    rng = random.Random(12345)
    path = tmp_path / "ck.npz"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for trial in range(14):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            first = proc.stdout.readline()           # one complete save exists from here on
            assert first.strip().isdigit(), proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.12))
            proc.send_signal(signal.SIGKILL)
            rest = proc.communicate(timeout=30)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL
        printed = [int(s) for s in (first + rest).split()]
        last_done = printed[-1]
        FAULTS["kills"] += 1
        leftovers = [p for p in os.listdir(tmp_path) if p != "ck.npz"]
        if leftovers:                                # killed between temp write and rename
            FAULTS["kills_mid_write"] += 1
            for name in leftovers:
                os.unlink(tmp_path / name)
        ck = serialize.load(path, with_optimizer=True)
        k = ck.extra["k"]
        # the save that printed last is on disk, or the next one completed unreported
        assert k in (last_done, last_done + 1), (k, last_done)
        FAULTS["loaded_previous" if k == last_done else "loaded_new"] += 1
        assert np.all(ck.model.flat_params == k)
        assert ck.optimizer_state["step"] == k
        assert ck.optimizer_state["buffers"]["velocity"].shape == ck.model.flat_params.shape


def _data():
    from fastnn.datasets import mnist
    (x, y), _ = mnist.load_data()
    return x[:1500].reshape(1500, -1), y[:1500]


@pytest.mark.parametrize("fused", [None, False])
def test_divergence_keeps_the_last_good_checkpoint(tmp_path, fused):
    x, y = _data()
    model = presets.build_model(presets.get_preset("mlp"), seed=0)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = -(-1500 // 64)
    blow_up_at = steps + 5                               # the 6th step of epoch 2
    # lr 1e10 overflows to inf/NaN within a few steps (1e6 merely kills every ReLU of
    # this network: absurd but finite losses, which are not divergence by definition)
    schedule = lambda t: 0.05 if t < blow_up_at else 1e10  # noqa: E731
    path = tmp_path / "ck.npz"
    mc = cbs.ModelCheckpoint(path, save_initial=True)
    with pytest.raises(DivergenceError, match=r"epoch 2 (at step|in steps)") as info:
        training.fit(model, x, y, epochs=5, batch_size=64, loss=SoftmaxCrossEntropy(),
                     optimizer=opt, seed=0, verbose=0, callbacks=[mc], schedule=schedule,
                     fused=fused)
    FAULTS["divergences"] += 1
    assert info.value.epoch == 1 and info.value.step >= 5
    assert "last good epoch (1 completed)" in str(info.value)
    ck = serialize.load(path, with_optimizer=True)
    assert ck.extra["epoch"] == 1 and mc.epochs_done == 1
    assert np.isfinite(ck.model.flat_params).all()
    assert np.isfinite(ck.optimizer_state["buffers"]["velocity"]).all()
    # the checkpoint is the model after exactly one good epoch
    ref = presets.build_model(presets.get_preset("mlp"), seed=0)
    training.fit(ref, x, y, epochs=1, batch_size=64, loss=SoftmaxCrossEntropy(),
                 optimizer=SGD(ref.parameters(), lr=0.05, momentum=0.9), seed=0, verbose=0,
                 fused=fused)
    np.testing.assert_array_equal(ck.model.flat_params, ref.flat_params)


def test_divergence_from_the_first_step_names_it(tmp_path):
    x, y = _data()
    model = presets.build_model(presets.get_preset("mlp"), seed=0)
    opt = SGD(model.parameters(), lr=1e10)
    path = tmp_path / "ck.npz"
    with pytest.raises(DivergenceError, match=r"epoch 1 (at step \d+|in steps 1-\d+) of 24"):
        training.fit(model, x, y, epochs=2, batch_size=64, loss=SoftmaxCrossEntropy(),
                     optimizer=opt, seed=0, verbose=0,
                     callbacks=[cbs.ModelCheckpoint(path, save_initial=True)])
    FAULTS["divergences"] += 1
    ck = serialize.load(path, with_optimizer=True)
    assert ck.extra["epoch"] == 0
    np.testing.assert_array_equal(
        ck.model.flat_params, presets.build_model(presets.get_preset("mlp"), seed=0).flat_params)
