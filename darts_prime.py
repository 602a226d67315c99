"""DARTS-PRIME: scheduling and regularization of the DARTS search (Maile's thesis, Ch. 5).

Source: K. Maile, "Dynamic Architectural Optimization of Artificial Neural Networks", Sec. 5.2
(Algorithm 3), Sec. 5.3.2 (hyperparameters). Added to any DARTS search, hence to BioNAS-DARTS:

* schedules of alpha steps against weight steps: `alternate` (DARTS: one each), `cs10` (one
  alpha step per 10 weight steps) and `fimt` (Sec. 5.2.1, Algorithm 3: an alpha step when the
  moving average of the trace of the empirical Fisher information drops below an adaptive
  threshold);
* `proximity` (Eq. 20): (c rho / 2) ||act(alpha) - Pi_S(act(alpha))||_2, c rising 0 -> 1;
* `ADMM` (Sec. 5.2.4, Eqs. 21-25): (rho / 2) ||act(alpha) - z + u||_2 with z, u updated every
  10 alpha steps;
* CRB, Clipped ReLU Batchnorm (Sec. 5.2.5): the supernet CRBNetwork.

Norms are plain, not squared, as in the thesis's Eq. 20 and its code; Pi_S is darts.project.
"""
import math

import torch
import torch.nn as nn

import darts


def fisher_trace(params):
    """Eq. 18: tr(G G^T) = sum of squared gradient entries over the weights (before clipping)."""
    return float(sum(p.grad.detach().pow(2).sum() for p in params if p.grad is not None))


class Schedule:
    """When to take an alpha step. kind "alternate": before every weight step (DARTS order);
    "cs10": after every `r`-th weight step; "fimt" (Algorithm 3): after a weight step, F_n =
    lam F + (1 - lam) F_{n-1} (F_0 = the first F); if F_n < h an alpha step and h <- h h_d with
    h_d = h_i^(-r), else h <- h h_i. Defaults h_0 = 1, h_i = 1.05, r = 10, lam = 0.2
    (Sec. 5.3.2)."""

    def __init__(self, kind="alternate", h0=1.0, h_i=1.05, r=10, lam=0.2):
        if kind not in ("alternate", "cs10", "fimt"):
            raise ValueError(f"unknown schedule {kind!r}; choose alternate, cs10 or fimt")
        self.kind, self.h, self.h_i, self.r, self.lam = kind, h0, h_i, r, lam
        self.h_d = math.exp(-r * math.log(h_i))
        self.ewma, self.weight_steps, self.alpha_steps = None, 0, 0

    @property
    def weight_share(self):
        """Share of the training set for the weights: 1/2 (alternate), r/(r+1) otherwise
        (10:1, 90.91% / 9.09%, Sec. 5.3.3)."""
        return 0.5 if self.kind == "alternate" else self.r / (self.r + 1)

    def before_weight_step(self):
        """True when an alpha step comes before this weight step (alternate)."""
        if self.kind == "alternate":
            self.alpha_steps += 1
            return True
        return False

    def after_weight_step(self, fisher=None):
        """Record a weight step (with its Fisher trace for fimt); True when an alpha step
        follows it."""
        self.weight_steps += 1
        if self.kind == "cs10":
            go = self.weight_steps % self.r == 0
        elif self.kind == "fimt":
            self.ewma = fisher if self.ewma is None else \
                self.lam * fisher + (1 - self.lam) * self.ewma
            go = self.ewma < self.h
            self.h *= self.h_d if go else self.h_i
        else:
            return False
        self.alpha_steps += int(go)
        return go

    def state_dict(self):
        return dict(h=self.h, ewma=self.ewma, weight_steps=self.weight_steps,
                    alpha_steps=self.alpha_steps)

    def load_state_dict(self, state):
        for k, v in state.items():
            setattr(self, k, v)


def proximity(model, progress, rho=0.1):
    """Eq. 20's term for normal and reduce alpha separately: (c rho / 2) ||act(alpha) -
    Pi_S(act(alpha))||_2 with c = progress in [0, 1] (linear over the search) and Pi_S the
    one-hot of the currently derived cell (detached). Zero exactly at a discrete alpha."""
    total = 0.0
    for w in model.mixing_weights():
        z = darts.project(w, model.candidates, model.steps)
        total = total + progress * rho / 2 * (w - z).norm()
    return total


class ADMM:
    """Sec. 5.2.4: penalty (rho / 2) ||act(alpha) - z + u||_2 per cell type; every `every` alpha
    steps z <- Pi_S(act(alpha) + u) (Eq. 23) and u <- lam_u u + act(alpha) - z (Eq. 25).
    z starts at Pi_S(act(alpha)), u at 0. rho_a = 0.1, lam_u = 0.8, every 10 (Sec. 5.3.2)."""

    def __init__(self, model, rho=0.1, lam_u=0.8, every=10):
        self.model, self.rho, self.lam_u, self.every, self.steps = model, rho, lam_u, every, 0
        with torch.no_grad():
            w = model.mixing_weights()
        self.z = [darts.project(x, model.candidates, model.steps) for x in w]
        self.u = [torch.zeros_like(x) for x in w]

    def penalty(self):
        return sum(self.rho / 2 * (w - z + u).norm()
                   for w, z, u in zip(self.model.mixing_weights(), self.z, self.u))

    @torch.no_grad()
    def after_alpha_step(self):
        self.steps += 1
        if self.steps % self.every:
            return
        w = self.model.mixing_weights()
        self.z = [darts.project(x + u, self.model.candidates, self.model.steps)
                  for x, u in zip(w, self.u)]
        self.u = [self.lam_u * u + x - z for x, z, u in zip(w, self.z, self.u)]

    def state_dict(self):
        return dict(z=self.z, u=self.u, steps=self.steps)

    def load_state_dict(self, state):
        self.z, self.u, self.steps = state["z"], state["u"], state["steps"]


class CRBCell(darts.SearchCell):
    """darts.SearchCell with a non-affine BN after each node's sum (Sec. 5.2.5)."""

    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, make_edge,
                 base_rule="bp"):
        super().__init__(steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, make_edge,
                         base_rule)
        self.node_bns = nn.ModuleList(nn.BatchNorm2d(C, affine=False) for _ in range(steps))

    def node(self, i, s):
        return self.node_bns[i](s)


class CRBNetwork(darts.Network):
    """The DARTS supernet with Clipped ReLU Batchnorm (Sec. 5.2.5): mixing weights
    clamp(alpha, 0, 1) instead of softmax, alpha initialized 1/|O| + 1e-4 N(0, 1), a non-affine
    BN after each node's sum (CRBCell), no `none` candidate; `prune()` removes for good every
    candidate whose alpha reached <= 0 (it is no longer computed)."""

    def __init__(self, C, num_classes, layers, candidates, *args, **kwargs):
        if "none" in candidates:
            raise ValueError("CRB activation has no 'none' candidate: build the search space "
                             "with ops.search_space(..., zero=False)")
        super().__init__(C, num_classes, layers, candidates, *args, **kwargs)
        self.config["activation"] = "crb"

    def make_cell(self, C_pp, C_p, C, reduction, reduction_prev):
        return CRBCell(self.steps, self.multiplier, C_pp, C_p, C, reduction, reduction_prev,
                       self.make_edge, self.base_rule)

    def initial_alpha(self, k, n):
        return 1 / n + 1e-4 * torch.randn(k, n)

    def initialize_alphas(self):
        super().initialize_alphas()
        k, n = self.alphas_normal.shape
        self.register_buffer("alive_normal", torch.ones(k, n, dtype=torch.bool))
        self.register_buffer("alive_reduce", torch.ones(k, n, dtype=torch.bool))

    def act(self, alpha):
        return alpha.clamp(0, 1)

    @torch.no_grad()
    def prune(self):
        """Candidates whose alpha is <= 0 die for good (alpha held at 0, op not computed).
        Returns the number of candidates alive in (normal, reduce) cells."""
        for alpha, alive, reduction in ((self.alphas_normal, self.alive_normal, False),
                                        (self.alphas_reduce, self.alive_reduce, True)):
            alive &= alpha > 0
            alpha.masked_fill_(~alive, 0.0)
            masks = alive.tolist()
            for cell in self.cells:
                if cell.reduction == reduction:
                    for edge, mask in zip(cell.edges, masks):
                        edge.active = [i for i in edge.active if mask[i]]
        return int(self.alive_normal.sum()), int(self.alive_reduce.sum())


def parameter_free_share(genotype):
    """Share of the normal cell's ops that have no weights (skip connections, pools, none):
    the signature of DARTS's skip-connection collapse (thesis Fig. 19)."""
    ops = [darts.ops.parse_candidate(n)[0] for n, _ in genotype.normal]
    parameter_free = ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none")
    return sum(o in parameter_free for o in ops) / len(ops)


if __name__ == "__main__":
    # fimt's schedule on a made-up Fisher trace, then CRB pruning on a tiny supernet
    schedule = Schedule("fimt")
    for step, fisher in enumerate([1.5, 1.2, 0.8, 0.5, 0.4, 0.6, 1.0, 0.3]):
        go = schedule.after_weight_step(fisher)
        print(f"weight step {step + 1}: Fisher trace {fisher:.1f}, moving average "
              f"{schedule.ewma:.2f} -> "
              f"{'alpha step' if go else 'no alpha step'} (threshold now {schedule.h:.2f})")
    torch.manual_seed(0)
    cands = darts.ops.search_space(rules=("fa",), skip_rules=("usf",), zero=False)
    net = CRBNetwork(4, 3, 3, cands, steps=2, multiplier=2, in_channels=1)
    print(f"CRB alpha starts at 1/|O| = {1 / len(cands):.3f}: "
          f"{net.alphas_normal[0].detach().numpy().round(4)}")
    with torch.no_grad():
        net.alphas_normal[0, :2] = -0.01                   # two candidates driven below 0
    print(f"alive after pruning (normal, reduce): {net.prune()} of "
          f"{net.alphas_normal.numel()} each")
    print(f"proximity term at c = 1: {float(proximity(net, 1.0).detach()):.4f}; "
          f"parameter-free share of the derived cell: {parameter_free_share(net.genotype()):.2f}")
