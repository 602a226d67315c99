"""Reports of the plasticity experiments over seeds: summaries (mean ± sample std), the
NAME.md/.csv and NAME_seeds.md/.csv tables, NAME.png with error bars (± std over seeds) and the
Fig. 4 picture of adversarial images. Used by experiments/plasticity_paper.py's run()."""
import math
import textwrap

import torch

from harness.plots import _plt, plot_bars
from harness.run_dir import write_table
from experiments.seeds import mean_std


def _r(x):
    """2 decimals, or 3 significant digits below 0.1 (tiny theory quantities)."""
    return round(x, 2) if abs(x) >= 0.1 or x == 0 else float(f"{x:.3g}")


def summarize(rows, keys, metrics):
    """Group rows by `keys`; per metric its mean, sample std (ddof 1; 0 for one seed), the
    per-seed values (in seed order) and the number of seeds."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        d = dict(zip(keys, key), seeds=len(rs))
        for m in metrics:
            v = [float(r[m]) for r in rs if r.get(m) is not None]
            if v:
                mean, std = mean_std(v)
                d[m + "_mean"], d[m + "_std"] = _r(mean), _r(std)
                d[m + "_values"] = " ".join(f"{x:g}" for x in v)
        for k in rs[0]:
            if k.startswith("paper") or k in ("rule_table", "halfspace_rule"):
                d[k] = rs[0][k]
        out.append(d)
    return out


def _ms(r, m):
    return f"{r[m + '_mean']} ± {r[m + '_std']}" if m + "_mean" in r else None


SPECS = {  # title, keys, metrics, plot: ("bars", group key, series key(s) or None, metric) / ("curves", series, x, metric)
    "table2": ("Table 2: test accuracy and robust accuracy (%), |V|=1000, k=500", ["model"],
               ["accuracy", "robust_eps2", "robust_eps4", "mean_abs_W", "zero_grad_share"], ("bars", "model", None, "accuracy")),
    "convergence": ("Fig. 2: test accuracy (%) against examples seen, T=1, |V|=1000", ["method", "examples"],
                    ["accuracy"], ("curves", "method", "examples", "accuracy")),
    "generalization": ("Fig. 3: rules learned on Halfspace (T=1) and ReLU1 (T=3), fixed, used everywhere (test/train %)",
                       ["dataset", "model", "rules"], ["test", "train", "zero_grad_share"], ("bars", "dataset", ("model", "rules"), "test")),
    "robustness": ("Fig. 5: robust accuracy (%) under the targeted L2 attack, |V|=1000, k=500", ["model", "eps"],
                   ["robust_accuracy"], ("curves", "model", "eps", "robust_accuracy")),
    "fig4": ("Fig. 4: smallest L2 radius that breaks an image (targeted L2 attack)", ["model"],
             ["median_min_eps", "mean_min_eps_broken", "unbroken_at_8"], ("bars", "model", None, "median_min_eps")),
    "fig6": ("Fig. 6: updates on all examples vs on mistakes, T=3, |V|=1000 (test accuracy %)", ["scheme", "examples"],
             ["accuracy", "zero_grad_share"], ("curves", "scheme", "examples", "accuracy")),
    "a4": ("A.4: schemes and the MSE-optimal output rule, T=1, |V|=1000, one epoch (test accuracy %)",
           ["dataset", "rule", "update", "rows"], ["accuracy"], ("bars", "dataset", ("rule", "update", "rows"), "accuracy")),
    "theory": ("Theorems 1-4, App. B, App. C: checks (holds = fraction of seeds)", ["check", "quantity"],
               ["value", "bound", "holds"], None),
}


def _errorbar_curves(summary, series_key, x, m, path, xlabel, title, rows=()):
    """Mean ± std over seeds per series, each seed's own curve faint behind it (a collapsed seed
    shows as its own line instead of only widening the bars)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, 3.9))
    for s in dict.fromkeys(r[series_key] for r in summary):
        pts = sorted((r[x], r[m + "_mean"], r[m + "_std"]) for r in summary if r[series_key] == s)
        line = ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", ms=3,
                           capsize=2, label=s)
        for seed in dict.fromkeys(r["seed"] for r in rows if r[series_key] == s):
            own = sorted((r[x], float(r[m])) for r in rows if r[series_key] == s and r["seed"] == seed)
            ax.plot([p[0] for p in own], [p[1] for p in own], lw=0.7, alpha=0.3, color=line[0].get_color())
    ax.set(xlabel=xlabel, ylabel=f"{m.replace('_', ' ')} (%)", title=textwrap.fill(title, 100))
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def adversarial_image(net, x, y, eps, steps=20):
    """The targeted L2 attack's image (attacks.targeted_l2) with the step of the plasticity
    attack runs (plasticity_attack): alpha = (eps / 4) / |grad_x (z_y - z_runner-up)|, for the
    Fig. 4 picture."""
    import attacks
    if eps <= 0:
        return x
    xg = x.clone().requires_grad_(True)
    z = net(xg)
    other = z.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
    g, = torch.autograd.grad((z.gather(1, y[:, None]) - z.gather(1, other[:, None])).sum(), xg)
    return attacks.targeted_l2(net, x, y, eps, eps / 4 / float(g.norm().clamp_min(1e-12)), steps).detach()


def _fig4_picture(X, y, pics, path, side):
    plt = _plt()
    n = len(X)
    fig, axes = plt.subplots(1 + len(pics), n, figsize=(1.3 * n, 1.45 * (1 + len(pics))), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(X[j].reshape(side, side).cpu(), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title("original", fontsize=6)
        for i, (name, (eps, net)) in enumerate(pics.items(), 1):
            e = float(eps[j]) if math.isfinite(float(eps[j])) else 8.0
            x_adv = adversarial_image(net, X[j:j + 1], y[j:j + 1], e)
            axes[i, j].imshow(x_adv[0].reshape(side, side).cpu(), cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_title(f"{name[:24]}\nε={e:.2f}", fontsize=5)
    for a in axes.flat:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(name, rows, stem, scale, label):
    """Write NAME_seeds.md/.csv, NAME.md/.csv and NAME.png for the rows so far; returns the summary."""
    title, keys, metrics, plot = SPECS[name]
    write_table(rows, [(k, lambda r, k=k: r.get(k)) for k in dict.fromkeys(k for r in rows for k in r)],
                stem + "_seeds", f"{title}: every seed ({scale}, {label})")
    summary = summarize(rows, keys, metrics)
    paper = [k for k in dict.fromkeys(k for r in summary for k in r) if k.startswith("paper") or k in ("rule_table", "halfspace_rule")]
    seeds = sorted({r["seed"] for r in rows})
    cols = [(k, lambda r, k=k: r[k]) for k in keys] + [(k.replace("_", " "), lambda r, k=k: r.get(k)) for k in paper]
    cols += [(f"{m.replace('_', ' ')} (mean ± std)", lambda r, m=m: _ms(r, m)) for m in metrics]
    cols.append(("per seed", lambda r: " / ".join(r.get(m + "_values", "") for m in metrics[:1])))
    write_table(summary, cols, stem, f"{title} ({scale}, {label}; seeds {', '.join(map(str, seeds))}; "
                f"mean ± sample std over seeds)")
    if plot and plot[0] == "bars":
        _, gk, sk, m = plot
        groups = list(dict.fromkeys(r[gk] for r in summary))
        sname = lambda r: m if sk is None else ", ".join(str(r[k]) for k in ((sk,) if isinstance(sk, str) else sk))
        series = list(dict.fromkeys(sname(r) for r in summary))
        get = lambda g, s, f: next((r.get(f) for r in summary if r[gk] == g and sname(r) == s), None)
        vals = {s: [get(g, s, m + "_mean") for g in groups] for s in series}
        if any(r.get("paper_accuracy") is not None for r in summary) and m == "accuracy":
            vals["paper"] = [get(g, series[0], "paper_accuracy") for g in groups]
        plot_bars([textwrap.fill(str(g), 16) for g in groups], vals, stem + ".png",
                  m.replace("_", " "), f"{title} ({label})",
                  errors={s: [get(g, s, m + "_std") or 0 for g in groups] for s in series})
    elif plot:
        _errorbar_curves(summary, plot[1], plot[2], plot[3], stem + ".png", plot[2],
                         f"{title} ({label}; ± std over {len(seeds)} seeds, faint: each seed)", rows)
    return summary
