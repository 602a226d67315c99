"""The BioNAS paper's analyses (Sec. 4, 4.1, Tables 1, 2, 5, Figs. 4-7, App. A.2-A.3).

`run(name, train_fn, attack_fn, out_dir)` runs one experiment as a sequence of retrainings
-- each one a train.py run in its own subdirectory, so an interrupted experiment resumes
where it stopped -- and writes NAME.md, NAME.csv and plots beside the paper's numbers:

    table1           ResNet-20 and ResNet-56, each trained with bp, fa, usf, brsf, frsf (Table 1)
    mixed-vs-single  per seed, a searched genotype (the seed's own search, or --genotype) with its
                     mixed rules and forced to one rule (Fig. 4) in two arms: the cells' edges
                     only (stem, preprocessing and classifier keep backprop as in the mixed
                     network: the control that isolates the rule choice) and the whole network
                     (the authors' reading); gradient variance (Fig. 7), weights (Figs. 5-6) and
                     alignment per layer
    random-rules     the searched genotype against the same ops with rules drawn at random
                     (arXiv version, Table 5)
    search-vs-random per search seed: the searched genotype, its ops with random rules, and a
                     genotype drawn at random from the space (random ops and rules), each
                     retrained with the same budget and seed (arXiv Table 5 and DARTS's
                     random-architecture control)
    robustness       the searched model, ResNet-56 with each FA-family rule and ResNet-20 with
                     backprop under the attack preset, exact and feedback gradients (Table 2)

train_fn(label, overrides) -> dict(test_acc, layers, params, rules, seconds) trains one
configuration (train.py flags as overrides); attack_fn(label) -> rows of
attacks.evaluate_robustness for the network trained under `label` (bionas_runs.py makes both
for `python train.py --experiment NAME`).
"""
import os
import textwrap

import numpy as np

from harness.plots import _plt, _save, plot_bars
from harness.presets import BIONAS_EXPERIMENTS as EXPERIMENTS
from harness.presets import BIONAS_SEEDED as SEEDED      # every variant once per seed, mean +- std
from harness.run_dir import write_csv, write_table
from experiments.seeds import holm, mean_std, paired, paired_t, wins

SINGLE_RULES = ("bp", "fa", "usf", "brsf", "frsf")
# mixed-vs-single's two arms: a rule forced on the cells' edges only, or on every layer
FORCE_SCOPES = ("edges", "network")

# Table 1: test error (%) on CIFAR-10 and CIFAR-100 (None: not reported)
PAPER_TABLE1 = {
    ("resnet20", "fa"): (32.16, 75.70), ("resnet20", "frsf"): (11.2, 58.68),
    ("resnet20", "brsf"): (11.02, 58.37), ("resnet20", "usf"): (10.05, 56.09),
    ("resnet56", "fa"): (34.88, 50.07), ("resnet56", "frsf"): (9.49, None),
    ("resnet56", "brsf"): (8.69, None), ("resnet56", "usf"): (8.2, None),
    ("resnet20", "bp"): (8.63, None), ("resnet56", "bp"): (8.3, None),
}
# Fig. 4: CIFAR-10 top-1 (%) of the BioNAS-DARTS architecture, mixed and forced to one rule
PAPER_FIG4 = {"mixed": 94.86, "brsf": 83.17, "frsf": 90.58, "usf": 86.54}
# arXiv version, Table 5: searched rule assignment vs random assignments (CIFAR-10 top-1, %)
PAPER_TABLE5 = {"searched": 94.87, "random": 94.86}
# Table 2 (CIFAR-10, %): clean, one-pixel 1..5, FGSM, PGD, TPGD, APGD
TABLE2_COLUMNS = ("clean", "onepixel-1", "onepixel-2", "onepixel-3", "onepixel-4",
                  "onepixel-5", "fgsm", "pgd", "tpgd", "apgd")
PAPER_TABLE2 = {
    "resnet56-fa": (65.80, 47.80, 40.60, 38.20, 38.19, 38.00, 61.72, 63.28, 67.19, 33.59),
    "resnet56-usf": (91.60, 63.80, 44.00, 38.40, 36.40, 34.40, 14.60, 0.00, 40.62, 0.00),
    "resnet56-frsf": (89.80, 62.60, 42.40, 40.60, 38.60, 35.40, 18.75, 0.00, 46.09, 0.00),
    "resnet56-brsf": (89.80, 65.40, 45.00, 42.00, 40.40, 38.00, 73.43, 0.00, 50.00, 0.00),
    "resnet20-bp": (91.99, 59.60, 35.80, 32.40, 32.00, 28.20, 12.50, 0.00, 33.59, 0.00),
    "searched": (94.86, 90.89, 89.38, 87.46, 86.17, 84.93, 61.05, 60.58, 67.48, 66.99),
}


# ----------------------------------------------------------------------------------------
# Learning dynamics of one network (Eq. 8, Figs. 5-7)
# ----------------------------------------------------------------------------------------

def plan(name, seeds=(1, 2, 3), searched=True):
    """[(label, train.py overrides)] of the retrainings experiment `name` needs. In the SEEDED
    ones each variant runs once per seed s (seed=s) on the genotype of search s (search_seed=s;
    `searched=False`: on the --genotype given)."""
    if name == "table1":
        return [(f"resnet{d}-{r}", dict(model=f"resnet{d}", rule=r)) for d in (20, 56) for r in SINGLE_RULES]
    if name in SEEDED:
        variants = ([("mixed", {}), ("forced-bp", dict(force_rule="bp"))]   # bp: one network
                    + [(f"forced-{r}-{scope}", dict(force_rule=r, force_scope=scope))
                       for scope in FORCE_SCOPES for r in SINGLE_RULES[1:]]
                    if name == "mixed-vs-single" else
                    [("searched", {}), ("searched-ops-random-rules", dict(random_rules="seed")),
                     ("random-genotype", dict(random_genotype="seed"))])
        out = []
        for s in seeds:
            for label, o in variants:
                o = {k: s if v == "seed" else v for k, v in o.items()}
                if "random_genotype" not in o and searched:
                    o["search_seed"] = s
                out.append((f"{label}-s{s}", dict(o, seed=s)))
        return out
    if name == "random-rules":
        return [("searched", {})] + [(f"random-{s}", dict(random_rules=s)) for s in seeds]
    if name == "collapse":
        return [("darts", {}), ("darts-prime", dict(darts_prime=True))]
    if name == "robustness":
        return ([("searched", {})] + [(f"resnet56-{r}", dict(model="resnet56", rule=r)) for r in ("fa", "usf", "frsf", "brsf")]
                + [("resnet20-bp", dict(model="resnet20", rule="bp"))])
    raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")


BEST_LABEL = "best epoch's test accuracy % (selected on the test set, as the authors report)"


def _best(res, fmt):
    """The best epoch's test accuracy of a retraining result, formatted (None if not kept)."""
    return None if res.get("best_test_acc") is None else fmt(res["best_test_acc"])


def _layer_stats(res):
    """Mean over layers of log10 Var (last epoch) and its spread (std over layers), mean angle."""
    last = res["layers"]["history"][-1]
    lv = np.log10(np.maximum(np.array(last["grad_variance"]), 1e-300))
    return dict(log10_grad_var_mean=round(float(lv.mean()), 3), log10_grad_var_std=round(float(lv.std()), 3),
                alignment_mean=round(float(np.mean(last["alignment"])), 1),
                weight_std=round(res["layers"]["weights"]["std"], 4),
                weight_kurtosis=round(res["layers"]["weights"]["kurtosis"], 2))


def run(name, train_fn, attack_fn, out_dir, dataset="cifar10", seeds=(1, 2, 3), log=print,
        search_fn=None, searched=True):
    """Run experiment `name` (EXPERIMENTS): every retraining of plan(name) (for "collapse",
    every search, search_fn(label, overrides) -> per-epoch history), then the report."""
    results = {}
    todo = plan(name, seeds, searched)
    for i, (label, overrides) in enumerate(todo):
        log(f"[{i + 1}/{len(todo)}] {label}: {overrides or 'the genotype as searched'}")
        results[label] = (search_fn if name == "collapse" else train_fn)(label, overrides)
    stem = os.path.join(out_dir, name)
    if name == "collapse":
        return report_collapse(results, stem, dataset)
    if name in SEEDED:
        return report_seeded(name, todo, results, stem, dataset)
    paper_col = "CIFAR-10" if dataset != "cifar100" else "CIFAR-100"
    if name == "table1":
        rows = []
        for label, overrides in todo:
            r = results[label]
            paper = PAPER_TABLE1[(overrides["model"], overrides["rule"])][0 if dataset != "cifar100" else 1]
            rows.append(dict(model=overrides["model"], rule=overrides["rule"], params=r["params"],
                             paper_error=paper, error=round(100 - r["test_acc"], 2),
                             best_error=_best(r, lambda a: round(100 - a, 2)),
                             test_acc=round(r["test_acc"], 2), seconds=round(r["seconds"]), **_layer_stats(r)))
        write_table(rows, [("model", lambda r: r["model"]), ("rule", lambda r: r["rule"]),
                           ("parameters", lambda r: f"{r['params'] / 1e6:.2f}M"),
                           (f"paper test error {paper_col} %", lambda r: r["paper_error"]),
                           (f"measured test error {dataset} %, last epoch", lambda r: r["error"]),
                           (BEST_LABEL.replace("accuracy", "error"), lambda r: r["best_error"]),
                           ("train s", lambda r: r["seconds"])], stem, f"Table 1: single-rule ResNets on {dataset}")
        plot_bars([f"{r['model'][6:]} {r['rule']}" for r in rows],
                  {f"paper error {paper_col}": [r["paper_error"] for r in rows],
                   f"measured error {dataset}": [r["error"] for r in rows]}, stem + ".png", "test error (%)",
                  f"Table 1: ResNet-20 / ResNet-56 with one rule ({dataset})")
        return rows
    if name in ("mixed-vs-single", "random-rules"):
        rows = []
        for label, _ in todo:
            r = results[label]
            paper = (PAPER_FIG4.get("mixed" if label == "mixed" else label.replace("forced-", ""))
                     if name == "mixed-vs-single" else PAPER_TABLE5["searched" if label == "searched" else "random"])
            scope = r.get("force_scope")
            rows.append(dict(variant=label + (f" ({scope})" if scope else ""),
                             rules=" ".join(sorted(set(r["rules"]))), paper_acc=paper,
                             test_acc=round(r["test_acc"], 2), best_acc=_best(r, lambda a: round(a, 2)),
                             seconds=round(r["seconds"]), **_layer_stats(r)))
        cols = [("variant", lambda r: r["variant"]), ("rules in the cells", lambda r: r["rules"]),
                (f"paper {paper_col} %", lambda r: r["paper_acc"]),
                (f"measured {dataset} %, last epoch", lambda r: r["test_acc"]),
                (BEST_LABEL, lambda r: r["best_acc"]),
                ("log10 grad var, mean / std over layers", lambda r: f"{r['log10_grad_var_mean']} / {r['log10_grad_var_std']}"),
                ("mean angle(W, B)°", lambda r: r["alignment_mean"]),
                ("weight std / kurtosis", lambda r: f"{r['weight_std']} / {r['weight_kurtosis']}")]
        title = ("Fig. 4 and Figs. 5-7: the searched architecture, mixed rules vs one rule" if name == "mixed-vs-single"
                 else "Table 5 (arXiv): searched rule assignment vs random ones")
        write_table(rows, cols, stem, f"{title} ({dataset})")
        plot_bars([r["variant"] for r in rows], {f"paper {paper_col}": [r["paper_acc"] for r in rows],
                                                  f"measured {dataset}": [r["test_acc"] for r in rows]},
                  stem + ".png", "test accuracy (%)", f"{title} ({dataset})")
        plot_dynamics(results, stem + "_dynamics.png", f"{name} ({dataset})")
        return rows
    rows = []
    for i, (label, _) in enumerate(todo):
        log(f"[{i + 1}/{len(todo)}] attacking {label}")
        for r in attack_fn(label):
            rows.append(dict(model=label, **r))
            paper = PAPER_TABLE2.get(label)
            if paper is not None and r.get("grad") == "exact":
                rows.append(dict(model=label, grad="paper", **dict(zip(TABLE2_COLUMNS, paper))))
    cols = ["clean"] + [c for c in TABLE2_COLUMNS[1:] if any(c in r for r in rows)]
    fmt = lambda v: None if v is None else (round(v, 2) if isinstance(v, float) else v)
    write_table(rows, [("model", lambda r: r["model"]), ("gradient", lambda r: r["grad"])]
                + [(c, lambda r, c=c: fmt(r.get(c))) for c in cols], stem,
                f"Table 2: robust accuracy (%) on {dataset}; 'paper' rows are the paper's CIFAR-10 numbers")
    measured = [r for r in rows if r["grad"] != "paper"]
    plot_bars(cols, {f"{r['model']} ({r['grad']})": [r.get(c) for c in cols] for r in measured}, stem + ".png",
              "accuracy (%)", f"Table 2 layout, measured on {dataset}")
    return rows


SEEDED_NOTE = ("Paired by seed: a seed's variants share its search's genotype (or the random "
               "draws of that seed) and the retraining seed. t and p: two-sided paired t-test "
               "on the differences (n − 1 degrees of freedom); Holm: p adjusted for every "
               "comparison in this table. A p above 0.05 says the seeds cannot tell the "
               "variants apart at this budget, not that they are equal; wins of 4/5 happen by "
               "chance with probability 6/32.")
SCOPE_NOTE = (" Rule scope, the layers that learn by a rule other than backprop: the mixed "
              "network's searched rules are on the cells' edges (stem, preprocessing and "
              "classifier learn by backprop); `edges` forces one rule there and keeps the rest "
              "as in the mixed network, so mixed − edges measures the rule assignment alone; "
              "`network` also converts stem, preprocessing and classifier to the rule, so "
              "mixed − network adds the effect of those layers.")


def _scope(overrides):
    """The layers that learn by a rule other than bp: "edges" (the cells' edges; a searched,
    random or forced assignment), "network" (every layer) or "none" (forced-bp)."""
    if overrides.get("force_rule") == "bp":
        return "none"
    return overrides.get("force_scope", "network") if "force_rule" in overrides else "edges"


def report_seeded(name, todo, results, stem, dataset):
    """A SEEDED experiment: NAME_seeds.csv (one row per variant and seed), NAME.md/.csv (mean
    +- std over seeds, sample std, beside the paper), the paired differences to the searched
    (mixed) genotype with its wins over seeds, and NAME.png with error bars."""
    paper_col = "CIFAR-10" if dataset != "cifar100" else "CIFAR-100"
    per_seed = []
    for label, o in todo:
        r = results[label]
        per_seed.append(dict(variant=label.rsplit("-s", 1)[0], seed=o["seed"], scope=_scope(o),
                             test_acc=round(r["test_acc"], 2), best_acc=_best(r, lambda a: round(a, 2)),
                             rules=" ".join(sorted(set(r["rules"]))), genotype=r.get("genotype"),
                             seconds=round(r["seconds"]), **_layer_stats(r)))
    write_csv(per_seed, stem + "_seeds.csv")
    variants = list(dict.fromkeys(r["variant"] for r in per_seed))
    ref = variants[0]                                     # searched / mixed
    by = {v: {r["seed"]: r for r in per_seed if r["variant"] == v} for v in variants}

    def paper(v):
        if name == "mixed-vs-single":
            return PAPER_FIG4.get(v.replace("forced-", "").split("-")[0])
        return {"searched": PAPER_TABLE5["searched"], "searched-ops-random-rules": PAPER_TABLE5["random"]}.get(v)
    rows = []
    for v in variants:
        acc = [r["test_acc"] for r in by[v].values()]
        diff = paired({s: r["test_acc"] for s, r in by[ref].items()},
                      {s: r["test_acc"] for s, r in by[v].items()})
        m, sd = mean_std(acc)
        bm, bsd = mean_std([r["best_acc"] for r in by[v].values()])
        dm, dsd = mean_std(diff)
        t, p = paired_t(diff) if v != ref else (None, None)
        rows.append(dict(variant=v, scope=next(iter(by[v].values()))["scope"], seeds=len(acc),
                         paper_acc=paper(v), mean_acc=round(m, 2), std_acc=round(sd, 2),
                         best_mean=None if bm is None else round(bm, 2), best_std=None if bsd is None else round(bsd, 2),
                         ref_minus=None if v == ref else round(dm, 2), ref_minus_std=None if v == ref else round(dsd, 2),
                         ref_wins=None if v == ref else wins(diff), pairs=len(diff),
                         t=None if t is None else round(t, 2), p=p,
                         log10_grad_var=round(float(np.mean([r["log10_grad_var_mean"] for r in by[v].values()])), 2),
                         angle=round(float(np.mean([r["alignment_mean"] for r in by[v].values()])), 1)))
    for r, adj in zip(rows, holm([r["p"] for r in rows])):
        r["p_holm"] = adj
    p3 = lambda p: None if p is None else f"{p:.3f}"
    cols = [("variant", lambda r: r["variant"]), ("rule scope", lambda r: r["scope"]),
            ("seeds", lambda r: r["seeds"]), (f"paper {paper_col} %", lambda r: r["paper_acc"]),
            (f"measured {dataset} %, last epoch (mean ± std)", lambda r: f"{r['mean_acc']:.2f} ± {r['std_acc']:.2f}"),
            ("best epoch % (mean ± std)", lambda r: None if r["best_mean"] is None else f"{r['best_mean']:.2f} ± {r['best_std']:.2f}"),
            (f"{ref} − this, paired (mean ± std)", lambda r: None if r["ref_minus"] is None else f"{r['ref_minus']:+.2f} ± {r['ref_minus_std']:.2f}"),
            (f"seeds {ref} wins", lambda r: r["ref_wins"]),
            ("paired t", lambda r: r["t"]), ("p", lambda r: p3(r["p"])),
            (f"p, Holm over {sum(r['p'] is not None for r in rows)}", lambda r: p3(r["p_holm"])),
            ("log10 grad var", lambda r: r["log10_grad_var"]), ("mean angle(W, B)°", lambda r: r["angle"])]
    title = ("Fig. 4: the searched architecture, mixed rules vs one rule" if name == "mixed-vs-single" else
             "Table 5 (arXiv) and DARTS's control: searched genotype vs random rules vs random genotype")
    write_table(rows, cols, stem, f"{title} ({dataset}; mean ± sample std over seeds "
                f"{', '.join(str(s) for s in sorted(by[ref]))}; per-seed values in {os.path.basename(stem)}_seeds.csv)",
                note=SEEDED_NOTE + (SCOPE_NOTE if name == "mixed-vs-single" else ""))
    seeds = sorted(by[ref])
    plot_seeded(variants, {s: [by[v].get(s, {}).get("test_acc") for v in variants] for s in seeds},
                [r["mean_acc"] for r in rows], [r["std_acc"] for r in rows], [r["paper_acc"] for r in rows],
                stem + ".png", f"{title} ({dataset})", paper_col)
    first = {lab.rsplit("-s", 1)[0]: results[lab] for lab, o in todo if o["seed"] == seeds[0]}
    plot_dynamics(first, stem + "_dynamics.png", f"{name} ({dataset}, seed {seeds[0]})")
    return rows


def plot_seeded(variants, per_seed, means, stds, paper, path, title, paper_col):
    """Mean +- std bars per variant, each seed's value as a dot joined across variants (paired
    seeds), the paper's number as a cross."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(variants)), 4.2))
    x = np.arange(len(variants))
    ax.bar(x, means, 0.6, yerr=stds, capsize=4, color="#9ecae1", label="mean ± std over seeds")
    for s, accs in per_seed.items():
        ax.plot(x, [np.nan if a is None else a for a in accs], "o-", ms=3, lw=0.6, alpha=0.7, label=f"seed {s}")
    if any(p is not None for p in paper):
        ax.plot(x, [np.nan if p is None else p for p in paper], "kx", ms=8, label=f"paper ({paper_col})")
    vals = [a for accs in per_seed.values() for a in accs if a is not None] + [p for p in paper if p is not None]
    lo = min(vals)
    ax.set_ylim(max(0, lo - 0.15 * (max(vals) - lo + 1) - 2), min(100, max(vals) + 2))
    ax.set_xticks(x)
    ax.set_xticklabels(variants, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(textwrap.fill(title, 80), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)
    fig.tight_layout()
    return _save(fig, path)


def plot_dynamics(results, path, title=""):
    """Mixed vs single rule: Eq. 8 variance per layer (last epoch), mean log-variance per epoch,
    alignment per layer (last epoch), mean alignment per epoch, weight histograms (Figs. 5-7)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 5, figsize=(21, 3.8))
    for label, r in results.items():
        hist = r["layers"]["history"]
        ax[0].semilogy(hist[-1]["grad_variance"], marker=".", ms=3, lw=1, label=label)
        ax[1].plot([h["epoch"] + 1 for h in hist],
                   [float(np.mean(np.log10(np.maximum(h["grad_variance"], 1e-300)))) for h in hist],
                   marker="o", ms=3, label=label)
        ax[2].plot(hist[-1]["alignment"], marker=".", ms=3, lw=1, label=label)
        ax[3].plot([h["epoch"] + 1 for h in hist], [float(np.mean(h["alignment"])) for h in hist],
                   marker="o", ms=3, label=label)
        w = r["layers"]["weights"]
        total = max(1, sum(w["counts"]))
        ax[4].stairs([c / total for c in w["counts"]], w["edges"], label=label)
    ax[0].set(xlabel="layer", ylabel="Var of weight gradient (Eq. 8), last epoch")
    ax[1].set(xlabel="epoch", ylabel="mean log10 Var over layers")
    ax[2].set(xlabel="layer", ylabel="angle(W, B) in degrees, last epoch")
    ax[2].set_ylim(bottom=-2)
    ax[3].set(xlabel="epoch", ylabel="mean angle(W, B) over layers")
    ax[4].set(xlabel="weight", ylabel="fraction of weights", yscale="log")
    for a in ax:
        a.grid(alpha=0.3)
    ax[4].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_collapse(results, stem, dataset):
    """Maile's thesis Fig. 19: the share of parameter-free ops (skip, pools) in the derived
    normal cell per search epoch, plain DARTS against DARTS-PRIME; alpha steps per epoch."""
    labels = list(results)
    epochs = max(len(results[k]) for k in labels)
    rows = []
    for e in range(epochs):
        row = dict(epoch=e + 1)
        for k in labels:
            h = results[k][e] if e < len(results[k]) else {}
            row[f"{k} parameter-free %"] = round(100 * h["param_free_share"]) if h else None
            row[f"{k} alpha steps"] = h.get("alpha_steps")
            row[f"{k} valid %"] = round(h["valid_acc"], 2) if h else None
        rows.append(row)
    write_table(rows, [(c, lambda r, c=c: r[c]) for c in rows[0]], stem,
                f"Skip-connection collapse: parameter-free ops in the derived normal cell ({dataset})")
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for k in labels:
        ax[0].plot([h["epoch"] + 1 for h in results[k]], [100 * h["param_free_share"] for h in results[k]],
                   marker="o", ms=3, label=k)
        ax[1].plot([h["epoch"] + 1 for h in results[k]], [h.get("alpha_steps") for h in results[k]],
                   marker="o", ms=3, label=k)
    ax[0].set(xlabel="search epoch", ylabel="parameter-free ops in the normal cell (%)", ylim=(-5, 105))
    ax[1].set(xlabel="search epoch", ylabel="alpha steps in the epoch")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(f"DARTS vs DARTS-PRIME ({dataset})", fontsize=9)
    fig.tight_layout()
    fig.savefig(stem + ".png", dpi=110)
    plt.close(fig)
    return rows
