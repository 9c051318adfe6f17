"""Generate tests/fixtures/lenet5_torch.npz: a PyTorch reference for fastnn's lenet5 preset.

The network is the ``lenet5`` preset (conv5x5x6 pad 2, ReLU, maxpool 2; conv5x5x16,
ReLU, maxpool 2; flatten; 400-120-84-10 ReLU), float64, batch 5, with weights drawn
by numpy (seed 0, PyTorch's default bounds U(+-1/sqrt(fan_in))) in PyTorch's layout
and copied into torch.  The fixture stores them in fastnn's layout, converted here
with plain transposes (not fastnn's helpers, which the test checks):

    conv weight  torch (Cout, Cin, KH, KW)   -> fastnn HWIO (KH, KW, Cin, Cout)
    linear       torch (out, in)             -> fastnn (in, out)
    first linear after the flatten: torch flattens NCHW (c, h, w), fastnn NHWC (h, w, c),
                 so its input rows are permuted as well

Recorded, in fastnn's flat-buffer order (0.weight, 0.bias, 2.weight, ...):

    x (5, 28, 28) in [0, 1), y (5,) labels, params (flat initial weights)
    logits (5, 10), loss, grads (flat), dx (5, 28, 28, 1)   -- CrossEntropyLoss (mean)
    adam_params (P,), adam_losses (2,): the weights after two Adam(lr=1e-3) steps on the
                 same batch, and the loss before each

Run from the repository root (needs torch, CPU is fine):

    python bench/make_lenet5_torch_fixture.py [--out tests/fixtures/lenet5_torch.npz]

tests/test_conv_layers.py compares fastnn against the committed file, and against
live torch when it imports.
"""
import argparse
import os

import numpy as np

BATCH = 5
SEED = 0
ADAM_STEPS = 2
# (kind, torch weight shape): convs (Cout, Cin, KH, KW), linears (out, in)
LAYERS = [("conv", (6, 1, 5, 5)), ("conv", (16, 6, 5, 5)), ("linear", (120, 400)),
          ("linear", (84, 120)), ("linear", (10, 84))]


def make_inputs(seed=SEED):
    """x, y and the torch-layout weights [(W, b)] in float64."""
    rng = np.random.default_rng(seed)
    weights = []
    for _, shape in LAYERS:
        fan_in = int(np.prod(shape[1:]))
        a = 1.0 / np.sqrt(fan_in)
        weights.append((rng.uniform(-a, a, shape), rng.uniform(-a, a, shape[0])))
    x = rng.random((BATCH, 28, 28))
    y = rng.integers(0, 10, BATCH)
    return x, y, weights


def to_fastnn(weights):
    """The flat parameter vector in fastnn's layout and order."""
    parts = []
    for i, ((kind, _), (w, b)) in enumerate(zip(LAYERS, weights)):
        if kind == "conv":
            w = w.transpose(2, 3, 1, 0)                        # OIHW -> HWIO
        elif i == 2:
            # (out, c*h*w) -> (out, h*w*c) -> (in, out)
            w = w.reshape(120, 16, 5, 5).transpose(0, 2, 3, 1).reshape(120, 400).T
        else:
            w = w.T
        parts += [np.ascontiguousarray(w).ravel(), b.ravel()]
    return np.concatenate(parts)


def _torch_model(weights):
    import torch
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ).to(torch.float64)
    mods = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for m, (w, b) in zip(mods, weights):
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
    return model, mods


def _flat(mods, what):
    ws = []
    for m in mods:
        w = m.weight if what == "data" else m.weight.grad
        b = m.bias if what == "data" else m.bias.grad
        ws.append((w.detach().numpy().copy(), b.detach().numpy().copy()))
    return to_fastnn(ws)


def torch_reference(seed=SEED):
    """Everything the fixture holds, computed with torch now."""
    import torch
    x, y, weights = make_inputs(seed)
    out = {"x": x, "y": y, "params": to_fastnn(weights)}
    model, mods = _torch_model(weights)
    xt = torch.from_numpy(x[:, None]).requires_grad_(True)      # NCHW
    yt = torch.from_numpy(y)
    logits = model(xt)
    loss = torch.nn.functional.cross_entropy(logits, yt)
    loss.backward()
    out["logits"] = logits.detach().numpy().copy()
    out["loss"] = np.array(loss.item())
    out["grads"] = _flat(mods, "grad")
    out["dx"] = xt.grad.numpy()[:, 0, :, :, None].copy()        # NHWC, one channel
    model, mods = _torch_model(weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(ADAM_STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[:, None])), yt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out["adam_params"] = _flat(mods, "data")
    out["adam_losses"] = np.array(losses)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "lenet5_torch.npz"))
    args = ap.parse_args()
    import torch
    ref = torch_reference()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez(args.out, torch_version=np.array(torch.__version__), **ref)
    print(f"wrote {args.out}: {len(ref)} arrays, torch {torch.__version__}")


if __name__ == "__main__":
    main()
