#!/bin/bash
# Issue 5's multicore table: fastnn (fused trainer) and PyTorch epoch times for
# softmax, mlp and mlp-keras at 1, 2, 4, 8 and 16 threads, in one run, on a
# machine with 16 or more cores.  Builds this checkout's extensions in place
# first, as bench/compare.py imports the source tree (no network needed:
# numpy, Cython, setuptools and torch must already be installed).
#
#     bash bench/scaling.sh            # prints the table; results also in scaling.json
#
# Expect about 3-5 minutes on 16 cores.  Record the printed table, the CPU
# model (first lines) and the date in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
python setup.py -q build_ext --inplace -j "$(nproc)" >/dev/null
python - <<'PY'
import os, platform
print("# cpu:", next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                      if l.startswith("model name")), platform.processor()))
print("# cores available:", len(os.sched_getaffinity(0)))
import fastnn; fastnn.show_config()
PY
python bench/compare.py --presets softmax,mlp,mlp-keras --threads 1,2,4,8,16 --epochs 3 \
    --repeat 1 --engines fastnn,torch --json scaling.json
