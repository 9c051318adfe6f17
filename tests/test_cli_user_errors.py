"""What a new user hit (issue 10), through ``fastnn.cli.main`` and real processes.

* ``--data DIR`` without MNIST is an error naming DIR and the four files
  (it used to train on another copy without a word);
* ``OMP_NUM_THREADS`` is honoured after ``FASTNN_NUM_THREADS``; ``--threads``
  above the CPUs warns once, on one line;
* runs that would do nothing (``--epochs 0``, ``--resume`` with no epochs
  left) are errors, and every option has help text;
* user errors are one line on stderr, never a traceback; a closed stdout
  pipe ends the process quietly with exit code 141.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

from fastnn import _threads, cli, presets, serialize
from fastnn.datasets import mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(autouse=True)
def _restore_threads():
    old = _threads._num_threads
    yield
    _threads.set_num_threads(old)


def run_main(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:          # argparse's own usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_message_line(err):
    """The stderr lines that are not argparse's usage (which may wrap)."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "softmax.npz"
    serialize.save(presets.build_model(presets.get_preset("softmax"), seed=0), path)
    return str(path)


# ------------------------------------------------------------------ 1. --data DIR

@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "bench train"])
@pytest.mark.parametrize("where", ["empty", "missing"])
def test_data_dir_without_mnist_is_an_error(command, where, tmp_path, model_file, capsys):
    """`fastnn train --data EMPTY_DIR` trained on ./data/mnist or the user cache;
    `fastnn evaluate m.npz --data /nonexistent` reported an accuracy."""
    data = tmp_path / "mine"
    if where == "empty":
        data.mkdir()
    argv = {"train": ["train", "--preset", "softmax", "--epochs", "1", "--subset", "100"],
            "evaluate": ["evaluate", model_file],
            "predict": ["predict", model_file, "--index", "0"],
            "bench train": ["bench", "train", "--preset", "softmax", "--epochs", "1"]}[command]
    code, out, err = run_main(argv + ["--data", str(data)], capsys)
    assert code == 1
    assert out == ""                              # nothing trained, nothing evaluated
    line = one_message_line(err)
    assert line.startswith("fastnn: --data: MNIST not found: ") and str(data) in line
    for name in mnist.FILES:
        assert name in line
    assert ("holds none of" if where == "empty" else "does not exist") in line


def test_data_dir_with_mnist_is_used(tmp_path, capsys, monkeypatch):
    # the committed copy under another name: --data DIR/mnist layout accepted
    src = os.path.join(ROOT, "data", "mnist")
    os.makedirs(tmp_path / "d")
    os.symlink(src, tmp_path / "d" / "mnist")
    code, out, err = run_main(["train", "--preset", "softmax", "--epochs", "1", "--subset",
                               "200", "--data", str(tmp_path / "d"), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["epochs_run"] == 1


# ------------------------------------------------------------------ 3. and 4. threads

def test_omp_num_threads_is_honoured(monkeypatch, capsys):
    """With OMP_NUM_THREADS=1, `fastnn train` still used 2 threads."""
    monkeypatch.delenv("FASTNN_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    _threads.set_num_threads(None)
    code, out, err = run_main(["train", "--preset", "softmax", "--epochs", "1", "--subset",
                               "200", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["threads"] == 1
    monkeypatch.setenv("FASTNN_NUM_THREADS", "2")            # ours comes first
    code, out, err = run_main(["info", "--json"], capsys)
    assert code == 0, err
    t = json.loads(out)["threads"]
    assert t["fastnn"] == 2 and t["source"] == "FASTNN_NUM_THREADS"


def test_help_documents_thread_precedence(capsys):
    code, out, err = run_main(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "$FASTNN_NUM_THREADS, else $OMP_NUM_THREADS, else the CPUs this process may use" \
        in text


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "FASTNN_NUM_THREADS"])
def test_bad_thread_variable_is_one_line(var, monkeypatch, capsys):
    # back to the default before the variable goes bad: once fastnn limits BLAS (any run
    # that used the BLAS matmul variant earlier in this process), set_num_threads re-reads
    # the count at once, and would raise here instead of in `fastnn info`
    _threads.set_num_threads(None)
    monkeypatch.delenv("FASTNN_NUM_THREADS", raising=False)
    monkeypatch.setenv(var, "lots")
    code, out, err = run_main(["info"], capsys)
    assert code == 1
    assert one_message_line(err) == f"fastnn: {var} must be a positive integer, got 'lots'"
    monkeypatch.undo()          # a good variable again before _restore_threads re-syncs


def test_threads_above_cpus_warn_once_on_one_line(monkeypatch, capsys):
    """`--threads 64` on 2 CPUs silently halved throughput."""
    monkeypatch.setattr(_threads, "_cpus_cache", 2)
    monkeypatch.setattr(_threads, "_oversub_warned", False)
    code, out, err = run_main(["train", "--preset", "softmax", "--epochs", "1", "--subset",
                               "200", "--threads", "64", "--json"], capsys)
    assert code == 0, err
    assert err.splitlines() == [
        ("fastnn: warning: --threads asks for 64 threads but this process may use only 2 "
         "CPU(s); the extra threads share CPUs and slow every parallel kernel down "
         "(use at most 2)")]
    assert json.loads(out.splitlines()[-1])["threads"] == 64       # honoured, not clipped


# ------------------------------------------------------------------ 5. silent no-ops

def test_epochs_0_is_an_error_and_saves_nothing(tmp_path, capsys):
    """`--epochs 0` printed a header, exited 0 and with --save wrote an untrained model."""
    ck = tmp_path / "ck.npz"
    code, out, err = run_main(["train", "--epochs", "0", "--save", str(ck)], capsys)
    assert code == 2 and out == ""
    assert "--epochs: must be >= 1, got 0" in one_message_line(err)
    assert not ck.exists()


def test_resume_with_no_epochs_left_is_an_error(tmp_path, capsys):
    """`--resume m.npz --epochs 2` on a 3-epoch checkpoint printed "training 0.00s", exit 0."""
    ck = str(tmp_path / "ck.npz")
    common = ["--preset", "softmax", "--subset", "300", "--json"]
    assert cli.main(["train", *common, "--epochs", "3", "--save", ck]) == 0
    capsys.readouterr()
    with open(ck, "rb") as fh:
        before = fh.read()
    code, out, err = run_main(["train", "--resume", ck, "--epochs", "2", "--save", ck], capsys)
    assert code == 2 and out == ""
    line = one_message_line(err)
    assert "--epochs 2 is the total number of epochs" in line and "already holds 3" in line
    assert "--epochs 5 for 2 more" in line
    code, out, err = run_main(["train", "--resume", ck], capsys)       # the run's own 3
    assert code == 2 and out == ""
    assert "already holds all 3 epoch(s)" in one_message_line(err)
    with open(ck, "rb") as fh:
        assert fh.read() == before
    code, out, err = run_main(["train", "--resume", ck, "--epochs", "4", "--json"], capsys)
    assert code == 0, err
    assert [o["epoch"] for o in map(json.loads, out.splitlines()[:-1])] == [4]


def test_help_says_epochs_is_the_total(capsys):
    code, out, err = run_main(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "the TOTAL number of epochs, including those already done when resuming" in text


def _all_parsers(parser, path=("fastnn",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            for name, sub in action.choices.items():
                assert name in helped, f"{' '.join(path)} {name}: no help in the command list"
                yield from _all_parsers(sub, path + (name,))


def test_every_option_has_help():
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) >= 9                    # fastnn, 6 commands, 2 bench subcommands
    missing = []
    for path, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help text: {missing}"


# ------------------------------------------------------------------ 6. one line, no traceback

def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "log.csv").write_text("epoch,loss\n1,2.0\n2,1.0\n")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    code, out, err = run_main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")], capsys)
    assert code == 1 and out == ""
    assert "pip install fastnn[plot]" in one_message_line(err)
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("make, needle", [
    ("empty_dir", "no scalar events under"),
    ("binary", "is not a text CSV file"),
])
def test_plot_bad_sources_are_one_line(tmp_path, capsys, make, needle):
    src = tmp_path / "logs"
    if make == "empty_dir":
        src.mkdir()
    else:
        src.write_bytes(b"PK\x03\x04\xb1\xff" * 20)
    code, out, err = run_main(["plot", str(src), "-o", str(tmp_path / "c.png")], capsys)
    assert code == 1 and out == ""
    line = one_message_line(err)
    assert line.startswith("fastnn: plot: ") and needle in line


def test_unwritable_save_path_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a directory")
    code, out, err = run_main(["train", "--preset", "softmax", "--epochs", "1", "--subset",
                               "100", "--json", "--save", str(tmp_path / "file" / "ck.npz")],
                              capsys)
    assert code == 1
    assert str(tmp_path / "file") in one_message_line(err)


def test_broken_pipe_in_process_returns_141(monkeypatch, capsys):
    def closed(args, parser):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "_dispatch", closed)
    code, out, err = run_main(["info"], capsys)
    assert code == cli.EXIT_PIPE == 141 and err == ""


def _closed_pipe_run(args):
    """Run ``fastnn ARGS`` with stdout a pipe whose reader has already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "fastnn.cli", *args], cwd=ROOT, env=ENV,
                              stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(w)
    return proc


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_train_into_a_closed_pipe_exits_quietly(json_flag):
    """`fastnn train ... | head -1` ended in a BrokenPipeError traceback."""
    proc = _closed_pipe_run(["train", "--preset", "softmax", "--epochs", "2", "--subset", "300",
                             "--threads", "1", *json_flag])
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_output_larger_than_the_pipe_then_reader_stops(model_file):
    """The `| head -1` case: the reader takes one line and goes away while we still
    write (the output is far larger than a pipe's buffer, so the writer must block
    until the reader has gone: no race)."""
    proc = subprocess.Popen([sys.executable, "-m", "fastnn.cli", "predict", model_file,
                             "--index", *map(str, range(3000))],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()                    # like head -1
        err = proc.stderr.read()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert first.startswith("test[0]: ")
    assert code == 141, err
    assert err == ""
