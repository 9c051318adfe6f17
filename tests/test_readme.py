"""README.md's "Using it from Python" code runs as written.

The ```python block(s) of that section are executed verbatim, in order and
in one namespace, in a fresh temporary working directory (the example writes
``runs/mlp`` and ``mlp.npz`` there), so an example that raises, or that names
an API that no longer exists, fails this test.  The 3 MNIST epochs take ~3 s
on the fused path; should the example ever grow slow, the one edit allowed
here is lowering the number in its ``epochs=<n>`` (a regex on that one
keyword), nothing else.

MNIST comes from ``fastnn.datasets.mnist.load_data()`` as in the README: it
finds the checkout's ``data/mnist`` from any directory, and ``$FASTNN_DATA``
is pointed at that copy too so the test never depends on the user cache or
tries a download.
"""
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SECTION = "## Using it from Python"


def python_blocks():
    """[(first line number in README.md, code)] of the section's ```python blocks."""
    with open(README, encoding="utf-8") as fh:
        text = fh.read()
    start = text.find(SECTION + "\n")
    assert start >= 0, f"README.md has no {SECTION!r} section"
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end >= 0 else len(text)]
    blocks = []
    for m in re.finditer(r"^```python\n(.*?)^```", body, re.S | re.M):
        line = text.count("\n", 0, start + m.start(1)) + 1
        blocks.append((line, m.group(1)))
    return blocks


def test_the_section_has_the_training_example():
    blocks = python_blocks()
    assert blocks, f"no ```python block in README.md's {SECTION!r} section"
    code = "\n".join(c for _, c in blocks)
    for needed in ("mnist.load_data()", ".fit(", "fastnn.save(", "epochs="):
        assert needed in code, needed


def test_readme_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTNN_DATA", os.path.join(ROOT, "data", "mnist"))
    namespace = {"__name__": "__main__"}
    for line, code in python_blocks():
        # blank lines in front keep the README's line numbers in a traceback
        exec(compile("\n" * (line - 1) + code, README, "exec"), namespace)
    # what the example promises: 3 epochs trained, its TensorBoard run and checkpoint written
    history = namespace["history"]
    assert history.epoch == [0, 1, 2]
    assert history.history["val_accuracy"][-1] > 0.9
    assert os.path.isdir(tmp_path / "runs" / "mlp") and os.listdir(tmp_path / "runs" / "mlp")
    # mlp.npz holds the weights fit ended on (the tutorial-style step after it moves the
    # live model on): they score exactly the validation accuracy fit recorded
    import fastnn
    ck = fastnn.load(str(tmp_path / "mlp.npz"), with_optimizer=True)
    assert ck.optimizer_state is not None
    x_test, y_test = namespace["x_test"], namespace["y_test"]
    assert ck.model.evaluate(x_test, y_test)["accuracy"] == history.history["val_accuracy"][-1]
    assert not np.array_equal(ck.model.flat_params, namespace["model"].flat_params)
