"""``fastnn bench train``: wall time per epoch of a preset on MNIST.

Runs ``preset`` for ``epochs`` epochs exactly as ``fastnn train`` does
(same model, batches, optimizer, schedule; no early stop, no validation
inside the timed epochs), then measures test accuracy once.  Reported:

    epoch_s        median wall time of the epochs after the first (the steady state)
    first_epoch_s  the first epoch (includes one-time costs: JIT, buffer allocation, plan build)

Data loading and model construction are outside every timing.  The thread
count is fastnn's (``--threads`` / ``fastnn.set_num_threads``).
bench/compare.py runs the same recipes in PyTorch and prints ratios.

>>> from fastnn.bench_train import bench_train
>>> r = bench_train("softmax", epochs=2)          # {'engine': 'fastnn', 'model': ..., ...}
>>> r["model"], r["epochs"], r["epoch_s"] > 0, r["test_acc"] > 0.85
('softmax', 2, True, True)
"""
import statistics

__all__ = ["bench_train"]


def bench_train(preset, epochs=3, seed=0, data=None, engine="auto", precision="fp32"):
    """Train ``preset`` for ``epochs`` epochs; returns the JSON-able result dict.

    ``engine``: "auto" (the fused native loop when it applies), "fused"
    (require it) or "general" (the layer-by-layer path).  ``precision``:
    "fp32" or "bf16" (``fit``'s; test accuracy is measured in float32); a bf16
    result carries ``"precision": "bf16"``."""
    from . import presets, training
    from ._threads import get_num_threads
    from .datasets import mnist
    if engine not in ("auto", "fused", "general"):
        raise ValueError(f"engine must be 'auto', 'fused' or 'general', got {engine!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    p = presets.get_preset(preset).replace(epochs=epochs)
    (x, y), (xt, yt) = mnist.load_data(path=data)
    model = presets.build_model(p, seed=seed)
    x, xt = presets.model_input(model, x), presets.model_input(model, xt)
    opt = presets.build_optimizer(p, model)
    steps = -(-x.shape[0] // p.batch_size)
    sched = presets.build_schedule(p, opt, steps)
    fused = {"auto": None, "fused": True, "general": False}[engine]
    hist = training.fit(model, x, y, epochs=epochs, batch_size=p.batch_size,
                        loss=presets.build_loss(p), optimizer=opt, shuffle=True, seed=seed,
                        verbose=0, schedule=sched, fused=fused, precision=precision)
    times = hist.history["epoch_time"]
    acc = training.evaluate(model, xt, yt)["accuracy"]
    res = {"engine": "fastnn", "model": p.name, "threads": get_num_threads(),
            "batch": p.batch_size, "epochs": epochs,
            "epoch_s": statistics.median(times[1:]) if len(times) > 1 else times[0],
            "first_epoch_s": times[0], "test_acc": acc}
    if precision != "fp32":     # fp32 results keep their historical keys (tests/test_cli.py)
        res["precision"] = precision
    return res
