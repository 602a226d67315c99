"""The thesis's Ch. 4 experiments at CPU scale (Tables 3 and 4, Figs. 10-12, the cost of Eq. 12),
on top of equinas.py.

The thesis's data sets (rotMNIST, Galaxy10, ISIC) are replaced by Fashion-MNIST rotated by the
rotMNIST recipe (`rotate_images`), or, for Fig. 12, transformed by exactly one group's action
(`augment_by_group`). `run(name, data, out_dir, ...)` writes NAME.md (means ± std beside the
thesis's numbers), NAME.csv (one row per method and seed) and NAME.png into out_dir; every
finished sub-run (method, seed) is kept in out_dir/NAME.runs/ and an unfinished search is
checkpointed there after every generation or epoch, so calling run() again resumes. Every
network and batch is on run()'s `device`; with `share`, a process trains only the sub-runs that
share(key) assigns it and writes no report (train.py's --gpus: one such process per device).
"""
import copy
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from equinas import (ELEMENTS, GROUPS, RPP, EquiCNN, FieldBatchNorm, GroupConv2d, MixedGroupConv2d, _net,
                     accuracy, act, as_float, fit, relax_network, search_differentiable, search_evolutionary)
from harness.run_dir import _atomic, md_table, write_csv
from experiments.thesis_equinas_report import (fig12_summary, paired_table, plot_error_params, plot_table3,
                                                 plot_z_grid, scale_text, summary)

EXPERIMENTS = ("equinas-table3", "equinas-table4", "equinas-fig12", "equinas-cost")
PAPER_TABLE3 = {"EquiNAS_E": (1.78, 0.04), "RPP": (2.18, 0.04), "D4": (1.78, 0.11), "C4": (1.64, 0.22),
                "C1": (5.02, 1.15), "C4 (prior: D4)": (1.93, 0.05), "C1 (prior: D4)": (3.40, 0.07),
                "C1 (prior: C4)": (2.96, 0.05)}          # rotMNIST test error %, Table 3
PAPER_TABLE4 = {"EquiNAS_D": (2.29, 0.27), "RPP": (2.89, 0.27), "D4": (2.97, 1.50), "C4": (2.43, 0.54),
                "C1": (3.97, 0.75)}                      # rotMNIST test error %, Table 4
BASELINES = {"C1": "C1", "C4": "C4", "D4": "D4", "RPP": RPP}
# Sec. 4.5.1's untrained priors: every layer built in the prior's group, then relaxed at init
PRIORS = {"C4 (prior: D4)": ("C4", "D4"), "C1 (prior: D4)": ("C1", "D4"), "C1 (prior: C4)": ("C1", "C4")}
HALF = "C1 (half width)"  # not in the thesis: C1 with fields // 2, about the parameters of C4 at full width
SIZES = {  # CPU scale (rotMNIST itself: 12,000 train+valid / 50,000 test images)
    False: dict(n_train=6000, n_test=2000, fields=4, layers=8, kernel_size=5, hidden=64,
                generations=10, parent_size=5, epochs_d=10, fig12_train=5000, fig12_epochs=10,
                cost=((16, 28, 64), (4, 28, 64), (2, 14, 64)), cost_repeats=5, bn_images=0, bn_also=1000,
                searches=1, baselines=0, thesis=0, equal_params=0, pool_input=1),
    True: dict(n_train=2000, n_test=1000, fields=1, layers=8, kernel_size=5, hidden=64,
               generations=3, parent_size=5, epochs_d=2, fig12_train=1000, fig12_epochs=1,
               cost=((4, 28, 64), (2, 14, 32)), cost_repeats=3, bn_images=0, bn_also=1000, searches=1,
               baselines=0, thesis=0, equal_params=0, pool_input=1),
}
# --sizes thesis=1: Sec. 4.5 at full scale (a GPU's budget): all 12,000 / 50,000 rotMNIST images,
# 16 D4 fields, 50 generations (baselines 25.5 epochs), 100 epochs for EquiNAS_D
THESIS_SIZES = dict(SIZES[False], n_train=12000, n_test=50000, fields=16, generations=50, epochs_d=100,
                    fig12_train=54000, fig12_epochs=100)
# the knobs: bn_images > 0 recalibrates BatchNorm on that many training images before every
# evaluation (not in the thesis); bn_also > 0 reports, beside the thesis's running-statistics
# error, the error of a copy recalibrated on that many images (test_error_recal); searches=0
# runs only the baselines of Tables 3 and 4; baselines=N trains only the first N of Table 3's
# baselines in experiment_table3's order (0: all); equal_params=1 adds Table 3's HALF row;
# pool_input=2 average-pools the images to 14 x 14


def size_knobs(quick=False, overrides=None):
    """SIZES[quick] (or THESIS_SIZES with thesis=1) updated by `overrides` (--sizes)."""
    overrides = dict(overrides or {})
    base = THESIS_SIZES if overrides.get("thesis") else SIZES[bool(quick)]
    return dict(base, **overrides)


# ----------------------------------------------------------------------------------------
# Data: the rotMNIST recipe, group augmentation, subsets and the 10% validation split
# ----------------------------------------------------------------------------------------

def rotate_images(x, seed=0, angles=None, chunk=4096):
    """rotMNIST recipe: every image rotated by its own angle, uniform in [0, 2π) from `seed` (or
    the given `angles`, radians, counter-clockwise), bilinear (affine_grid + grid_sample with
    align_corners=False: about the image centre, pixel centres onto pixel centres at multiples
    of 90°), zero outside the original image. Returns float [0, 1] images."""
    x = as_float(x)
    if angles is None:
        angles = torch.rand(len(x), generator=torch.Generator().manual_seed(seed)) * 2 * math.pi
    out = torch.empty_like(x)
    for i in range(0, len(x), chunk):
        a = angles[i:i + chunk].to(x)
        c, s = torch.cos(a), torch.sin(a)
        # grid_sample reads the output pixel at p from the input at theta p: theta = rotation by -a
        # in (x right, y down) coordinates, which turns the picture counter-clockwise by a
        theta = torch.stack([torch.stack([c, -s, 0 * a], 1), torch.stack([s, c, 0 * a], 1)], 1)
        grid = F.affine_grid(theta, list(x[i:i + chunk].shape), align_corners=False)
        out[i:i + chunk] = F.grid_sample(x[i:i + chunk], grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)
    return out


def augment_by_group(x, group, seed=0):
    """Fig. 12: every image transformed by an element of `group` drawn uniformly from `seed`, with
    the exact action (rot90 / flip). Returns (images as float [0, 1], the elements drawn)."""
    x, E = as_float(x), ELEMENTS[group]
    g = torch.tensor(E)[torch.randint(len(E), (len(x),), generator=torch.Generator().manual_seed(seed))]
    out = x.clone()
    for e in E:
        sel = g == e
        out[sel] = act(x[sel], e)
    return out, g


def prepare(data, n_train, n_test, transform=None, valid_fraction=0.1, seed=0, pool=1):
    """Fixed subsets (the first n of a permutation from `seed`) of (train_x, train_y, test_x,
    test_y), transformed by transform(x, seed) (train seed+1, test seed+2), 10% of the training
    subset held out for validation (Sec. 4.5), then average-pooled by `pool` (1: as they are). Returns a dict with train/valid/test pairs and the
    training pixel mean and std (the network's normalization)."""
    trx, try_, tex, tey = data
    g = torch.Generator().manual_seed(seed)
    itr = torch.randperm(len(trx), generator=g)[:n_train]
    ite = torch.randperm(len(tex), generator=g)[:n_test]
    xtr, xte = as_float(trx[itr]), as_float(tex[ite])
    if transform is not None:
        xtr, xte = transform(xtr, seed + 1), transform(xte, seed + 2)
    if pool > 1:                                  # the knob pool_input: smaller, cheaper images
        xtr, xte = F.avg_pool2d(xtr, pool), F.avg_pool2d(xte, pool)
    nv = int(round(valid_fraction * len(xtr)))
    ytr = try_[itr].long()
    return dict(train=(xtr[nv:], ytr[nv:]), valid=(xtr[:nv], ytr[:nv]), test=(xte, tey[ite].long()),
                mean=float(xtr[nv:].mean()), std=float(xtr[nv:].std()))


@torch.no_grad()
def recalibrate_bn(net, x, batch_size=200):
    """Precise BatchNorm statistics (not in the thesis; the knob bn_images): every running mean
    and variance becomes the average over batches of x with the weights fixed. Only evaluation
    changes; it removes the lag of the running statistics behind fast-moving weights."""
    bns = [m for m in net.modules() if isinstance(m, (FieldBatchNorm, torch.nn.BatchNorm1d))]
    momenta, dev = [m.momentum for m in bns], next(net.parameters()).device
    net.train()
    for k, i in enumerate(range(0, len(x) - 1, batch_size)):     # a last single image is skipped
        for m in bns:
            m.momentum = 1.0 / (k + 1)
        net(as_float(x[i:i + batch_size]).to(dev))
    for m, mom in zip(bns, momenta):
        m.momentum = mom


def calibration(train_x, bn_images):
    """The `calibrate` hook of equinas' searches: None (running statistics, the thesis's
    protocol) when bn_images is 0, else a recalibration on the first bn_images images."""
    return (lambda net: recalibrate_bn(net, train_x[:bn_images])) if bn_images else None


def population(state, device=None):
    """The networks of a search_evolutionary state (on `device`; None: their weights'), with their records."""
    return [(_net(ind["spec"], ind["model"], device or next(iter(ind["model"].values())).device), ind)
            for ind in state["population"]]


def prior_network(group, prior, seed=0, **config):
    """An untrained prior (Sec. 4.5.1): an EquiCNN with every layer in `prior`, initialized from
    `seed`, each layer then relaxed to `group` (Eqs. 4-10): a `group` network that computes the
    `prior` network's function. Returns (spec, state_dict)."""
    torch.manual_seed(seed)
    net = EquiCNN([prior] * config.pop("layers"), **config)
    for i in range(len(net.convs)):
        net = relax_network(net, i, group)
    return net.spec(), net.state_dict()


def on_device(d, device):
    """prepare()'s images and labels moved to `device`."""
    return dict(d, **{k: tuple(t.to(device) for t in d[k]) for k in ("train", "valid", "test")})


# ----------------------------------------------------------------------------------------
# Sub-runs: kept in NAME.runs/KEY.pt (a row when done, a checkpoint while running)
# ----------------------------------------------------------------------------------------

def _subrun(runs, key, work, log, share=None):
    """work(state, checkpoint) -> (row, extra); cached in runs/key.pt, resumed from its checkpoint.
    (None, None) when `share` gives the key to another process."""
    if share is not None and not share(key):
        return None, None
    path = os.path.join(runs, key + ".pt")
    saved = torch.load(path, weights_only=True, map_location="cpu") if os.path.exists(path) else {}
    if "row" in saved:
        log(f"{key}: done earlier")
        return saved["row"], saved["extra"]
    t0 = time.perf_counter() - saved.get("seconds", 0.0)
    row, extra = work(saved.get("state"),
                      lambda s: _atomic(path, lambda p: torch.save({"state": s, "seconds": time.perf_counter() - t0}, p)))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    _atomic(path, lambda p: torch.save({"row": row, "extra": extra}, p))
    log(f"{key}: test error {row.get('test_error')}%, {row['seconds']} s")
    return row, extra


def _evaluate(net, d, sz):
    """(test error %, validation accuracy %), BatchNorm statistics first recalibrated on
    sz["bn_images"] training images (0: the running statistics, as in the thesis)."""
    if sz["bn_images"]:
        recalibrate_bn(net, d["train"][0][:sz["bn_images"]])
    return _test_error(net, d), round(100 * accuracy(net, *d["valid"]), 2)


def _test_error(net, d):
    return round(100 * (1 - accuracy(net, *d["test"])), 2)


def _recalibrated_error(net, d, sz):
    """Test error % of a copy of `net` whose BatchNorm statistics are recalibrated on
    sz["bn_also"] training images (reported beside the thesis's running-statistics error, which
    `net` keeps); None when bn_also is 0 or bn_images already recalibrates `net` itself."""
    if not sz.get("bn_also") or sz["bn_images"]:
        return None
    twin = copy.deepcopy(net)
    recalibrate_bn(twin, d["train"][0][:sz["bn_also"]])
    return _test_error(twin, d)


def _net_config(d, sz):
    return dict(layers=sz["layers"], fields=sz["fields"], kernel_size=sz["kernel_size"],
                hidden=sz["hidden"], mean=d["mean"], std=d["std"])


def _spec(arch, d, sz):
    cfg = _net_config(d, sz)
    return {"arch": [arch] * cfg.pop("layers"), "config": dict(cfg, in_channels=1, classes=10)}


def _baseline(d, sz, name, seed, epochs, optimizer, lr, device):
    def work(state, checkpoint):
        if name in PRIORS:
            cfg = dict(_net_config(d, sz), in_channels=1, classes=10)
            spec, init = prior_network(*PRIORS[name], seed=seed, **cfg)
        elif name == HALF:
            spec, init = _spec("C1", d, dict(sz, fields=max(sz["fields"] // 2, 1))), None
        else:
            spec, init = _spec(BASELINES[name], d, sz), None
        net, _ = fit(spec, *d["train"], epochs, optimizer, lr, seed=seed, state=state,
                     on_epoch=checkpoint, device=device, init=init)
        err, acc = _evaluate(net, d, sz)
        return dict(method=name, seed=seed, test_error=err, valid_acc=acc, params=net.num_params(),
                    groups="-".join(g or "mix" for g in net.groups()),
                    test_error_recal=_recalibrated_error(net, d, sz)), {}
    return work


# ----------------------------------------------------------------------------------------
# The experiments
# ----------------------------------------------------------------------------------------

def experiment_table3(d, sz, seeds, runs, log=print, device=None, share=None):
    """Table 3 (Sec. 4.5.1): EquiNAS_E (`generations` of 0.5 epoch, parent size 5, SGD 0.1; not
    run with searches=0), the C1, C4, D4, RPP baselines and the untrained priors (PRIORS), all
    trained for the same (generations + 1) / 2 epochs with SGD 0.1. EquiNAS_E's row: the mean
    test error of the final population (the thesis aggregates its 5 members), the member with
    the best validation accuracy beside it. Returns (rows, extras)."""
    rows, extras = [], {}
    for seed in seeds:
        def work(state, checkpoint):
            st = search_evolutionary(*d["train"], *d["valid"], generations=sz["generations"],
                                     parent_size=sz["parent_size"], seed=seed, state=state,
                                     on_generation=checkpoint, log=log, device=device,
                                     calibrate=calibration(d["train"][0], sz["bn_images"]),
                                     **_net_config(d, sz))
            pop = [(net.groups(), ind["params"], ind["valid_acc"], _evaluate(net, d, sz)[0],
                    _recalibrated_error(net, d, sz)) for net, ind in population(st, device)]
            best = max(pop, key=lambda p: p[2])
            return (dict(method="EquiNAS_E", seed=seed,
                         test_error=round(statistics.mean(p[3] for p in pop), 2),
                         valid_acc=round(100 * statistics.mean(p[2] for p in pop), 2),
                         params=round(statistics.mean(p[1] for p in pop)),
                         groups="-".join(best[0]), best_test_error=best[3], best_params=best[1],
                         test_error_recal=None if pop[0][4] is None else
                         round(statistics.mean(p[4] for p in pop), 2)),
                    dict(history=st["history"], population=pop))
        if sz.get("searches", 1):
            row, extra = _subrun(runs, f"EquiNAS_E-seed{seed}", work, log, share)
            rows.append(row)
            extras[seed] = extra
    epochs = (sz["generations"] + 1) * 0.5
    order = ["C1", "C4", "D4"] + [HALF] * bool(sz.get("equal_params")) + list(PRIORS) + ["RPP"]
    order = order[:sz.get("baselines") or len(order)]
    for name in order:          # method-major: every seed of the equal-width C1, C4, D4 first,
                                # then C1 at C4's parameters, the priors and RPP (the dearest)
        key = name.replace(" (prior: ", "-prior").replace(" (half width", "-half").replace(")", "")
        for seed in seeds:
            rows.append(_subrun(runs, f"{key}-sgd-seed{seed}",
                                _baseline(d, sz, name, seed, epochs, "sgd", 0.1, device), log, share)[0])
    shown = ["EquiNAS_E"] + list(BASELINES) + list(PRIORS) + [HALF]
    rows = sorted((r for r in rows if r), key=lambda r: (shown.index(r["method"]), r["seed"]))
    return rows, {s: e for s, e in extras.items() if e is not None}


def experiment_table4(d, sz, seeds, runs, log=print, device=None, share=None):
    """Table 4 (Sec. 4.5.2): EquiNAS_D (every layer [G]-mixed, Adam 0.01 for Psi and Z, batch 64)
    and the C1, C4, D4, RPP baselines with Adam 0.01, `epochs_d` epochs each. Returns (rows,
    {seed: z history})."""
    rows, extras = [], {}
    for seed in seeds:
        def work(state, checkpoint):
            net, st = search_differentiable(*d["train"], epochs=sz["epochs_d"], seed=seed, state=state,
                                            on_epoch=checkpoint, device=device, **_net_config(d, sz))
            final, (err, acc) = net.z(), _evaluate(net, d, sz)
            return (dict(method="EquiNAS_D", seed=seed, test_error=err, valid_acc=acc, params=net.num_params(),
                         groups="-".join(GROUPS[max(range(len(z)), key=z.__getitem__)] for z in final),
                         test_error_recal=_recalibrated_error(net, d, sz)),
                    dict(z=[(h["epoch"], h["z"]) for h in st["history"]]))
        if sz.get("searches", 1):
            row, extra = _subrun(runs, f"EquiNAS_D-seed{seed}", work, log, share)
            rows.append(row)
            extras[seed] = extra
        for name in BASELINES:
            rows.append(_subrun(runs, f"{name}-adam-seed{seed}",
                                _baseline(d, sz, name, seed, sz["epochs_d"], "adam", 0.01, device), log, share)[0])
    return [r for r in rows if r], {s: e for s, e in extras.items() if e is not None}


def supergroup_mass(z, group):
    """The share of z on the groups that contain `group` (layers equivariant to it)."""
    return sum(w for g, w in zip(GROUPS, z) if set(ELEMENTS[group]) <= set(ELEMENTS[g]))


def experiment_fig12(data, sz, seeds, runs, log=print, device=None, share=None):
    """Fig. 12: EquiNAS_D on Fashion-MNIST transformed by exactly each group's action, one trial
    per group and seed (the same images for every seed; the seed draws the network and the
    batches); the z of each layer over training. Row per group and seed: test error, the
    dominant group per layer, and the z mass on groups containing the augmentation group, at
    init and at the end (mean over layers). Returns (rows, {(group, seed): z history})."""
    rows, extras = [], {}
    for A in GROUPS:
        d = on_device(prepare(data, sz["fig12_train"], sz["n_test"],
                              lambda x, s, A=A: augment_by_group(x, A, s)[0], pool=sz["pool_input"]), device)
        for seed in seeds:
            def work(state, checkpoint):
                net, st = search_differentiable(*d["train"], epochs=sz["fig12_epochs"], seed=seed, state=state,
                                                on_epoch=checkpoint, device=device, **_net_config(d, sz))
                hist = [(h["epoch"], h["z"]) for h in st["history"]]
                mass = [statistics.mean(supergroup_mass(z, A) for z in zs) for _, zs in (hist[0], hist[-1])]
                return (dict(method=f"augmented {A}", seed=seed, n_train=len(d["train"][0]),
                             test_error=_evaluate(net, d, sz)[0],
                             dominant="-".join(GROUPS[max(range(len(z)), key=z.__getitem__)]
                                               for z in hist[-1][1]),
                             mass_init=round(mass[0], 3), mass_final=round(mass[1], 3)), dict(z=hist))
            row, extra = _subrun(runs, f"fig12-{A}-seed{seed}", work, log, share)
            if row is not None:
                rows.append(row)
                extras[(A, seed)] = extra
    return rows, extras


def mixed_layer_cost(fields=16, size=28, batch=64, kernel_size=5, group="D4", groups=GROUPS, repeats=5,
                     seed=0, device=None):
    """Seconds of one forward+backward of a MixedGroupConv2d over `groups` and of a GroupConv2d of
    `group` with the same expanded width (fields·8 channels in and out), on one thread (or on the
    CUDA `device`, synchronized around each), timed in alternation, median of `repeats`. Eq. 12
    makes the mixed layer one convolution: the ratio should stay near 1 when the convolution
    dominates."""
    sync = torch.cuda.synchronize if torch.device(device or "cpu").type == "cuda" else lambda: None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        m = 8 // len(ELEMENTS[group])
        layers = {"single": GroupConv2d(group, fields * m, fields * m, kernel_size, frame="D4").to(device),
                  "mixed": MixedGroupConv2d(fields, fields, kernel_size, groups).to(device)}
        x = torch.randn(batch, fields * 8, size, size, device=device)
        times = {k: [] for k in layers}
        for r in range(repeats + 1):
            for k, layer in layers.items():
                sync()
                t = time.perf_counter()
                layer.zero_grad()
                layer(x).square().mean().backward()
                sync()
                if r:                                             # the first round warms up
                    times[k].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    s, mx = statistics.median(times["single"]), statistics.median(times["mixed"])
    return dict(fields=fields, channels=fields * 8, size=size, batch=batch, group=group,
                single_s=s, mixed_s=mx, ratio=mx / s)


# ----------------------------------------------------------------------------------------
# Reports: NAME.md, NAME.csv, NAME.png
# ----------------------------------------------------------------------------------------

def run(name, data, out_dir, seeds=(0, 1, 2), quick=False, log=print, sizes=None, rotate=True, device=None,
        share=None, norm=None, data_name="rotated Fashion-MNIST", finished_only=False):
    """Run experiment `name` (EXPERIMENTS) and write NAME.md, NAME.csv, NAME.png into out_dir.

    data: (train_x, train_y, test_x, test_y), images (N, 1, 28, 28) uint8 or float [0, 1] (e.g.
    harness.data.load_dataset("fashion-mnist", root)); rotate=False when they are rotated already
    (rotMNIST; norm: its (mean, std), e.g. harness.rotmnist.NORM; None: the training subset's).
    sizes: overrides of SIZES[quick] (size_knobs). Networks and batches on `device` (None: the CPU).
    share(key) -> bool: train only the sub-runs it assigns, write no report (module docstring).
    finished_only: train nothing; the report of the sub-runs finished so far.
    Returns the per-seed rows."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown EquiNAS experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if not seeds:
        raise ValueError("no seeds given; pass at least one (the thesis's tables: 3 or more)")
    sz = size_knobs(quick, sizes)
    stem, runs = os.path.join(out_dir, name), os.path.join(out_dir, name + ".runs")
    pick = (lambda key: "row" in torch.load(os.path.join(runs, key + ".pt"), weights_only=True)
            if os.path.exists(os.path.join(runs, key + ".pt")) else False) if finished_only else share
    os.makedirs(runs, exist_ok=True)
    scale = "quick" if quick else "full"
    if name == "equinas-cost" and share is not None:     # a timing: measured by the report's process
        return []
    if name == "equinas-cost":
        rows = [mixed_layer_cost(f, s, b, sz["kernel_size"], g, repeats=sz["cost_repeats"], device=device)
                for f, s, b in sz["cost"] for g in ("C1", "D4")]
        for r in rows:
            log(f"cost: {r}")
        text = (f"Cost of a [G]-mixed layer over {', '.join(GROUPS)} (Eq. 12: one convolution of the "
                f"summed filters) against one group layer of the same expanded width, forward + "
                f"backward, {'one thread' if torch.device(device or 'cpu').type == 'cpu' else device}, "
                f"median of {sz['cost_repeats']} ({scale})\n\n"
                + md_table(["channels", "size", "batch", "single group", "single ms", "mixed ms", "mixed / single"],
                      [[r["channels"], r["size"], r["batch"], r["group"], round(1000 * r["single_s"], 1),
                        round(1000 * r["mixed_s"], 1), round(r["ratio"], 2)] for r in rows]))
        from harness.plots import plot_bars
        plot_bars([f"{r['channels']}ch {r['size']}px vs {r['group']}" for r in rows],
                  {"mixed / single": [r["ratio"] for r in rows]}, stem + ".png", "time ratio",
                  f"[G]-mixed vs single group layer ({scale}); target ≤ 1.2")
    elif name == "equinas-fig12":
        rows, extras = experiment_fig12(data, sz, seeds, runs, log, device, pick)
        if share is not None:
            return rows
        text = (f"Fig. 12 ({scale}): EquiNAS_D on Fashion-MNIST transformed by each group's action, "
                f"seeds {', '.join(map(str, seeds))}, {sz['fig12_epochs']} epochs, {rows[0]['n_train']} "
                f"training images, {sz['fields']} D4 field(s) per layer; 'z on ⊇A' is the mean over layers "
                f"of the z mass on groups containing the augmentation group A; mean ± sample std over seeds"
                + (f"; BatchNorm statistics recalibrated on {sz['bn_images']} training images before "
                   f"testing (not in the thesis)" if sz["bn_images"] else "") + "\n\n"
                + fig12_summary(rows) + "\nEvery run\n\n"
                + md_table(["augmentation", "seed", "test error %", "dominant group per layer",
                            "z on ⊇A at init", "z on ⊇A at end", "s"],
                           [[r["method"], r["seed"], r["test_error"], r["dominant"], r["mass_init"],
                             r["mass_final"], r["seconds"]] for r in rows]))
        plot_z_grid({A: extras[(A, seeds[0])]["z"] for A in GROUPS if (A, seeds[0]) in extras}, stem + ".png",
                     f"Fig. 12 analogue ({scale}): z per layer over epochs (seed {seeds[0]}), "
                     f"rows = augmentation group")
    else:
        transform = (lambda x, s: rotate_images(x, s)) if rotate else None
        d = on_device(prepare(data, sz["n_train"], sz["n_test"], transform, pool=sz["pool_input"]), device)
        if norm is not None:
            d["mean"], d["std"] = norm
        rows, extras = (experiment_table3 if name == "equinas-table3" else experiment_table4)(
            d, sz, seeds, runs, log, device, pick)
        if share is not None:
            return rows
        if name == "equinas-table3":
            what = (f"{sz['generations']} generations of 0.5 epoch, parent size {sz['parent_size']}, "
                    f"baselines {(sz['generations'] + 1) / 2} epochs, SGD 0.1")
            e_rows = [[r["seed"], r["test_error"], r["best_test_error"], r["groups"], f"{r['best_params']:,}"]
                      for r in rows if r["method"] == "EquiNAS_E"]
            text = summary(rows, PAPER_TABLE3, f"Table 3 ({scale}) on {data_name}: " + scale_text(sz, d, what))
            pairs = [("C1", "C4"), ("C1", "D4"), ("C4", "D4"), (HALF, "C4"), (HALF, "D4"), ("C1", "EquiNAS_E"),
                     ("D4", "EquiNAS_E"), ("C4", "EquiNAS_E"),
                     ("C1", "C1 (prior: D4)"), ("C1", "C1 (prior: C4)"), ("C4", "C4 (prior: D4)")]
            text += paired_table(rows, pairs) + paired_table(rows, pairs, "test_error_recal")
            if e_rows:
                text += "\nEquiNAS_E final populations\n\n" + md_table(
                    ["seed", "population mean error % (the row above)", "best-validation member error %",
                     "its groups per layer", "its params"], e_rows)
            plot_table3(rows, extras, stem + ".png", f"Table 3 analogue ({scale}), {data_name}")
        else:
            what = f"{sz['epochs_d']} epochs, Adam 0.01 (Psi and Z), batch 64"
            d_rows = [[r["seed"], r["test_error"], r["groups"]] for r in rows if r["method"] == "EquiNAS_D"]
            pairs = [("C1", "C4"), ("C1", "D4"), ("C4", "D4"), ("C1", "EquiNAS_D"), ("C4", "EquiNAS_D"),
                     ("RPP", "EquiNAS_D")]
            text = (summary(rows, PAPER_TABLE4, f"Table 4 ({scale}) on {data_name}: " + scale_text(sz, d, what))
                    + paired_table(rows, pairs) + paired_table(rows, pairs, "test_error_recal")
                    + ("\nEquiNAS_D: largest z per layer at the end\n\n"
                    + md_table(["seed", "test error %", "argmax z per layer"], d_rows)) * bool(d_rows))
            if not extras:
                plot_table3(rows, {}, stem + ".png", f"Table 4 analogue ({scale}), {data_name}")
            else:
                plot_z_grid({f"seed {s}": extras[s]["z"] for s in sorted(extras)}, stem + ".png",
                             f"Table 4 analogue ({scale}): EquiNAS_D z per layer (Fig. 15) and error vs "
                             f"parameters (Fig. 14)", first=lambda ax: plot_error_params(ax, rows))
    with open(stem + ".md", "w") as f:
        f.write(text)
    write_csv(rows, stem + ".csv")
    return rows
