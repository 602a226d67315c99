"""The figures a run writes: sizes, label fonts and angles, colour scales, markers, node names,
label placement, curves and legends, checked on the returned (closed) Figures' artists."""
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from experiments import bionas_paper as BE
from harness import monitor  # noqa: E402
import darts  # noqa: E402
import ops  # noqa: E402
from harness import plots  # noqa: E402

pytestmark = pytest.mark.real_figures      # the figures rendered, every one

CELL_GENOTYPES = [
    darts.Genotype(   # 4 nodes, edges from both inputs into later nodes (labels pass by nodes)
        normal=[("sep_conv_5x5_fa", 0), ("skip_connect_brsf", 1), ("sep_conv_3x3_frsf", 0),
                ("avg_pool_3x3", 2), ("dil_conv_5x5_fa", 0), ("sep_conv_5x5_brsf", 3),
                ("sep_conv_3x3_brsf", 1), ("dil_conv_3x3_frsf", 3)],
        normal_concat=[2, 3, 4, 5],
        reduce=[("sep_conv_3x3_brsf", 0), ("skip_connect_usf", 1), ("skip_connect_brsf", 2),
                ("dil_conv_3x3_usf", 1), ("dil_conv_3x3_fa", 3), ("dil_conv_5x5_frsf", 0),
                ("dil_conv_3x3_usf", 3), ("dil_conv_3x3_frsf", 2)],
        reduce_concat=[2, 3, 4, 5]),
    darts.Genotype(   # 2 nodes, the measured quick run's genotype
        normal=[("sep_conv_5x5_frsf", 1), ("dil_conv_3x3_fa", 0), ("sep_conv_3x3_brsf", 1),
                ("dil_conv_5x5_fa", 0)], normal_concat=[2, 3],
        reduce=[("sep_conv_3x3_usf", 0), ("sep_conv_5x5_usf", 1), ("avg_pool_3x3", 2),
                ("sep_conv_5x5_brsf", 0)], reduce_concat=[2, 3]),
]


def _figure(result):
    assert isinstance(result, Figure), "plot functions return their Figure"
    result.canvas.draw()
    return result


def _tick_labels(ax):
    return [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_visible() and t.get_text()]


def _hits_circle(bb, centre, r):
    x, y = np.clip(centre[0], bb.x0, bb.x1), np.clip(centre[1], bb.y0, bb.y1)
    return np.hypot(x - centre[0], y - centre[1]) < r


@pytest.mark.slow
@pytest.mark.parametrize("steps", [2, 4])
def test_alphas_figure_is_readable_and_centred_at_uniform(tmp_path, steps):
    torch.manual_seed(steps)
    cands = ops.search_space()
    k = sum(2 + i for i in range(steps))
    wn, wr = (F.softmax(1e-3 * torch.randn(k, len(cands)) + s * torch.randn(k, len(cands)), -1)
              for s in (0.05, 0.02))                           # near uniform, as early in a search
    path = str(tmp_path / "alphas.png")
    fig = _figure(plots.plot_alphas(wn, wr, cands, steps, path, "search, epoch 1"))
    h, w = mpimg.imread(path).shape[:2]                        # the written image
    assert 500 <= w <= 1800 and h >= 300 and max(w, h) / min(w, h) <= 4, (w, h)
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2
    for ax in fig.axes:
        for t in _tick_labels(ax):
            assert t.get_fontsize() >= 7 and t.get_rotation() % 180 == 0, t.get_text()
    # one colour scale for both cells, centred at uniform, spanning the deviations
    norms = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in heat}
    assert len(norms) == 1
    vmin, vmax = min(norms)
    dev = max(float((x - 1 / len(cands)).abs().max()) for x in (wn, wr))
    assert (vmin + vmax) / 2 == pytest.approx(1 / len(cands)) and (vmax - vmin) / 2 == pytest.approx(dev)
    assert any("uniform" in ax.get_ylabel() for ax in fig.axes)        # the colorbar says so
    # candidates named (rules as sub-labels of their op) and every edge's input named
    texts = {t.get_text() for ax in fig.axes for t in ax.texts + _tick_labels(ax)}
    assert {"none", "max_pool_3x3", "sep_conv_3x3", "fa", "brsf", r"$c_{k-2}$"} <= texts
    # argmax of each edge dotted; the (edge, op) pairs of the derived genotype boxed
    g = darts.derive_genotype(wn, wr, cands, steps, steps)
    for ax, W, edges in zip(heat, (wn, wr), (g.normal, g.reduce)):
        dots = {tuple(p) for c in ax.collections if isinstance(c, PathCollection) for p in c.get_offsets()}
        assert dots == {(e, int(W[e].argmax())) for e in range(k)}
        boxes = {(p.get_x() + 0.5, p.get_y() + 0.5) for p in ax.patches if isinstance(p, Rectangle)}
        assert boxes == {(kk // 2 * (kk // 2 + 3) // 2 + j, cands.index(name)) for kk, (name, j) in enumerate(edges)}


@pytest.mark.slow
def test_alphas_of_the_darts_space_and_of_crb_weights(tmp_path):
    cands = ops.search_space(rules=("bp",), skip_rules=("bp",))             # the 8 DARTS ops
    fig = _figure(plots.plot_alphas(torch.full((14, 8), 1 / 8), torch.full((14, 8), 1 / 8), cands, 4,
                                    str(tmp_path / "a.png")))                 # exactly uniform
    assert {"sep_conv_3x3", "skip_connect"} <= {t.get_text() for t in fig.axes[0].get_yticklabels()}
    norm = fig.axes[0].images[0].norm                     # exactly uniform: still a usable scale
    assert norm.vmax > norm.vmin and (norm.vmin + norm.vmax) / 2 == pytest.approx(1 / 8)
    assert all(t.get_rotation() == 0 for ax in fig.axes for t in _tick_labels(ax))
    nonone = ops.search_space(zero=False)
    w = torch.rand(5, len(nonone))                                          # CRB: clamp, no `none`
    assert isinstance(plots.plot_alphas(w, w, nonone, 2, str(tmp_path / "b.png")), Figure)
    assert os.path.exists(tmp_path / "b.png")


@pytest.mark.slow
@pytest.mark.parametrize("genotype", CELL_GENOTYPES)
@pytest.mark.parametrize("cell", ["normal", "reduce"])
def test_cell_graph_names_nodes_and_keeps_edge_labels_off_them(tmp_path, genotype, cell):
    fig = _figure(plots.plot_cell(genotype, cell, str(tmp_path / "cell.png")))
    ax = fig.axes[0]
    edges = getattr(genotype, cell)
    texts = [t.get_text() for t in ax.texts]
    assert {r"$c_{k-2}$", r"$c_{k-1}$", r"$c_{k}$"} <= set(texts)            # mathtext, not raw
    assert {f"node {i}" for i in range(len(edges) // 2)} <= set(texts)
    nodes = [c for c in ax.collections if isinstance(c, PathCollection)]
    centres = np.concatenate([ax.transData.transform(c.get_offsets()) for c in nodes])
    radii = np.concatenate([np.sqrt(np.broadcast_to(c.get_sizes(), (len(c.get_offsets()),))) / 2
                            * fig.dpi / 72 for c in nodes])
    assert len(centres) == len(edges) // 2 + 3
    ops_ = {ops.parse_candidate(name)[0] for name, _ in edges}
    labels = [t for t in ax.texts if t.get_text().split("\n")[0] in ops_]
    assert len(labels) == len(edges)
    boxes = []
    for t in labels:
        bb = (t.get_bbox_patch() or t).get_window_extent()
        assert not any(_hits_circle(bb, c, r) for c, r in zip(centres, radii)), t.get_text()
        rule = t.get_text().split("\n[")[1].rstrip("]") if "\n[" in t.get_text() else None
        assert matplotlib.colors.to_hex(t.get_color()) == plots.RULE_COLORS[rule]
        boxes.append(bb)
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1:])
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {r or "no rule (pool, none)" for r in (ops.parse_candidate(n)[1] for n, _ in edges)} <= legend


def _history_axes(fig):
    return [ax for ax in fig.axes if ax.get_lines()]


def test_history_curves_have_integer_epochs_distinct_colours_and_the_losses(tmp_path):
    hist = [dict(epoch=e, train_acc=40 + 9 * e, valid_acc=38 + 8 * e, train_loss=2 - 0.4 * e,
                 valid_loss=2.1 - 0.3 * e) for e in range(3)]
    del hist[1]["valid_loss"]                                # an old run's entry: skipped
    keys = ["train_acc", "valid_acc", "train_loss", "valid_loss"]
    fig = _figure(plots.plot_history(hist, str(tmp_path / "curves.png"), keys))
    lines = [ln for ax in _history_axes(fig) for ln in ax.get_lines()]
    assert sorted(ln.get_label() for ln in lines) == sorted(
        ["train accuracy", "validation accuracy", "train loss", "validation loss"])
    assert len({matplotlib.colors.to_hex(ln.get_color()) for ln in lines}) == len(lines)
    by = {ln.get_label(): ln for ln in lines}
    assert list(by["validation loss"].get_xdata()) == [1, 3]
    assert list(by["validation loss"].get_ydata()) == pytest.approx([2.1, 1.5])
    for ax in _history_axes(fig):
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
        for t in _tick_labels(ax):
            assert t.get_fontsize() >= 7
    legend_bb = [lg.get_window_extent() for lg in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]]
    assert legend_bb and not any(lb.overlaps(ax.get_window_extent()) for lb in legend_bb for ax in fig.axes)
    # a retraining's keys; the first epoch alone still shows a point at epoch 1
    one = [dict(epoch=0, train_acc=50.0, test_acc=48.0, train_loss=1.2, test_loss=1.3)]
    fig = _figure(plots.plot_history(one, str(tmp_path / "one.png"), ["train_acc", "test_acc", "train_loss", "test_loss"]))
    lines = [ln for ax in _history_axes(fig) for ln in ax.get_lines()]
    assert {ln.get_label() for ln in lines} == {"train accuracy", "test accuracy", "train loss", "test loss"}
    for ax in _history_axes(fig):
        lo, hi = ax.get_xlim()
        assert lo < 1 < hi
        assert [t for t in ax.get_xticks() if lo <= t <= hi] == [1]
        for ln in ax.get_lines():
            assert ln.get_marker() not in (None, "", "None") and list(ln.get_xdata()) == [1]


def _small_summary():
    torch.manual_seed(0)
    net = darts.NetworkEval(4, 10, 3, CELL_GENOTYPES[1], auxiliary=False, in_channels=1)
    mon = monitor.LayerMonitor(net)
    for epoch in range(2):
        for _ in range(2):
            net.zero_grad()
            F.cross_entropy(net(torch.randn(2, 1, 8, 8)), torch.randint(0, 10, (2,))).backward()
            mon.step()
        mon.end_epoch(epoch)
    return mon.summary()


@pytest.mark.slow
def test_layer_figure_names_layers_and_colours_them_by_rule(tmp_path):
    summary = _small_summary()
    names, rules_ = summary["names"], summary["rules"]
    assert plots.short_layer_name("cells.0.edges.3.ops.5.op.0.op.1") == "c0.e3.o5.0.1"
    assert plots.short_layer_name("cells.2.preprocess0.op.1") == "c2.pre0.1"
    fig = _figure(monitor.plot_layers(summary, str(tmp_path / "layers.png"), "run: epoch 2"))
    ax = next(a for a in fig.axes if any(t.get_text() for t in a.get_xticklabels()) and a.get_yscale() == "linear"
              and a.get_lines())
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    locs = [int(round(x)) for x in ax.get_xticks()]
    assert len(labels) == len(names) == len(locs)                           # few layers: each named
    for i, t in zip(locs, labels):
        assert t.get_text() == plots.short_layer_name(names[i])
        assert matplotlib.colors.to_hex(t.get_color()) == plots.RULE_COLORS[rules_[i]]
        assert t.get_fontsize() >= 7
    assert {"stem0", "classifier", "c0.o0.0.1"} <= {t.get_text() for t in labels}
    legend = {t.get_text() for lg in fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()]
              for t in lg.get_texts()}
    assert {f"rule {r}" for r in set(rules_)} <= legend and {"epoch 1", "epoch 2"} <= legend
    assert any(a.get_yscale() == "log" and a.get_lines() for a in fig.axes)    # Eq. 8 variance
    assert any(a.patches for a in fig.axes)                                   # weight histogram


@pytest.mark.slow
def test_layer_figure_of_a_supernet_names_a_readable_subset(tmp_path):
    n = 600
    names = ["stem.0"] + [f"cells.{c}.edges.{e}.ops.{o}.op.1" for c in range(4) for e in range(14)
                          for o in range(14)][:n - 2] + ["classifier"]
    rules_ = ["bp"] + [("fa", "usf", "brsf", "frsf")[i % 4] for i in range(n - 2)] + ["bp"]
    hist = [dict(epoch=0, grad_variance=list(np.logspace(-6, -2, n)), alignment=[40.0] * n)]
    weights = dict(counts=[1, 5, 1], edges=[-1, -0.3, 0.3, 1], std=0.3, kurtosis=3.0)
    fig = _figure(monitor.plot_layers(dict(names=names, rules=rules_, history=hist, weights=weights),
                                 str(tmp_path / "layers.png")))
    h, w = mpimg.imread(str(tmp_path / "layers.png")).shape[:2]
    assert w <= 1800 and h <= 1000
    ax = next(a for a in fig.axes if any(t.get_text() for t in a.get_xticklabels()) and a.get_lines())
    labels = [t for t in ax.get_xticklabels() if t.get_text()]
    assert 20 <= len(labels) < n and labels[0].get_text() == "stem0"
    boxes = [t.get_window_extent() for t in labels]
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))          # no label over another


def test_per_epoch_figures_are_redrawn_once_a_minute_and_always_at_the_end(monkeypatch):
    """Catches: the last epoch (or a stop) not drawn when its figure is not yet due; a throttle
    that never redraws during a long run; a clock not reset by a drawing."""
    clock = [1000.0]
    monkeypatch.setattr(plots.time, "time", lambda: clock[0])
    redraw = plots.Redraw()
    drawn = []
    for epoch, seconds in enumerate([20, 20, 25, 10, 70, 5]):     # epoch lengths
        clock[0] += seconds
        drawn.append(redraw.due(final=epoch == 5))
    # 20, 40, 65 s since the start -> draw at epoch 2; 10 s later no; 80 s later yes; last: always
    assert drawn == [False, False, True, False, True, True]
