"""Forward+backward time of each learning rule's conv layer relative to backprop's (rules.py),
and the --quick search's and retraining's step times.

    python benchmarks/rules_bench.py [--sizes darts,quick-search,...] [--processes 3] [--check]
    python benchmarks/rules_bench.py --steps --against DIR     # DIR: the previous code

Table: bias-free convolutions as DARTS's ops use them (depthwise 3x3 and 5x5, dilated depthwise
3x3 and 5x5 at dilation 2, pointwise 1x1) at the sizes of the issue's layer (N 32, C 16,
32x32), the --quick search and retraining, and the paper's search and retraining; both memory
formats. Every cell runs in --processes fresh processes (one thread); each times bp and every
rule round-robin in a shuffled order (up to --repeats rounds or 10 s) after a warm-up, on a new
input and incoming gradient per round placed at a random offset (a big tensor's address decides
whether oneDNN's loads and stores alias in the cache, a 1-4x effect that would otherwise be a
lottery fixed per process). A rule's ratio is the median over rounds of its time / bp's (CPU time of
the thread, so other processes on the machine do not count); the cell shows the median over
processes. Biotorch's layers (Sanfiz & Akrout 2021) are timed alongside when `import biotorch`
works. --check exits 1 if a ratio exceeds its target (brsf 1.25, the other rules 1.10);
--code DIR times DIR's rules.py instead of this checkout's.

--steps --against DIR: the --quick search's step (Architect.step + the weight step) and its
retraining's SGD step, built by the harness from train.py's own flags, stepped alternately with
a copy whose rule convolutions run DIR's rules.py (e.g. `git archive main | tar -x -C DIR`), in
--processes fresh processes.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = ("fa", "usf", "brsf", "frsf")
TARGETS = {"fa": 1.10, "usf": 1.10, "brsf": 1.25, "frsf": 1.10}
SIZES = {   # (batch, channels, height = width)
    "darts": (32, 16, 32),            # DARTS's search cell at C 16, the measurement
    "quick-search": (32, 4, 28),      # --quick search: 4 channels, Fashion-MNIST, batch 32
    "quick-retrain": (64, 8, 28),     # --quick retraining: 8 channels, batch 64
    "paper-search": (64, 16, 32),     # BioNAS / DARTS search: C 16, batch 64, CIFAR-10
    "paper-retrain": (96, 36, 32),    # DARTS retraining: C 36, batch 96
}
LAYERS = {  # (kernel, dilation, depthwise): DARTS's sep_conv, dil_conv and their 1x1 halves
    "depthwise 3x3": (3, 1, True),
    "depthwise 5x5": (5, 1, True),
    "dilated 3x3": (3, 2, True),
    "dilated 5x5": (5, 2, True),
    "pointwise 1x1": (1, 1, False),
}
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step_time(layer, x, g, sync):
    """Wall time of one forward+backward (gpu_check's rules row)."""
    t = time.perf_counter()
    layer(x).backward(g)
    sync()
    return time.perf_counter() - t


def _layers(c, layer, mf):
    """bp and every rule (and Biotorch's, if importable) with this configuration."""
    import rules
    k, d, dw = LAYERS[layer]
    conf = dict(kernel_size=k, padding=d * (k - 1) // 2, dilation=d, groups=c if dw else 1,
                bias=False)
    out = {r: rules.RuleConv2d(c, c, rule=r, **conf) for r in ("bp",) + RULES}
    try:
        import importlib
        for r in RULES:
            mod = importlib.import_module(f"biotorch.layers.{r}")
            out["biotorch " + r] = mod.Conv2d(c, c, **conf)
    except ImportError:
        pass
    return {r: m.to(memory_format=mf) for r, m in out.items()}


def _placed(shape, mf, rng):
    """A standard normal tensor at a random 64-byte offset within a page."""
    n = shape[0] * shape[1] * shape[2] * shape[3]
    off = rng.randrange(64) * 16
    v = torch.empty(n + 1024)[off:off + n]
    if mf == torch.channels_last:
        v = v.view(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
    return v.view(shape).normal_() if mf != torch.channels_last else v.normal_()


def layer_worker(size, layers, fmt, repeats, seed):
    """Cells of one size and format in this process: {layer: {rule: median ratio to bp,
    "bp_ms": bp's median time}}."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    return {layer: _cell(size, layer, fmt, repeats, seed) for layer in layers.split(",")}


def _cell(size, layer, fmt, repeats, seed, budget=10.0):
    n, c, hw = SIZES[size]
    mf = FORMATS[fmt]
    layers = _layers(c, layer, mf)
    rng = random.Random(seed)
    times = {r: [] for r in layers}
    order = list(layers)
    start = time.perf_counter()
    for i in range(repeats + 3):
        if i >= 11 and time.perf_counter() - start > budget:   # big layers: >= 8 rounds
            break
        x = _placed((n, c, hw, hw), mf, rng).requires_grad_(True)
        g = _placed((n, c, hw, hw), mf, rng)
        rng.shuffle(order)                                   # no layer always runs first
        for r in order:
            m = layers[r]
            m.weight.grad, x.grad = None, None               # as zero_grad(set_to_none=True)
            t = time.thread_time()
            m(x).backward(g)
            if i >= 3:                                       # warm-up: oneDNN's primitive cache
                times[r].append(time.thread_time() - t)
    res = {r: statistics.median(a / b for a, b in zip(times[r], times["bp"]))
           for r in layers if r != "bp"}
    res["bp_ms"] = statistics.median(times["bp"]) * 1e3
    return res


def _run(args, root=ROOT):
    """Run this file's worker mode with `args` in a fresh one-thread process; its JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args,
                        "--root", root], env=env, capture_output=True, text=True, cwd=root)
    if p.returncode:
        raise RuntimeError(f"worker {args} failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(sizes, layers, processes, repeats, check, root=ROOT):
    """Print the ratio table of `root`'s rules.py; with `check`, the cells above their target.
    Returns the number of those cells."""
    fails = []
    print(f"{root}: torch {torch.__version__}, one thread, ratio = rule / bp forward+backward "
          f"time (median over up to {repeats} rounds or 10 s a cell, median of {processes} "
          f"processes)\n")
    head = "| size (N, C, HxW) | layer | format | bp (ms) | " + " | ".join(RULES)
    rows, bt = [], False
    for size in sizes:
        for fmt in FORMATS:
            cellruns = [_run(["layer", size, ",".join(layers), fmt, str(repeats), str(s)], root)
                        for s in range(processes)]
            for layer in layers:
                runs = [r[layer] for r in cellruns]
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}
                bt = bt or any(k.startswith("biotorch") for k in med)
                n, c, hw = SIZES[size]
                cells = []
                for r in RULES:
                    cell = f"{med[r]:.2f}x"
                    if med[r] > TARGETS[r]:
                        cell += " !"
                        fails.append(f"{size} {layer} {fmt} {r}: {med[r]:.2f}x > "
                                     f"{TARGETS[r]:.2f}x (processes {spread[r][0]:.2f}-"
                                     f"{spread[r][1]:.2f})")
                    cells.append(cell)
                if bt:
                    cells += [f"{med['biotorch ' + r]:.2f}x" for r in RULES]
                rows.append(f"| {size} ({n}, {c}, {hw}x{hw}) | {layer} | {fmt} | "
                            f"{med['bp_ms']:.2f} | " + " | ".join(cells) + " |")
                print(rows[-1] if len(rows) > 1 else
                      head + ("".join(f" | Biotorch {r}" for r in RULES) if bt else "") + " |\n|"
                      + "---|" * 3 + "---:|" * (len(RULES) * (2 if bt else 1) + 1) + "\n"
                      + rows[-1], flush=True)
    if check:
        print(f"\n{len(fails)} cells above target (brsf 1.25x, other rules 1.10x; '!')")
        for f in fails:
            print("  " + f)
    return len(fails)


# ---------------------------------------------------------------- --quick step times

def _against_rules(model, path):
    """A copy of `model` whose rule convolutions run `path`'s rules.py (the same weights,
    buffers and attributes, the classes of that file)."""
    import copy
    import importlib.util
    import rules
    spec = importlib.util.spec_from_file_location("rules_against", path)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    model = copy.deepcopy(model)
    for m in model.modules():
        if type(m) in (rules.RuleConv2d, rules.MultiRuleConv2d):
            m.__class__ = getattr(other, type(m).__name__)
    return model


def steps_worker(kind, repeats, against):
    """Median ms of CPU time of a --quick search step ("search": Architect.step and the weight
    step) or retraining step ("retrain"), built as train.py --search darts --quick builds them,
    and the same model with `against`'s rules.py, stepped alternately in this process."""
    torch.set_num_threads(1)
    import torch.nn.functional as F
    import darts
    import ops
    from harness import options, quick, retrain, search
    from harness.data import DATASETS, place
    args = options.build_parser().parse_args(["--search", "darts", "--quick"])
    args = options.apply_defaults(args, "search")
    torch.manual_seed(0)
    c_in, classes = DATASETS[args.dataset][0], DATASETS[args.dataset][1]
    cands = ops.search_space(args.rules.split(","), args.skip_rules.split(","), zero=True)
    if kind == "search":
        model = place(search.build_supernet(args, cands), args, torch.device("cpu"))
    else:                             # a genotype of random alpha, as quick.py's estimate
        g = torch.Generator().manual_seed(0)
        k = sum(2 + i for i in range(args.nodes))
        genotype = darts.derive_genotype(torch.rand(k, len(cands), generator=g),
                                         torch.rand(k, len(cands), generator=g), cands,
                                         args.nodes, args.nodes)
        args = quick.quick_retrain_args(args)
        model = place(retrain.build_eval_model(args, genotype), args, torch.device("cpu"))
    runs = {"this": model, "against": _against_rules(model, os.path.join(against, "rules.py"))}
    steppers = {}
    for name, m in runs.items():
        params = list(m.weights() if kind == "search" else m.parameters())
        opt = torch.optim.SGD(params, args.learning_rate, momentum=args.momentum,
                              weight_decay=args.weight_decay, nesterov=args.nesterov)
        steppers[name] = (m, params, opt, search.DartsSearcher(args, m) if kind == "search"
                          else None)
    mf = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    b = args.batch_size
    batch = [(torch.rand(b, c_in, 28, 28).contiguous(memory_format=mf),
              torch.randint(0, classes, (b,))) for _ in range(2)]
    times = {name: [] for name in runs}
    for i in range(repeats + 2):
        (x, y), (xv, yv) = batch if i % 2 else batch[::-1]
        for name in (("this", "against") if i % 2 else ("against", "this")):
            m, params, opt, searcher = steppers[name]
            t = time.thread_time()
            if searcher is not None:
                searcher.step(x, y, xv, yv, args.learning_rate, opt, 0)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            opt.step()
            if i >= 2:
                times[name].append(time.thread_time() - t)
    res = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    res["ratio"] = statistics.median(a / b for a, b in zip(times["this"], times["against"]))
    return res


def steps(against, processes, repeats, kinds=("search", "retrain")):
    """Print the --quick step times of this checkout's rules.py against `against`'s."""
    print(f"--quick step times, ms of CPU time (one thread): median of {repeats} steps, each "
          f"model stepped alternately with its copy running {against}'s rules.py in one "
          f"process; median (range) of {processes} processes\n")
    print("| step | this rules.py | previous rules.py | this / previous (pairs) |\n"
          "|---|---:|---:|---:|")
    for kind in kinds:
        runs = [_run(["steps", kind, str(repeats), os.path.abspath(against)])
                for _ in range(processes)]
        cells = []
        for k in ("this", "against", "ratio"):
            v = [r[k] for r in runs]
            fmt = "{:.2f}" if k == "ratio" else "{:.0f}"
            cells.append((fmt + " (" + fmt + "-" + fmt + ")").format(
                statistics.median(v), min(v), max(v)))
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(SIZES))
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--check", action="store_true", help="exit 1 if a ratio is above target")
    ap.add_argument("--steps", action="store_true", help="the --quick step times instead")
    ap.add_argument("--against", default=None, help="--steps: another checkout to compare")
    ap.add_argument("--code", default=ROOT, help="the table: time this checkout's rules.py")
    ap.add_argument("--kinds", default="search,retrain", help="--steps: which steps")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, args.root)
        kind, *rest = args.worker
        res = layer_worker(rest[0], rest[1], rest[2], int(rest[3]), int(rest[4])) \
            if kind == "layer" else steps_worker(rest[0], int(rest[1]), rest[2])
        print(json.dumps(res))
        return
    if args.steps:
        if not args.against:
            ap.error("--steps needs --against DIR (a checkout of the previous code)")
        steps(args.against, args.processes, min(args.repeats, 20), args.kinds.split(","))
        return
    fails = table(args.sizes.split(","), args.layers.split(","), args.processes, args.repeats,
                  args.check, os.path.abspath(args.code))
    sys.exit(1 if args.check and fails else 0)


if __name__ == "__main__":
    main()
