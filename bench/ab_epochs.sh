#!/usr/bin/env bash
# Epoch times of two builds side by side, alternating, so that the machine's slow and fast
# spells hit both alike (issue 10: "the same epoch times before and after").
#   bash bench/ab_epochs.sh BEFORE_CHECKOUT AFTER_CHECKOUT [ROUNDS]
# Each checkout must be built in place (python setup.py build_ext --inplace).  Per round
# and per build: the fused loop alone (bench/bench_train_native.py, one native call per
# epoch) and the whole `fastnn bench train` (fit as users call it), both at 2 threads.
# Prints one line per run; the medians are what BENCHMARKS.md quotes.
set -euo pipefail
before=$(cd "$1" && pwd); after=$(cd "$2" && pwd); rounds=${3:-3}
for r in $(seq "$rounds"); do
  for side in before after; do
    dir=${!side}
    for preset in softmax mlp mlp-keras; do
      native=$(cd "$dir" && python bench/bench_train_native.py --preset "$preset" --threads 2 \
                 --epochs 4 | grep -Eo 'fastnn [0-9.]+ s/epoch' | grep -Eo '[0-9.]+')
      sleep 0.5
      fit=$(cd "$dir" && python -c "import sys; sys.path.insert(0, '.'); from fastnn.cli import main; sys.exit(main(sys.argv[1:]))" \
              bench train --preset "$preset" --epochs 4 --threads 2 --json \
              | python -c "import json, sys; print(round(json.loads(sys.stdin.read().splitlines()[-1])['epoch_s'], 4))")
      echo "round $r $side $preset native_epoch_s $native fit_epoch_s $fit"
      sleep 0.5
    done
  done
done
