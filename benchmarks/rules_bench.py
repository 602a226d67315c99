"""Forward+backward time of each learning rule relative to bp (rules.py).

    python benchmarks/rules_bench.py [--repeats 30] [--gpu N]

Layers: depthwise 3x3 conv and 1x1 conv at N=32, C=16, 32x32; a 512x512 linear at batch 256;
conv layers in contiguous and channels_last memory formats. Rules are timed round-robin in
the same loop so that machine noise hits them alike; the table shows the median time of bp
and each rule's median ratio to it.
"""
import argparse
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rules  # noqa: E402


def cases(device):
    n, c, hw = 32, 16, 32
    yield "depthwise 3x3", "contiguous", lambda r: rules.RuleConv2d(c, c, 3, 1, 1, groups=c, rule=r), (n, c, hw, hw)
    yield "depthwise 3x3", "channels_last", lambda r: rules.RuleConv2d(c, c, 3, 1, 1, groups=c, rule=r), (n, c, hw, hw)
    yield "1x1 conv", "contiguous", lambda r: rules.RuleConv2d(c, c, 1, rule=r), (n, c, hw, hw)
    yield "1x1 conv", "channels_last", lambda r: rules.RuleConv2d(c, c, 1, rule=r), (n, c, hw, hw)
    yield "linear 512x512", "-", lambda r: rules.RuleLinear(512, 512, rule=r), (256, 512)


def step_time(layer, x, g, sync):
    t = time.perf_counter()
    layer(x).backward(g)
    sync()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--gpu", type=int, default=None)
    args = ap.parse_args()
    device = torch.device(f"cuda:{args.gpu}" if args.gpu is not None and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} round-robin repeats\n")
    print("| layer | memory format | bp (ms) | " + " | ".join(r for r in rules.RULES if r != "bp") + " |")
    print("|---|---|---:|" + "---:|" * (len(rules.RULES) - 1))
    for name, fmt, make, shape in cases(device):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        layers = {r: make(r).to(device) for r in rules.RULES}
        x = torch.randn(shape, device=device, requires_grad=True)
        if len(shape) == 4:
            layers = {r: m.to(memory_format=mf) for r, m in layers.items()}
            x = x.detach().to(memory_format=mf).requires_grad_(True)
        g = torch.randn_like(layers["bp"](x))
        times = {r: [] for r in rules.RULES}
        order = list(layers)
        for i in range(args.repeats + 5):
            random.Random(i).shuffle(order)                  # no rule always runs first
            for r in order:
                t = step_time(layers[r], x, g, sync)
                if i >= 5:                                   # warm-up (oneDNN primitive cache)
                    times[r].append(t)
        bp = statistics.median(times["bp"])
        ratios = [statistics.median(times[r]) / bp for r in rules.RULES if r != "bp"]
        print(f"| {name} | {fmt} | {bp * 1e3:.2f} | " + " | ".join(f"{q:.2f}x" for q in ratios) + " |")


if __name__ == "__main__":
    main()
