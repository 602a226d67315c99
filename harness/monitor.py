"""The layer monitor of a retraining (BioNAS Sec. 4.1, Eq. 8, Figs. 5-7): per rule layer and
epoch, the variance of the weight gradient across the epoch's mini-batches and the angle between
W and its feedback B; at the end, the histogram of the weights. The retraining writes them to
layers.json and draws layers.png."""
import numpy as np
import torch

import rules
from harness.plots import DPI, RULE_COLORS, _plt, _save, layer_name_key, short_layer_name


class LayerMonitor:
    """Per rule layer (convolutions and linear layers, in module order):

    grad_variance  Eq. 8 for each weight, Var = (1/n) sum_i (g_i - mean_i g_i)^2 over the n
                   mini-batches of the epoch (g_i the layer's weight gradient before clipping),
                   averaged over the layer's weights (Welford's running update, float64)
    alignment      the angle in degrees between W and the feedback B at the end of the epoch
    """

    def __init__(self, model):
        self.names, self.layers = zip(*[(n, m) for n, m in model.named_modules()
                                        if isinstance(m, rules.RULE_LAYERS)])
        self.rules = [m.rule for m in self.layers]
        self.history = []                           # one dict per finished epoch
        self._reset()

    def _reset(self):
        self.n, self.mean, self.m2 = 0, None, None

    @torch.no_grad()
    def step(self):
        """Record the current weight gradients (call after backward, before clipping)."""
        g = [(m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight))
             .detach().double().flatten() for m in self.layers]
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = [x.clone() for x in g], [torch.zeros_like(x) for x in g]
            return
        for x, mu, m2 in zip(g, self.mean, self.m2):
            d = x - mu
            mu.add_(d / self.n)
            m2.add_(d * (x - mu))

    def end_epoch(self, epoch):
        """Close the epoch: append and return its per-layer variance and alignment."""
        var = [float(m2.sum() / (self.n * m2.numel())) if self.n else float("nan")
               for m2 in (self.m2 or [torch.zeros(1)] * len(self.layers))]
        entry = dict(epoch=epoch, batches=self.n, grad_variance=var,
                     alignment=[rules.alignment(m) for m in self.layers])
        self.history.append(entry)
        self._reset()
        return entry

    def weight_histogram(self, bins=81, limit=2.0):
        """Counts of all rule-layer weights in `bins` bins on [-limit, limit] (App. A.2 drops
        |w| > 2 as negligible; narrower when all weights are smaller), the number outside,
        their standard deviation and kurtosis (3 for a Gaussian; "steeper" is larger)."""
        w = torch.cat([m.weight.detach().flatten().float().cpu() for m in self.layers])
        limit = min(limit, 1.05 * float(w.abs().max()))
        counts = torch.histc(w, bins, -limit, limit)
        return dict(edges=np.linspace(-limit, limit, bins + 1).tolist(),
                    counts=counts.long().tolist(), outside=int((w.abs() > limit).sum()),
                    std=float(w.std()), kurtosis=float(((w - w.mean()) ** 4).mean() / w.var() ** 2))

    def summary(self):
        """What layers.json holds: layer names, rules, per-epoch history, weight histogram."""
        return dict(names=list(self.names), rules=self.rules, history=self.history,
                    weights=self.weight_histogram())


def plot_layers(summary, path, title=""):
    """One run: gradient variance (Eq. 8) and alignment angle per layer, input to output, at the
    first, middle and last epoch (grey lines; the last epoch's points coloured by the layer's
    rule), layers named on the axis (plots.short_layer_name, a subset when there are many, in
    the rule's colour), cells shaded alternately; and the weight histogram. Returns the Figure."""
    from matplotlib.ticker import FixedLocator

    plt = _plt()
    names, layer_rules, hist = list(summary["names"]), list(summary["rules"]), summary["history"]
    n = len(names)
    width = min(16.0, max(10.0, 6 + 0.11 * n))
    fig = plt.figure(figsize=(width, 7.4), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(3.3, 1))
    ax_v = fig.add_subplot(grid[0, 0])
    ax_a = fig.add_subplot(grid[1, 0], sharex=ax_v)
    ax_w = fig.add_subplot(grid[:, 1])
    x = np.arange(n)
    epochs = sorted({0, len(hist) // 2, len(hist) - 1}) if hist else []
    colors = {r: RULE_COLORS.get(r, RULE_COLORS[None]) for r in layer_rules}
    for k, e in enumerate(epochs):
        shade = str(0.75 - 0.5 * k / max(1, len(epochs) - 1)) if e != epochs[-1] else "k"
        var = np.asarray(hist[e]["grad_variance"], dtype=float)
        var = np.where(np.isfinite(var) & (var > 0), var, np.nan)
        label = f"epoch {hist[e]['epoch'] + 1}"
        ax_v.semilogy(x, var, color=shade, lw=0.9, label=label)
        ax_a.plot(x, hist[e]["alignment"], color=shade, lw=0.9, label=label)
        if e == epochs[-1]:
            c = [colors[r] for r in layer_rules]
            ax_v.scatter(x, var, c=c, s=14, zorder=3)
            ax_a.scatter(x, hist[e]["alignment"], c=c, s=14, zorder=3)
    groups = [".".join(nm.split(".")[:2]) if nm.split(".")[1:2] and nm.split(".")[1].isdigit()
              else nm.split(".")[0] for nm in names]
    starts = [i for i in range(n) if i == 0 or groups[i] != groups[i - 1]]
    for a in (ax_v, ax_a):
        for g, i in enumerate(starts):
            if g % 2:
                a.axvspan(i - 0.5, (starts[g + 1] if g + 1 < len(starts) else n) - 0.5,
                          color="0.93", zorder=0, lw=0)
        a.grid(axis="y", alpha=0.3)
        a.set_xlim(-0.5, n - 0.5)
    most = max(1, int(0.72 * width * 72 / 9))            # labels that fit at 9 pt spacing
    step = -(-n // most)
    ticks = []
    for i in starts + list(range(0, n, step)):          # cell starts first, then every step-th
        if all(abs(i - t) >= step for t in ticks):
            ticks.append(i)
    ticks.sort()
    ax_a.set_xticks(ticks, [short_layer_name(names[i]) for i in ticks], rotation=90, fontsize=7)
    for lab, i in zip(ax_a.get_xticklabels(), ticks):
        lab.set_color(colors[layer_rules[i]])
    if n <= 300:
        ax_a.xaxis.set_minor_locator(FixedLocator(range(n)))
    ax_v.tick_params(labelbottom=False)
    ax_v.set_ylabel("Var of weight gradient (Eq. 8)", fontsize=9)
    ax_a.set_ylabel("angle(W, B) in degrees\n(0 for backprop)", fontsize=9)
    key = layer_name_key(names)
    ax_a.set_xlabel(f"layer, input to output ({key + '; ' if key else ''}"
                    + ("every layer named" if len(ticks) == n else f"{len(ticks)} of {n} named")
                    + "; shading alternates per cell or block)", fontsize=8)
    top = max([float(np.nanmax(hist[e]["alignment"])) for e in epochs if len(hist[e]["alignment"])] or [0.0])
    ax_a.set_ylim(-2, max(5.0, 1.06 * top + 2))
    w = summary["weights"]
    ax_w.stairs(w["counts"], w["edges"], fill=True, alpha=0.6)
    ax_w.set(xlabel="weight", ylabel="count", yscale="log")
    ax_w.set_title(f"weights of all rule layers\nstd {w['std']:.3g}, kurtosis {w['kurtosis']:.2f}", fontsize=8)
    ax_w.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=ln.get_color(), lw=1, label=ln.get_label()) for ln in ax_v.get_lines()]
    order = [r for r in RULE_COLORS if r in colors] + [r for r in colors if r not in RULE_COLORS]
    handles += [plt.Line2D([], [], ls="", marker="o", ms=5, color=colors[r], label=f"rule {r}") for r in order]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------
# Experiments
# ----------------------------------------------------------------------------------------
