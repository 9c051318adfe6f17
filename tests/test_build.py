"""The build and the project's promises to a new user (README, CI, layout)."""
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest

import fastnn
from fastnn.kernels import _registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# setup.py's convention: every kernels/<family>/<name>.pyx is built into fastnn._ext.<name>
EXTENSIONS = sorted("fastnn._ext." + os.path.splitext(os.path.basename(p))[0]
                    for p in glob.glob(os.path.join(ROOT, "kernels", "*", "*.pyx")))


def test_extension_list_is_read_from_the_sources():
    assert {"fastnn._ext._common", "fastnn._ext.matmul_c", "fastnn._ext.train"} <= \
        set(EXTENSIONS), EXTENSIONS


@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_module_is_built(name):
    """Also under ``--noconftest`` (conftest.py stops the run before this otherwise)."""
    try:
        importlib.import_module(name)
        error = None
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    if error:
        pytest.fail(f"{name} is not built ({error}); build it with `pip install -e .` or "
                    "`python setup.py build_ext --inplace`", pytrace=False)


def test_every_registered_kernel_variant_loads():
    """numba is a dependency and the native variants are built: nothing may be missing."""
    broken = {(r["family"], r["name"]): r["error"] for r in _registry.describe()
              if not r["available"]}
    assert not broken, broken


def _readme_commands():
    with open(os.path.join(ROOT, "README.md")) as fh:
        text = fh.read()
    block = re.search(r"## Set-up.*?```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must have a '## Set-up' section with a fenced command block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    assert "fastnn train" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run")) as fh:
        ci = fh.read()
    assert _readme_commands()[1] in ci


def test_native_modules_built_and_simd_dispatch():
    common = _registry.native_module("_common")
    feats = common.cpu_features()
    assert set(feats) >= {"avx2", "fma"}
    # The scalar fallback can always be selected, and AVX2 only where the CPU has it.
    assert common.set_simd_level(0) == 0
    got = common.set_simd_level(1)
    assert got == (1 if feats["avx2"] and feats["fma"] else 0)


def test_fma_probe_counts_flops():
    common = _registry.native_module("_common")
    assert common.fma_probe(1000, 1) > 0


def test_show_config_mentions_every_family(capsys):
    fastnn.show_config()
    out = capsys.readouterr().out
    assert "openmp" in out and "matmul" in out
    for row in _registry.describe():
        assert row["name"] in out


def test_unknown_family_and_variant_are_clear_errors():
    with pytest.raises(ValueError, match="unknown kernel family"):
        fastnn.kernels.variants("no-such-family")
    with pytest.raises(ValueError, match="unknown matmul variant"):
        _registry.get("matmul", "nope")


def test_import_does_not_load_numba():
    code = "import sys, fastnn; import fastnn.kernels; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_setup_builds_each_extension_in_its_own_object_directory(monkeypatch):
    """kernels/common/*.c and kernels/matmul/gemm.c are compiled into several extensions;
    a parallel build (`[build_ext] parallel`) must not have two threads write one .o (the
    CI sanitizer build once linked a half-written gemm.o).  setup.py's BuildExt hands each
    extension a build_temp of its own, and leaves the shared command object alone."""
    import os
    import runpy

    import setuptools
    from setuptools.command.build_ext import build_ext as base
    from setuptools.dist import Distribution

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(root)
    monkeypatch.setattr("Cython.Build.cythonize", lambda exts, **kw: exts)
    runpy.run_path(os.path.join(root, "setup.py"), run_name="not_main")
    cmd = captured["cmdclass"]["build_ext"](Distribution())
    cmd.build_temp = os.path.join("build", "temp")
    seen = []
    monkeypatch.setattr(base, "build_extension", lambda self, ext: seen.append(self.build_temp))
    exts = captured["ext_modules"]
    assert len(exts) >= 13
    for ext in exts:
        cmd.build_extension(ext)
    assert len(set(seen)) == len(exts)
    assert all(d.startswith(os.path.join("build", "temp") + os.sep) for d in seen)
    assert cmd.build_temp == os.path.join("build", "temp")
