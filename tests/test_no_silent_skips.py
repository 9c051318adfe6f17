"""The rule that keeps the suite honest: fastnn's own code is never skipped.

A test that skips when ``fastnn._ext.<something>`` (or any fastnn module)
does not import, or when a kernel variant "is not built", passes on a broken
build.  Missing native modules are reported once by ``conftest.py`` and as
failures by the tests themselves; ``importorskip`` is for genuinely optional
third-party packages only (torch, matplotlib, PIL, tensorboard, tqdm).

This scans the source of every ``tests/**/*.py`` (by its syntax tree, so a
call split over lines is seen too) and fails on:

* ``pytest.importorskip("fastnn...")``;
* ``pytest.skip`` / ``pytest.xfail`` / ``pytest.mark.skip`` / ``skipif`` whose
  message says a part of fastnn is missing ("not built", "unbuilt",
  "unavailable", "not available", "no fused plan").

Fix a hit by importing the module outright (an ImportError is a failure) or by
asserting what the test needs (``assert plan is not None``).
"""
import ast
import os
import re

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
SKIPPERS = {"skip", "skipif", "xfail", "importorskip"}
MISSING_WORDS = re.compile(r"not built|unbuilt|unavailable|not available|no fused plan", re.I)


def _text(node):
    """The literal text of a string or f-string node ('' for anything else)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) for v in node.values)
    return ""


def _name(func):
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def silent_skips(source, filename="<source>"):
    """[(line number, source line)] of the calls the rule forbids in ``source``."""
    lines = source.splitlines()
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or _name(node.func) not in SKIPPERS:
            continue
        if _name(node.func) == "importorskip":
            target = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "modname"), None)
            bad = _text(target).split(".")[0] == "fastnn" if target is not None else False
        else:
            texts = [_text(a) for a in node.args] + [_text(k.value) for k in node.keywords]
            bad = any(MISSING_WORDS.search(t) for t in texts)
        if bad:
            hits.append((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(hits)


def _test_sources():
    out = []
    for folder, dirs, files in os.walk(TESTS):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


FILES = _test_sources()


def test_the_scan_sees_the_suite():
    rel = {os.path.relpath(f, TESTS) for f in FILES}
    assert {"conftest.py", "test_fused.py", "test_no_silent_skips.py",
            os.path.join("robustness", "test_concurrency.py")} <= rel, sorted(rel)


@pytest.mark.parametrize("source", [
    'train = pytest.importorskip("fastnn._ext.train")',
    "optim = pytest.importorskip('fastnn.optim')",
    'importorskip(\n    "fastnn.callbacks")',
    'pytest.importorskip(modname="fastnn")',
    'pytest.skip("c variant not built")',
    'if "c" not in AVAILABLE:\n    pytest.skip(\n        f"matmul variant {v} not built")',
    'pytest.skip("no fused plan for this model")',
    'pytest.skip("numba variant unavailable")',
    '@pytest.mark.skipif(X is None, reason="the C engine is not built")\ndef f(): pass',
    'pytest.xfail(reason="train extension unbuilt")',
])
def test_the_scan_catches(source):
    assert len(silent_skips(source)) == 1


@pytest.mark.parametrize("source", [
    'torch = pytest.importorskip("torch")',
    'pytest.importorskip("PIL.Image")',
    'pytest.skip("no AVX2+FMA on this CPU")',
    '@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")\ndef f(): pass',
    'msg = "c variant not built"',                   # a string, not a skip
    'from fastnn._ext import train',
])
def test_the_scan_allows(source):
    assert silent_skips(source) == []


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(f, TESTS) for f in FILES])
def test_no_skip_for_a_missing_part_of_fastnn(path):
    with open(path, encoding="utf-8") as fh:
        hits = silent_skips(fh.read(), path)
    assert not hits, (
        f"{os.path.relpath(path, TESTS)} skips when part of fastnn is missing; import it "
        "outright or assert instead (a broken build must fail):\n"
        + "\n".join(f"  line {n}: {line}" for n, line in hits))
