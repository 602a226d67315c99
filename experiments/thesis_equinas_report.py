"""The reports of experiments/thesis_equinas.py: the markdown tables of Tables 3 and 4 and
Fig. 12 (means ± sample std over seeds beside the thesis's numbers, paired differences by seed,
the two BatchNorm protocols side by side) and their figures."""
import statistics

from equinas import GROUPS
from harness.run_dir import md_table
from experiments.seeds import fmt, paired, paired_t, wins


def by_method(rows):
    """{method: its rows}, methods in order of first appearance."""
    groups = {}
    for r in rows:
        groups.setdefault(r["method"], []).append(r)
    return groups


def fig12_summary(rows):
    """Per augmentation group over seeds: test error, z on the groups containing it at init and
    at the end, and the change (wins: seeds where it rose)."""
    out = []
    for m, rs in by_method(rows).items():
        moved = [r["mass_final"] - r["mass_init"] for r in rs]
        out.append([m, len(rs), fmt([r["test_error"] for r in rs]), rs[0]["mass_init"],
                    fmt([r["mass_final"] for r in rs], 3), fmt(moved, 3), f"{wins(moved)} seeds",
                    " / ".join(r["dominant"] for r in rs)])
    return md_table(["augmentation", "seeds", "test error %", "z on ⊇A at init", "z on ⊇A at end",
                     "change", "rose", "largest z per layer at the end, per seed"], out)


def summary(rows, paper, title):
    recal = any(r.get("test_error_recal") is not None for r in rows)
    out = []
    for m, rs in by_method(rows).items():
        p = paper.get(m)
        rec = [r["test_error_recal"] for r in rs if r.get("test_error_recal") is not None]
        out.append([m, f"{p[0]:.2f} ± {p[1]:.2f}" if p else None, fmt([r["test_error"] for r in rs])]
                   + [fmt(rec) if rec else None] * recal
                   + [f"{statistics.mean(r['params'] for r in rs):,.0f}", len(rs),
                      f"{statistics.mean(r['seconds'] for r in rs):.0f}"])
    return title + "\n\n" + md_table(["method", "thesis rotMNIST error %", "measured error % (mean ± std)"]
                                     + ["BatchNorm recalibrated, same networks"] * recal
                                     + ["params", "seeds", "s / seed"], out) + recalibration_effect(rows)


def recalibration_effect(rows):
    """Per method, over seeds: running-statistics error minus the recalibrated copy's (> 0: the
    recalibration helps), and the seed-to-seed std of each evaluation."""
    out = []
    for m, rs in by_method(r for r in rows if r.get("test_error_recal") is not None).items():
        if len(rs) >= 2:
            diffs = [r["test_error"] - r["test_error_recal"] for r in rs]
            out.append([m, fmt(diffs), f"{wins(diffs)} seeds", f"{paired_t(diffs)[1]:.3f}",
                        f"{statistics.stdev(r['test_error'] for r in rs):.2f}",
                        f"{statistics.stdev(r['test_error_recal'] for r in rs):.2f}"])
    return ("\nThe same networks evaluated both ways (running − recalibrated error %; wins: recalibrated "
            "lower)\n\n" + md_table(["method", "difference (mean ± std)", "recalibrated better", "paired t p",
                                     "std running", "std recalibrated"], out)) if out else ""


def paired_table(rows, pairs, key="test_error"):
    """Per-seed paired differences of rows' `key` (a - b > 0: b better), for the pairs present."""
    err = {}
    for r in rows:
        if r.get(key) is not None:
            err.setdefault(r["method"], {})[r["seed"]] = r[key]
    out = []
    for a, b in pairs:
        diffs = paired(err.get(a, {}), err.get(b, {}))
        if len(diffs) >= 2:
            p = paired_t(diffs)[1]
            out.append([f"{a} − {b}", fmt(diffs), f"{wins(diffs)} seeds", f"{p:.3f}"])
    what = "" if key == "test_error" else ", BatchNorm recalibrated"
    return (f"\nPaired by seed{what} (error % of the first minus the second; wins: the second lower)\n\n"
            + md_table(["pair", "difference (mean ± std)", "second better", "paired t p"], out)) if out else ""


def scale_text(sz, d, what):
    """The data, network and protocol of a Table 3/4 run, for its title; `what`: the budget."""
    bn = (f"; BatchNorm statistics recalibrated on {sz['bn_images']} training images before every "
          f"evaluation (not in the thesis)" if sz["bn_images"] else "; running BatchNorm statistics "
          "(the thesis's protocol)")
    return (f"{len(d['train'][0])} training / {len(d['valid'][0])} validation / {len(d['test'][0])} test "
            f"images of {d['train'][0].shape[-1]} x {d['train'][0].shape[-1]} pixels, {sz['layers']} layers, "
            f"{sz['fields']} D4 fields ({8 * sz['fields']} channels, doubled half way), k = {sz['kernel_size']}, {what}{bn}")


def _group_colors():
    return {g: c for g, c in zip(GROUPS, ("#8c8c8c", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728"))}


def plot_error_params(ax, rows):
    colors = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#444444")
    for (m, rs), c in zip(by_method(rows).items(), colors):
        ax.scatter([r["params"] for r in rs], [r["test_error"] for r in rs], color=c, label=m, s=22)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xlabel("parameters")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plot_z(axes, hist, title=""):
    """One panel per layer: z_G over epochs (Figs. 12 and 15)."""
    colors = _group_colors()
    epochs = [e for e, _ in hist]
    for layer, ax in enumerate(axes):
        for gi, g in enumerate(GROUPS):
            ax.plot(epochs, [zs[layer][gi] for _, zs in hist], color=colors[g], label=g, lw=1.2)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}layer {layer + 1}", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0].set_ylabel("z", fontsize=7)


def plot_table3(rows, extras, path, title):
    from harness.plots import _plt
    plt = _plt()
    fig, ax = plt.subplots(1, 3 if extras else 1, figsize=(15 if extras else 5, 4.2), squeeze=False)
    ax = ax[0]
    plot_error_params(ax[0], rows)
    ax[0].set_title("test error vs parameters (Fig. 10)", fontsize=9)
    if not extras:                                # searches=0: the baselines only
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return plt.close(fig)
    seed = min(extras)
    hist = extras[seed]["history"]
    rounds = sorted({h["round"] for h in hist})
    best = [max((h for h in hist if h["round"] == r and h["selected"]), key=lambda h: h["valid_acc"])
            for r in rounds]
    grid = [[GROUPS.index(g) for g in h["groups"]] for h in best]
    ax[1].imshow([list(col) for col in zip(*grid)], aspect="auto", cmap=plt.matplotlib.colors.ListedColormap(
        list(_group_colors().values())), vmin=-0.5, vmax=len(GROUPS) - 0.5, origin="lower")
    for r, h in enumerate(best):
        for layer, g in enumerate(h["groups"]):
            ax[1].text(r, layer, g, ha="center", va="center", fontsize=6, color="white")
    ax[1].set_yticks(range(len(grid[0])), range(1, len(grid[0]) + 1))
    ax[1].set_xlabel("generation")
    ax[1].set_ylabel("layer")
    ax[1].set_title(f"best selected member's groups (seed {seed})", fontsize=9)
    for k, (s, ex) in enumerate(sorted(extras.items())):
        pts = [(h["round"] + 0.12 * k, h["params"]) for h in ex["history"] if h["selected"]]
        ax[2].scatter(*zip(*pts), s=10, label=f"seed {s}")
    ax[2].set_yscale("log")
    ax[2].set_xlabel("generation")
    ax[2].set_ylabel("parameters")
    ax[2].set_title("selected members' parameter counts (Fig. 11)", fontsize=9)
    ax[2].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_z_grid(histories, path, title, first=None):
    """Rows: histories {label: [(epoch, z per layer)]}; columns: layers. `first`: a wide panel on top."""
    from harness.plots import _plt
    plt = _plt()
    layers = len(next(iter(histories.values()))[0][1])
    top = first is not None
    fig = plt.figure(figsize=(1.7 * layers, 1.6 * len(histories) + 0.8 + 2.6 * top))
    gs = fig.add_gridspec(len(histories) + top, layers, height_ratios=[1.6] * top + [1] * len(histories))
    if top:
        first(fig.add_subplot(gs[0, :layers // 2]))
    for r, (label, hist) in enumerate(histories.items()):
        _plot_z([fig.add_subplot(gs[r + top, c]) for c in range(layers)], hist, f"{label}, ")
    handles, labels = fig.axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(GROUPS), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
