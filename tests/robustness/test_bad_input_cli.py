"""The command line under bad input and interruption.

* Ctrl-C (SIGINT) during ``fastnn train --save`` exits 130, prints how to
  resume, leaves a checkpoint that loads; ``--resume`` from it ends on
  bitwise the same weights as an uninterrupted run (same thread count).
* Missing, corrupt, truncated, foreign files and out-of-range arguments give
  one clear line and exit 1 (or 2 for usage errors), never a traceback.
"""
import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from fastnn import cli, presets, serialize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
FAULTS = {"sigint": 0, "bad_inputs": 0}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print(f"\nFAULTS {FAULTS}")


def fastnn(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "fastnn.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _interrupt(args, after_line=None, after_file=None):
    """Start `fastnn train ...`; send SIGINT once a stdout line starts with
    ``after_line`` or once ``after_file`` exists; return (returncode, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "fastnn.cli", "train", *args], cwd=ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    out = []
    try:
        if after_line is not None:
            for line in proc.stdout:
                out.append(line)
                if line.startswith(after_line):
                    break
        else:
            deadline = time.monotonic() + 120
            while not os.path.exists(after_file) and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    FAULTS["sigint"] += 1
    return proc.returncode, "".join(out) + rest, err


TRAIN = ["--preset", "mlp", "--subset", "12000", "--seed", "4", "--threads", "2"]
# The runs interrupted after "Epoch 1/8" use the whole training set, so the remaining 7
# epochs leave the signal a wide margin on a busy machine.
TRAIN_LONG = ["--preset", "mlp", "--subset", "60000", "--seed", "4", "--threads", "2"]


def _sigint_default():
    """In the child before exec: SIGINT back to its default disposition and unblocked.  A
    test run started in the background by a non-interactive shell (`cmd &`, nohup) inherits
    SIGINT ignored, and a child that ignores it cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_sigint_then_resume_is_bitwise(tmp_path):
    ck, full = str(tmp_path / "ck.npz"), str(tmp_path / "full.npz")
    code, out, err = _interrupt(TRAIN_LONG + ["--epochs", "8", "--save", ck], "Epoch 1/8")
    assert code == 130, (out, err)
    assert "Interrupted" in err and f"fastnn train --resume {ck}" in err
    assert "Traceback" not in err
    state = serialize.load(ck, with_optimizer=True)
    done = state.extra["epoch"]
    assert 1 <= done < 8
    assert f"holds {done} completed epoch" in err

    proc = fastnn("train", "--resume", ck, "--save", ck, "--threads", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    proc = fastnn("train", *TRAIN_LONG, "--epochs", "8", "--save", full, "--json")
    assert proc.returncode == 0, proc.stderr
    a, b = serialize.load(ck), serialize.load(full)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)


def test_sigint_in_first_epoch_leaves_initial_checkpoint(tmp_path):
    ck = str(tmp_path / "ck.npz")
    code, out, err = _interrupt(TRAIN + ["--epochs", "8", "--save", ck], after_file=ck)
    assert code == 130, (out, err)
    assert "Traceback" not in err and "resume with" in err
    state = serialize.load(ck, with_optimizer=True)
    assert state.extra["epoch"] in (0, 1)
    if state.extra["epoch"] == 0:       # the untouched initial weights
        ref = presets.build_model(presets.get_preset("mlp"), seed=4)
        np.testing.assert_array_equal(state.model.flat_params, ref.flat_params)


def test_sigint_without_save_says_nothing_saved():
    code, out, err = _interrupt(TRAIN_LONG + ["--epochs", "8"], "Epoch 1/8")
    assert code == 130 and "Nothing was saved" in err and "Traceback" not in err


# ------------------------------------------------------------------ bad files and arguments

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    model = presets.build_model(presets.get_preset("softmax"), seed=0)
    good = d / "good.npz"
    serialize.save(model, good)
    (d / "random.npz").write_bytes(os.urandom(4096))
    blob = good.read_bytes()
    (d / "truncated.npz").write_bytes(blob[:len(blob) // 2])
    (d / "empty.npz").write_bytes(b"")
    (d / "notimage.png").write_text("this is not a PNG\n")
    return d


@pytest.mark.parametrize("argv,code,needle", [
    (["evaluate", "{d}/missing.npz"], 1, "no such model file"),
    (["evaluate", "{d}/random.npz"], 1, "cannot load"),
    (["evaluate", "{d}/truncated.npz"], 1, "cannot load"),
    (["evaluate", "{d}/empty.npz"], 1, "cannot load"),
    (["evaluate", "{d}"], 1, "is a directory"),
    pytest.param(["predict", "{d}/good.npz", "{d}/notimage.png"], 1, "cannot read image",
                 marks=pytest.mark.skipif(importlib.util.find_spec("PIL") is None,
                                          reason="needs Pillow")),
    (["predict", "{d}/good.npz", "{d}/nothere.png"], 1, "no such image file"),
    (["predict", "{d}/good.npz", "--index", "10000"], 2, "out of range"),
    (["predict", "{d}/good.npz", "--index", "-3"], 2, "--index"),
    (["predict", "{d}/good.npz"], 2, "give image files or --index"),
    (["train", "--resume", "{d}/missing.npz"], 1, "no such checkpoint"),
    (["train", "--resume", "{d}/good.npz"], 1, "not written by `fastnn train --save`"),
    (["train", "--resume", "{d}/random.npz"], 1, "cannot load"),
    (["plot", "{d}/nologs"], 1, "no such log directory"),
    (["train", "--subset", "0"], 2, "--subset: must be >= 1"),
    (["train", "--epochs", "1e3"], 2, "--epochs"),
    (["train", "--hidden", "a,b"], 2, "--hidden"),
    (["bench", "train", "--preset", "vgg"], 2, "unknown preset"),
    (["bench", "kernels", "--threads", "-2"], 2, "--threads"),
])
def test_bad_inputs_give_clear_errors(files, capsys, argv, code, needle):
    argv = [a.replace("{d}", str(files)) for a in argv]
    try:
        got = cli.main(argv)
    except SystemExit as exc:           # argparse's own usage errors
        got = exc.code
    err = capsys.readouterr().err
    FAULTS["bad_inputs"] += 1
    assert got == code, err
    assert needle in err and "Traceback" not in err
    message = [ln for ln in err.strip().splitlines()
               if not ln.startswith(("usage:", " "))]         # argparse's usage may wrap
    assert len(message) == 1


def test_bad_input_as_a_real_process(files):
    proc = fastnn("evaluate", str(files / "truncated.npz"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("fastnn: cannot load") and "Traceback" not in proc.stderr
    proc = fastnn("train", "--lr", "nan")
    assert proc.returncode == 2 and "--lr: must be a finite number" in proc.stderr
