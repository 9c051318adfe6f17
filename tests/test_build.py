"""The build and the project's promises to a new user (README, CI, layout)."""
import os
import re
import subprocess
import sys

import pytest

import fastnn
from fastnn.kernels import _registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
