"""The speedrun-cnn recipe search: test accuracy after each epoch of one recipe.

    FASTNN_NUM_THREADS=1 python bench/speedrun_search.py \
        '{"arch": "c3x16-bn-p2-c3x32-bn-p2-d128", "batch": 64, "lr": 0.1, "epochs": 2,
          "seeds": [0, 1, 2]}'

``arch`` is a dash-separated layer list: ``c{k}x{out}[s{stride}][p{pad}]`` a Conv2D with
ReLU, ``bn`` BatchNorm2D, ``p{n}`` MaxPool2D(n), ``d{w}`` a ReLU Dense layer of width w
(after an implicit Flatten); a Dense to 10 logits ends every net.  SGD with Nesterov
momentum 0.9 and a OneCycle schedule peaking at ``lr`` over the epochs given
(``pct`` of them warming up, default 0.25); optional ``wd`` and ``ls`` (label smoothing).
It prints one JSON line per seed and the mean final accuracy; the times it prints are
only comparable within one quiet run (the search itself ran one thread per recipe on a
loaded machine; the speedrun's speed is `fastnn train --preset speedrun-cnn`).
"""
import json
import sys
import time

import numpy as np

from fastnn import losses, optim, training
from fastnn.datasets import mnist
from fastnn.layers import BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D
from fastnn.sequential import Sequential


def build(spec, seed):
    layers = []
    c, hw = 1, 28
    for tok in spec.split("-"):
        if tok.startswith("c"):        # c{k}x{out}[s{stride}][p{pad}]
            ks, rest = tok[1:].split("x")
            k, s, pad = int(ks), 1, "valid"
            if "p" in rest:
                rest, p = rest.split("p")
                pad = int(p)
            if "s" in rest:
                rest, st = rest.split("s")
                s = int(st)
            out = int(rest)
            layers.append(Conv2D(c, out, k, stride=s, padding=pad, activation="relu"))
            pp = pad if isinstance(pad, int) else 0
            hw = (hw + 2 * pp - k) // s + 1
            c = out
        elif tok == "bn":
            layers.append(BatchNorm2D(c))
        elif tok.startswith("p"):
            layers.append(MaxPool2D(int(tok[1:])))
            hw //= int(tok[1:])
        elif tok.startswith("d"):
            if not any(isinstance(lay, Flatten) for lay in layers):
                layers.append(Flatten())
                c = c * hw * hw
            w = int(tok[1:])
            layers.append(Dense(c, w, activation="relu"))
            c = w
    if not any(isinstance(lay, Flatten) for lay in layers):
        layers.append(Flatten())
        c = c * hw * hw
    layers.append(Dense(c, 10))
    return Sequential(layers, seed=seed)

def main():
    cfg = json.loads(sys.argv[1])
    (xtr, ytr), (xte, yte) = mnist.load_data()
    accs = []
    for seed in cfg.get("seeds", [0]):
        m = build(cfg["arch"], seed)
        opt = optim.SGD(m.parameters(), lr=cfg["lr"], momentum=0.9, nesterov=True,
                        weight_decay=cfg.get("wd", 0.0))
        spe = -(-xtr.shape[0] // cfg["batch"])
        sched = optim.OneCycle(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"]*spe,
                               pct_start=cfg.get("pct", 0.25))
        t = time.time()
        h = training.fit(m, xtr, ytr, epochs=cfg["epochs"], batch_size=cfg["batch"],
                         loss=losses.SoftmaxCrossEntropy(label_smoothing=cfg.get("ls", 0.0)),
                         optimizer=opt, validation_data=(xte, yte), seed=seed, verbose=0,
                         schedule=sched)
        va = [round(v, 4) for v in h.history["val_accuracy"]]
        accs.append(va[-1])
        print(json.dumps({**cfg, "seed": seed, "val": va, "s": round(time.time()-t, 1),
                          "params": m.count_params()}), flush=True)
    print("MEAN", cfg["arch"], cfg["batch"], cfg["lr"], cfg["epochs"],
          round(float(np.mean(accs)), 4), flush=True)


if __name__ == "__main__":
    main()
