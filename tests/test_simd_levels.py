"""SIMD levels (issue 12): detection, FASTNN_SIMD parsing, set_simd_level,
what `fastnn info` says, and the float32 GEMM at every level the CPU has.

Every test runs on any x86-64: levels above what the CPU supports are
clamped (and said so), never skipped; here (Zen 4) every level runs.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import kernels as K
from fastnn.kernels import _registry
from fastnn.kernels.matmul import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = _registry.cpu_max_simd_level()
LEVELS = list(range(TOP + 1))          # every level this CPU has


def _mc():
    return _registry.native_module("matmul_c")          # not built: an error, never a skip


@pytest.fixture
def restore_level():
    old = K.simd_level()
    yield
    K.set_simd_level(old)
    _mc().set_fp32_engine("auto")


def _py(code, **env):
    full = dict(os.environ, **env)
    full.pop("FASTNN_SIMD", None) if "FASTNN_SIMD" not in env else None
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def test_detection_is_consistent():
    common = _registry.native_module("_common")
    f = common.cpu_features()
    assert TOP == (3 if f["avx512_bf16"] else 2 if f["avx512"] else 1 if f["avx2"] else 0)
    assert not f["avx512_bf16"] or f["avx512"]
    assert not f["avx512"] or (f["avx512f"] and f["avx2"])
    assert common.cpu_model() in ("zen4", "other x86-64", "not x86")


@pytest.mark.parametrize("name", ["scalar", "avx2", "avx512", "avx512_bf16", "0", "2"])
def test_env_var_caps_the_level(name):
    r = _py("import fastnn.kernels as K; print(K.simd_level())", FASTNN_SIMD=name)
    want = int(name) if name.isdigit() else _registry.SIMD_LEVELS.index(name)
    assert int(r.stdout.strip()) == min(want, TOP)
    if want > TOP:
        assert "highest available" in r.stderr
    else:
        assert "Warning" not in r.stderr


def test_env_var_unset_and_unknown():
    r = _py("import fastnn.kernels as K; print(K.simd_level())")
    assert int(r.stdout.strip()) == TOP
    r = _py("import fastnn.kernels as K; print(K.simd_level())", FASTNN_SIMD="avx1024")
    assert int(r.stdout.strip()) == TOP
    assert "is not a SIMD level" in r.stderr


def test_env_var_reaches_every_module():
    code = ("import fastnn.kernels as K, sys\n"
            "K.variants('matmul'); K.variants('xent')\n"
            "mods = K._registry._loaded_native_modules()\n"
            "print(len(mods), sorted({m.simd_level() for m in mods}))")
    r = _py(code, FASTNN_SIMD="avx2")
    n, levels = r.stdout.split(" ", 1)
    assert int(n) >= 3 and levels.strip() == f"[{min(1, TOP)}]"


def test_set_simd_level_names_numbers_and_errors(restore_level):
    for i, name in enumerate(_registry.SIMD_LEVELS):
        assert K.set_simd_level(name) == min(i, TOP)
        assert K.simd_level() == min(i, TOP)
        assert K.set_simd_level(i) == min(i, TOP)
    for bad in (4, -1, "avx1024", 1.0, True):
        with pytest.raises(ValueError, match="SIMD level must be 0"):
            K.set_simd_level(bad)


def test_kernels_without_avx512_say_they_run_avx2(restore_level):
    K.set_simd_level(TOP)
    rows = {(r["family"], r["name"]): r["simd"] for r in K.describe() if r["available"]}
    if TOP >= 2:
        assert rows[("xent", "c")].startswith("avx2+fma (no avx512 path")
        assert rows[("matmul", "c")].startswith(_registry.SIMD_LEVELS[TOP])
        assert "bf16" in rows[("matmul", "c")]
    K.set_simd_level("avx2")
    rows = {(r["family"], r["name"]): r["simd"] for r in K.describe() if r["available"]}
    assert rows[("xent", "c")] == rows[("matmul", "c")] == "avx2+fma"


def test_fastnn_info_mentions_the_levels():
    import io
    buf = io.StringIO()
    fastnn.show_config(file=buf)
    text = buf.getvalue()
    assert "simd" in text and "scalar" in text and "avx2" in text
    assert "avx512_bf16" in text and "FASTNN_SIMD" in text
    assert _registry.SIMD_LEVELS[TOP] in text
    info = fastnn._config.config()
    assert info["simd"]["max"] == _registry.SIMD_LEVELS[TOP]
    assert set(info["simd"]["gemm_paths"]) >= {"128x784x512 NN", "128x512x10 NN"}


def test_gemm_paths_name_the_engine(restore_level):
    mc = _mc()
    for lvl in LEVELS:
        K.set_simd_level(lvl)
        path = mc.gemm_path(128, 784, 512, "NN")
        bf = mc.gemm_path(128, 784, 512, "NN", True)
        assert "bf16" in bf
        if lvl == 0:
            assert path == "scalar"
        elif lvl == 1:
            assert path == "avx2+fma"
        else:
            assert path.startswith(("avx512", "avx2+fma ("))   # kept AVX2 says why
            assert mc.gemm_path(128, 512, 10, "NN").startswith("avx2+fma (narrow")
        if lvl == 3:
            assert "vdpbf16ps" in bf
        else:
            assert "emulated" in bf


# ----------------------------------------------------------------------------- fp32 at every level

SHAPES = [(0, 5, 3), (4, 0, 3), (1, 1, 1), (2, 3, 5), (7, 13, 17), (12, 32, 32), (13, 331, 37),
          (37, 29, 101), (11, 200, 33), (40, 350, 50), (145, 385, 33), (150, 97, 10),
          (64, 784, 128), (97, 193, 257)]


def _operand(rng, shape, trans):
    if trans:
        return rng.standard_normal(shape[::-1]).astype(np.float32).T
    return rng.standard_normal(shape).astype(np.float32)


def _check(out, expect, k, tol=1e-6):
    expect = np.asarray(expect, np.float64)
    if not expect.size:
        return
    scale = max(1.0, float(np.max(np.abs(expect))))
    err = float(np.max(np.abs(out.astype(np.float64) - expect)))
    assert err <= tol * 32 * max(k, 1) ** 0.5 * scale, f"max error {err:.3g}"


@pytest.mark.parametrize("engine", ["auto", "avx512"])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_every_level_matches_reference(level, shape, engine, restore_level):
    mc = _mc()
    K.set_simd_level(level)
    mc.set_fp32_engine(engine)
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    m, k, n = shape
    for ta, tb in ((False, False), (True, False), (False, True), (True, True)):
        a, b = _operand(rng, (m, k), ta), _operand(rng, (k, n), tb)
        bias = rng.standard_normal(n).astype(np.float32)
        for bias_, relu in ((None, False), (bias, True)):
            out = np.full((m, n), np.nan, np.float32)
            mc.matmul(a, b, out, bias_, relu, 2)
            _check(out, reference.matmul(a, b, np.empty((m, n)), bias_, relu), k)


@pytest.mark.parametrize("level", LEVELS)
def test_fp32_epilogues_strided_every_level(level, restore_level):
    mc = _mc()
    K.set_simd_level(level)
    mc.set_fp32_engine("avx512")
    rng = np.random.default_rng(21)
    for m, k, n in ((7, 13, 17), (29, 250, 45), (12, 64, 32), (100, 77, 61)):
        a = rng.standard_normal((2 * m, k)).astype(np.float32)[::2]
        b = rng.standard_normal((k, 3 * n)).astype(np.float32)[:, ::3]
        bias = rng.standard_normal(n).astype(np.float32)
        old = rng.standard_normal((m, n)).astype(np.float32)
        for mask in (rng.standard_normal((m, n)).astype(np.float32),
                     np.asfortranarray(rng.standard_normal((m, n)).astype(np.float32))):
            big = np.zeros((m, 2 * n), np.float32)
            for out in (old.copy(), np.asfortranarray(old), big[:, ::2]):
                out[...] = old
                mc.gemm_ex(a, b, out, bias, True, mask, True, 2)
                expect = np.where(mask > 0, np.maximum(a.astype(np.float64) @ b + old + bias, 0), 0)
                _check(out, expect, k)


@pytest.mark.parametrize("level", LEVELS)
def test_fp32_bitwise_repeatable_across_threads(level, restore_level):
    mc = _mc()
    K.set_simd_level(level)
    rng = np.random.default_rng(22)
    for engine in ("auto", "avx512"):
        mc.set_fp32_engine(engine)
        for m, k, n in ((128, 784, 512), (301, 333, 97), (9, 700, 900), (1000, 300, 7)):
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            outs = []
            for nt in (1, 2, 2):
                out = np.empty((m, n), np.float32)
                outs.append(mc.matmul(a, b, out, None, True, nt))
            assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[1], outs[2])


def test_avx512_differs_from_avx2_by_summation_order_only(restore_level):
    """Same inputs on both engines: the difference is bounded like any two
    float32 summation orders (and is exactly zero for integer-valued data)."""
    mc = _mc()
    K.set_simd_level(TOP)
    rng = np.random.default_rng(23)
    a = rng.integers(-4, 5, (70, 300)).astype(np.float32)
    b = rng.integers(-4, 5, (300, 90)).astype(np.float32)
    res = {}
    for engine in ("avx2", "avx512"):
        mc.set_fp32_engine(engine)
        res[engine] = mc.matmul(a, b, np.empty((70, 90), np.float32), None, False, 2)
    assert np.array_equal(res["avx2"], res["avx512"])
    np.testing.assert_array_equal(res["avx2"], a.astype(np.float64) @ b)
