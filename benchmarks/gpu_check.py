"""One-shot GPU check: the CUDA suite, train.py's runs on the GPU(s), then one table of what
the GPU does.

    python benchmarks/gpu_check.py [--device cuda:0] [--data DIR]   # ~5 minutes + the runs
    python benchmarks/gpu_check.py --device cpu --tiny               # end to end on the CPU

1. `pytest tests/test_cuda.py` with BIONAS_TEST_DEVICE=--device (every layer, step, attack and
   module on the device against the CPU; its summary line is printed).
2. The run checks (benchmarks/gpu_runs.py; --no-runs skips them): train.py end to end at toy
   sizes, one line each, `PASS name` or `FAIL name: <the error's last line>`. Under torchrun
   with NCCL (gloo with --device cpu) on 1 GPU and on all visible GPUs (2 CPU ranks),
   BIONAS_COLLECTIVES_AT_WORLD_1=1: the DARTS search first and second order, the EG-NAS search
   through one exploration, a retraining stopped after epoch 1, --attack on it, a retraining
   with --amp fp16, --resume of the stopped one; in one process on the device: --neurogenesis,
   --dyno, --equinas (both), every thesis --experiment, and one spread by --gpus. Data:
   --data DIR (Fashion-MNIST), else generated files.
3. One markdown table, each row timed on the device after warm-up (median of --repeats,
   torch.cuda.synchronize around each timing; peak memory = torch.cuda.max_memory_allocated
   over the timed steps, the model, its optimizer state and the batch included):
   - rules: forward+backward of a conv layer at a representative size (3x3, 64 -> 64
     channels and DARTS's depthwise 3x3 on 64 channels, batch 64, 32x32, channels_last), bp's
     time and each rule's ratio to it, timed round-robin (rules_bench.step_time);
   - supernet: one DARTS search step (first-order Architect.step on a validation batch, then
     an SGD step of the weights with grad-clip 5: darts_bench.worker's step; --orders
     first,second adds the unrolled step) of search.build_supernet's supernet at the
     paper's search size (--preset authors: C 16, 8 cells, 4 nodes, CIFAR-10 32x32), for the
     8-op and 22-candidate spaces (darts_bench.SPACES), batch 64 and 256, without and with
     --partial_channels 4 (PC-DARTS); a configuration that does not fit says OOM;
   - retraining: images/s of a training step of the paper's standalone network
     (retrain.build_eval_model: NetworkEval on CIFAR-10, 36 channels, 20 layers, auxiliary
     head with weight 0.4, drop-path 0.2, batch 96, SGD with grad-clip 5) for DARTS_V2 and
     for a BioNAS genotype (default: DARTS_V2 with every op's rule drawn from fa/usf/brsf/frsf
     by darts.random_rules(seed 0); --genotype FILE for another);
   - attack: images/s of PGD-10 (eps 8/255, step 2/255, random start) on those networks in
     eval mode, exact gradients and (BioNAS genotype) feedback gradients.
   Rows stop being measured once --budget seconds have passed (the rest say "skipped").
--tiny shrinks every size of the table so that it runs on a CPU in under a minute (the run
checks take 6-7 minutes of a 2-core CPU). Exit status: pytest's when the suite fails, else 1 when
a run check fails, else 0.
"""
import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
import attacks  # noqa: E402
import darts  # noqa: E402
from harness import retrain  # noqa: E402
import rules  # noqa: E402
from harness import search  # noqa: E402
from darts_bench import SPACES  # noqa: E402
from gpu_runs import run_checks  # noqa: E402
from rules_bench import step_time  # noqa: E402

DARTS_V2 = darts.DARTS_V2

SIZES = {   # the paper's sizes, and --tiny's
    False: dict(conv=(64, 64, 32), search=dict(C=16, layers=8, nodes=4, size=32, batches=(64, 256),
                                               partial=4),
                retrain=dict(C=36, layers=20, size=32, batch=96), pgd_steps=10),
    True: dict(conv=(4, 8, 8), search=dict(C=8, layers=3, nodes=1, size=8, batches=(4, 8),
                                           partial=2),
               retrain=dict(C=8, layers=5, size=16, batch=8), pgd_steps=2),
}


def device_or_exit(name):
    """torch.device(name), or a one-line refusal when it does not exist here."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        sys.exit(f"error: --device {name!r} is not a device name; use cuda:N or cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device {name}: CUDA is not available here (torch "
                     f"{torch.__version__}); use --device cpu --tiny to try the check on the CPU")
        if (dev.index or 0) >= torch.cuda.device_count():
            sys.exit(f"error: --device {name}: there are {torch.cuda.device_count()} CUDA "
                     f"device(s) here")
        dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
    elif dev.type != "cpu":
        sys.exit(f"error: --device {name}: only cuda:N and cpu are supported")
    return dev


class Clock:
    """sync(), peak-memory bookkeeping and a time budget for the rows."""

    def __init__(self, dev, budget):
        self.dev, self.cuda, self.start, self.budget = dev, dev.type == "cuda", time.time(), budget

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def reset_peak(self):
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.dev)

    def peak_mib(self):
        return torch.cuda.max_memory_allocated(self.dev) / 2 ** 20 if self.cuda else None

    def over(self):
        return time.time() - self.start > self.budget

    def timed(self, fn, repeats):
        """Median seconds of fn() over `repeats` runs after one warm-up run."""
        fn()
        times = []
        for _ in range(repeats):
            self.sync()
            t = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def run_tests(dev, extra, timeout):
    """pytest tests/test_cuda.py on `dev`; (return code, summary line)."""
    env = dict(os.environ, BIONAS_TEST_DEVICE=str(dev))
    if dev.type == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", os.path.join("tests", "test_cuda.py")]
    cmd += extra
    print("$ BIONAS_TEST_DEVICE=%s %s" % (dev, " ".join(cmd[1:])), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"the CUDA suite did not finish in {timeout:.0f} s")
        return 1, f"timed out after {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    for line in lines:                                 # failures' one-line summaries
        if line.startswith(("FAILED", "ERROR")):
            print(line)
    summary = lines[-1] if lines else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    if proc.returncode not in (0, 5) and not any(x.startswith(("FAILED", "ERROR")) for x in lines):
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
    print(summary, flush=True)
    return proc.returncode, summary


def rule_rows(dev, clock, sizes, repeats):
    """(configuration, {rule: seconds}) for the conv layers, rules timed round-robin."""
    c_in, c_out, hw = sizes["conv"]
    batch = sizes["search"]["batches"][0]
    layers = {"conv 3x3 %d->%d" % (c_in, c_out): lambda r: rules.RuleConv2d(
                  c_in, c_out, 3, padding=1, bias=False, rule=r),
              "depthwise 3x3, %d ch" % c_in: lambda r: rules.RuleConv2d(
                  c_in, c_in, 3, padding=1, groups=c_in, bias=False, rule=r)}
    out = []
    for name, make in layers.items():
        torch.manual_seed(0)
        mods = {r: make(r).to(dev, memory_format=torch.channels_last) for r in rules.RULES}
        x = torch.randn(batch, c_in, hw, hw, device=dev).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)
        g = torch.randn_like(mods["bp"](x))
        times = {r: [] for r in rules.RULES}
        for i in range(repeats + 3):
            for r in (rules.RULES[i % len(rules.RULES):] + rules.RULES[:i % len(rules.RULES)]):
                t = step_time(mods[r], x, g, clock.sync)
                if i >= 3:                                     # warm-up (kernel choice)
                    times[r].append(t)
        out.append((f"{name}, batch {batch}, {hw}x{hw}, channels_last",
                    {r: statistics.median(v) for r, v in times.items()}))
    return out


def search_step(model, arch, opt, xt, yt, xv, yv, lr):
    """darts_bench.worker's step: Architect.step, then an SGD step of the weights (clip 5)."""
    arch.step(xt, yt, xv, yv, lr, opt)
    opt.zero_grad()
    model.loss(xt, yt).backward()
    torch.nn.utils.clip_grad_norm_(model.weights(), 5.0)
    opt.step()


def supernet_row(dev, clock, s, space, batch, partial, order, repeats):
    """(seconds per step, peak MiB) of a search step, or ("OOM", None)."""
    torch.manual_seed(0)
    oom = False
    try:
        args = SimpleNamespace(dataset="cifar10", init_channels=s["C"], layers=s["layers"],
                               nodes=s["nodes"], base_rule="bp", crb=False,
                               partial_channels=partial)
        model = search.build_supernet(args, SPACES[space]()).to(
            dev, memory_format=torch.channels_last)
        xt, xv = (torch.rand(batch, 3, s["size"], s["size"], device=dev).contiguous(
            memory_format=torch.channels_last) for _ in range(2))
        yt, yv = (torch.randint(0, 10, (batch,), device=dev) for _ in range(2))
        opt = torch.optim.SGD(model.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
        arch = darts.Architect(model, unrolled=order == "second")
        clock.reset_peak()
        t = clock.timed(lambda: search_step(model, arch, opt, xt, yt, xv, yv, 0.025), repeats)
        result = (t, clock.peak_mib())
    except torch.OutOfMemoryError:
        oom = True
    model = arch = opt = xt = xv = yt = yv = None               # noqa: F841 (free before the next)
    clock.free()
    return ("OOM", None) if oom else result


def retrain_model(dev, r, genotype):
    torch.manual_seed(0)
    args = SimpleNamespace(dataset="cifar10", model="darts", base_rule="bp", force_rule=None,
                           random_rules=None, init_channels=r["C"], layers=r["layers"],
                           auxiliary=True)
    model = retrain.build_eval_model(args, genotype).to(dev, memory_format=torch.channels_last)
    model.drop_path_prob = 0.2
    return model


def retrain_row(dev, clock, r, genotype, repeats):
    """(seconds per step, peak MiB, model) of retrain.py's step at batch r["batch"]."""
    model = retrain_model(dev, r, genotype)
    x = torch.rand(r["batch"], 3, r["size"], r["size"], device=dev).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (r["batch"],), device=dev)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)

    def step():
        model.train()
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(model.logits_aux, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    clock.reset_peak()
    t = clock.timed(step, repeats)
    return t, clock.peak_mib(), model, x, y


def fmt_mem(m):
    return "-" if m is None else f"{m:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a CPU check of the script)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row (5; tiny 1)")
    ap.add_argument("--orders", default="first", help="supernet orders: first,second")
    ap.add_argument("--genotype", default=None, help="a BioNAS genotype JSON for the retraining "
                    "and attack rows (default: darts.random_rules(DARTS_V2, 0))")
    ap.add_argument("--budget", type=float, default=270.0,
                    help="seconds after which the remaining rows are skipped")
    ap.add_argument("--no-tests", action="store_true", help="skip the CUDA suite")
    ap.add_argument("--no-runs", action="store_true", help="skip the run checks")
    ap.add_argument("--data", help="Fashion-MNIST directory of the run checks (default: "
                    "generated files)")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. \"-k rule\"")
    args = ap.parse_args()
    dev = device_or_exit(args.device)
    clock = Clock(dev, args.budget)
    sizes = SIZES[args.tiny]
    repeats = args.repeats or (1 if args.tiny else 5)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)      # cuDNN settings left as train.py leaves them
    else:
        name = f"CPU, {torch.get_num_threads()} thread(s)"
    code, summary = (0, "not run (--no-tests)") if args.no_tests else \
        run_tests(dev, args.pytest_args.split(), timeout=max(args.budget - 60, 60))
    t_runs = time.time()
    failed_runs = 0 if args.no_runs else run_checks(dev, args.data)
    clock.start += time.time() - t_runs          # the run checks do not use the table's budget
    bionas = darts.load_genotype(args.genotype) if args.genotype else \
        darts.random_rules(DARTS_V2, 0)
    bionas_name = os.path.basename(args.genotype) if args.genotype else \
        "DARTS_V2, random rules (random_rules seed 0)"
    rows = []                                    # (measurement, configuration, time, rel, mem)

    def skip(what, conf):
        rows.append((what, conf, "skipped", "(time budget)", "-"))

    # 1. rules
    if clock.over():
        skip("rule fwd+bwd", "conv layers")
    else:
        for conf, t in rule_rows(dev, clock, sizes, max(repeats * 4, 10)):
            for r in rules.RULES:
                rel = "= bp" if r == "bp" else f"{t[r] / t['bp']:.2f}x bp"
                rows.append((f"rule fwd+bwd: {r}", conf, f"{t[r] * 1e3:.2f} ms", rel, "-"))
    # 2. supernet
    s = sizes["search"]
    for order in args.orders.split(","):
        for space in ("8-op", "22-cand"):
            for batch in s["batches"]:
                for partial in (1, s["partial"]):
                    conf = (f"{space}, batch {batch}, C {s['C']}, {s['layers']} cells, "
                            f"{s['nodes']} node{'s' * (s['nodes'] > 1)}, {s['size']}x{s['size']}"
                            + (f", partial channels {partial}" if partial > 1 else ""))
                    what = f"supernet step ({order} order)"
                    if clock.over():
                        skip(what, conf)
                        continue
                    t, mem = supernet_row(dev, clock, s, space, batch, partial, order, repeats)
                    rows.append((what, conf, t if t == "OOM" else f"{t:.3f} s",
                                 "" if t == "OOM" else f"{batch / t:.3g} train images/s",
                                 fmt_mem(mem)))
    # 3. retraining, 4. PGD
    r = sizes["retrain"]
    for gname, genotype in (("DARTS_V2", DARTS_V2), (bionas_name, bionas)):
        conf = (f"{gname}: NetworkEval C {r['C']}, {r['layers']} layers, aux, drop-path 0.2, "
                f"batch {r['batch']}, {r['size']}x{r['size']}")
        if clock.over():
            skip("retraining step", conf)
            continue
        try:
            t, mem, model, x, y = retrain_row(dev, clock, r, genotype, repeats)
        except torch.OutOfMemoryError:
            t = None
        if t is None:
            rows.append(("retraining step", conf, "OOM", "", "-"))
            clock.free()
            continue
        rows.append(("retraining step", conf, f"{t:.3f} s", f"{r['batch'] / t:.3g} images/s",
                     fmt_mem(mem)))
        grads = ("exact",) if gname == "DARTS_V2" else ("exact", "feedback")
        for grad in grads:
            steps = sizes["pgd_steps"]
            conf = f"{gname}, {grad} gradients, batch {r['batch']}"
            if clock.over():
                skip(f"PGD-{steps}", conf)
                continue
            clock.reset_peak()
            t = clock.timed(lambda: attacks.pgd(model, x, y, 8 / 255, 2 / 255, steps, grad=grad),
                            max(repeats // 2, 1))
            rows.append((f"PGD-{steps} attack", conf, f"{t:.3f} s / batch",
                         f"{r['batch'] / t:.3g} images/s", fmt_mem(clock.peak_mib())))
        model = x = y = None
        clock.free()

    print(f"\n{name}, torch {torch.__version__}, {'tiny sizes' if args.tiny else 'paper sizes'}, "
          f"median of {repeats} timed runs after a warm-up; CUDA suite: {summary}; "
          f"run checks: {'not run' if args.no_runs else f'{failed_runs} failed'}; "
          f"{time.time() - clock.start:.0f} s\n")
    print("| measurement | configuration | time | ratio / throughput | peak allocated (MiB) |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return code if code not in (0, 5) else 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
