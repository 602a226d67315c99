"""Figures of a run: alpha heatmaps, derived cells as graphs, training curves, bar charts.
Each plot function writes `path` and returns its Figure, closed (its artists can still be read)."""
import textwrap
import time

import numpy as np
import torch

import darts
import ops


RULE_COLORS = {"bp": "#444444", "fa": "#1f77b4", "usf": "#2ca02c", "brsf": "#d62728",
               "frsf": "#9467bd", "hebbian": "#ff7f0e", None: "#8c8c8c"}
DPI = 110
REDRAW_EVERY = 60.0                     # seconds between redraws of a run's per-epoch figures
NODE_SIZE = 1900                        # scatter size of a cell-graph node, in points^2
_WORDS = {"acc": "accuracy", "valid": "validation"}
_LAYER_ABBREV = {"cells": "c", "edges": "e", "ops": "o", "blocks": "b", "preprocess0": "pre0",
                 "preprocess1": "pre1", "auxiliary_head": "aux", "features": "f"}
_LAYER_KEY = {"cells": "c: cell", "edges": "e: edge", "ops": "o: op", "preprocess0": "pre: preprocessing",
              "preprocess1": "pre: preprocessing", "blocks": "b: block", "auxiliary_head": "aux: auxiliary head",
              "features": "f: features"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    """Write the figure at DPI, close it and return it."""
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return fig


class Redraw:
    """When a loop redraws its per-epoch figures: after an epoch once REDRAW_EVERY seconds have
    passed since the last drawing, and always after the last epoch or at a stop. A figure costs
    about a second; the numbers it shows are written every epoch (history.json), so a run of
    minute-long epochs redraws every epoch and a run of short ones draws at its end."""

    def __init__(self, every=REDRAW_EVERY):
        self.every, self.last = every, time.time()

    def due(self, final):
        if final or time.time() - self.last >= self.every:
            self.last = time.time()
            return True
        return False


def node_name(n, steps):
    """Cell node n as drawn: inputs $c_{k-2}$, $c_{k-1}$ (0, 1), "node i" (n = i + 2), output $c_{k}$."""
    return {0: r"$c_{k-2}$", 1: r"$c_{k-1}$", steps + 2: r"$c_{k}$"}.get(n, f"node {n - 2}")


def metric_label(key):
    """'train_acc' -> 'train accuracy', 'valid_loss' -> 'validation loss'."""
    return " ".join(_WORDS.get(w, w) for w in key.split("_"))


def short_layer_name(name):
    """Compact module path: 'cells.0.edges.3.ops.5.op.0.op.1' -> 'c0.e3.o5.0.1',
    'cells.2.preprocess0.op.1' -> 'c2.pre0.1', 'stem.0' -> 'stem0', 'blocks.4.conv1' -> 'b4.conv1'."""
    out, prev = [], ""
    for p in name.split("."):
        if p != "op":
            if p.isdigit() and prev and not prev.isdigit() and prev != "op":
                out[-1] += p                              # an index joins the word it indexes
            else:
                out.append(_LAYER_ABBREV.get(p, p))
        prev = p
    return ".".join(out)


def layer_name_key(names):
    """The abbreviations short_layer_name uses for these module paths, e.g. 'c: cell, o: op'."""
    words = {p for n in names for p in n.split(".")}
    return ", ".join(dict.fromkeys(v for k, v in _LAYER_KEY.items() if k in words))


def _runs(labels):
    """[(label, first, last)] of the runs of equal consecutive labels."""
    out = []
    for i, g in enumerate(labels):
        if out and out[-1][0] == g:
            out[-1][2] = i
        else:
            out.append([g, i, i])
    return out


def plot_alphas(weights_normal, weights_reduce, candidates, steps, path, title="", genotype=None):
    """Mixing weights softmax(alpha) of the normal and reduction cells side by side: one row per
    candidate (grouped by op, the rule as sub-label), one column per edge (grouped by the node it
    enters); one diverging colour scale centred at uniform 1/len(candidates). Dot: the argmax of
    the edge; box: the (edge, op) the derived genotype keeps (`genotype`, by default
    darts.derive_genotype of these weights)."""
    plt = _plt()
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle
    cands = list(candidates)
    W = [np.asarray(torch.as_tensor(w).detach().cpu().double()) for w in (weights_normal, weights_reduce)]
    n_e, n_c = W[0].shape
    src = [j for i in range(steps) for j in range(i + 2)]
    dst = [i for i in range(steps) for j in range(i + 2)]
    if len(src) != n_e:                                  # weights of another layout: plain labels
        src, dst, genotype = list(range(n_e)), [0] * n_e, False
    elif genotype is None:
        genotype = darts.derive_genotype(W[0], W[1], cands, steps, steps)
    kept = [set(), set()]
    if genotype:
        for s, edges in enumerate((genotype.normal, genotype.reduce)):
            kept[s] = {(k // 2 * (k // 2 + 3) // 2 + j, cands.index(name))
                       for k, (name, j) in enumerate(edges) if name in cands}
    uniform = 1.0 / n_c
    dev = max(float(np.abs(w - uniform).max()) for w in W) or 0.1 * uniform
    norm = Normalize(uniform - dev, uniform + dev)
    parsed = [ops.parse_candidate(c) for c in cands]
    groups = _runs([op for op, _ in parsed])
    width = min(16.0, max(6.5, 2 * 0.4 * n_e + 3.2))
    fig, axes = plt.subplots(1, 2, sharey=True, figsize=(width, max(4.0, 0.2 * n_c + 1.9)),
                             dpi=DPI, layout="constrained")
    for s, (ax, w, cell) in enumerate(zip(axes, W, ("normal", "reduction"))):
        ax.imshow(w.T, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
        cols = w.argmax(1)
        ax.scatter(range(n_e), cols, s=10, c="k", zorder=3)
        for e, c in kept[s]:
            ax.add_patch(Rectangle((e - 0.5, c - 0.5), 1, 1, fill=False, ec="k", lw=1.4, zorder=4))
        edge_kept = {e for e, _ in kept[s]}
        ax.set_xticks(range(n_e), [node_name(j, steps) if genotype is not False else str(j)
                                   for j in src], fontsize=7)
        for e, lab in enumerate(ax.get_xticklabels()):
            lab.set(fontweight="bold" if e in edge_kept else "normal",
                    color="k" if e in edge_kept or not genotype else "0.45")
        ax.tick_params(axis="x", length=2)
        ax.set_xlabel("input node of the edge", fontsize=8)
        for g, first, last in _runs(dst):
            if first:
                ax.axvline(first - 0.5, color="w", lw=2.5)
            if genotype is not False:
                ax.annotate(f"into node {g}", xy=((first + last) / 2, 1), xycoords=("data", "axes fraction"),
                            xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                            fontsize=7, annotation_clip=False)
        for _, first, _ in groups[1:]:
            ax.axhline(first - 0.5, color="w", lw=2.5)
        ax.set_title(f"{cell} cell", fontsize=9, pad=14)
    ax = axes[0]
    grouped = [last > first for _, first, last in groups for _ in range(first, last + 1)]
    ax.set_yticks(range(n_c), [r if g else c for c, (_, r), g in zip(cands, parsed, grouped)], fontsize=7)
    for lab, (_, r), g in zip(ax.get_yticklabels(), parsed, grouped):
        lab.set_color(RULE_COLORS.get(r, "k") if g else "k")      # a rule sub-label in its colour
    rule_width = max([len(r) for (_, r), g in zip(parsed, grouped) if g] or [0])
    for op, first, last in groups:
        if last > first:
            ax.annotate(op, xy=(0, (first + last) / 2), xycoords=("axes fraction", "data"),
                        xytext=(-10 - 4.3 * rule_width, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=8, annotation_clip=False)
    cb = fig.colorbar(plt.cm.ScalarMappable(norm, "RdBu_r"), ax=axes, fraction=0.05, pad=0.02)
    cb.set_label(f"softmax(α); white = uniform 1/{n_c} = {uniform:.3f}", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    handles = [Line2D([], [], ls="", marker="o", ms=3, color="k", label="argmax of the edge"),
               Rectangle((0, 0), 1, 1, fill=False, ec="k", lw=1.4,
                         label="kept in the derived genotype (its input in bold black)")]
    fig.legend(handles=handles[:1 + bool(genotype)], loc="outside lower center", ncol=2,
               fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _arc(p0, p1, rad, t):
    """Points at parameters t of matplotlib's arc3 curve from p0 to p1 (display coordinates):
    the quadratic Bezier with control point mid + rad * (dy, -dx)."""
    (x0, y0), (x1, y1) = p0, p1
    c = np.array([(x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)])
    t = np.asarray(t, dtype=float)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * t * (1 - t) * c + t ** 2 * np.asarray(p1)


def _bend(p0, p1, others, radius, taken):
    """The arc3 rad, smallest first, whose curve from p0 to p1 keeps clear of the nodes at
    `others` (display coordinates); else the one with the most clearance."""
    best = (-1.0, 0.0)
    for rad in (0.0, 0.12, -0.12, 0.25, -0.25, 0.4, -0.4):
        if rad in taken:
            continue
        pts = _arc(p0, p1, rad, np.linspace(0.02, 0.98, 60))
        clear = min((float(np.hypot(*(pts - q).T).min()) for q in others), default=np.inf)
        if clear > 2.2 * radius:
            return rad
        best = max(best, (clear, rad))
    return best[1]


def _hits_circle(bb, centre, r):
    """Whether box bb (display) and the circle overlap."""
    x = min(max(centre[0], bb.x0), bb.x1)
    y = min(max(centre[1], bb.y0), bb.y1)
    return np.hypot(x - centre[0], y - centre[1]) < r


def plot_cell(genotype, cell, path):
    """The derived cell as a graph: inputs c_{k-2}, c_{k-1}, nodes 0..n-1, output c_{k}; each
    edge labelled with its op and coloured by its learning rule. Edges bend around nodes in their
    way, and each label sits at the point along its edge that clears every node and label."""
    plt = _plt()
    edges = genotype.normal if cell == "normal" else genotype.reduce
    concat = genotype.normal_concat if cell == "normal" else genotype.reduce_concat
    steps = len(edges) // 2
    out = steps + 2
    pos = {0: (0.0, 1.0), 1: (0.0, -1.0)}
    for i in range(steps):
        pos[i + 2] = (1.0 + i, (0.55 + 0.15 * i) * (1 if i % 2 == 0 else -1))
    pos[out] = (steps + 1.0, 0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 2.3 * (steps + 2)), 4.8), dpi=DPI)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.12, top=0.92)   # fixed: labels placed in pixels
    ax.set_xlim(-0.45, steps + 1.45)
    ax.set_ylim(-1.55, 1.45)
    ax.axis("off")
    px = {n: ax.transData.transform(p) for n, p in pos.items()}
    radius = np.sqrt(NODE_SIZE) / 2 * DPI / 72
    shrink = np.sqrt(NODE_SIZE) / 2 + 1                      # points: arrows end at the circles
    renderer = fig.canvas.get_renderer()
    taken, curves, placed = {}, [], []
    links = [(name, j, k // 2 + 2) for k, (name, j) in enumerate(edges)] + [(None, i, out) for i in concat]
    for name, j, i in links:
        rad = _bend(px[j], px[i], [p for n, p in px.items() if n not in (i, j)], radius,
                    taken.setdefault((j, i), set()))
        taken[(j, i)].add(rad)
        curves.append(_arc(px[j], px[i], rad, np.linspace(0, 1, 80)))
        rule = ops.parse_candidate(name)[1] if name else None
        ax.annotate("", xy=pos[i], xytext=pos[j], arrowprops=dict(
            arrowstyle="-|>", color=RULE_COLORS[rule] if name else "#b0b0b0", lw=1.8 if name else 1,
            ls="-" if name else ":", connectionstyle=f"arc3,rad={rad}", shrinkA=shrink, shrinkB=shrink))
    for k, (name, j, i) in enumerate(links[:len(edges)]):
        op, rule = ops.parse_candidate(name)
        text = ax.text(0, 0, op + ("" if rule is None else f"\n[{rule}]"), fontsize=7, ha="center",
                       va="center", color=RULE_COLORS[rule], zorder=5,
                       bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))
        best = None
        for t in (0.5, 0.42, 0.58, 0.35, 0.65, 0.28, 0.72, 0.22, 0.78):
            xy = curves[k][round(t * 79)]
            text.set_position(ax.transData.inverted().transform(xy))
            bb = text.get_window_extent(renderer).padded(3)
            cost = (100 * sum(_hits_circle(bb, p, radius) for p in px.values())
                    + 10 * sum(bb.overlaps(b) for b in placed) + abs(t - 0.5)
                    + 3 * sum(bool(bb.count_contains(c)) for m, c in enumerate(curves) if m != k))
            if best is None or cost < best[0]:
                best = (cost, xy, bb)
        text.set_position(ax.transData.inverted().transform(best[1]))
        placed.append(best[2])
    xs, ys = zip(*(pos[n] for n in pos))
    ax.scatter(xs, ys, s=NODE_SIZE, c=["#fff3c4" if n in (0, 1, out) else "#cfe3ff" for n in pos],
               edgecolors="k", zorder=3)
    for n, (x, y) in pos.items():
        ax.text(x, y, node_name(n, steps), ha="center", va="center", zorder=4,
                fontsize=10 if n in (0, 1, out) else 8)
    present = [r for r in RULE_COLORS if any(ops.parse_candidate(name)[1] == r for name, _ in edges)]
    handles = [plt.Line2D([], [], color=RULE_COLORS[r], lw=2, label=r or "no rule (pool, none)")
               for r in present]
    handles.append(plt.Line2D([], [], color="#b0b0b0", lw=1, ls=":", label=r"concatenated into $c_{k}$"))
    ax.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
              bbox_to_anchor=(0.5, 0.0))
    ax.set_title(f"{cell} cell", fontsize=10)
    return _save(fig, path)


def plot_history(history, path, keys):
    """Per-epoch metrics `keys` (entries lacking a key are skipped): accuracies in the left
    panel, losses in the right one, a distinct colour per curve (evaluation curves dashed),
    integer epoch ticks, the legend below the panels."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator
    keys = [k for k in keys if any(h.get(k) is not None for h in history)]
    panels = [g for g in ([k for k in keys if "loss" not in k], [k for k in keys if "loss" in k]) if g] or [[]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 + 3.2 * len(panels), 3.6), dpi=DPI,
                             layout="constrained", squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    epochs = [h["epoch"] + 1 for h in history]
    for ax, panel in zip(axes[0], panels):
        for k in panel:
            pts = [(h["epoch"] + 1, h[k]) for h in history if h.get(k) is not None]
            ax.plot(*zip(*pts), marker="o" if "loss" not in k else "s", ms=4,
                    ls="-" if k.startswith("train") else "--", color=colors[keys.index(k) % len(colors)],
                    label=metric_label(k))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if epochs and min(epochs) == max(epochs):
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_ylabel("loss" if panel and "loss" in panel[0] else
                      "accuracy (%)" if all("acc" in k for k in panel) else "value", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    if keys:
        fig.legend(*axes[0][0].get_legend_handles_labels() if len(panels) == 1 else
                   [sum(x, []) for x in zip(*(a.get_legend_handles_labels() for a in axes[0]))],
                   loc="outside lower center", ncol=min(4, len(keys)), fontsize=8, frameon=False)
    return _save(fig, path)


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
    return _save(fig, path)


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
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, 100 if max((v or 0) for vs in series.values() for v in vs) <= 100 else None)
    ncol = 2 if max(map(len, series)) > 20 else min(4, len(series))
    lines = max(str(g).count("\n") + 1 for g in groups)          # below the (wrapped) group labels
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.05 - 0.06 * lines), ncol=ncol)
    fig.tight_layout()
    return _save(fig, path)
