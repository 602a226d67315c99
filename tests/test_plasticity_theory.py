"""The paper's theorems as checks: Theorem 2 (convexity of the output-rule problem), Theorems 3
and 4 (the rule [-a, a; b, -b] on a linear threshold unit), App. C (evolution tracks GD), and
the `theory` experiment. Bounds are hand-derived (Rosenblatt / Freund-Schapire) or the paper's;
each docstring names the one-line bug the test catches."""
import math

import pytest
import torch
import torch.nn.functional as F

import plasticity as P
from experiments import plasticity_paper as PE


def test_theorem2_cross_entropy_is_the_design_loss_and_convex():
    """Bug: output_rule_design drops the step size eta (M = einsum(...) without lr): the CE of M r
    must be the CE of the network actually trained by the rule (update all, all rows), and its
    Hessian PSD (Theorem 2) at random rules."""
    X, y = PE.relu_data(300, 10, seed=1)
    net = P.CapRNN(10, 2, 50, 25, 0.5, 1, seed=1)
    H, codes = net.hidden(X)
    M = P.output_rule_design(H.double(), codes, y, 2, 1, lr=0.005)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        r = torch.randn(4, generator=g, dtype=torch.float64)                  # [r00, r01, r10, r11]
        P.train_with_rules(net, X, y, output_rule=r.float().reshape(2, 2), lr=0.005, update="all", rows="all")
        assert float(P.output_rule_ce_loss(r, M, y)) == pytest.approx(float(F.cross_entropy(net(X).double(), y)), rel=1e-4)
        e = torch.linalg.eigvalsh(torch.autograd.functional.hessian(lambda q: P.output_rule_ce_loss(q, M, y), r))
        assert e.min() >= -1e-9 * e.max().abs()
    a, b = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    f = lambda t: float(P.output_rule_ce_loss((1 - t) * a + t * b, M, y))
    assert all(f(t) <= (1 - t) * f(0) + t * f(1) + 1e-12 for t in (0.25, 0.5, 0.75))


def test_threshold_rule_updates_by_hand():
    """Bug: the column is chosen by y == 1 instead of y != 1 (the unit is the output node of
    label +1: column 0 for a +1 example, column 1 for a -1 example), or mistakes are counted on
    updates (y w.x <= margin) rather than on errors (y w.x <= 0)."""
    rule = [[-1.0, 1.0], [2.0, -2.0]]                           # a = 1, b = 2
    X = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    y = torch.tensor([1.0, -1.0])
    # x1, label +1, w = 0: a mistake, w += [b, -a, b] = [2, -1, 2]
    # x2, label -1: y w.x = -(-2 - 1 + 2) = 1 > 0, correct: no update with margin 0 ...
    out = P.threshold_rule_run(X, y, rule)
    assert out["w"].tolist() == [2.0, -1.0, 2.0] and out["mistakes"] == 1 and out["updates"] == 1
    # ... but within margin 2 (Theorem 4): w += column 1 = [a, -b, -b] = [1, -2, -2]
    out = P.threshold_rule_run(X, y, rule, margin=2.0)
    assert out["w"].tolist() == [3.0, -3.0, 0.0] and out["mistakes"] == 1 and out["updates"] == 2


def test_theorem3_rule_converges_within_the_proofs_bound():
    """Bug: threshold_rule_run reads the rows upside down (x > 0 -> row 0): with b >= a > 0 the
    rule [-a, a; b, -b] must separate {-1,1}^n data with sum w* = 0 after at most 2 b^2 n /
    (a^2 gamma^2) mistakes (proof of Theorem 3), on 5 draws; the opposite sign pattern must not."""
    n, gam = 16, 1.0
    for s in range(5):
        X, y, w = PE.pm1_separable(400, n, gam, seed=s)
        assert abs(float(w.sum())) < 1e-9 and float((y * (X @ w)).min()) >= gam
        for a, b in ((1.0, 1.0), (1.0, 3.0), (0.5, 2.0)):
            out = P.threshold_rule_run(X, y, [[-a, a], [b, -b]], epochs=100)
            assert out["converged"] and out["mistakes"] <= 2 * b ** 2 * n / (a ** 2 * gam ** 2)
            assert (torch.sign(X @ torch.as_tensor(out["w"])) == y).all()
        assert not P.threshold_rule_run(X, y, [[1.0, -1.0], [-1.0, 1.0]], epochs=20)["converged"]


def test_theorem4_mistake_bounds_on_noisy_data():
    """Bug: every example is updated with column 0 (the label's sign ignored: no learning).
    Perceptron (a = b): one pass makes at most ((R + D) / gamma)^2 mistakes, D^2 = sum_i
    max(0, gamma - y_i w*.x_i)^2 (Freund-Schapire, the theorem behind Theorem 4); b > a: at most
    (b/a)^2 (R^2 + D^2 + 2 gamma) / gamma^2 (Theorem 4's O(.) with constant 1, measured)."""
    n, gam = 16, 1.0
    for s in range(4):
        for noise in (0.0, 0.05, 0.15):
            X, y, w = PE.pm1_separable(500, n, gam, seed=s, noise=noise)
            D = math.sqrt(float((torch.clamp(gam - y * (X @ w), min=0) ** 2).sum()))
            R = math.sqrt(n)
            assert P.threshold_rule_run(X, y, [[-1.0, 1.0], [1.0, -1.0]])["mistakes"] <= ((R + D) / gam) ** 2
            for a, b in ((1.0, 2.0), (0.5, 2.0)):
                out = P.threshold_rule_run(X, y, [[-a, a], [b, -b]], margin=gam / 2)
                assert out["mistakes"] <= (b / a) ** 2 * (R ** 2 + D ** 2 + 2 * gam) / gam ** 2
                assert out["updates"] >= out["mistakes"]


def test_evolution_tracks_gd():
    """Bug: the paper-form GD counterpart uses the factor x (1 - x) (haploid) instead of 1 - x,
    or the fitness difference has the wrong sign (the allele raising the loss spreads)."""
    loss = lambda Y: (Y - 1.0) ** 2
    for form in ("haploid", "paper"):
        out = P.simulate_evolution(loss, n_genes=100, eps=0.01, theta=0.5, generations=300, x0=0.3, form=form)
        ye, yg = torch.tensor(out["y_evolution"]), torch.tensor(out["y_gd"])
        moved = abs(yg[-1] - yg[0])
        assert moved > 0.5 and abs(ye[-1] - 1.0) < abs(ye[0] - 1.0)     # selection lowers the loss
        assert (ye - yg).abs().max() < 0.05 * moved
        assert ((out["x_evolution"] >= 0) & (out["x_evolution"] <= 1)).all()
    # the paper's form moves x by theta (1 - x) dL/dx: at x = 0.3, eps = 0.01, Y = eps sum(2x-1)
    x = torch.full((100,), 0.3, dtype=torch.float64)
    dLdx = 2 * (0.01 * float((2 * x - 1).sum()) - 1.0) * 2 * 0.01
    step = P.evolution_gd_step(x, loss, 0.01, 0.5, "paper") - x
    assert torch.allclose(step, torch.full_like(x, -0.5 * 0.7 * dLdx))


@pytest.mark.slow
def test_theory_experiment_reports_every_check():
    """Bug: a check's `holds` is computed against the wrong side of its bound (e.g. mistakes >=
    bound): in quick mode every check but App. B's (too few GD steps) holds."""
    rows = PE.experiment_theory(quick=True, seed=0)
    checks = {r["check"] for r in rows}
    assert checks == {"Theorem 1", "Theorem 2", "Theorem 3", "Theorem 4", "App. B", "App. C"}
    assert all(r["holds"] == 1 for r in rows if r["check"] != "App. B"), rows
    t3 = [r for r in rows if r["check"] == "Theorem 3"]
    assert all(r["value"] <= r["bound"] for r in t3)
