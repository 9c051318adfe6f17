"""Build the native kernels.

Convention (so that adding a kernel never means editing this file):
every ``kernels/<family>/<name>.pyx`` becomes the extension module
``fastnn._ext.<name>``.  It is linked with every ``.c`` file in
``kernels/common/`` and in its own folder, plus any files named on a line
``# fastnn-c-sources: ../other/file.c`` near the top of the ``.pyx``
(paths relative to the ``.pyx``).

Portability: nothing here uses ``-march=native``.  SIMD code paths are
compiled per function with ``__attribute__((target("avx2,fma")))`` and chosen
at run time (see ``kernels/common/cpu.c``).

Environment switches:
  FASTNN_NO_OPENMP=1   build without OpenMP (single-threaded kernels)
  FASTNN_SANITIZE=1    build with AddressSanitizer + UBSan (tests/robustness)
  FASTNN_ONLY=a,b      build only these extension modules (developer speed-up)
"""
import copy
import glob
import os
import re
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = "kernels"
SANITIZE = os.environ.get("FASTNN_SANITIZE", "") not in ("", "0")


def _extra_sources(pyx):
    extra = []
    with open(pyx) as fh:
        for line in fh.readlines()[:40]:
            m = re.match(r"#\s*fastnn-c-sources:\s*(.*)$", line.strip())
            if m:
                for rel in m.group(1).split():
                    extra.append(os.path.normpath(os.path.join(os.path.dirname(pyx), rel)))
    return extra


class NoKernelSources(SystemExit):
    """Raised when the kernel sources are missing: a build without them would make a
    pure-Python fastnn that cannot train (issue 14: an sdist without the .pyx files)."""


def _fail(message):
    banner = "=" * 72
    raise NoKernelSources(f"\n{banner}\nerror: {message}\n{banner}\n")


def discover_extensions():
    only = {s for s in os.environ.get("FASTNN_ONLY", "").split(",") if s}
    common = sorted(glob.glob(os.path.join(KERNELS, "common", "*.c")))
    exts = []
    all_pyx = sorted(glob.glob(os.path.join(KERNELS, "*", "*.pyx")))
    if not all_pyx:
        _fail(f"fastnn: no kernel sources: found no {KERNELS}/*/*.pyx under {os.getcwd()}.\n"
              "fastnn cannot be built without its native kernels.  Build from a git\n"
              "clone, or from an sdist that holds kernels/ (MANIFEST.in includes\n"
              "kernels/**/*.pyx, .pxd, .pxi, .c, .h, .inc).")
    if only and not only & {os.path.splitext(os.path.basename(p))[0] for p in all_pyx}:
        _fail(f"fastnn: FASTNN_ONLY={os.environ['FASTNN_ONLY']} names no kernel module; "
              f"known: {', '.join(os.path.splitext(os.path.basename(p))[0] for p in all_pyx)}")
    for pyx in all_pyx:
        folder = os.path.dirname(pyx)
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        c_files = sorted(glob.glob(os.path.join(folder, "*.c")))
        sources = [pyx] + list(dict.fromkeys(c_files + common + _extra_sources(pyx)))
        if folder == os.path.join(KERNELS, "common"):
            sources = [pyx] + common
        missing = [src for src in sources if not os.path.exists(src)]
        if missing:
            _fail(f"fastnn: {pyx} needs {', '.join(missing)}, which is missing")
        exts.append(Extension(
            "fastnn._ext." + name,
            sources=sources,
            include_dirs=[np.get_include(), os.path.join(KERNELS, "common"), folder],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            # headers too: an edit to an included .h (gemm_tmpl.h) must rebuild
            depends=sorted(glob.glob(os.path.join(folder, "*.h"))
                           + glob.glob(os.path.join(KERNELS, "common", "*.h"))),
        ))
    return exts


class BuildExt(build_ext):
    """Adds OpenMP when the compiler has it, and says loudly when it does not."""

    def _try_openmp(self):
        if os.environ.get("FASTNN_NO_OPENMP", "") not in ("", "0"):
            return None
        if self.compiler.compiler_type == "msvc":
            return (["/openmp"], [])
        src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn n>0?0:1;}\n"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "omp_probe.c")
            with open(path, "w") as fh:
                fh.write(src)
            try:
                objs = self.compiler.compile([path], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_executable(objs, os.path.join(tmp, "omp_probe"),
                                              extra_postargs=["-fopenmp"])
            except Exception:
                return None
        return (["-fopenmp"], ["-fopenmp"])

    def build_extensions(self):
        omp = self._try_openmp()
        if omp is None:
            banner = "=" * 72
            sys.stderr.write(textwrap.dedent(f"""
                {banner}
                WARNING: fastnn is being built WITHOUT OpenMP.
                The compiler could not build an OpenMP program (or FASTNN_NO_OPENMP
                is set). Every native kernel will run on ONE thread.
                Install an OpenMP-capable compiler (gcc, or clang with libomp) and
                reinstall to get multicore speed.
                {banner}
            """))
        unix = self.compiler.compiler_type != "msvc"
        for ext in self.extensions:
            cflags, lflags = [], []
            if unix:
                cflags += ["-O3", "-std=gnu11", "-fno-strict-aliasing",
                           "-Wno-unused-function", "-Wno-unreachable-code"]
            if omp is not None:
                cflags += omp[0]
                lflags += omp[1]
                ext.define_macros.append(("FASTNN_HAVE_OPENMP", "1"))
            if SANITIZE and unix:
                san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                       "-fno-omit-frame-pointer", "-g", "-O1"]
                cflags += san
                lflags += san
            ext.extra_compile_args = cflags + list(ext.extra_compile_args or [])
            ext.extra_link_args = lflags + list(ext.extra_link_args or [])
        super().build_extensions()

    def build_extension(self, ext):
        """Build ``ext`` with its own object directory.  The kernels/common sources (and
        kernels/matmul/gemm.c, which conv_c compiles too) go into several extensions; with
        ``[build_ext] parallel`` two threads compiled the same .o path at once and one
        linked a half-written file (the sanitizer build in CI: matmul_c "undefined
        symbol: fnn_dgemm").  The threads share this command object, so each builds
        through a shallow copy whose ``build_temp`` is its own."""
        cmd = copy.copy(self)
        cmd.build_temp = os.path.join(self.build_temp, ext.name.replace(".", "_"))
        return build_ext.build_extension(cmd, ext)


setup(
    ext_modules=cythonize(
        discover_extensions(),
        build_dir="build/cython",
        include_path=[os.path.join(KERNELS, "common")],
        compiler_directives={"language_level": "3", "boundscheck": False,
                             "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    ),
    cmdclass={"build_ext": BuildExt},
)
