"""Search cost of EG-NAS against first- and second-order DARTS on the same supernet and data.

    python benchmarks/search_cost.py [--init_channels 4 --layers 3 --nodes 2 --batch 32]
                                     [--steps_per_epoch 98] [--repeats 3] [--gpu N]

Per method it measures, side by side in one run, the time of one search step and (EG-NAS)
of one exploration, then composes the time of an epoch of `--steps_per_epoch` steps (98 is a
CIFAR-10 search epoch: 25,000 weight-half images at batch 256):

    DARTS 1st order   steps x (alpha step + weight step)
    DARTS 2nd order   steps x (unrolled alpha step + weight step)
    EG-NAS            steps x weight step + 1 exploration (N=3 CMA-ES runs x 50 individuals)

The paper reports 0.35 GPU-days (BioNAS-EG) against 1.37 (BioNAS-DARTS) for the full search.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import darts  # noqa: E402
import egnas  # noqa: E402
import ops  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init_channels", type=int, default=4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps_per_epoch", type=int, default=98)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--population_size", type=int, default=50)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--gpu", type=int, default=None)
    args = ap.parse_args()
    dev = torch.device(f"cuda:{args.gpu}" if args.gpu is not None and torch.cuda.is_available()
                       else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cl = torch.channels_last
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, device=dev).contiguous(memory_format=cl)
    y = torch.randint(0, 10, (args.batch,), device=dev)

    def supernet(zero):
        torch.manual_seed(0)
        net = darts.Network(args.init_channels, 10, args.layers, ops.search_space(zero=zero),
                            steps=args.nodes, multiplier=args.nodes, in_channels=1)
        return net.to(dev).to(memory_format=cl)

    nets = {"darts1": supernet(True), "darts2": supernet(True), "egnas": supernet(False)}
    opts = {k: torch.optim.SGD(n.weights(), 0.05, momentum=0.9) for k, n in nets.items()}
    archs = {"darts1": darts.Architect(nets["darts1"]),
             "darts2": darts.Architect(nets["darts2"], unrolled=True)}

    def weight_step(k):
        opts[k].zero_grad()
        F.cross_entropy(nets[k](x), y).backward()
        opts[k].step()

    def timed(fn):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    jobs = {
        "darts1 step": lambda: (archs["darts1"].step(x, y, x, y), weight_step("darts1")),
        "darts2 step": lambda: (archs["darts2"].step(x, y, x, y, 0.05, opts["darts2"]),
                                weight_step("darts2")),
        "egnas step": lambda: weight_step("egnas"),
        "egnas exploration": lambda: egnas.explore(nets["egnas"], x, y, epoch=20,
                                                   samples=args.samples,
                                                   population_size=args.population_size),
    }
    for fn in jobs.values():                                  # warm-up
        fn()
    times = {k: [] for k in jobs}
    for _ in range(args.repeats):
        for k, fn in jobs.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    S = args.steps_per_epoch
    epoch = {"DARTS 1st order": S * med["darts1 step"], "DARTS 2nd order": S * med["darts2 step"],
             "EG-NAS": S * med["egnas step"] + med["egnas exploration"]}
    print(f"device {dev}, threads {torch.get_num_threads()}, supernet C={args.init_channels} "
          f"layers={args.layers} nodes={args.nodes}, batch {args.batch} at {args.size}x{args.size}, "
          f"median of {args.repeats}\n")
    print("| measured | seconds |\n|---|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} |")
    print(f"\n| method | epoch of {S} steps (s) | relative to DARTS 2nd order |\n|---|---:|---:|")
    for k, v in epoch.items():
        print(f"| {k} | {v:.1f} | {v / epoch['DARTS 2nd order']:.2f} |")


if __name__ == "__main__":
    main()
