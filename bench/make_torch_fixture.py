"""Generate tests/fixtures/mlp_torch.npz: a PyTorch reference for fastnn's MLP.

The network is 20-16-12-5 (ReLU, ReLU, logits), batch 7, float64, with
weights drawn by numpy (seed 0) and copied into ``torch.nn.Linear`` layers
(fastnn stores W as (in, out); torch as (out, in): the fixture stores
fastnn's layout).  Recorded, all in fastnn's flat-buffer order
(0.weight, 0.bias, 1.weight, ...):

    x (7, 20), y (7,) labels, params (flat initial weights)
    loss, grads (flat), dx (7, 20)                    -- CrossEntropyLoss (mean)
    loss_ls, grads_ls                                 -- label_smoothing=0.1
    <opt>_params (3, P): weights after each of 3 steps on the same batch,
    <opt>_losses (3,): the loss before each step, for
        sgd        SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
        nesterov   SGD(lr=0.05, momentum=0.9, nesterov=True)
        adam       Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-8)
        adam_l2    Adam(lr=0.01, weight_decay=0.05)
        adamw      AdamW(lr=0.01, weight_decay=0.1)

Run from the repository root (needs torch, CPU is fine):

    python bench/make_torch_fixture.py [--out tests/fixtures/mlp_torch.npz]

tests/test_torch_reference.py compares fastnn against the committed file,
and against live torch when it imports (same functions as below).
"""
import argparse
import os

import numpy as np

SIZES = (20, 16, 12, 5)
BATCH = 7
SEED = 0
OPTIMIZERS = {
    "sgd": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "nesterov": ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "adam": ("Adam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8)),
    "adam_l2": ("Adam", dict(lr=0.01, weight_decay=0.05)),
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
}
STEPS = 3


def make_inputs(seed=SEED):
    """x, y and the initial weights as a list of (W (in, out), b (out,)) in float64."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        a = 1.0 / np.sqrt(fan_in)
        weights.append((rng.uniform(-a, a, (fan_in, fan_out)), rng.uniform(-a, a, fan_out)))
    x = rng.standard_normal((BATCH, SIZES[0]))
    y = rng.integers(0, SIZES[-1], BATCH)
    return x, y, weights


def flat(weights):
    return np.concatenate([np.concatenate([w.ravel(), b.ravel()]) for w, b in weights])


def _torch_model(weights):
    import torch
    mods = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[0], w.shape[1], dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b.copy()))
        mods.append(lin)
        if i < len(weights) - 1:
            mods.append(torch.nn.ReLU())
    return torch.nn.Sequential(*mods)


def _torch_flat(model, what):
    import torch
    parts = []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            w = m.weight if what == "data" else m.weight.grad
            b = m.bias if what == "data" else m.bias.grad
            parts += [w.detach().numpy().T.ravel(), b.detach().numpy().ravel()]
    return np.concatenate(parts)


def torch_reference(seed=SEED):
    """Everything the fixture holds, computed with torch now."""
    import torch
    x, y, weights = make_inputs(seed)
    out = {"x": x, "y": y, "params": flat(weights)}
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.from_numpy(y)
    for suffix, ls in (("", 0.0), ("_ls", 0.1)):
        model = _torch_model(weights)
        loss = torch.nn.functional.cross_entropy(model(xt), yt, label_smoothing=ls)
        loss.backward()
        out["loss" + suffix] = np.array(loss.item())
        out["grads" + suffix] = _torch_flat(model, "grad")
        if suffix == "":
            out["dx"] = xt.grad.numpy().copy()
    for key, (cls, kw) in OPTIMIZERS.items():
        model = _torch_model(weights)
        opt = getattr(torch.optim, cls)(model.parameters(), **kw)
        snaps, losses = [], []
        for _ in range(STEPS):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), yt)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            snaps.append(_torch_flat(model, "data"))
        out[key + "_params"] = np.stack(snaps)
        out[key + "_losses"] = np.array(losses)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "mlp_torch.npz"))
    args = ap.parse_args()
    import torch
    ref = torch_reference()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez(args.out, torch_version=np.array(torch.__version__), **ref)
    print(f"wrote {args.out}: {len(ref)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
