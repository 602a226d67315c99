"""DYNO (Maile's thesis Ch. 7) where a convolution can move: phi per layer before transfer, and a
transfer from a documented rank-deficient source.

Why: Eqs. 38-39 change a layer only when its effective dimension phi (Eq. 37 = Eq. 27 at eps
0.01) leaves [(1 - delta) phi*, (1 + delta) phi*]. With phi* = 1 (the authors' start) a layer of
phi = 1 can neither be pruned nor grow. The thesis saw changes in VGG-11's wide later layers
(ImageNet-pretrained, 256-512 channels); the CPU stand-in CNN (conv 16-32-64, BatchNorm) is full
rank on its source and on both targets (dyno-phi measures it, with the smallest singular
value of H / sqrt(n) against eps), so its convolutions cannot move from phi* = 1 or from phi* =
phi on the source (also 1: DYNO.start(x_target, x_source) does not help).

* dyno-phi     phi and the smallest singular value of H / sqrt(n) of every hidden layer, on source
          (classes 0-4), near (classes 5-9) and far (classes 5-9, permuted pixels) inputs, for the
          stand-in CNN at initialization, after pretraining, and widened (below), and for a wider
          CNN (conv 32-64-128-256 + dense 256) pretrained the same way.
* dyno-moving  the pretrained CNN with its last convolution widened 2x by duplication (Net2Wider
          [Chen et al. 2016]: each channel copied with its BatchNorm, both copies' fan-outs
          halved, so the function is unchanged and the layer has rank 64 of 128 channels, phi
          = 0.5): an over-wide source, rank-deficient by construction. DYNO against static
          fine-tuning on near and far, phi, phi* and the frozen flag logged per layer at every
          evaluation. One source for every seed (the thesis: one ImageNet-pretrained VGG-11),
          seeds vary the head and the batch order.

run(name, data, out_dir, seeds, quick, log, sizes) writes NAME.md, NAME.csv (one row per run and
seed; dyno-moving also NAME-evaluations.csv, one row per evaluation and layer) and returns the rows;
finished single runs are kept in out_dir/NAME.runs/ (harness.run_dir.Runs).
"""
import math
import os
import time

import torch

from dyno import DYNO, flops
from neurogenesis import Buffer, GrowableCNN, activation_metric, as_samples
from experiments.seeds import fmt
from experiments.thesis_neurogenesis import (TRANSFER_MODELS, _batches, _static_step, accuracy, as_flat,
                                             pretrain, sized)
from harness.run_dir import Runs, _atomic, md_table, write_table

EXPERIMENTS = ("dyno-phi", "dyno-moving")
SIZES = {  # full (False) and quick (True); run(..., sizes={...}) overrides any of them
    False: dict(n_seeds=None,          # seeds used (None: all of run()'s; the thesis: 5)
                source_images=None,    # * pretraining images of classes 0-4 (None: all 30,000)
                pretrain_epochs=2,     # * pretraining epochs (Adam 1e-3, batch 64), source seed 1
                iterations=1000,       # * fine-tuning iterations of 64 (Sec. 7.3)
                widen=2,               # * factor of the last convolution's duplication
                buffer=600,            # dyno-phi: inputs per measurement (conv maps give n H W samples)
                wide=1),               # dyno-phi: also the wider CNN 32-64-128-256 (pretrained here: minutes)
    True: dict(n_seeds=1, source_images=10000, pretrain_epochs=1, iterations=300, widen=2, buffer=300, wide=1)}
RUN_SHAPING = ("source_images", "pretrain_epochs", "iterations", "widen")
WIDE = lambda n_out: GrowableCNN((1, 28, 28), [32, 64, 128, 256], n_out, dense_widths=[256])  # noqa: E731


def widen(model, l, factor=2):
    """Net2Wider on hidden layer l of a GrowableNet: every neuron copied factor - 1 times (fan-in,
    bias, BatchNorm weight, bias and running statistics), each copy's fan-out 1/factor of the
    original's; the outputs are unchanged in training and evaluation mode and the layer's
    activations have the original's rank in factor times the neurons."""
    layer, nxt, m = model.layers[l], model.next_of(l), model.widths[l]
    with torch.no_grad():
        out = nxt.weight.detach().clone() / factor
        nxt.weight.copy_(out)
        for _ in range(factor - 1):
            model.grow_neurons(l, layer.weight[:m].detach().clone(), out.clone(),
                               None if layer.bias is None else layer.bias[:m].detach().clone())
            if model.kinds[l] == "conv":
                bn = model.norms[l]
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    t[-m:] = t[:m].clone()
    return model


@torch.no_grad()
def layer_phi(model, x, eps=0.01):
    """[(phi_ED, smallest singular value of H / sqrt(n))] per hidden layer on inputs x (BatchNorm
    with x's batch statistics, as DYNO's buffer); (None, None) for a layer with no more samples
    than neurons (Eq. 27 needs n > M)."""
    b = Buffer(len(x))
    b.push(x)
    out = []
    for h in b.activations(model)[3]:
        hs = as_samples(h).double()
        out.append((None, None) if hs.shape[0] <= hs.shape[1] else
                   (activation_metric(h, eps), float(torch.linalg.svdvals(hs / math.sqrt(len(hs)))[-1])))
    return out


def _targets(data, device=None):
    """Source (classes 0-4), near (5-9) and far (5-9, pixels permuted by seed 1), labels 0-4."""
    xtr, ytr, xte, yte = as_flat(data)
    perm = torch.randperm(xtr.shape[1], generator=torch.Generator().manual_seed(1))

    def part(lo, p=None):
        a, b = (ytr >= lo) & (ytr < lo + 5), (yte >= lo) & (yte < lo + 5)
        xa, xb = (xtr[a], xte[b]) if p is None else (xtr[a][:, p], xte[b][:, p])
        return tuple(t.to(device) for t in (xa, ytr[a] - lo, xb, yte[b] - lo))
    return {"source": part(0), "near": part(5), "far": part(5, perm)}


def _pretrained(make_model, name, parts, sz, runs, log, device=None):
    """make_model(5) pretrained once (seed 1) on the source classes (cached in runs)."""
    src = parts["source"]
    n = sz["source_images"] or len(src[0])

    def make():
        torch.manual_seed(1)
        m = pretrain(make_model(5).to(device), (src[0][:n], src[1][:n]), 1, epochs=sz["pretrain_epochs"])
        log(f"  {name} pretrained on {n} images of classes 0-4: test {100 * accuracy(m, src[2], src[3]):.2f}%")
        return m.state_dict()
    model = make_model(5).to(device)
    model.load_state_dict(runs.cached(f"pretrain-{name}-s1", make))
    return model


def _sources(parts, sz, runs, log, device=None):
    """The stand-in CNN pretrained once (seed 1) on the source classes, and its widened copy."""
    base = _pretrained(TRANSFER_MODELS["cnn"], "cnn", parts, sz, runs, log, device)
    wide = TRANSFER_MODELS["cnn"](5).to(device)
    wide.load_state_dict(base.state_dict())
    return base, widen(wide, 2, sz["widen"])


def experiment_phi(parts, sz, runs, log, device=None):
    base, wide = _sources(parts, sz, runs, log, device)
    torch.manual_seed(1)
    models = (("cnn 16-32-64, initialized", TRANSFER_MODELS["cnn"](5).to(device)), ("cnn 16-32-64, pretrained", base),
              (f"cnn 16-32-64, pretrained, conv 3 widened {sz['widen']}x", wide))
    if sz["wide"]:
        models += (("cnn 32-64-128-256, pretrained", _pretrained(WIDE, "wide-cnn", parts, sz, runs, log, device)),)
    rows = []
    for name, m in models:
        for target in ("source", "near", "far"):
            x = parts[target][0][-sz["buffer"]:] if target == "source" else parts[target][0][:sz["buffer"]]
            for l, (phi, smin) in enumerate(layer_phi(m, x)):
                rows.append(dict(model=name, inputs=target, layer=l + 1, kind=m.kinds[l], width=m.widths[l],
                                 phi=None if phi is None else round(phi, 4),
                                 sigma_min=None if smin is None else float(f"{smin:.3g}")))
    return rows


def transfer_logged(model, data, method, iterations, seed, batch_size=64, lr=3e-4, weight_decay=1e-3, every=50):
    """Sec. 7.3's fine-tuning (Adam 3e-4, weight decay 1e-3, grow-and-prune every 50, phi* = 1)
    of `model` with DYNO or statically; returns (result, DYNO evaluations or [], warnings)."""
    import warnings
    xtr, ytr, xte, yte = data
    opt = torch.optim.Adam(model.parameters(), lr, weight_decay=weight_decay)
    d = DYNO(model, opt, every=every, seed=seed) if method == "dyno" else None
    widths, f0, t0, it = list(model.widths), flops(model), time.perf_counter(), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if d is not None:
            d.start(xtr[:d.buffer.size])
        for epoch in range(math.ceil(iterations * batch_size / len(xtr)) + 1):
            for idx in _batches(len(xtr), batch_size, seed, epoch)[:iterations - it]:
                d.step(xtr[idx], ytr[idx]) if d is not None else _static_step(model, opt, xtr[idx], ytr[idx])
                it += 1
    ev = d.history["evaluations"] if d is not None else []
    res = dict(test_accuracy=accuracy(model, xte, yte), flops=flops(model), flops_before=f0, widths=model.widths,
               widths_before=widths, seconds=time.perf_counter() - t0,
               grown=[sum(e["grown"][l] for e in ev) for l in range(len(widths))],
               pruned=[sum(e["pruned"][l] for e in ev) for l in range(len(widths))])
    return res, ev, [str(w.message) for w in caught if "frozen" in str(w.message)]


def experiment_moving(parts, sz, seeds, runs, log, device=None):
    base, _ = _sources(parts, sz, runs, log, device)
    rows = []
    for target, method, seed in [(t, m, s) for m in ("dyno", "static") for t in ("near", "far") for s in seeds]:
        # every seed of one target and method before the next (DYNO first): complete rows early
        def work(state, checkpoint):
            model = TRANSFER_MODELS["cnn"](5).to(device)
            model.load_state_dict(base.state_dict())
            widen(model, 2, sz["widen"])
            torch.manual_seed(seed)
            torch.nn.init.xavier_uniform_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)
            res, ev, warned = transfer_logged(model, parts[target], method, sz["iterations"], seed)
            return [dict(target=target, method=method, seed=seed, iterations=sz["iterations"],
                         test_accuracy=round(100 * res["test_accuracy"], 2),
                         mflops=round(res["flops"] / 1e6, 3), mflops_before=round(res["flops_before"] / 1e6, 3),
                         widths=res["widths"], widths_before=res["widths_before"], grown=res["grown"],
                         pruned=res["pruned"], phi_first=[None if p is None else round(p, 3)
                                                          for p in (ev[0]["phi"] if ev else [])],
                         phi_last=[None if p is None else round(p, 3) for p in (ev[-1]["phi"] if ev else [])],
                         frozen_layers_first=ev[0]["frozen"] if ev else [],
                         all_frozen_warnings=len(warned), seconds=round(res["seconds"], 1),
                         evaluations=[dict(step=e["step"], widths=e["widths"], phi=e["phi"],
                                           phi_star=e["phi_star"], frozen=e["frozen"], pruned=e["pruned"],
                                           grown=e["grown"]) for e in ev])]
        rows += runs(f"widened-{target}-{method}-s{seed}", work, lambda r: (
            f"widened cnn, {r[0]['target']}, {r[0]['method']}, seed {r[0]['seed']}: test "
            f"{r[0]['test_accuracy']}%, widths {r[0]['widths']}, phi at first evaluation {r[0]['phi_first']}"))
    return rows


def _write_moving(rows, stem, title):
    flat = [{k: v for k, v in r.items() if k != "evaluations"} for r in rows]
    write_table(flat, [(k, lambda r, k=k: r[k]) for k in flat[0]], stem, title)
    ev = [dict(target=r["target"], method=r["method"], seed=r["seed"], step=e["step"], layer=l + 1,
               width=e["widths"][l], phi=None if e["phi"][l] is None else round(e["phi"][l], 4),
               phi_star=round(e["phi_star"][l], 4), frozen=e["frozen"][l], pruned=e["pruned"][l], grown=e["grown"][l])
          for r in rows for e in r["evaluations"] for l in range(len(e["widths"]))]
    if ev:
        write_table(ev, [(k, lambda r, k=k: r[k]) for k in ev[0]], stem + "-evaluations",
                    "Every DYNO evaluation of " + os.path.basename(stem) + ": phi (before the changes), phi*, frozen")
    groups = {}
    for r in flat:
        groups.setdefault((r["target"], r["method"]), []).append(r)
    summary = [[t, m, len(rs), fmt([r["test_accuracy"] for r in rs]), fmt([r["mflops"] for r in rs], 3),
                " / ".join(fmt(v, 0) for v in zip(*[r["widths"] for r in rs])),
                " / ".join(fmt(v, 0) for v in zip(*[r["pruned"] for r in rs])),
                " / ".join(fmt(v, 0) for v in zip(*[r["grown"] for r in rs]))] for (t, m), rs in groups.items()]

    def write(path):
        with open(path, "w") as f:
            f.write(f"{title}\n\nMean ± sample std over seeds:\n\n" + md_table(
                ["target", "method", "seeds", "test accuracy %", "MFLOPs", "widths", "pruned", "grown"], summary)
                + "\nEvery run:\n\n" + md_table(list(flat[0]), [[r[c] for c in flat[0]] for r in flat]))
    _atomic(stem + ".md", write)


def run(name, data, out_dir, seeds=(1, 2, 3, 4, 5), quick=False, log=print, sizes=None, device=None, share=None):
    """Run experiment `name` (EXPERIMENTS) into out_dir; finished single runs are kept. With
    share (train.py's --gpus) nothing is trained in the device processes: this process trains
    every run when it is called for the report."""
    if share is not None:
        return []
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown DYNO experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    sz = sized(SIZES, quick, sizes)
    seeds = tuple(seeds)[:sz["n_seeds"]]
    parts, stem = _targets(data, device), os.path.join(out_dir, name)
    config = dict({k: sz[k] for k in RUN_SHAPING}, data=[list(t.shape) for t in data])
    runs = Runs(os.path.join(out_dir, "dyno.runs"), config, 4 * len(seeds) if name == "dyno-moving" else 0, log)
    if name == "dyno-phi":
        rows = experiment_phi(parts, sz, runs, log, device)
        write_table(rows, [(k, lambda r, k=k: r[k]) for k in rows[0]], stem,
                    f"phi_ED (eps 0.01) and the smallest singular value of H / sqrt(n) per hidden layer of the Ch. 7 "
                    f"stand-in CNN on {sz['buffer']} inputs; a layer can be pruned (Eq. 38) only if phi < 0.97 phi*, "
                    f"grow (Eq. 39) only if phi > 1.03 phi*")
        return rows
    rows = experiment_moving(parts, sz, seeds, runs, log, device)
    _write_moving(rows, stem, f"Ch. 7 with a movable convolution: the pretrained stand-in CNN, conv 3 widened "
                              f"{sz['widen']}x by duplication (rank-deficient by construction), fine-tuned "
                              f"{sz['iterations']} iterations x 64 with DYNO (phi* = 1) or statically")
    return rows
