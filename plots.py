"""Figures of a run: alpha heatmaps, derived cells as graphs, training curves, bar charts."""
import numpy as np
import torch

import ops


RULE_COLORS = {"bp": "#444444", "fa": "#1f77b4", "usf": "#2ca02c", "brsf": "#d62728",
               "frsf": "#9467bd", "hebbian": "#ff7f0e", None: "#8c8c8c"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_alphas(weights_normal, weights_reduce, candidates, steps, path, title=""):
    """softmax(alpha) per edge (rows) and candidate (columns), normal and reduction cells."""
    plt = _plt()
    edges = [f"{j}->{i + 2}" for i in range(steps) for j in range(i + 2)]
    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.42 * len(candidates) * 2, 1.5 + 0.3 * len(edges)))
    for ax, w, name in zip(axes, (weights_normal, weights_reduce), ("normal", "reduce")):
        w = np.asarray(torch.as_tensor(w).detach().cpu())
        im = ax.imshow(w, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(candidates)), candidates, rotation=90, fontsize=7)
        ax.set_yticks(range(len(edges)), edges, fontsize=7)
        best = w.argmax(1)
        for r, c in enumerate(best):
            ax.text(c, r, "*", ha="center", va="center", color="white", fontsize=9)
        ax.set_title(f"{name} cell: softmax(alpha)")
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cell(genotype, cell, path):
    """The derived cell as a graph: inputs c_{k-2}, c_{k-1}, nodes 0..n-1, output c_{k};
    each edge labelled with its op and coloured by its learning rule."""
    plt = _plt()
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    steps = len(edges) // 2
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(steps):
        pos[i + 2] = (1.0 + i, 1.2 * (1 if i % 2 == 0 else -1) * (0.4 + 0.15 * i))
    out = steps + 2
    pos[out] = (steps + 1.0, 0.0)
    names = {0: "c_{k-2}", 1: "c_{k-1}", out: "c_{k}"}
    fig, ax = plt.subplots(figsize=(2.2 * (steps + 2), 4.2))
    for k, (name, j) in enumerate(edges):
        i = k // 2 + 2
        op, rule = ops.parse_candidate(name)
        (x0, y0), (x1, y1) = pos[j], pos[i]
        bend = 0.25 if k % 2 else -0.25
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(
            arrowstyle="-|>", color=RULE_COLORS[rule], lw=1.8,
            connectionstyle=f"arc3,rad={bend}", shrinkA=14, shrinkB=14))
        # midpoint of matplotlib's arc3 Bezier: mid + rad/2 * (dy, -dx)
        xm, ym = (x0 + x1) / 2 + bend / 2 * (y1 - y0), (y0 + y1) / 2 - bend / 2 * (x1 - x0)
        ax.text(xm, ym, op + ("" if rule is None else f"\n[{rule}]"), fontsize=7, ha="center",
                va="center", color=RULE_COLORS[rule],
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for i in concat:
        ax.annotate("", xy=pos[out], xytext=pos[i], arrowprops=dict(
            arrowstyle="-|>", color="#bbbbbb", lw=1, shrinkA=14, shrinkB=14))
    for n, (x, y) in pos.items():
        ax.scatter([x], [y], s=1500, c="#fff3c4" if n in names else "#cfe3ff", edgecolors="k",
                   zorder=3)
        ax.text(x, y, names.get(n, str(n - 2)), ha="center", va="center", fontsize=7, zorder=4)
    handles = [plt.Line2D([], [], color=c, lw=2, label=r or "no rule") for r, c in RULE_COLORS.items()]
    ax.legend(handles=handles, loc="upper center", ncol=7, fontsize=7, frameon=False,
              bbox_to_anchor=(0.5, -0.02))
    ax.margins(0.08, 0.12)
    ax.set_title(f"{cell} cell")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(history, path, keys):
    """Curves of the per-epoch metrics `keys` (accuracies left axis, losses right)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ep = [h["epoch"] + 1 for h in history]
    ax2 = ax.twinx()
    for k in keys:
        (ax2 if "loss" in k else ax).plot(ep, [h[k] for h in history], marker="o", ms=3,
                                          ls="--" if "loss" in k else "-", label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax2.set_ylabel("loss")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves, path, xlabel, ylabel, title="", logx=False):
    """Line plot of {label: [(x, y), ...]} (e.g. robust accuracy against epsilon)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, pts in curves.items():
        xs, ys = zip(*pts) if pts else ((), ())
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(groups, series, path, ylabel, title="", errors=None):
    """Grouped bar chart: groups (x labels), series {label: [value per group]} (None = absent),
    optional errors {label: [std per group]}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups)), 4.0))
    width = 0.8 / max(1, len(series))
    for i, (label, vals) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ys = [np.nan if v is None else v for v in vals]
        err = None if errors is None or label not in errors else errors[label]
        ax.bar(xs, ys, width, label=label, yerr=err, capsize=2)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, 100 if max((v or 0) for vs in series.values() for v in vs) <= 100 else None)
    ncol = 2 if max(map(len, series)) > 20 else min(4, len(series))
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=ncol)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
