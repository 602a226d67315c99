"""The experiments of Maile's thesis Ch. 6 (NORTH*) and Ch. 7 (DYNO), at CPU scale.

* generated     Sec. 6.3.2, Fig. 28: generated data (5000 samples, 64 features, n_f independent),
                MLPs with 1 and 2 hidden layers from width 4 (max 512), every strategy's final
                widths and test accuracy.
* pareto        Sec. 6.3.3, Fig. 29: MLPs (784 -> 2 hidden from 64, max 784 -> 10) on
                Fashion-MNIST (the thesis: MNIST), accuracy against final size for
                every strategy, optionally the Linear / Batched presets, and the static widths
                64 / 256 / 784.
* transfer      Sec. 7.3, Fig. 35 at CPU scale: an MLP and a small CNN pretrained on
                Fashion-MNIST classes 0-4, then 1000 iterations x 64 on classes 5-9 (near) and on
                classes 5-9 with permuted pixels (far), DYNO against static fine-tuning.
* trigger-cost  Table 9: seconds per mini-batch of each strategy (step + trigger + growth, at
                the thesis's frequency: every step) beside the static networks, in one process,
                for the MNIST MLP and for a quarter-width CNN (the analogue of VGG-11).

run(name, data, out_dir, seeds, quick, log, sizes) writes NAME.md, NAME.csv (one row per run and
seed) and NAME.png into out_dir and returns the rows. data: (train_x, train_y, test_x, test_y),
images as uint8 (any shape) or flattened float [0, 1]; labels int64 ("generated" needs none).
sizes: overrides of SIZES[quick], the CPU budget between quick and full (each knob below).

Resume: run() is interrupted and called again with the same arguments continues. Each finished
single run (one strategy, n_f, depth, model, method... and seed) keeps its row(s) in
out_dir/NAME.runs/KEY.json and is not trained again; a train_growing run (generated, pareto)
also keeps its last epoch in KEY.ckpt.pt (removed when it finishes) and continues from there,
bit-identically; transfer keeps each pretrained source model (pretrain-MODEL-sSEED.pt).
NAME.runs/config.json holds what shapes a single run (the sizes below marked *, the data's
fingerprint): a call with others is refused. Seeds, strategies, n_f values, depths, presets and
models only name runs (their keys), so a later call may add some and reuses every finished one.

Devices: every network and data tensor is on run()'s `device`. With `share`, a process trains only
the single runs share(group) assigns it (a group: one run, or for transfer a model and seed, which
share a pretrained source) and writes no report: train.py's --gpus starts one such process per
device, then calls run() once more, which finds every run finished and writes the report.
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from dyno import DYNO, flops
from neurogenesis import DENSE_ONLY, SCHEDULES, STRATEGIES, GrowableCNN, GrowableMLP, Neurogenesis
from harness.plots import _plt, _save
from harness.run_dir import Runs, _atomic, md_table, write_table
from experiments.seeds import fmt, mean_std

EXPERIMENTS = ("generated", "pareto", "transfer", "trigger-cost")
SIZES = {  # quick (True) and full (False); run(..., sizes={...}) overrides any of them
    False: dict(n_seeds=None,            # how many of run()'s seeds are used (None: all; the thesis: 5)
                strategies=STRATEGIES,   # the strategies compared (every experiment but transfer)
                n_fs=(2, 4, 8, 16, 32),  # generated: the n_f list (independent features of 64)
                hidden=(1, 2),           # generated: hidden-layer counts
                static_width=64,         # generated: also a static MLP this wide per layer (0: none)
                samples=5000,            # * generated: samples (10% test), as the thesis
                epochs_per_layer=None,   # * generated: epochs per hidden layer (None: 20 + 4 n_f, the code)
                images=None,             # * pareto: training images (None: all 60000; test: all)
                epochs=20,               # * pareto: epochs (Table 8)
                presets=True,            # pareto: also the Linear / Batched presets of every strategy
                source_images=None,      # * transfer: pretraining images of classes 0-4 (None: all)
                pretrain_epochs=2,       # * transfer: pretraining epochs
                iterations=1000,         # * transfer: fine-tuning iterations of 64 (Sec. 7.3)
                models=("mlp", "cnn"),   # transfer: source models (TRANSFER_MODELS)
                cost_steps=None),        # * trigger-cost: steps per strategy (None: COST_MODELS' steps)
    True: dict(n_seeds=1, strategies=STRATEGIES, n_fs=(2, 8, 32), hidden=(1, 2), static_width=64, samples=5000,
               epochs_per_layer=4,
               images=12000, epochs=2, presets=False, source_images=10000, pretrain_epochs=1, iterations=300,
               models=("mlp", "cnn"), cost_steps=20)}
RUN_SHAPING = {  # the sizes (*) that change a finished single run: config.json, checked on resume
    "generated": ("samples", "epochs_per_layer"), "pareto": ("images", "epochs"),
    "transfer": ("source_images", "pretrain_epochs", "iterations"), "trigger-cost": ("cost_steps", "strategies")}
THESIS_TABLE9 = {"NORTH-Select": 5.97, "NORTH-Random": 5.77, "NORTH-Weight": 10.05, "GradMax": 14.00,
                 "Firefly": 18.52, "NeST": 23.79, "Small Static": 5.49, "Medium Static": 5.49, "Big Static": 5.14}


def _quiet(*_):
    pass


def _sync(device):
    """Wait for the CUDA `device`'s queued work (before reading a clock); nothing on the CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class SharedRuns(Runs):
    """Runs whose single runs are trained only if share(group) says so (group: the key unless
    given); the others are skipped with no rows."""

    def __init__(self, *args, share=None, **kw):
        super().__init__(*args, workers=getattr(share, "count", 1), **kw)
        self.share = share

    def __call__(self, key, work, describe, group=None):
        if self.share is not None and not self.share(group or key):
            return []
        return super().__call__(key, work, describe)


def generated_data(n_f, samples=5000, features=64, noise=0.1, test_share=0.1, seed=1337):
    """Sec. 6.3.2: n_f N(0, 1) features, the other 64 - n_f random linear combinations of them
    (N(0, 1) coefficients, the authors' code); label 1[(1 - noise) sum(features) + noise N(0, 1)
    > its mean]; the last 10% is the test split. Data seed 1337 as the code. float32 tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, features, generator=g, dtype=torch.float64)
    if n_f < features:
        x[:, n_f:] = x[:, :n_f] @ torch.randn(n_f, features - n_f, generator=g, dtype=torch.float64)
    r = (1 - noise) * x.sum(1) + noise * torch.randn(samples, generator=g, dtype=torch.float64)
    y, x = (r > r.mean()).long(), x.float()
    split = samples - int(round(test_share * samples))
    return x[:split], y[:split], x[split:], y[split:]


def as_flat(data):
    """(train_x, train_y, test_x, test_y) with images flattened to float [0, 1]."""
    xtr, ytr, xte, yte = data
    fix = (lambda x: x.reshape(len(x), -1).float().div(255)) if xtr.dtype == torch.uint8 else \
        (lambda x: x.reshape(len(x), -1).float())
    return fix(xtr), ytr.long(), fix(xte), yte.long()


@torch.no_grad()
def accuracy(model, x, y, batch=2048):
    model.eval()
    right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return right / len(x)


def _batches(n, batch_size, seed, epoch):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def train_growing(model, strategy, data, epochs=20, batch_size=512, lr=3e-4, schedule=None,
                  max_widths=784, final_widths=None, buffer_size=None, candidates=None, seed=1,
                  state=None, on_epoch=None, log=_quiet, **kw):
    """Train a GrowableNet with Algorithm 4 (strategy from STRATEGIES; None = static) on data =
    (train_x, train_y, test_x, test_y) for `epochs` epochs (Adam lr, Table 8 defaults for MNIST);
    kw go to Neurogenesis (gamma_a, every, metric, ...). The buffer starts with the first
    training inputs. Returns a dict: per-epoch rows (loss, test accuracy, widths, seconds),
    the widths after every step, the growth events and the final size.
    Resume: on_epoch(epoch, state) is called after each epoch with a picklable state; pass it
    back as `state` (with a freshly built model of the initial widths) to continue from there,
    bit-identically (the batch order depends only on (seed, epoch))."""
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr)
    total = epochs * math.ceil(len(xtr) / batch_size)
    ng = Neurogenesis(model, opt, strategy or STRATEGIES[2], max_widths,       # static: the strategy is unused
                      "static" if strategy is None else schedule,
                      buffer_size=buffer_size, candidates=candidates, final_widths=final_widths,
                      total_steps=total, seed=seed, **kw)
    result, first = dict(epochs=[]), 0
    if state is not None:
        ng.load_state_dict(state["neurogenesis"])
        result, first = state["result"], state["epoch"]
    else:
        ng.start(xtr[:ng.buffer.size if ng.buffer is not None else batch_size])
    for epoch in range(first, epochs):
        t0, losses = time.perf_counter(), []
        for idx in _batches(len(xtr), batch_size, seed, epoch):
            losses.append(ng.step(xtr[idx], ytr[idx]))
        result["epochs"].append(dict(epoch=epoch + 1, loss=float(np.mean(losses)), widths=model.widths,
                                     test_accuracy=accuracy(model, xte, yte), seconds=time.perf_counter() - t0))
        log(f"  epoch {epoch + 1}/{epochs}: loss {result['epochs'][-1]['loss']:.4f}, test "
            f"{100 * result['epochs'][-1]['test_accuracy']:.2f}%, widths {model.widths}")
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(epoch=epoch + 1, neurogenesis=ng.state_dict(), result=result))
    result.update(widths=model.widths, neurons=sum(model.widths), params=sum(p.numel() for p in model.parameters()),
                  test_accuracy=accuracy(model, xte, yte), history=ng.history, seconds=dict(ng.seconds),
                  train_seconds=sum(e["seconds"] for e in result["epochs"]))
    return result


def transfer(model, data, method="dyno", iterations=1000, batch_size=64, lr=3e-4, weight_decay=1e-3,
             every=50, seed=1, x_source=None):
    """Ch. 7: fine-tune a pretrained GrowableNet (head already made for the target classes) on data
    for `iterations` mini-batches with DYNO (method "dyno") or statically ("static"); Adam 3e-4,
    weight decay 1e-3, grow-and-prune every 50 (Sec. 7.3). phi* starts at 1 (the authors' runs)
    or, with x_source, at the metric on the source inputs. Returns accuracy, FLOPs, widths, the
    per-layer totals grown / pruned and FLOPs against iterations. (Minutes on a CPU: run() caches
    it whole, with no checkpoint within; DYNO.state_dict() exists for callers that want one.)"""
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr, weight_decay=weight_decay)
    d = DYNO(model, opt, every=every, seed=seed) if method == "dyno" else None
    widths, f0, t0, it = list(model.widths), flops(model), time.perf_counter(), 0
    if d is not None:
        d.start(xtr[:d.buffer.size], x_source)
    for epoch in range(math.ceil(iterations * batch_size / len(xtr)) + 1):
        for idx in _batches(len(xtr), batch_size, seed, epoch)[:iterations - it]:
            d.step(xtr[idx], ytr[idx]) if d is not None else _static_step(model, opt, xtr[idx], ytr[idx])
            it += 1
    ev = d.history["evaluations"] if d is not None else []
    return dict(method=method, test_accuracy=accuracy(model, xte, yte), flops=flops(model), flops_before=f0,
                widths=model.widths, widths_before=widths, seconds=time.perf_counter() - t0,
                grown=[sum(e["grown"][l] for e in ev) for l in range(len(widths))],
                pruned=[sum(e["pruned"][l] for e in ev) for l in range(len(widths))],
                flops_curve=(d.history["flops"] if d is not None else [(0, f0)]) + [(iterations, flops(model))],
                widths_curve=[[0] + widths] + [[e["step"]] + e["widths"] for e in ev] + [[iterations] + model.widths])


def _static_step(model, opt, x, y):
    model.train()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


COST_MODELS = {  # initial, medium (standard) and maximum widths, batch, buffer (Table 8 / Sec. 6.3.4 at CPU scale)
    "mlp": dict(widths=[64, 64], medium=[256, 256], max=[784, 784], batch=512, buffer=1568, steps=118),
    "cnn": dict(widths=[8, 16, 32], medium=[32, 64, 128], max=[64, 128, 256], batch=128, buffer=128, steps=60)}


def trigger_cost(data, model="mlp", strategies=STRATEGIES, steps=None, chunk=10, seed=1, log=_quiet, device=None):
    """Table 9 at CPU scale, side by side in one process: mini-batches of every strategy (its
    trigger and growth at every step, as Algorithm 4) and of the Small / Medium / Big static
    networks, in `chunk`-step turns so that all share the machine's state. "mlp": the MNIST MLP
    of Table 8 (784 -> 2 x 64, max 784, batch 512, buffer 1568, 1000 candidates; 118 steps = the
    first epoch). "cnn": a quarter-width CNN (conv 8-16-32 on 28x28, max 2x the 32-64-128
    'standard', batch and buffer 128, 100 candidates, 60 steps), the analogue of Table 9's VGG-11;
    strategies for dense layers only are skipped. Rows: seconds per mini-batch and its ratio to
    Small Static, split into step / trigger / initialization, and the ratio without the growth work.
    Networks on `device` (the data's); on a GPU the clock is read after the device finishes."""
    cfg, (xtr, ytr, _, _) = COST_MODELS[model], data
    steps, n_out = steps or cfg["steps"], int(ytr.max()) + 1
    names = ["Small Static"] + [s for s in strategies if model == "mlp" or s not in DENSE_ONLY] + ["Medium Static",
                                                                                                   "Big Static"]
    runs = {}
    for name in names:
        torch.manual_seed(seed)
        w = {"Medium Static": cfg["medium"], "Big Static": cfg["max"]}.get(name, cfg["widths"])
        net = GrowableMLP(xtr.shape[1], w, n_out) if model == "mlp" else GrowableCNN((1, 28, 28), w, n_out)
        net = net.to(device)
        ng = Neurogenesis(net, torch.optim.Adam(net.parameters(), 3e-4), name if name in STRATEGIES else STRATEGIES[2],
                          cfg["max"], None if name in STRATEGIES else "static", buffer_size=cfg["buffer"], seed=seed)
        ng.start(xtr[:cfg["buffer"]])
        runs[name] = [ng, 0.0]
    batches = _batches(len(xtr), cfg["batch"], seed, 0)
    for s0 in range(0, steps, chunk):
        for name, run in runs.items():
            _sync(device)
            t0 = time.perf_counter()
            for idx in batches[s0 % len(batches):][:min(chunk, steps - s0)]:
                run[0].step(xtr[idx], ytr[idx])
            _sync(device)
            run[1] += time.perf_counter() - t0
        log(f"  trigger cost ({model}): {min(s0 + chunk, steps)}/{steps} steps")
    base, rows = runs["Small Static"][1] / steps, []
    for name, (ng, sec) in runs.items():
        thesis, per = THESIS_TABLE9.get(name), {k: v / steps for k, v in ng.seconds.items()}
        rows.append(dict(model=model, strategy=name, steps=steps, seconds_per_batch=round(sec / steps, 4),
                         ratio=round(sec / steps / base, 2), step_s=round(per["step"], 4),
                         trigger_s=round(per["trigger"], 4), init_s=round(per["init"], 4),
                         ratio_without_growth=round((sec / steps - per["init"]) / base, 2), widths=ng.model.widths,
                         thesis_seconds=thesis,
                         thesis_ratio=None if thesis is None else round(thesis / THESIS_TABLE9["Small Static"], 2)))
    return rows


# ----------------------------------------------------------------------------------------
# The experiments: each a list of single runs through Runs
# ----------------------------------------------------------------------------------------

def experiment_generated(sz, seeds, runs, device=None):
    """Sec. 6.3.2: every strategy on every n_f and depth from width 4, and a static MLP of
    sz["static_width"] per layer; epochs (20 + 4 n_f) x hidden layers (the authors' code's
    'convergence'), or sz["epochs_per_layer"] x hidden layers."""
    rows, static = [], [f"Static {sz['static_width']}"] if sz["static_width"] else []
    for n_f in sz["n_fs"]:
        data = tuple(t.to(device) for t in generated_data(n_f, sz["samples"]))
        for depth in sz["hidden"]:
            ep = (sz["epochs_per_layer"] or 20 + 4 * n_f) * depth
            for strategy in [*sz["strategies"], *static]:
                for seed in seeds:
                    def work(state, checkpoint):
                        torch.manual_seed(seed)
                        fixed = strategy.startswith("Static")
                        width = sz["static_width"] if fixed else 4
                        model = GrowableMLP(64, [width] * depth, 2, max_widths=max(512, width)).to(device)
                        res = train_growing(model, None if fixed else strategy, data, epochs=ep, batch_size=128,
                                            max_widths=max(512, width), buffer_size=1024, seed=seed, state=state,
                                            on_epoch=lambda e, s: checkpoint(s))
                        return [dict(n_f=n_f, hidden_layers=depth, strategy=strategy, seed=seed, epochs=ep,
                                     widths=res["widths"], test_accuracy=round(100 * res["test_accuracy"], 2),
                                     train_seconds=round(res["train_seconds"], 1))]
                    rows += runs(f"nf{n_f}-h{depth}-{strategy.replace(' ', '')}-s{seed}", work, lambda r: (
                        f"n_f {n_f}, {depth} hidden, {strategy}, seed {seed}: widths {r[0]['widths']}, "
                        f"test {r[0]['test_accuracy']}%"))
    return rows


def experiment_pareto(data, sz, seeds, runs, log=_quiet, device=None):
    """Sec. 6.3.3: MLP 784 -> [64, 64] -> 10 (max 784; Adam 3e-4, batch 512, sz["epochs"]
    epochs, buffer 1568) on sz["images"] training images; dynamic strategies, the Linear and
    Batched presets to 256 with every initialization (sz["presets"]), and Small / Medium / Big
    static (64, 256, 784)."""
    xtr, ytr, xte, yte = as_flat(data)
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr[:sz["images"]], ytr[:sz["images"]], xte, yte))
    confs = [(s, None) for s in sz["strategies"]]
    confs += [(s, p) for p in (SCHEDULES if sz["presets"] else ()) for s in sz["strategies"]]
    confs += [(None, w) for w in (64, 256, 784)]
    rows = []
    for strategy, extra in confs:
        name = strategy if extra is None else (f"{strategy} ({extra})" if strategy else
                                               {64: "Small Static", 256: "Medium Static", 784: "Big Static"}[extra])
        for seed in seeds:
            def work(state, checkpoint):
                torch.manual_seed(seed)
                start = [extra] * 2 if strategy is None else [64, 64]
                model = GrowableMLP(xtr.shape[1], start, int(ytr.max()) + 1, max_widths=784).to(device)
                res = train_growing(model, strategy, (xtr, ytr, xte, yte), epochs=sz["epochs"],
                                    schedule=extra if strategy else None,
                                    final_widths=[256, 256] if extra in SCHEDULES else None, seed=seed, state=state,
                                    on_epoch=lambda e, s: checkpoint(s), log=log)
                return [dict(strategy=name, seed=seed, epochs=sz["epochs"], widths=res["widths"],
                             neurons=res["neurons"], params=res["params"],
                             test_accuracy=round(100 * res["test_accuracy"], 2),
                             train_seconds=round(res["train_seconds"], 1))]
            rows += runs(f"{name}-s{seed}", work, lambda r: (
                f"{name}, seed {seed}: widths {r[0]['widths']}, test {r[0]['test_accuracy']}%, "
                f"{r[0]['train_seconds']}s"))
    return rows


TRANSFER_MODELS = {  # CPU-scale stand-ins for VGG-11: an MLP (no BatchNorm) and a small CNN with BatchNorm
    "mlp": lambda n_out: GrowableMLP(784, [512, 256], n_out),
    "cnn": lambda n_out: GrowableCNN((1, 28, 28), [16, 32, 64], n_out, dense_widths=[256])}


def pretrain(model, data, seed=1, epochs=2, batch_size=64, lr=1e-3):
    """Ch. 7's source model at CPU scale: `model` trained on the source classes (Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr)
    for epoch in range(epochs):
        for idx in _batches(len(data[0]), batch_size, seed, epoch):
            _static_step(model, opt, data[0][idx], data[1][idx])
    return model


def experiment_transfer(data, sz, seeds, runs, source_phi=False, log=_quiet, device=None):
    """Ch. 7 at CPU scale: each model pretrained on sz["source_images"] images of classes 0-4
    (sz["pretrain_epochs"], Adam 1e-3, batch 64), its head reinitialized (as for Galaxy10), then
    transferred for sz["iterations"] iterations x 64 to classes 5-9 (near) and to classes 5-9
    with a fixed pixel permutation (far), with DYNO and statically. phi* = 1 (the authors' runs)
    unless source_phi. (A run takes minutes: cached whole, no checkpoint within it.)"""
    xtr, ytr, xte, yte = as_flat(data)

    def part(lo, perm=None):                     # cut on the CPU, then moved to the device
        a, b = (ytr >= lo) & (ytr < lo + 5), (yte >= lo) & (yte < lo + 5)
        xa, xb = (xtr[a], xte[b]) if perm is None else (xtr[a][:, perm], xte[b][:, perm])
        return tuple(t.to(device) for t in (xa, ytr[a] - lo, xb, yte[b] - lo))
    source = part(0)
    source = (source[0][:sz["source_images"]], source[1][:sz["source_images"]], *source[2:])
    rows = []
    for seed in seeds:
        perm = torch.randperm(xtr.shape[1], generator=torch.Generator().manual_seed(seed))
        targets = (("near: classes 5-9", part(5)), ("far: classes 5-9, permuted pixels", part(5, perm)))
        for name in sz["models"]:
            def make():
                torch.manual_seed(seed)
                src = pretrain(TRANSFER_MODELS[name](5).to(device), source, seed, epochs=sz["pretrain_epochs"])
                log(f"  {name} pretrained on {len(source[0])} images of classes 0-4: test "
                    f"{100 * accuracy(src, source[2], source[3]):.2f}%")
                return src.state_dict()
            for target, tdata in targets:
                for method in ("dyno", "static"):
                    def work(state, checkpoint):
                        model = TRANSFER_MODELS[name](5).to(device)
                        model.load_state_dict(runs.cached(f"pretrain-{name}-s{seed}", make))
                        torch.manual_seed(seed)
                        torch.nn.init.xavier_uniform_(model.head.weight)
                        torch.nn.init.zeros_(model.head.bias)
                        res = transfer(model, tdata, method, sz["iterations"], seed=seed,
                                       x_source=source[0][:1024] if source_phi else None)
                        return [dict(model=name, target=target, method=method, seed=seed,
                                     iterations=sz["iterations"], test_accuracy=round(100 * res["test_accuracy"], 2),
                                     mflops=round(res["flops"] / 1e6, 3),
                                     mflops_before=round(res["flops_before"] / 1e6, 3),
                                     widths=res["widths"], widths_before=res["widths_before"], grown=res["grown"],
                                     pruned=res["pruned"], seconds=round(res["seconds"], 1),
                                     flops_curve=[(s_, round(f / 1e6, 3)) for s_, f in res["flops_curve"]])]
                    rows += runs(f"{name}-{target.split(':')[0]}-{method}-s{seed}", work, lambda r: (
                        f"{name}, {target}, {method}, seed {seed}: test {r[0]['test_accuracy']}%, "
                        f"{r[0]['mflops']} MFLOPs, widths {r[0]['widths']}"), group=f"{name}-s{seed}")
    return rows


# ----------------------------------------------------------------------------------------
# Reports: NAME.md, NAME.csv (harness/run_dir.py's write_table), NAME.png
# ----------------------------------------------------------------------------------------

def _plot_generated(rows, path):
    plt = _plt()
    panels = [(1, 0), (2, 0), (2, 1)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (depth, layer) in zip(axes, panels):
        for s in dict.fromkeys(r["strategy"] for r in rows):
            pts = {}
            for r in rows:
                if r["strategy"] == s and r["hidden_layers"] == depth:
                    pts.setdefault(r["n_f"], []).append(r["widths"][layer])
            if pts:
                xs = sorted(pts)
                ms = [mean_std(pts[x]) for x in xs]
                ax.errorbar(xs, [m for m, _ in ms], [sd for _, sd in ms], marker="o", ms=3,
                            capsize=2, label=s)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("independent features n_f")
        ax.set_ylabel(f"final width of hidden layer {layer + 1}")
        ax.set_title(f"{depth} hidden layer{'s' if depth > 1 else ''}, layer {layer + 1}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Sec. 6.3.2 (Fig. 28): hidden neurons upon convergence against n_f", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _plot_pareto(rows, path, title):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for name in dict.fromkeys(r["strategy"] for r in rows):
        rs = [r for r in rows if r["strategy"] == name]
        (n, ns), (a, as_), (t, ts) = (mean_std([r[k] for r in rs])
                                      for k in ("neurons", "test_accuracy", "train_seconds"))
        marker = "s" if "Static" in name else ("^" if "(" in name else "o")
        xe = [[min(ns, n - min(r["neurons"] for r in rs))], [ns]]    # log axis: not below the smallest run
        for ax, y, ye in ((axes[0], a, as_), (axes[1], t, ts)):
            ax.errorbar(n, y, ye, xe, marker=marker, ms=5, capsize=2, label=name, ls="none")
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].set_ylabel("training seconds")
    for ax in axes:
        ax.set_xlabel("final hidden neurons")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, ncol=2, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _plot_transfer(rows, path, title):
    plt = _plt()
    panels = list(dict.fromkeys((r["model"], r["target"]) for r in rows))
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 7), squeeze=False)
    for j, (model, tgt) in enumerate(panels):
        for method, color in (("dyno", "C0"), ("static", "C1")):
            rs = [r for r in rows if (r["model"], r["target"], r["method"]) == (model, tgt, method)]
            axes[0][j].scatter([r["mflops"] for r in rs], [r["test_accuracy"] for r in rs], c=color, label=method)
            for r in rs:
                axes[1][j].plot(*zip(*r["flops_curve"]), color=color, alpha=0.7, label=method if r is rs[0] else None)
        axes[0][j].set_title(f"{model}, {tgt}", fontsize=8)
        axes[0][j].set(xlabel="inference MFLOPs", ylabel="test accuracy (%)")
        axes[1][j].set(xlabel="iteration", ylabel="inference MFLOPs")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_growth(widths_curve, path, title="", accuracy=None):
    """One run's figure: widths per hidden layer against steps (rows [step, w_0, w_1, ...], e.g.
    train_growing's result["history"]["widths"] or transfer's "widths_curve") and, if given, test
    accuracy (%) against epochs [(epoch, accuracy)]."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if accuracy else 1, figsize=(10 if accuracy else 5.5, 3.6), squeeze=False)
    steps = [r[0] for r in widths_curve]
    for l in range(len(widths_curve[0]) - 1):
        axes[0][0].step(steps, [r[l + 1] for r in widths_curve], where="post", label=f"hidden layer {l + 1}")
    axes[0][0].set(xlabel="step", ylabel="neurons")
    if accuracy:
        axes[0][1].plot(*zip(*accuracy), marker="o", ms=3)
        axes[0][1].set(xlabel="epoch", ylabel="test accuracy (%)")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _plot_cost(rows, path, title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 4))
    xs = np.arange(len(rows))
    ax.bar(xs - 0.27, [r["ratio"] for r in rows], 0.27, label="measured (CPU)")
    ax.bar(xs, [r["ratio_without_growth"] for r in rows], 0.27, label="measured, without initializations")
    ax.bar(xs + 0.27, [r["thesis_ratio"] or np.nan for r in rows], 0.27, label="thesis Table 9 (GPU)")
    ax.set_xticks(xs, [f"{r['model']}: {r['strategy']}" for r in rows], rotation=35, ha="right", fontsize=7)
    ax.set(yscale="log", ylabel="seconds per mini-batch / Small Static")
    ax.axhline(1, color="k", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def _summary(rows, keys, fields):
    """Mean +- sample std of `fields` over seeds, per distinct value of `keys`."""
    out = {}
    for r in rows:
        out.setdefault(tuple(str(r[k]) for k in keys), []).append(r)
    res = []
    for key, rs in out.items():
        row = dict(zip(keys, key), seeds=len(rs))
        for f in fields:
            vals = [r[f] for r in rs]
            if isinstance(vals[0], list):
                row[f] = " / ".join(fmt(v, 0) for v in zip(*vals))
            else:
                row[f] = fmt(vals)
        res.append(row)
    return res


def _report(rows, stem, keys, fields, title):
    """NAME.csv: every run; NAME.md: mean +- std over seeds, then every run."""
    cols = [k for k in rows[0] if k != "flops_curve"]
    write_table(rows, [(k, lambda r, k=k: r[k]) for k in rows[0]], stem, title)
    summary = _summary(rows, keys, fields)

    def write(path):
        with open(path, "w") as f:
            f.write(f"{title}\n\nMean ± std over seeds:\n\n{md_table(list(summary[0]), [[r[c] for c in summary[0]] for r in summary])}\n"
                    f"Every run:\n\n{md_table(cols, [[r[c] for c in cols] for r in rows])}")
    _atomic(stem + ".md", write)


def _fingerprint(data):
    """Shapes, dtypes and sums of the data tensors: which data the cached runs saw."""
    return [[list(t.shape), str(t.dtype), float(t.sum(dtype=torch.float64))] for t in data]


REPORTS = {  # NAME.md's summary keys and fields, and its title
    "generated": (("n_f", "hidden_layers", "strategy"), ("widths", "test_accuracy", "train_seconds"),
                  "Sec. 6.3.2 ({}): final widths and test accuracy (%) on generated data; thesis: all > 99% except 97% "
                  "at n_f = 32, NORTH-Weight <= input rank bound, other NORTH* grow layer 1 to 512"),
    "pareto": (("strategy",), ("widths", "neurons", "params", "test_accuracy", "train_seconds"),
               "Sec. 6.3.3 ({}, Fashion-MNIST): accuracy against final size; thesis (MNIST): NORTH* dominate the "
               "Pareto front, layer 1 ends wider than layer 2, Select/Random match Big Static"),
    "transfer": (("model", "target", "method"), ("test_accuracy", "mflops", "widths", "grown", "pruned", "seconds"),
                 "Ch. 7 ({}): DYNO vs static fine-tuning (MLP, CNN) pretrained on Fashion-MNIST 0-4; thesis: slightly "
                 "lower accuracy, clearly fewer FLOPs, more change for the larger shift")}


def sized(table, quick, sizes):
    """table[quick] with the --sizes overrides; a knob the table does not have raises."""
    unknown = sorted(set(sizes or {}) - set(table[False]))
    if unknown:
        raise ValueError(f"unknown size knob(s) {', '.join(unknown)}; choose from {', '.join(table[False])}")
    return dict(table[bool(quick)], **(sizes or {}))


def run(name, data, out_dir, seeds=(1, 2, 3), quick=False, log=print, sizes=None, device=None, share=None):
    """Run experiment `name` (EXPERIMENTS), write NAME.md (mean +- std over seeds), NAME.csv
    (every run) and NAME.png into out_dir; return the per-run rows. sizes: overrides of
    SIZES[quick]. Interrupted, the same call again continues (module docstring: Resume). device,
    share(group) -> bool: the module docstring's Devices."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown neurogenesis experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if name != "generated" and data is None:
        raise ValueError(f"experiment {name} needs image data (train_x, train_y, test_x, test_y)")
    sz = sized(SIZES, quick, sizes)
    seeds = tuple(seeds)[:sz["n_seeds"]]
    if not seeds:
        raise ValueError("no seeds given; pass at least one (the thesis: seeds 1-5)")
    stem, scale = os.path.join(out_dir, name), "quick" if quick else "full"
    config = dict({k: sz[k] for k in RUN_SHAPING[name]}, experiment=name,
                  data=None if name == "generated" else _fingerprint(data))
    total = {"generated": len(sz["n_fs"]) * len(sz["hidden"]) * (len(sz["strategies"]) + bool(sz["static_width"]))
             * len(seeds),
             "pareto": (len(sz["strategies"]) * (1 + len(SCHEDULES) * bool(sz["presets"])) + 3) * len(seeds),
             "transfer": 4 * len(sz["models"]) * len(seeds), "trigger-cost": len(COST_MODELS)}[name]
    if name == "trigger-cost":
        runs = SharedRuns(stem + ".runs", config, total, log, share=share)
        flat = tuple(t.to(device) for t in as_flat(data))
        rows = [r for model in COST_MODELS for r in runs(
            model, lambda state, checkpoint: trigger_cost(flat, model, sz["strategies"], sz["cost_steps"], log=log,
                                                          device=device),
            lambda rs: f"trigger cost of the {rs[0]['model']}: {len(rs)} rows")]
        if share is not None:
            return rows
        where = "CPU, 1 thread" if torch.device(device or "cpu").type == "cpu" else str(device)
        title = (f"Table 9 ({scale}, {where}): seconds per mini-batch incl. trigger and growth every step, first "
                 f"steps of training, MLP 784-[64,64]-10 (batch 512) and CNN 8-16-32 (batch 128); thesis: VGG-11, V100")
        write_table(rows, [(k, lambda r, k=k: r[k]) for k in rows[0]], stem, title)
        _plot_cost(rows, stem + ".png",
                   f"Table 9 ({scale}, {where.split(',')[0]}, first steps): seconds per mini-batch / Small Static")
        return rows
    keys, fields, title = REPORTS[name]
    title = title.format(scale)
    runs = SharedRuns(stem + ".runs", config, total, log, None if share else
                      lambda rs: _report(rs, stem, keys, fields, title + " (partial)"), share=share)
    if name == "generated":
        rows = experiment_generated(sz, seeds, runs, device)
    elif name == "pareto":
        rows = experiment_pareto(data, sz, seeds, runs, log, device)
    else:
        rows = experiment_transfer(data, sz, seeds, runs, log=log, device=device)
    if share is not None:
        return rows
    if name == "generated":
        _plot_generated(rows, stem + ".png")
    else:
        (_plot_pareto if name == "pareto" else _plot_transfer)(rows, stem + ".png", title.split(";")[0])
    _report(rows, stem, keys, fields, title)
    return rows
