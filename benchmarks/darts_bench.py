"""Search-step time and peak memory of the DARTS supernet: 8-op backprop space vs the
22-candidate BioNAS space, contiguous vs channels_last, first and second order (darts.py).

    python benchmarks/darts_bench.py [--batch 32 --init_channels 16 --layers 8 --size 32]
                                     [--repeats 3] [--threads N] [--gpu N]

One search step is what DARTS train_search.py does per batch: Architect.step (alpha, on a
validation batch) and then one SGD step of the weights on the training batch (grad-clip 5).
Each configuration runs in its own worker process, so that its peak memory is its own:
ru_maxrss of the worker minus its value before the model is built (CPU), or
torch.cuda.max_memory_allocated (CUDA). The three spaces of one (order, memory format) stay alive together
and are stepped round-robin, so machine noise hits every configuration alike; the table shows each
one's median step time (after one warm-up step) and the ratio 22-candidate / 8-op, whose
target is at most 22/8 = 2.75. A third space, the 22 candidates all with bp, splits that ratio
into the cost of more candidates and the cost of the rules' custom backward.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import darts  # noqa: E402
import ops  # noqa: E402
from harness.search import make_supernet  # noqa: E402



def _bp22():
    """The 22 BioNAS candidates with every rule replaced by bp (same ops, duplicate names):
    separates the cost of more candidates from the cost of the rules' backward."""
    return [ops.parse_candidate(c)[0] for c in ops.search_space()]


SPACES = {"8-op": lambda: ops.search_space(rules=("bp",), skip_rules=("bp",)),
          "22-cand": ops.search_space,
          "22-cand all-bp": _bp22}
FORMATS = ("contiguous", "channels_last")


def worker(cfg):
    """One configuration: build, answer 'step' with the step time, 'quit' with peak memory."""
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mf = torch.channels_last if cfg["format"] == "channels_last" else torch.contiguous_format
    cands = SPACES[cfg["space"]]()
    tiny = darts.Network(2, 10, 3, cands).to(device, memory_format=mf)   # load torch's kernels
    darts.Architect(tiny, unrolled=True).step(*(torch.rand(2, 3, 8, 8, device=device),
                                                torch.randint(0, 10, (2,), device=device)) * 2,
                                              eta=0.1)
    del tiny
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # KiB on Linux
    torch.manual_seed(0)
    model = make_supernet(cfg["C"], 10, cfg["layers"], cands, steps=cfg.get("nodes", 4),
                          multiplier=cfg.get("nodes", 4), in_channels=cfg.get("in_channels", 3),
                          partial_channels=cfg.get("partial", 1),
                          supernet=cfg.get("supernet"), fused=cfg.get("fused", False)
                          ).to(device, memory_format=mf)
    b, s, c_in = cfg["batch"], cfg["size"], cfg.get("in_channels", 3)
    x_train, x_valid = (torch.rand(b, c_in, s, s, device=device).contiguous(memory_format=mf)
                        for _ in range(2))
    y_train, y_valid = (torch.randint(0, 10, (b,), device=device) for _ in range(2))
    lr = 0.1
    optimizer = torch.optim.SGD(model.weights(), lr, momentum=0.9, nesterov=True,
                                weight_decay=3e-4)
    architect = darts.Architect(model, unrolled=cfg["order"] == "second")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        sync()
        t = time.perf_counter()
        architect.step(x_train, y_train, x_valid, y_valid, lr, optimizer)
        optimizer.zero_grad()
        model.loss(x_train, y_train).backward()
        torch.nn.utils.clip_grad_norm_(model.weights(), 5.0)
        optimizer.step()
        sync()
        print("time", time.perf_counter() - t, flush=True)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else \
        (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print("mem", peak, flush=True)


def _read(proc, tag):
    """The next line of a worker, which must start with `tag`."""
    line = proc.stdout.readline()
    if not line.startswith(tag):
        raise RuntimeError(f"worker said {line!r} (expected {tag!r}); see its stderr above")
    return line.split()[1] if len(line.split()) > 1 else None


def _run_group(procs, order, repeats, rows):
    """Step live workers round-robin (1 warm-up + `repeats`), then collect time and memory."""
    for p in procs.values():
        _read(p, "ready")
    times = {k: [] for k in procs}
    for r in range(repeats + 1):
        keys = list(procs)
        keys = keys[r % len(keys):] + keys[:r % len(keys)]              # rotate the order
        for k in keys:
            procs[k].stdin.write("step\n")
            procs[k].stdin.flush()
            t = float(_read(procs[k], "time"))
            if r:                                                       # r = 0 is warm-up
                times[k].append(t)
    for k, p in procs.items():
        p.stdin.write("quit\n")
        p.stdin.flush()
        rows[(order,) + k] = (statistics.median(times[k]), float(_read(p, "mem")))
        p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--init_channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--orders", default="first,second")
    ap.add_argument("--gpu", type=int, default=None)
    ap.add_argument("--fusion", action="store_true",
                    help="instead: the fused supernet (fused.FusedNetwork) against the plain "
                         "one at the quick size, the paper's sizes and with partial channels")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.fusion:
        return fusion(args)
    device = "cpu"
    if args.gpu is not None:
        if torch.cuda.is_available() and args.gpu < torch.cuda.device_count():
            device = f"cuda:{args.gpu}"
        else:
            print(f"cuda:{args.gpu} does not exist here; running on CPU")
    threads = args.threads or torch.get_num_threads()
    print(f"device {device}, torch {torch.__version__}, {threads} thread(s); batch {args.batch}, "
          f"{args.init_channels} channels, {args.layers} cells, {args.size}x{args.size}; median "
          f"of {args.repeats} round-robin steps after 1 warm-up\n")
    rows = {}
    for order in args.orders.split(","):
        for fmt in FORMATS:                     # the three spaces of one row side by side
            procs = {}
            for space in SPACES:
                cfg = dict(space=space, format=fmt, order=order, device=device, C=args.init_channels,
                           layers=args.layers, batch=args.batch, size=args.size,
                           threads=args.threads)
                procs[(space, fmt)] = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
            _run_group(procs, order, args.repeats, rows)

    mem_unit = "MiB allocated" if device != "cpu" else "MiB ru_maxrss"
    orders = args.orders.split(",")
    print("Search step time (s), median; ratios of medians\n")
    print("| order | memory format | 8-op | 22-cand | 22-cand all-bp | 22-cand / 8-op "
          "| all-bp / 8-op (more candidates) | 22-cand / all-bp (rules) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for order in orders:
        for fmt in FORMATS:
            t8, t22, tbp = (rows[(order, sp, fmt)][0] for sp in SPACES)
            print(f"| {order} | {fmt} | {t8:.2f} | {t22:.2f} | {tbp:.2f} | {t22 / t8:.2f} "
                  f"| {tbp / t8:.2f} | {t22 / tbp:.2f} |")
    print(f"\nPeak memory of the step ({mem_unit} above the worker's value before the model)\n")
    print("| order | memory format | 8-op | 22-cand | 22-cand all-bp | 22-cand / 8-op |")
    print("|---|---|---:|---:|---:|---:|")
    for order in orders:
        for fmt in FORMATS:
            m8, m22, mbp = (rows[(order, sp, fmt)][1] for sp in SPACES)
            ratio = f"{m22 / m8:.2f}" if m8 > 0 else "n/a"
            print(f"| {order} | {fmt} | {m8:.0f} | {m22:.0f} | {mbp:.0f} | {ratio} |")
    print("\nchannels_last / contiguous step time:\n")
    for order in orders:
        print(f"- {order} order: " + ", ".join(
            f"{sp} {rows[(order, sp, 'channels_last')][0] / rows[(order, sp, 'contiguous')][0]:.2f}"
            for sp in SPACES))


FUSION_SIZES = {  # name: Network and batch settings (first order, channels_last, 22 candidates)
    "quick (C 4, 3 cells, 2 nodes, 28x28x1, batch 32)":
        dict(C=4, layers=3, nodes=2, in_channels=1, size=28, batch=32),
    "paper C 16, 5 cells, 4 nodes, 32x32x3, batch 16": dict(C=16, layers=5, nodes=4, size=32,
                                                             batch=16),
    "partial channels 4 (pc-darts), C 16, 8 cells, batch 32":
        dict(C=16, layers=8, nodes=4, size=32, batch=32, partial=4, supernet="pc-darts"),
}


def fusion(args):
    """Fused / plain supernet search-step time, side by side per size."""
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s), first order, channels_last, 22 "
          f"candidates; median of {args.repeats} round-robin steps after 1 warm-up\n")
    print("| size | plain (s) | fused (s) | plain / fused |")
    print("|---|---:|---:|---:|")
    for name, size in FUSION_SIZES.items():
        procs, rows = {}, {}
        for fused in (False, True):
            cfg = dict(size, space="22-cand", format="channels_last", order="first",
                       device="cpu", threads=args.threads, fused=fused)
            procs[(fused,)] = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        _run_group(procs, "first", args.repeats, rows)
        plain, fused = rows[("first", False)][0], rows[("first", True)][0]
        print(f"| {name} | {plain:.3f} | {fused:.3f} | {plain / fused:.2f} |", flush=True)


if __name__ == "__main__":
    main()
