"""Attack throughput (images/s) of PGD-10 and APGD-50 on a small CNN on CPU (attacks.py).

    python benchmarks/attacks_bench.py [--batch 64] [--repeats 5] [--threads N] [--onepixel]

The CNN (conv 3->16, pool, conv 16->32, pool, linear 2048->10; CIFAR-sized 32x32 inputs)
has random weights; the labels are its own predictions so that every image is attacked
(APGD and one-pixel skip misclassified images). Rules bp and fa, gradients exact and
feedback are timed round-robin in the same loop so that machine noise hits them alike; the
table shows the median over repeats, and the
median ratio APGD-50 / PGD-10 of the same round. --onepixel adds the paper's one-pixel setting (1 pixel,
popsize 400, 100 generations, early stop) on 8 images.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import attacks  # noqa: E402
import rules  # noqa: E402


def small_cnn(rule):
    return nn.Sequential(
        rules.RuleConv2d(3, 16, 3, padding=1, rule=rule), nn.ReLU(), nn.MaxPool2d(2),
        rules.RuleConv2d(16, 32, 3, padding=1, rule=rule), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), rules.RuleLinear(32 * 8 * 8, 10, rule=rule))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--onepixel", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    eps = 8 / 255
    runs = {
        "PGD-10": lambda m, y, g: attacks.pgd(m, x, y, eps, 2 / 255, 10, grad=g),
        "APGD-50": lambda m, y, g: attacks.apgd(m, x, y, eps, 50, grad=g),
    }
    if args.onepixel:
        runs["one-pixel-1 (400x100)"] = lambda m, y, g: attacks.one_pixel(m, x[:8], y[:8], 1)
    cases = []
    for rule in ("bp", "fa"):
        model = small_cnn(rule)
        y = attacks.predict(model, x)
        for name, fn in runs.items():
            for grad in (("exact", "feedback") if rule != "bp" else ("exact",)):
                if name.startswith("one-pixel") and grad == "feedback":
                    continue                                # gradient-free: same as exact
                cases.append((name, rule, grad, model, y, fn))
    times = {c[:3]: [] for c in cases}
    for name, rule, grad, model, y, fn in cases:            # warm-up
        fn(model, y, grad)
    for _ in range(args.repeats):
        for name, rule, grad, model, y, fn in cases:
            t = time.perf_counter()
            fn(model, y, grad)
            times[(name, rule, grad)].append(time.perf_counter() - t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.repeats}\n")
    print("| attack | rule | grad | s / batch | images / s |")
    print("|---|---|---|---|---|")
    for name, rule, grad, *_ in cases:
        med = statistics.median(times[(name, rule, grad)])
        n = 8 if name.startswith("one-pixel") else args.batch
        print(f"| {name} | {rule} | {grad} | {med:.3f} | {n / med:.1f} |")
    print("\nAPGD-50 / PGD-10 time (51 vs 10 gradient evaluations: 5.1 if the loop adds "
          "nothing)\n")
    print("| rule | grad | ratio |")
    print("|---|---|---|")
    for name, rule, grad, *_ in cases:
        if name == "APGD-50":
            ratios = [a / p for a, p in zip(times[(name, rule, grad)],
                                            times[("PGD-10", rule, grad)])]
            print(f"| {rule} | {grad} | {statistics.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
