"""Evaluations of egnas.CMAES to reach f < 1e-8, side by side with pycma if it is importable.

    python benchmarks/cmaes_bench.py [--dim 10] [--seeds 10] [--target 1e-8] [--max-evals 100000]

Setting of the quality bar: x0 = 0.5 * ones, sigma0 = 0.5, default population,
seeds 1..N. Both optimizers run in the same ask/tell loop and the count is the number of
evaluations after the generation in which some candidate first reached f < target.
pycma (`pip install cma`) is optional and only used as a comparison column; make it
importable e.g. with PYTHONPATH=/path/to/pycma.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from egnas import CMAES  # noqa: E402

try:
    import cma  # noqa: E402
except ImportError:
    cma = None


def sphere(x):
    return float(x @ x)


def ellipsoid(x):
    """Condition 1e6: sum_i 10^(6 (i-1)/(n-1)) x_i^2."""
    n = len(x)
    return float(np.sum(10 ** (6 * np.arange(n) / (n - 1)) * x * x))


def rosenbrock(x):
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def evals_to_target(es, f, target, max_evals):
    """Evaluations used when the target was first reached, or None."""
    evals = 0
    while evals < max_evals:
        X = [np.asarray(x) for x in es.ask()]
        fx = [f(x) for x in X]
        es.tell(X, fx)
        evals += len(X)
        if min(fx) < target:
            return evals
    return None


def summary(counts):
    ok = [c for c in counts if c is not None]
    return len(ok), (statistics.median(ok) if ok else float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--target", type=float, default=1e-8)
    ap.add_argument("--max-evals", type=int, default=100000)
    args = ap.parse_args()
    n, x0, sigma0 = args.dim, 0.5 * np.ones(args.dim), 0.5
    print(f"n = {n}, x0 = 0.5*ones, sigma0 = 0.5, target f < {args.target:g}, seeds 1..{args.seeds}, "
          f"pycma {cma.__version__ if cma else 'not installed'}\n")
    print("| function | ours: successes | ours: median evals | pycma: successes | pycma: median evals "
          "| ratio ours/pycma | ours: s/run |")
    print("|---|---|---|---|---|---|---|")
    for name, f in [("sphere", sphere), ("ellipsoid (cond 1e6)", ellipsoid), ("rosenbrock", rosenbrock)]:
        ours, ref, t_ours = [], [], 0.0
        for seed in range(1, args.seeds + 1):      # interleaved so that machine noise hits both alike
            t = time.perf_counter()
            ours.append(evals_to_target(CMAES(x0, sigma0, seed=seed), f, args.target, args.max_evals))
            t_ours += time.perf_counter() - t
            if cma is not None:
                es = cma.CMAEvolutionStrategy(x0, sigma0, {"seed": seed, "verbose": -9})
                ref.append(evals_to_target(es, f, args.target, args.max_evals))
        k, med = summary(ours)
        if cma is not None:
            kr, medr = summary(ref)
            cols = f"{kr}/{args.seeds} | {medr:.0f} | {med / medr:.2f}"
        else:
            cols = "- | - | -"
        print(f"| {name} | {k}/{args.seeds} | {med:.0f} | {cols} | {t_ours / args.seeds:.2f} |")


if __name__ == "__main__":
    main()
