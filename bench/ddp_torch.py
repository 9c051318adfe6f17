"""PyTorch DDP on CPU, the anchor of fastnn's data-parallel training (issue 13).

    torchrun --nproc_per_node 2 bench/ddp_torch.py --preset mlp --epochs 3
    torchrun --nproc_per_node 2 bench/ddp_torch.py --preset mlp-keras --epochs 3 --json

What fastnn's ``mpirun -n 2 fastnn train --preset P --threads 1`` runs, in PyTorch:
the preset's architecture (fastnn/presets.py) with fastnn's seeded initial
weights copied in (bench/compare.py's ``_torch_net``), the preset's global
batch split over the ranks as fastnn splits it (a permutation per epoch shared
by seed, rank r takes rows ``nb*r//N : nb*(r+1)//N`` of every global batch),
the preset's optimizer and learning-rate schedule, ``DistributedDataParallel``
over the gloo backend, one intra-op thread per rank.  The loss is the mean over
the rank's rows, which DDP averages over the ranks (with uneven last slices
that is the usual DDP approximation, as DDP users get it).

Rank 0 prints one line per epoch and a summary: the median epoch time over the
epochs after the first and the test accuracy (``--json``: JSON lines like
``fastnn train --json``).  Launch it with ``torchrun`` (it reads RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mlp", help="an MLP preset of fastnn (mlp, mlp-keras, "
                                                    "softmax)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="JSON lines instead of text")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.threads < 1:
        ap.error("--epochs and --threads must be >= 1")
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        ap.error("launch with torchrun --nproc_per_node N bench/ddp_torch.py ... "
                 "(RANK and WORLD_SIZE not set)")

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP
    from compare import _recipe, _torch_net, _torch_optimizer

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()

    p, (x, y, xt, yt), model, perms, lrs = _recipe(args.preset, args.epochs, args.seed)
    if x.ndim != 2:
        ap.error(f"--preset {args.preset}: this anchor replays MLP presets only")
    X = torch.from_numpy(np.multiply(x, np.float32(1 / 255), dtype=np.float32))
    Y = torch.from_numpy(y.astype(np.int64))
    Xt = torch.from_numpy(np.multiply(xt, np.float32(1 / 255), dtype=np.float32))
    net = DDP(_torch_net(model, (1, x.shape[1])))        # broadcasts rank 0's weights
    net.train()
    opt = _torch_optimizer(p, net.parameters())

    b = p.batch_size
    if rank == 0:
        head = {"ddp": True, "preset": p.name, "ranks": size, "threads": args.threads,
                "global_batch": b, "per_rank_batch": -(-b // size), "backend": "gloo",
                "torch": torch.__version__}
        print(json.dumps(head) if args.json else
              f"torch DDP: {size} ranks x {args.threads} threads, gloo, preset {p.name}, "
              f"global batch {b}, per-rank batch {-(-b // size)}", flush=True)
    times, cpu, t = [], [], 0
    for e, perm in enumerate(perms):
        idx = torch.from_numpy(perm)
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(0, len(perm), b):
            bi = idx[s:s + b]
            nb = len(bi)
            mine = bi[nb * rank // size: nb * (rank + 1) // size]
            for g in opt.param_groups:
                g["lr"] = float(lrs[t])
            out = net(X[mine])
            loss = F.cross_entropy(out, Y[mine], label_smoothing=p.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            t += 1
        cpu.append(time.process_time() - c0)   # this rank's CPU seconds (all threads)
        dist.barrier()
        times.append(time.perf_counter() - t0)
        if rank == 0:
            line = {"epoch": e + 1, "epochs": args.epochs, "epoch_time": times[-1]}
            print(json.dumps(line) if args.json else
                  f"Epoch {e + 1}/{args.epochs}: {times[-1]:.3f} s", flush=True)
    net.eval()
    with torch.no_grad():
        acc = float((torch.cat([net.module(Xt[i:i + 1000]) for i in range(0, len(Xt), 1000)])
                     .argmax(1).numpy() == yt).mean())
    every_cpu = [None] * size
    dist.all_gather_object(every_cpu, cpu)
    if rank == 0:
        med = statistics.median(times[1:]) if len(times) > 1 else times[0]
        summary = {"summary": True, "preset": p.name, "ranks": size, "threads": args.threads,
                   "epoch_time": times, "median_epoch_s": med, "test_accuracy": acc,
                   "cpu_per_epoch": every_cpu}
        print(json.dumps(summary) if args.json else
              f"median epoch (after the first) {med:.3f} s, test accuracy {acc:.4f}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
