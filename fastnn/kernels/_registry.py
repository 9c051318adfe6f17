"""One registry of kernel variants, read by the engine, the tests and the benchmarks.

A *family* (``"matmul"``, ``"xent"``, ...) has variants (``"reference"``,
``"blas"``, ``"numba"``, ``"cython"``, ``"c"``).  Variants are registered
with a *loader*: a zero-argument callable that imports and returns the
kernel function.  Loading is lazy, so ``import fastnn`` never imports Numba
or compiles anything; a variant whose loader raises ``ImportError`` (for
example an extension that was not built) is reported as unavailable with
the reason.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import types
import warnings
from typing import Any, Callable, Dict, List, Optional

__all__ = ["register", "register_module_variants", "variants", "available", "get", "describe", "set_simd_level", "simd_level",
           "SIMD_LEVELS", "cpu_max_simd_level",
           "native_module"]

_lock = threading.RLock()
_families: Dict[str, Dict[str, _Variant]] = {}   # family -> {name: _Variant}


class _Variant:
    __slots__ = ("family", "name", "loader", "description", "simd", "fn", "error")
    fn: Any                 # the loaded kernel (function or module), None until loaded
    error: Optional[str]    # why loading failed, or None

    def __init__(self, family: str, name: str, loader: Callable[[], Any], description: str,
                 simd: Optional[Callable[[], str]]) -> None:
        self.family, self.name, self.loader = family, name, loader
        self.description, self.simd = description, simd
        self.fn, self.error = None, None

    def load(self) -> Any:
        if self.fn is None and self.error is None:
            with _lock:
                if self.fn is None and self.error is None:
                    try:
                        self.fn = self.loader()
                    except ImportError as exc:
                        self.error = f"{type(exc).__name__}: {exc}"
        return self.fn


def register(family: str, name: str, loader: Callable[[], Any], *, description: str = "",
             simd: Optional[Callable[[], str]] = None) -> None:
    """Register variant ``name`` of ``family``.

    ``simd`` is a zero-argument callable returning a short string naming the
    code path the variant runs on this CPU (e.g. ``"avx2+fma"``)."""
    with _lock:
        _families.setdefault(family, {})[name] = _Variant(family, name, loader, description, simd)


def register_module_variants(family: str, package: str, native: str, *, numba: str, cython: str,
                             c: str) -> None:
    """Register the usual four variants of a family whose variants are modules.

    reference -> ``<package>.reference``, numba -> ``<package>.numba_impl``,
    cython -> ``fastnn._ext.<native>_cy``, c -> ``fastnn._ext.<native>_c``;
    ``numba``, ``cython`` and ``c`` are the descriptions."""
    register(family, "reference", lambda: importlib.import_module(package + ".reference"),
             description="numpy float64 (specification)", simd=lambda: "numpy float64")
    register(family, "numba", lambda: importlib.import_module(package + ".numba_impl"),
             description=numba, simd=lambda: "LLVM (host CPU)")
    register(family, "cython", lambda: native_module(native + "_cy"),
             description=cython, simd=lambda: "compiler (baseline ISA)")
    register(family, "c", lambda: native_module(native + "_c"),
             description=c, simd=lambda: native_module(native + "_c").simd_name())


def _family(family: str) -> Dict[str, _Variant]:
    try:
        return _families[family]
    except KeyError:
        raise ValueError(f"unknown kernel family {family!r}; known: {sorted(_families)}") from None


def variants(family: str, *, available_only: bool = True) -> List[str]:
    """Names of the variants of ``family`` (by default only those that load)."""
    fam = _family(family)
    if not available_only:
        return list(fam)
    return [name for name, v in fam.items() if v.load() is not None]


def available(family: str, name: str) -> bool:
    """Whether variant ``name`` of ``family`` loads here (loads only that one)."""
    v = _family(family).get(name)
    return v is not None and v.load() is not None


def get(family: str, name: str) -> Any:
    """The kernel function of variant ``name`` of ``family``."""
    fam = _family(family)
    if name not in fam:
        raise ValueError(f"unknown {family} variant {name!r}; known: {list(fam)}")
    v = fam[name]
    fn = v.load()
    if fn is None:
        raise RuntimeError(f"{family} variant {name!r} is unavailable: {v.error}")
    return fn


def describe(family: Optional[str] = None) -> List[Dict[str, Any]]:
    """One dict per variant: family, name, available, simd, description, error."""
    fams = [family] if family else sorted(_families)
    rows = []
    for f in fams:
        for name, v in _family(f).items():
            fn = v.load()
            simd = None
            if fn is not None and v.simd is not None:
                try:
                    simd = v.simd()
                except Exception as exc:  # pragma: no cover - diagnostics only
                    simd = f"? ({exc})"
            rows.append({"family": f, "name": name, "available": fn is not None,
                         "simd": simd, "description": v.description, "error": v.error})
    return rows


def native_module(name: str) -> types.ModuleType:
    """Import ``fastnn._ext.<name>``, with a clear error when it was not built."""
    try:
        mod = importlib.import_module("fastnn._ext." + name)
        if not _env_checked:
            _check_env()
        return mod
    except ImportError as exc:
        from ..errors import NotBuiltError
        raise NotBuiltError(
            f"native module fastnn._ext.{name} is missing ({exc}); "
            "build it with `pip install .` (or `python setup.py build_ext --inplace`)") from exc


def _loaded_native_modules() -> List[types.ModuleType]:
    return [m for n, m in list(sys.modules.items())
            if n.startswith("fastnn._ext.") and hasattr(m, "set_simd_level")]


#: SIMD levels, lowest first: index = the level number used by the native modules.
SIMD_LEVELS = ("scalar", "avx2", "avx512", "avx512_bf16")
_ENV = "FASTNN_SIMD"
_env_checked = False


def _level_number(level: Any) -> int:
    if isinstance(level, str) and level in SIMD_LEVELS:
        return SIMD_LEVELS.index(level)
    if isinstance(level, int) and not isinstance(level, bool) and 0 <= level < len(SIMD_LEVELS):
        return level
    raise ValueError(f"SIMD level must be 0 (scalar), 1 (avx2), 2 (avx512) or 3 (avx512_bf16), "
                     f"or one of those names, got {level!r}")


def cpu_max_simd_level() -> int:
    """The highest SIMD level this CPU and OS support (CPUID + XGETBV)."""
    return int(native_module("_common").cpu_max_level())


def _check_env() -> None:
    """Warn once when $FASTNN_SIMD is unknown, or asks for more than the CPU has
    (the native side then runs the highest available level; see cpu.h)."""
    global _env_checked
    if _env_checked:
        return
    _env_checked = True
    raw = os.environ.get(_ENV)
    if not raw:
        return
    aliases = {name: i for i, name in enumerate(SIMD_LEVELS)}
    aliases.update({str(i): i for i in range(len(SIMD_LEVELS))})
    aliases["avx2+fma"] = 1
    top = cpu_max_simd_level()
    if raw not in aliases:
        warnings.warn(f"{_ENV}={raw!r} is not a SIMD level ({', '.join(SIMD_LEVELS)}); "
                      f"ignored: running {SIMD_LEVELS[top]}", RuntimeWarning, stacklevel=3)
    elif aliases[raw] > top:
        warnings.warn(f"{_ENV}={raw} asks for more than this CPU supports; running "
                      f"{SIMD_LEVELS[top]}, the highest available level", RuntimeWarning,
                      stacklevel=3)


def set_simd_level(level: Any) -> int:
    """Set the SIMD level of every native module: 0 / "scalar", 1 / "avx2"
    (AVX2+FMA), 2 / "avx512" (F+BW+VL+DQ), 3 / "avx512_bf16".

    Loads all registered variants first so that modules imported later do not
    miss the setting.  Returns the level actually set: clamped to what the CPU
    supports (``cpu_max_simd_level()``).  Modules without AVX-512 paths run
    AVX2 at levels 2 and 3."""
    want = _level_number(level)
    for fam in list(_families):
        variants(fam)
    native_module("_common")
    got = want
    for mod in _loaded_native_modules():
        got = min(got, mod.set_simd_level(want))
    return got


def simd_level() -> Optional[int]:
    """The lowest SIMD level among loaded native modules (0..3, see SIMD_LEVELS);
    None only when the native modules are not built."""
    try:
        native_module("_common")
    except ImportError:
        return None
    _check_env()
    levels = [m.simd_level() for m in _loaded_native_modules()]
    return min(levels) if levels else None
