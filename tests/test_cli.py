"""The ``fastnn`` command line, mostly in-process through ``main(argv)`` for speed;
one subprocess run checks the real entry point end to end (slow)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastnn import cli, serialize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EPOCH_KEYS = {"epoch", "epochs", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_time",
              "samples_per_s", "rss_mb"}


def run_main(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 784-128-10 model trained one epoch on all of MNIST (~96% test accuracy)."""
    path = str(tmp_path_factory.mktemp("model") / "mlp.npz")
    assert cli.main(["train", "--preset", "mlp", "--epochs", "1", "--save", path, "--json"]) == 0
    return path


@pytest.fixture(scope="module")
def mnist_test():
    from fastnn.datasets import mnist
    return mnist.load_data()[1]


# ------------------------------------------------------------------ train

def test_train_json_schema(capsys, tmp_path):
    code, out, err = run_main(["train", "--preset", "mlp", "--epochs", "2", "--subset", "2000",
                               "--seed", "1", "--json"], capsys)
    assert code == 0, err
    objs = json_lines(out)
    assert len(objs) == 3
    for i, o in enumerate(objs[:2]):
        assert set(o) == EPOCH_KEYS and o["epoch"] == i + 1 and o["epochs"] == 2
        assert 0 <= o["val_accuracy"] <= 1 and o["samples_per_s"] > 0
    s = objs[2]
    assert s["summary"] is True and s["preset"] == "mlp" and s["sizes"] == [784, 128, 10]
    assert s["epochs_run"] == 2 and s["seed"] == 1 and s["batch_size"] == 64
    assert s["test_accuracy"] == objs[1]["val_accuracy"] > 0.75
    assert s["wall_s_since_process_start"] >= s["train_s"] > 0
    assert len(s["epoch_time"]) == 2
    assert s["engine"] == "fused" and s["why_not_fused"] == ""
    # memory: the RSS at each epoch's end and the peak, in MB (Linux /proc and getrusage)
    rss = [o["rss_mb"] for o in objs[:2]]
    assert all(r > 10 for r in rss) and s["peak_rss_mb"] >= max(rss)


def test_train_text_output_and_overrides(capsys):
    code, out, err = run_main(["train", "--preset", "mlp-keras", "--hidden", "64", "--epochs", "1",
                               "--subset", "1000", "--batch-size", "50", "--lr", "0.1",
                               "--momentum", "0.5", "--threads", "1"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("fastnn train: preset mlp-keras 784-64-10, batch 50, sgd lr 0.1 "
                               "momentum 0.5, 1 epochs, 1 threads")
    assert lines[1] == "engine: fused (one native call per epoch)"
    epoch_line = [ln for ln in lines if ln.startswith("Epoch 1/1 - ")]
    assert len(epoch_line) == 1
    assert " - loss: " in epoch_line[0] and epoch_line[0].endswith("samples/s")
    assert "since process start" in out


def test_train_adam_and_tensorboard_logdir_then_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    logdir = tmp_path / "run"
    code, out, err = run_main(["train", "--preset", "softmax", "--optimizer", "adam", "--lr",
                               "0.001", "--epochs", "2", "--subset", "1000", "--logdir",
                               str(logdir), "--json"], capsys)
    assert code == 0, err
    assert (logdir / "log.csv").read_text().count("\n") == 3
    from fastnn.tensorboard import read_scalars
    assert len(read_scalars(logdir / "validation")["epoch_accuracy"]) == 2
    png = tmp_path / "curves.png"
    code, out, err = run_main(["plot", str(logdir), "-o", str(png)], capsys)
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_cli_is_bitwise(capsys, tmp_path):
    full, part = str(tmp_path / "full.npz"), str(tmp_path / "part.npz")
    common = ["train", "--preset", "mlp", "--subset", "3000", "--seed", "3", "--json"]
    assert cli.main(common + ["--epochs", "3", "--save", full]) == 0
    assert cli.main(common + ["--epochs", "1", "--save", part]) == 0
    capsys.readouterr()
    code, out, err = run_main(["train", "--resume", part, "--epochs", "3", "--save", part,
                               "--json"], capsys)
    assert code == 0, err
    objs = json_lines(out)
    assert [o["epoch"] for o in objs[:-1]] == [2, 3]
    a, b = serialize.load(full), serialize.load(part)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    # the recipe comes from the checkpoint; contradicting it is a usage error
    code, out, err = run_main(["train", "--resume", part, "--preset", "softmax"], capsys)
    assert code == 2 and "preset 'mlp'" in err
    for flag, value in (("--lr", "0.1"), ("--batch-size", "32"), ("--seed", "0"),
                        ("--subset", "100")):
        code, out, err = run_main(["train", "--resume", part, flag, value], capsys)
        assert code == 2 and f"trained with {flag} " in err and "only --epochs" in err


def test_lenet5_train_evaluate_predict(capsys, tmp_path):
    path = str(tmp_path / "m.npz")
    code, out, err = run_main(["train", "--preset", "lenet5", "--epochs", "1", "--subset",
                               "2000", "--save", path], capsys)
    assert code == 0, err
    assert "preset lenet5 conv5x5x6-pool2-conv5x5x16-pool2-400-120-84-10" in out
    assert "engine: general, layer by layer (layer 0 (Conv2D)" in out
    model = serialize.load(path)
    assert model.count_params() == 61706 and type(model.layers[0]).__name__ == "Conv2D"
    code, out, err = run_main(["evaluate", path, "--json"], capsys)
    assert code == 0, err
    res = json_lines(out)[0]
    assert res["samples"] == 10000 and res["test_accuracy"] > 0.3   # 16 Adam steps
    code, out, err = run_main(["predict", path, "--index", "0", "1", "--json"], capsys)
    assert code == 0, err
    assert [o["label"] for o in json_lines(out)] == [7, 2]


def test_speedrun_preset_reports_target(capsys):
    # a handful of steps: the run must say whether it reached 98% and when it stopped
    code, out, err = run_main(["train", "--preset", "speedrun", "--epochs", "1", "--subset",
                               "500", "--json"], capsys)
    assert code == 0, err
    s = json_lines(out)[-1]
    assert s["target_accuracy"] == 0.98 and s["target_reached_epoch"] is None


# ------------------------------------------------------------------ evaluate / predict

def test_evaluate(trained, capsys):
    code, out, err = run_main(["evaluate", trained, "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["samples"] == 10000 and res["test_accuracy"] > 0.93
    code, out, err = run_main(["evaluate", trained], capsys)
    assert code == 0 and "test accuracy" in out


def test_predict_index_names_the_digits(trained, mnist_test, capsys):
    x_test, y_test = mnist_test
    idx = [0, 1, 2, 3, 4, 7, 11]
    code, out, err = run_main(["predict", trained, "--index"] + [str(i) for i in idx] + ["--json"],
                              capsys)
    assert code == 0, err
    objs = json_lines(out)
    assert [o["label"] for o in objs] == [int(y_test[i]) for i in idx]
    assert [o["digit"] for o in objs] == [int(y_test[i]) for i in idx]
    for o in objs:
        assert len(o["probabilities"]) == 10 and abs(sum(o["probabilities"]) - 1) < 1e-4
        assert int(np.argmax(o["probabilities"])) == o["digit"]


def test_predict_png_files(trained, mnist_test, capsys, tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    x_test, y_test = mnist_test
    white_on_black = tmp_path / "seven.png"
    PIL.fromarray(x_test[0]).save(white_on_black)
    black_on_white = tmp_path / "two.png"              # paper-like: inverted before predicting
    PIL.fromarray(255 - x_test[1]).resize((56, 56)).save(black_on_white)
    code, out, err = run_main(["predict", trained, str(white_on_black), str(black_on_white)],
                              capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{white_on_black}: {int(y_test[0])} ")
    assert lines[1].startswith(f"{black_on_white}: {int(y_test[1])} ")


# ------------------------------------------------------------------ bench, info

def test_bench_train_single_json_line(capsys):
    code, out, err = run_main(["bench", "train", "--preset", "softmax", "--epochs", "2",
                               "--threads", "1", "--json"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert set(res) == {"engine", "model", "threads", "batch", "epochs", "epoch_s",
                        "first_epoch_s", "test_acc"}
    assert res["engine"] == "fastnn" and res["model"] == "softmax" and res["threads"] == 1
    assert res["batch"] == 100 and res["epochs"] == 2
    assert res["epoch_s"] > 0 and res["first_epoch_s"] > 0 and res["test_acc"] > 0.88


def test_info_json(capsys):
    code, out, err = run_main(["info", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert "fastnn" in info and "threads" in info


# ------------------------------------------------------------------ usage errors

@pytest.mark.parametrize("argv,needle", [
    (["train", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", "--batch-size", "x"], "--batch-size: expected a positive integer"),
    (["train", "--lr", "-0.1"], "--lr: must be > 0.0"),
    (["train", "--lr", "nan"], "--lr: must be a finite number"),
    (["train", "--lr", "inf"], "--lr: must be a finite number"),
    (["train", "--epochs", "-1"], "--epochs: must be >= 1"),
    (["train", "--epochs", "0"], "--epochs: must be >= 1, got 0 (the total number of epochs"),
    (["train", "--momentum", "1.5"], "--momentum: must be < 1.0"),
    (["train", "--preset", "resnet"], "unknown preset 'resnet'"),
    (["train", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["train", "--hidden", "0,5"], "hidden widths must be >= 1"),
    (["train", "--threads", "0"], "--threads: must be >= 1"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to"),
    (["train", "--preset", "lenet5", "--hidden", "64"], "preset 'lenet5' is a convolutional"),
    (["bench", "train", "--epochs", "0"], "--epochs: must be >= 1"),
    (["bench"], "required"),
    (["fly"], "invalid choice: 'fly'"),
    ([], "required"),
])
def test_bad_options_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        code = cli.main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_missing_data_exit_1(capsys, tmp_path, monkeypatch):
    from fastnn.datasets import mnist
    monkeypatch.setattr(mnist, "search_dirs", lambda path=None: [str(tmp_path)])
    monkeypatch.setattr(mnist, "_download", lambda name, errors: errors.append(
        f"{name}: network disabled in tests"))
    code, out, err = run_main(["train", "--epochs", "1"], capsys)
    assert code == 1
    assert "MNIST not found" in err and str(tmp_path) in err and "Traceback" not in err


# ------------------------------------------------------------------ end to end (subprocess)

@pytest.mark.slow
def test_full_mlp_three_epochs_reaches_97_percent():
    proc = subprocess.run([sys.executable, "-m", "fastnn.cli", "train", "--preset", "mlp",
                           "--epochs", "3", "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    objs = json_lines(proc.stdout)
    assert len(objs) == 4
    assert objs[-1]["test_accuracy"] >= 0.97


@pytest.mark.slow
@pytest.mark.torch
def test_compare_bench_replays_the_same_recipe_in_torch(tmp_path):
    """bench/compare.py: PyTorch from the same weights on the same batches lands on the
    same test accuracy as fastnn (to float32 rounding of one epoch)."""
    pytest.importorskip("torch")
    out = tmp_path / "cmp.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "compare.py"), "--presets",
                           "mlp", "--threads", "1", "--epochs", "1", "--engines",
                           "fastnn,torch,jax", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert len(table) == 2 and "torch/fastnn" in table[0]
    res = {(r["engine"], r["model"]): r for r in json.loads(out.read_text())["results"]}
    for preset in ("mlp",):
        f, t = res[("fastnn", preset)], res[("torch", preset)]
        assert f["threads"] == t["threads"] == 1 and f["batch"] == t["batch"]
        assert abs(f["test_acc"] - t["test_acc"]) <= 0.003, (f, t)


def test_process_start_time_precedes_the_first_line_of_the_script():
    """The speedrun clock starts when the process started (interpreter start-up and imports
    included), not when fastnn.cli was imported."""
    code = ("import time; t = time.time(); time.sleep(0.3); "
            "from fastnn.cli import process_start_time as p; print(t - p())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr
    lead = float(proc.stdout)
    assert 0.0 <= lead < 10.0        # start-up happened before line 1; 10 ms clock ticks
