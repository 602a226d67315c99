"""The standalone theory of "Learning with plasticity rules: generalization and robustness":
Theorems 3-4 (a linear threshold unit trained by a 2 x 2 output rule) and App. C (weak selection
tracks gradient descent). torch and numpy only; plasticity.py re-exports every function."""
import numpy as np
import torch


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def threshold_rule_run(X, y, rule, lr=1.0, epochs=1, margin=0.0):
    """Theorems 3-4: a linear threshold unit sign(w . x), w from 0, on x in {-1, 1}^n with
    labels y in {-1, 1}, trained online by a 2 x 2 output rule (rows: x_i = -1 / +1, i.e. not
    fired / fired; column 0 when the label is +1, the unit being the true label's output node,
    column 1 when it is -1): w_i += lr * rule[x_i > 0, y != 1] on every example with
    y (w . x) <= margin (margin 0: the mistakes; Theorem 4: within `margin` of the threshold).
    [-a, a; b, -b] gives w_i -= a (x_i = -1), w_i += b (x_i = 1) on a label +1 (Thm 3's proof).
    Returns dict(w, mistakes (y w.x <= 0 when seen), updates, epochs, converged (a pass without
    an update))."""
    r = np.asarray(torch.as_tensor(rule).double())
    if r.shape != (2, 2) or not np.isfinite(r).all():
        raise ValueError(f"threshold rule must be a finite 2 x 2 table, got shape {r.shape}")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    steps = r[(X > 0).astype(int), (y != 1).astype(int)[:, None]] * lr          # (m, n)
    w = np.zeros(X.shape[1])
    mistakes = updates = 0
    for ep in range(1, epochs + 1):
        upd = 0
        for x, yi, s in zip(X, y, steps):
            z = yi * float(w @ x)
            mistakes += z <= 0
            if z <= margin:
                w += s
                upd += 1
        updates += upd
        if upd == 0:
            return dict(w=w, mistakes=int(mistakes), updates=updates, epochs=ep, converged=True)
    return dict(w=w, mistakes=int(mistakes), updates=updates, epochs=epochs, converged=False)


def evolution_step(x, loss_fn, eps, theta, form="haploid"):
    """One generation of weak selection (App. C): n genes with alleles +eps/-eps, x_i the
    frequency of +eps, Ybar = eps sum (2 x_i - 1), Y|+eps = Ybar + 2 eps (1 - x_i),
    Y|-eps = Ybar - 2 eps x_i, D+- = L(Ybar) - L(Y|+-eps), Z = 1 + theta (x D+ + (1 - x) D-).
    form="haploid":  x' = x (1 + theta D+) / Z   (standard weak selection; frequencies stay in [0, 1])
    form="paper":    x' = (x + theta D+) / Z     (App. C as printed, sign fixed so that the
                                                  allele lowering the loss spreads)."""
    _check_choice("form", form, ("haploid", "paper"))
    ybar = eps * (2 * x - 1).sum()
    L0 = loss_fn(ybar)
    dp = L0 - loss_fn(ybar + 2 * eps * (1 - x))
    dm = L0 - loss_fn(ybar - 2 * eps * x)
    Z = 1 + theta * (x * dp + (1 - x) * dm)
    return (x * (1 + theta * dp) if form == "haploid" else x + theta * dp) / Z


def evolution_gd_step(x, loss_fn, eps, theta, form="haploid"):
    """The GD counterpart of evolution_step to first order in theta and eps (App. C):
    haploid:  x' = x - theta x (1 - x) dL/dx;
    paper:    x' = x - theta (1 - x) dL/dx = x - (theta / 2) (2 - 2x) dL/dx, the paper's
              "GD with the factor 2 - 2x = dz/dx, z = 2x - x^2" (with theta/2)."""
    _check_choice("form", form, ("haploid", "paper"))
    xg = x.detach().clone().requires_grad_(True)
    grad, = torch.autograd.grad(loss_fn(eps * (2 * xg - 1).sum()), xg)
    return x - theta * (x * (1 - x) if form == "haploid" else (1 - x)) * grad


def simulate_evolution(loss_fn, n_genes=100, eps=0.02, theta=0.05, generations=200, x0=0.5,
                       form="haploid"):
    """Run evolution and its GD counterpart side by side from the same allele frequencies.
    Returns dict(generation, y_evolution, y_gd, x_evolution, x_gd) with Ybar per generation."""
    x_e = x_g = torch.full((n_genes,), float(x0), dtype=torch.float64)   # each step returns a new tensor
    ys_e, ys_g = [], []
    for _ in range(generations + 1):
        ys_e.append(float(eps * (2 * x_e - 1).sum()))
        ys_g.append(float(eps * (2 * x_g - 1).sum()))
        x_e = evolution_step(x_e, loss_fn, eps, theta, form)
        x_g = evolution_gd_step(x_g, loss_fn, eps, theta, form)
    return dict(generation=list(range(generations + 1)), y_evolution=ys_e, y_gd=ys_g,
                x_evolution=x_e, x_gd=x_g)
