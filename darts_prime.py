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
* CRB activation (Sec. 5.2.5) lives in darts.Network(activation="crb").

Norms are plain, not squared, as in the thesis's Eq. 20 and its code; Pi_S is darts.project.
"""
import math

import torch

import darts


def fisher_trace(params):
    """Eq. 18: tr(G G^T) = sum of squared gradient entries over the weights (before clipping)."""
    return float(sum(p.grad.detach().pow(2).sum() for p in params if p.grad is not None))


class Schedule:
    """When to take an alpha step. kind "alternate": before every weight step (DARTS order);
    "cs10": after every `r`-th weight step; "fimt" (Algorithm 3): after a weight step, F_n =
    lam F + (1 - lam) F_{n-1} (F_0 = the first F); if F_n < h an alpha step and h <- h h_d with
    h_d = h_i^(-r), else h <- h h_i. Defaults h_0 = 1, h_i = 1.05, r = 10, lam = 0.2 (Sec. 5.3.2)."""

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
            self.ewma = fisher if self.ewma is None else self.lam * fisher + (1 - self.lam) * self.ewma
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
        total = total + progress * rho / 2 * (w - darts.project(w, model.candidates, model.steps)).norm()
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
        self.z = [darts.project(x + u, self.model.candidates, self.model.steps) for x, u in zip(w, self.u)]
        self.u = [self.lam_u * u + x - z for x, z, u in zip(w, self.z, self.u)]

    def state_dict(self):
        return dict(z=self.z, u=self.u, steps=self.steps)

    def load_state_dict(self, state):
        self.z, self.u, self.steps = state["z"], state["u"], state["steps"]


def parameter_free_share(genotype):
    """Share of the normal cell's ops that have no weights (skip connections, pools, none):
    the signature of DARTS's skip-connection collapse (thesis Fig. 19)."""
    ops = [darts.ops.parse_candidate(n)[0] for n, _ in genotype.normal]
    return sum(o in ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "none") for o in ops) / len(ops)
