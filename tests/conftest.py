"""Fail the whole test run, loudly and once, when the native build is incomplete.

Every ``kernels/<family>/<name>.pyx`` is built into ``fastnn._ext.<name>``
(setup.py's convention).  A test suite that quietly skips what was not built
reports green on a half-built package, so before any test is collected this
file imports each of those modules and, if one does not import, stops the run
with a single message naming the missing modules and the command that builds
them (in the manner of scikit-learn's ``sklearn/__check_build``).  The exit
status is pytest's "tests failed" (1), never a pass and never a skip.

``tests/test_build.py::test_extension_module_is_built`` checks the same list
per module, so the rule holds under ``--noconftest`` too.
"""
import glob
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(ROOT, "kernels")


def expected_extensions():
    """``fastnn._ext.<name>`` for every ``kernels/<family>/<name>.pyx``, sorted."""
    pyx = glob.glob(os.path.join(KERNELS, "*", "*.pyx"))
    return sorted("fastnn._ext." + os.path.splitext(os.path.basename(p))[0] for p in pyx)


def missing_extensions():
    """[(module name, the ImportError's text)] for the expected modules that do not import."""
    missing = []
    for name in expected_extensions():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append((name, f"{type(exc).__name__}: {exc}"))
    return missing


def build_problem():
    """None when the build is complete, else the message to stop the run with."""
    names = expected_extensions()
    if not names:
        return (f"no kernels/*/*.pyx found under {KERNELS}: the tests must run from a source "
                "checkout of fastnn (they compare against the native modules it builds)")
    missing = missing_extensions()
    if not missing:
        return None
    try:
        import fastnn
        where = os.path.dirname(os.path.abspath(fastnn.__file__))
    except ImportError as exc:  # pragma: no cover - fastnn itself does not import
        where = f"(fastnn does not import: {exc})"
    lines = [f"fastnn's native build is incomplete: {len(missing)} of {len(names)} extension "
             f"modules do not import (fastnn imported from {where}):"]
    lines += [f"  {name}  <- {err}" for name, err in missing]
    lines += ["Build them (from the repository root) with",
              "    pip install -e .",
              "or, in place without reinstalling,",
              "    python setup.py build_ext --inplace",
              "and run the tests again.  A missing extension is a failure, not a skip."]
    return "\n".join(lines)


def pytest_report_header(config):
    problem = build_problem()
    if problem is None:
        return f"fastnn native build: all {len(expected_extensions())} extension modules import"
    return problem.splitlines()[0]


def pytest_sessionstart(session):
    problem = build_problem()
    if problem is None:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(problem, red=True, bold=True)
        reason = problem.splitlines()[0].rstrip(":") + " (details above)"
    else:
        reason = problem
    pytest.exit(reason, returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture
def restore_level():
    """Tests that force a SIMD level (``fastnn.kernels.set_simd_level``) get it back after."""
    import fastnn.kernels as K
    old = K.simd_level()
    yield
    K.set_simd_level(old)
