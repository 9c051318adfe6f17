"""``fastnn.show_config()`` / ``fastnn info``: what was built and what runs here."""
import json
import platform
import sys

from . import _threads
from .kernels import _registry


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _numba_info():
    try:
        import numba
    except ImportError as exc:
        return {"available": False, "error": str(exc)}
    layers = {}
    for layer, mod in (("tbb", "numba.np.ufunc.tbbpool"), ("omp", "numba.np.ufunc.omppool"),
                       ("workqueue", "numba.np.ufunc.workqueue")):
        try:
            __import__(mod)
            layers[layer] = True
        except Exception:
            layers[layer] = False
    try:
        active = numba.threading_layer()
    except ValueError:           # no parallel function has run yet
        active = None
    return {"available": True, "version": numba.__version__,
            "threading_layer_setting": numba.config.THREADING_LAYER,
            "threading_layer_active": active, "threading_layers_importable": layers,
            "max_threads": numba.config.NUMBA_NUM_THREADS}


def _simd_info(common):
    """The SIMD level in use, the CPU's highest, $FASTNN_SIMD, and the GEMM's
    code path per bench shape (which engine, and why AVX2 is kept where it is)."""
    import os

    from .bench import MATMUL_SHAPES
    levels = _registry.SIMD_LEVELS
    level = _registry.simd_level()
    mc = _registry.native_module("matmul_c")
    paths = {}
    for m, k, n, layout in MATMUL_SHAPES:
        paths[f"{m}x{k}x{n} {layout}"] = {"fp32": mc.gemm_path(m, k, n, layout),
                                         "bf16": mc.gemm_path(m, k, n, layout, True)}
    return {"level": levels[level] if level is not None else None,
            "max": levels[common.cpu_max_level()], "levels": list(levels),
            "cpu_model": common.cpu_model(),
            "env_FASTNN_SIMD": os.environ.get("FASTNN_SIMD"), "gemm_paths": paths}


def config():
    """Everything show_config prints, as a dict."""
    import numpy as np

    from . import __version__, kernels  # noqa: F401  (registers every family)
    info = {"fastnn": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
            "platform": platform.platform(), "cpu": _cpu_model()}
    try:
        common = _registry.native_module("_common")
        info["cpu_features"] = common.cpu_features()
        omp, ver, mx = common.openmp_info()
        info["openmp"] = {"compiled": omp, "version": ver, "max_threads": mx}
        info["simd_path"] = common.simd_name()
        info["simd"] = _simd_info(common)
    except ImportError as exc:
        info["native"] = f"not built: {exc}"
    info["kernels"] = _registry.describe()
    info["numba"] = _numba_info()
    info["threads"] = _threads.pools()
    return info


def show_config(as_json=False, file=None):
    """Print version, CPU features, compiled variants and their SIMD paths, OpenMP,
    Numba's threading layer and every pool's thread count."""
    file = file or sys.stdout
    info = config()
    if as_json:
        print(json.dumps(info, indent=2, default=str), file=file)
        return
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"fastnn {info['fastnn']}  (python {info['python']}, numpy {info['numpy']})")
    p(f"platform : {info['platform']}")
    p(f"cpu      : {info['cpu']}")
    if "cpu_features" in info:
        feats = ", ".join(k for k, v in info["cpu_features"].items() if v) or "baseline x86-64"
        sd = info["simd"]
        p(f"features : {feats}")
        p(f"simd     : running {sd['level']} (this CPU's highest: {sd['max']}; levels "
          f"{' < '.join(sd['levels'])}; FASTNN_SIMD={sd['env_FASTNN_SIMD'] or '(unset)'} "
          f"forces a lower one)")
        p("gemm     : float32 code path per shape of `fastnn bench kernels` at this level:")
        for shape, pth in sd["gemm_paths"].items():
            p(f"  {shape:<20} fp32 {pth['fp32']}")
            p(f"  {'':<20} bf16 {pth['bf16']}")
        o = info["openmp"]
        p(f"openmp   : {'yes (_OPENMP=%d)' % o['version'] if o['compiled'] else 'NO (single-threaded build)'}")
    else:
        p(f"native   : {info['native']}")
    nb = info["numba"]
    if nb.get("available"):
        p(f"numba    : {nb['version']}, threading layer setting {nb['threading_layer_setting']!r}, "
          f"active {nb['threading_layer_active']}, importable "
          f"{[k for k, v in nb['threading_layers_importable'].items() if v]}")
    else:
        p(f"numba    : not available ({nb.get('error')})")
    t = info["threads"]
    p(f"threads  : fastnn {t['fastnn']} (from {t['source']}; available CPUs "
      f"{t['available_cpus']})"
      + (f", numba {t['numba']}" if "numba" in t else "")
      + "".join(f", blas {b['api']} {b['threads']}" for b in t.get("blas", [])))
    p("kernels  :")
    for row in info["kernels"]:
        state = row["simd"] if row["available"] else f"unavailable: {row['error']}"
        p(f"  {row['family']:<10} {row['name']:<10} {state}")
