"""Tests of the EG-NAS search part of egnas.py (the CMA-ES is tested in test_cmaes.py).

Most tests run explore on a stand-in "supernet" whose logits are a closed-form function of
the mixing weights, record every CMA-ES run (centre, sigma, seed, asked populations, told
fitnesses) through a CMAES subclass, and recompute every individual's fitness in numpy with an
explicit dot-product formula, so the individual explore must return is known independently.
Each bug-guarding test names the planted one-line bug of egnas.py that makes it fail."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import egnas
import ops

E, K, B = 3, 4, 8          # stand-in: edges per cell, candidates (= classes), batch (k/8 exact)


class StandIn(nn.Module):
    """A deterministic stand-in for darts.Network: alpha is (E x K) per cell; the logits of a
    batch x (B, K) are x * v with v = sum over edges of (w_normal + 2 w_reduce)."""

    def __init__(self, seed=0, scale=1e-3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.alphas_normal = nn.Parameter(scale * torch.randn(E, K, generator=g))
        self.alphas_reduce = nn.Parameter(scale * torch.randn(E, K, generator=g))

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce]

    def mixing_weights(self):
        return F.softmax(self.alphas_normal, -1), F.softmax(self.alphas_reduce, -1)

    def forward(self, x, wn=None, wr=None):
        if wn is None or wr is None:
            wn, wr = self.mixing_weights()
        return x * (wn.sum(0) + 2 * wr.sum(0))


def batch(seed=0, gain=1.0, easy=False):
    """A validation batch; `gain` scales the logits (a larger gain spreads the cross-entropies,
    so that the runs keep individuals of different accuracies); easy: every label's input
    dominates, so every individual is 100% accurate, as is alpha (all ties: the fitness branch
    decides every individual)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (B,), generator=g)
    x = 0.5 + torch.rand(B, K, generator=g)
    if easy:
        x = 0.1 * x + 20 * F.one_hot(y, K)
    return gain * x, y


# ---- the hand computation (numpy, float64) ------------------------------------------------

def softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hand_weights(z):
    """Mixing weights of an individual: its (cell, edge) rows normalized to unit length by an
    explicit square root, then softmaxed."""
    zz = np.asarray(z, float).reshape(2, E, K)
    return softmax(zz / np.sqrt((zz * zz).sum(-1, keepdims=True)))


def hand_scores(w, x, y):
    """(accuracy %, cross-entropy) of mixing weights w (2, E, K) on the stand-in."""
    logits = x.double().numpy() * (w[0].sum(0) + 2 * w[1].sum(0))
    top = np.sort(logits, 1)
    assert (top[:, -1] - top[:, -2]).min() > 1e-4            # no float32 argmax near-tie
    acc = 100.0 * (logits.argmax(1) == y.numpy()).sum() / len(y)
    m = logits.max(1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(1))
    return acc, float(np.mean(lse - logits[np.arange(len(y)), y.numpy()]))


def hand_fitness(z, alpha, x, y, zeta=1.0, eta=0.4, tie_sign=+1):
    """EG-NAS's compound fitness (App. A.4.2): zeta L_CE - eta L_cos if Acc(alpha) > Acc(z),
    else + eta L_cos; L_cos = mean over both cells' edges of (cos + 1) / 2 with cos an
    explicit dot product over norms. tie_sign = -1 is the wrong tie branch (for preconditions).
    Returns (f, accuracy, weights)."""
    p = softmax(np.stack([a.detach().double().numpy() for a in alpha]))
    zz = np.asarray(z, float).reshape(2, E, K)
    cos = (p * zz).sum(-1) / np.sqrt((p * p).sum(-1) * (zz * zz).sum(-1))
    l_cos = float(np.mean((cos + 1) / 2))
    acc_alpha, _ = hand_scores(p, x, y)
    w = hand_weights(z)
    acc, ce = hand_scores(w, x, y)
    if acc > acc_alpha:
        sign = +1
    elif acc < acc_alpha:
        sign = -1
    else:
        sign = tie_sign
    return zeta * ce + sign * eta * l_cos, acc, w


def hand_choice(runs, alpha, x, y, keep="best", tie_sign=+1, later_on_tie=False):
    """The individual explore must return, from the recorded runs: per run the lowest hand
    fitness over all its generations (keep='worst' / 'last' model the planted bugs), then the
    most accurate run, ties to the earlier. Returns (weights, accuracy, run, flat index)."""
    best = None
    for r, run in enumerate(runs):
        pop = np.concatenate(run["asked"])
        scored = [hand_fitness(z, alpha, x, y, tie_sign=tie_sign) for z in pop]
        f = np.array([s[0] for s in scored])
        if keep == "best":
            i = len(f) - 1 - int(np.argmin(f[::-1])) if later_on_tie else int(np.argmin(f))
            assert later_on_tie or np.sort(f)[1] - f[i] > 1e-5   # no float32 near-tie
        else:
            i = int(np.argmax(f)) if keep == "worst" else len(f) - 1
        acc = scored[i][1]
        if best is None or acc > best[1]:
            best = (scored[i][2], acc, r, i)
    return best


def same(weights, w, atol=1e-6):
    return all(np.allclose(t.double().numpy(), wi, atol=atol) for t, wi in zip(weights, w))


@pytest.fixture
def runs(monkeypatch):
    """Replaces egnas.CMAES by a recording subclass; yields the list of recorded runs."""
    record = []

    class Recorder(egnas.CMAES):
        def __init__(self, mean, sigma, population_size=None, seed=None, **kw):
            super().__init__(mean, sigma, population_size, seed, **kw)
            self.rec = dict(mean=np.array(mean, float), sigma=float(sigma), seed=seed,
                            asked=[], told=[])
            record.append(self.rec)

        def ask(self):
            X = super().ask()
            self.rec["asked"].append(X.copy())
            return X

        def tell(self, X, f):
            self.rec["told"].append(np.array(f, float))
            super().tell(X, f)

    monkeypatch.setattr(egnas, "CMAES", Recorder)
    return record


# ---- compound fitness ----------------------------------------------------------------------

def tiny_supernet(seed=0):
    torch.manual_seed(seed)
    cands = ops.search_space(zero=False)
    return darts.Network(2, 3, 3, cands, steps=2, multiplier=2, in_channels=1), cands


def test_compound_fitness_matches_paper_formula():
    """On the real supernet, against an explicit dot-product L_cos, for Acc(alpha) above, below
    and equal to Acc(z). Guards planted bug (d): `acc >= acc_alpha` -> `acc > acc_alpha` in
    compound_fitness (a tie must take + eta * L_cos, as in the paper's `else` and the code's
    `Acc(alpha) <= Acc(z)`)."""
    model, cands = tiny_supernet()
    model.eval()
    x, y = torch.rand(B, 1, 8, 8), torch.randint(0, 3, (B,))
    proj = [w.detach().double() for w in model.mixing_weights()]
    z = torch.randn(2 * 5 * len(cands))
    zz = z.double().reshape(2, 5, len(cands))
    dots = [(p * q).sum(-1) / ((p * p).sum(-1) * (q * q).sum(-1)).sqrt() for p, q in zip(proj, zz)]
    sim = sum(((d + 1) / 2).sum().item() for d in dots) / (2 * 5)
    zn = (zz / (zz * zz).sum(-1, keepdim=True).sqrt()).float()
    with torch.no_grad():
        logits = model(x, F.softmax(zn[0], -1), F.softmax(zn[1], -1)).double()
    ce = (torch.logsumexp(logits, 1) - logits[torch.arange(B), y]).mean().item()
    acc = 100.0 * (logits.argmax(1) == y).sum().item() / B        # k/8: exact in binary
    proj32 = [p.float() for p in proj]
    f = {}
    with torch.no_grad():
        for name, acc_alpha in (("below", acc + 1), ("above", acc - 1), ("tie", acc)):
            f[name], a, _ = egnas.compound_fitness(model, x, y, z.numpy(), proj32, acc_alpha,
                                                   zeta=2.0, eta=0.4)
            assert a == acc
    assert abs(f["below"] - (2 * ce - 0.4 * sim)) < 1e-5     # Acc(alpha) > Acc(z): minus
    assert abs(f["above"] - (2 * ce + 0.4 * sim)) < 1e-5     # else: plus (diversity rewarded)
    assert abs(f["tie"] - (2 * ce + 0.4 * sim)) < 1e-5       # Acc(alpha) == Acc(z): plus


def test_fitness_tie_takes_plus_branch_in_explore(runs):
    """Every individual is as accurate as alpha (100%), so the tie branch decides every
    fitness; explore must return the individual minimizing L_CE + eta L_cos, which the
    precondition shows is not the one minimizing L_CE - eta L_cos. Guards planted bug (d):
    `acc >= acc_alpha` -> `acc > acc_alpha` in compound_fitness."""
    model, (x, y) = StandIn(1), batch(1, easy=True)
    alpha = [a.detach().clone() for a in model.arch_parameters()]
    weights, acc = egnas.explore(model, x, y, epoch=0, samples=2, population_size=30, seed=5)
    assert all(hand_fitness(z, alpha, x, y)[1] == 100.0 for r in runs for z in r["asked"][0])
    want = hand_choice(runs, alpha, x, y)
    wrong = hand_choice(runs, alpha, x, y, tie_sign=-1)
    assert not np.allclose(want[0], wrong[0])                 # the branch matters here
    assert acc == 100.0 and same(weights, want[0])
    for r in runs:                                            # every told fitness, by hand
        hand = [hand_fitness(z, alpha, x, y)[0] for z in r["asked"][0]]
        assert np.allclose(r["told"][0], hand, atol=1e-5)


# ---- which individual explore keeps --------------------------------------------------------

def test_explore_keeps_the_best_individual_of_each_run(runs):
    """Ours (default): every told fitness equals the hand formula's (mixed accuracies, some
    tied with alpha), and explore returns the weights of the most accurate of the runs'
    lowest-fitness individuals (25, 50, 50%: the second run's). Preconditions show that keeping
    a run's worst or last individual would return other weights. Guards planted bugs (a)
    `f < kept[0]` -> `f > kept[0]` in explore (argmax instead of argmin: the run's worst
    individual) and (b) keeping the last individual of a run (`if kept is None or ...` ->
    `if True:`); also (d) (some individuals tie with Acc(alpha))."""
    model, (x, y) = StandIn(7), batch(7, gain=16)
    alpha = [a.detach().clone() for a in model.arch_parameters()]
    weights, acc = egnas.explore(model, x, y, epoch=0, samples=3, population_size=40, seed=7)
    assert len(runs) == 3 and all(len(r["asked"]) == len(r["told"]) == 1 for r in runs)
    scored = [hand_fitness(z, alpha, x, y) for r in runs for z in r["asked"][0]]
    acc_alpha = hand_scores(softmax(np.stack([a.double().numpy() for a in alpha])), x, y)[0]
    accs = {s[1] for s in scored}
    assert len(accs) > 2 and any(s[1] == acc_alpha for s in scored)    # ties with Acc(alpha)
    assert np.allclose(np.concatenate([r["told"][0] for r in runs]),
                       [s[0] for s in scored], atol=1e-5)
    want = hand_choice(runs, alpha, x, y)
    kept = [hand_choice([r], alpha, x, y)[1] for r in runs]
    assert kept == [25.0, 50.0, 50.0] and want[2] == 1      # most accurate run; ties: earlier
    for bug in ("worst", "last"):
        assert not np.allclose(want[0], hand_choice(runs, alpha, x, y, keep=bug)[0])
    assert acc == want[1] and same(weights, want[0])


def test_generations_iterate_and_keep_the_best_over_all(runs):
    """generations=G (the paper's iterated CMA-ES): G ask/tell calls per run, each generation
    asked around the mean CMA-ES moved to, and explore returns the best over all generations
    (not of the first or the last one alone, shown different here). Also guards (a), (b)."""
    model, (x, y) = StandIn(9), batch(9, gain=8)
    alpha = [a.detach().clone() for a in model.arch_parameters()]
    weights, acc = egnas.explore(model, x, y, epoch=2, samples=2, population_size=20, seed=7,
                                 generations=3)
    assert len(runs) == 2 and all(len(r["asked"]) == len(r["told"]) == 3 for r in runs)
    for r in runs:
        assert not np.allclose(r["asked"][0].mean(0), r["asked"][2].mean(0), atol=0.05)
        for pop, told in zip(r["asked"], r["told"]):
            assert np.allclose(told, [hand_fitness(z, alpha, x, y)[0] for z in pop], atol=1e-5)
    want = hand_choice(runs, alpha, x, y)
    assert [hand_choice([r], alpha, x, y)[1] for r in runs] == [25.0, 50.0] and want[2] == 1
    for g in (0, 2):                                          # one generation alone differs
        only = [dict(r, asked=[r["asked"][g]]) for r in runs]
        assert not np.allclose(want[0], hand_choice(only, alpha, x, y)[0])
    for bug in ("worst", "last"):
        assert not np.allclose(want[0], hand_choice(runs, alpha, x, y, keep=bug)[0])
    assert acc == want[1] and same(weights, want[0])
    with pytest.raises(ValueError, match="generations"):
        egnas.explore(model, x, y, epoch=0, generations=0)


@pytest.mark.parametrize("acc", [50.0, 0.0])
def test_ties_within_and_across_runs(runs, monkeypatch, acc):
    """With every fitness and accuracy equal, ours keeps the first individual of the first run;
    as released (`value <= best`), the last individual (of the last generation) of the first
    run; across runs, the earlier run (strict comparison) in both. At 0% accuracy the same
    individuals are returned (the released code's 0%-run quirk, weights 0, is not copied).
    Guards planted bugs: as-released ties to the earlier individual (`... or (as_released and
    f == kept[0])` dropped), ties across runs to the later run (`kept[1] > best[0]` ->
    `>=`), and (b)."""
    monkeypatch.setattr(egnas, "compound_fitness", lambda model, x, y, z, *a: (
        0.0, acc, tuple(torch.as_tensor(z).reshape(2, E, K))))
    model, (x, y) = StandIn(), batch()
    w, _ = egnas.explore(model, x, y, 0, samples=2, population_size=6, seed=1)
    assert same(w, runs[0]["asked"][0][0].reshape(2, E, K), atol=0)
    assert not np.allclose(runs[0]["asked"][0], runs[1]["asked"][0])
    runs.clear()
    w, _ = egnas.explore(model, x, y, 0, samples=2, population_size=6, as_released=True,
                         generations=2)
    assert same(w, runs[0]["asked"][1][-1].reshape(2, E, K), atol=0)


# ---- sigma, centres, seeds: ours and as released --------------------------------------------

def test_sigma_schedule_ours_and_as_released(runs):
    """The sigma CMA-ES receives: max(1/(epoch+1), 0.02) at epochs 0, 3, 60 (1, 0.25, 0.02)
    in ours, 1 at every epoch as released. Guards planted bug (c): sigma fixed at 1 in ours
    (`return 1.0 if as_released else max(...)` -> `return 1.0`)."""
    model, (x, y) = StandIn(), batch()
    for released, expect in ((False, (1.0, 0.25, 0.02)), (True, (1.0, 1.0, 1.0))):
        for epoch, sigma in zip((0, 3, 60), expect):
            runs.clear()
            egnas.explore(model, x, y, epoch, samples=2, population_size=4,
                          as_released=released)
            assert [r["sigma"] for r in runs] == pytest.approx([sigma, sigma])


def test_as_released_runs_are_identical_around_one_shared_centre(runs):
    """as_released: one centre softmax(alpha) + 1e-2 N(0, I) shared by the N runs, every run
    seeded with 1, hence N identical populations; ours: a centre and a seed per run. Guards
    planted bugs: a centre drawn per run as released (`CMAES(center, ...)` -> `CMAES(center +
    1e-2 * rng.standard_normal(...), ...)`), a seed per run as released (`seed=RELEASED_SEED`
    -> `seed=RELEASED_SEED + _`)."""
    model, (x, y) = StandIn(4), batch(4)
    p = np.concatenate([w.detach().double().numpy().ravel() for w in model.mixing_weights()])
    egnas.explore(model, x, y, 5, samples=3, population_size=8, seed=2, as_released=True)
    assert [r["seed"] for r in runs] == [1, 1, 1]
    assert all(np.array_equal(r["mean"], runs[0]["mean"]) for r in runs)
    assert all(np.array_equal(r["asked"][0], runs[0]["asked"][0]) for r in runs)
    assert 0.005 < np.std(runs[0]["mean"] - p) < 0.02 and abs(np.mean(runs[0]["mean"] - p)) < 0.01
    runs.clear()
    egnas.explore(model, x, y, 5, samples=3, population_size=8, seed=2)
    assert len({r["seed"] for r in runs}) == 3
    for i in range(3):
        assert 0.005 < np.std(runs[i]["mean"] - p) < 0.02
        for j in range(i):
            assert not np.allclose(runs[i]["mean"], runs[j]["mean"])
            assert not np.allclose(runs[i]["asked"][0], runs[j]["asked"][0])


# ---- the searcher ----------------------------------------------------------------------------

def test_eg_step_moves_alpha_by_xi_times_blended_best_weights(runs):
    """Over two exploring epochs, alpha moves by xi * s with s = m * s_prev + (1 - m) * w, w
    the hand-chosen best individual's softmax weights (m = pop_momentum = 0.5, xi = 0.1);
    warm-start epochs leave alpha untouched; one exploration per epoch; state_dict restores s.
    Guards planted bugs: no pop_momentum blend (`s_new = m * s_prev + (1 - m) * w` -> `s_new =
    w`), no xi (`a.add_(self.xi * s_new)` -> `a.add_(s_new)`), and (a), (b), (c), (d)."""
    model, (x, y) = StandIn(5, scale=0.3), batch(5)
    logs = []
    s = egnas.EGNASSearcher(model, samples=2, population_size=12, xi=0.1, warm_start_epochs=1,
                            pop_momentum=0.5, log=logs.append)
    alpha = [a.detach().clone() for a in model.arch_parameters()]
    s.step(None, None, x, y, 0.1, None, epoch=0)                # warm start: no exploration
    assert not runs and all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), alpha))
    s_prev = np.zeros((2, E, K))
    for epoch in (1, 2):
        runs.clear()
        s.step(None, None, x, y, 0.1, None, epoch)
        s.step(None, None, x, y, 0.1, None, epoch)              # once per epoch only
        assert len(runs) == 2
        w = hand_choice(runs, alpha, x, y)[0]
        s_prev = 0.5 * s_prev + 0.5 * w
        expect = np.stack([a.double().numpy() for a in alpha]) + 0.1 * s_prev
        now = [a.detach().clone() for a in model.arch_parameters()]
        assert same(now, expect)
        alpha = now
    assert "sigma 0.333" in logs[-1] and "a centre and a seed per run" in logs[0]
    t = egnas.EGNASSearcher(StandIn(), samples=2, log=lambda m: None)
    t.load_state_dict(s.state_dict())
    assert t.last_epoch == 2 and same(t.s, s_prev)


def test_searcher_passes_as_released_and_generations(runs):
    """EGNASSearcher(as_released=True, generations=2) explores as released (sigma 1, seed 1)
    with 2 ask/tell generations per run, and says so in the log. Guards planted bugs: the
    searcher not passing them on (`as_released=..., generations=...` dropped from its explore
    call), one generation whatever G (`range(generations)` -> `range(1)`)."""
    model, (x, y) = StandIn(), batch()
    logs = []
    s = egnas.EGNASSearcher(model, samples=2, population_size=6, warm_start_epochs=0,
                            log=logs.append, as_released=True, generations=2)
    s.step(None, None, x, y, 0.1, None, epoch=4)
    assert [(r["sigma"], r["seed"], len(r["asked"])) for r in runs] == [(1.0, 1, 2)] * 2
    assert "as released" in logs[0] and "2 generations" in logs[0]
    assert "sigma 1.000, as released, 2 generations" in logs[-1]
    with pytest.raises(ValueError, match="generations"):
        egnas.EGNASSearcher(model, generations=1.5, log=lambda m: None)


@pytest.mark.slow
def test_eg_step_on_the_real_supernet():
    """On darts.Network over the BioNAS-EG space: warm start leaves alpha untouched, the move
    is xi times softmax rows (pop_momentum 0: each row of the move sums to xi), once per epoch,
    and the genotype never holds `none`. Guards planted bugs: no warm start (`epoch <
    self.warm_start_epochs` -> `epoch < self.warm_start_epochs - 1`), no xi (`a.add_(self.xi *
    s_new)` -> `a.add_(s_new)`), exploring at every step (`epoch == self.last_epoch or` dropped)."""
    model, cands = tiny_supernet(1)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    before = [a.detach().clone() for a in model.arch_parameters()]
    s = egnas.EGNASSearcher(model, samples=2, population_size=6, xi=0.1, warm_start_epochs=1,
                            log=lambda m: None)
    s.step(x, y, x, y, 0.1, None, epoch=0)                  # warm start: alpha untouched
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), before))
    s.step(x, y, x, y, 0.1, None, epoch=1)
    for a, b in zip(model.arch_parameters(), before):
        delta = a.detach() - b
        assert torch.allclose(delta.sum(-1), torch.full((delta.shape[0],), 0.1), atol=1e-6)
        assert (delta > 0).all()                            # softmax weights are positive
    after = [a.detach().clone() for a in model.arch_parameters()]
    s.step(x, y, x, y, 0.1, None, epoch=1)                  # once per epoch only
    assert all(torch.equal(a, b) for a, b in zip(model.arch_parameters(), after))
    g = model.genotype()
    assert "none" not in cands and all(op != "none" for op, _ in g.normal + g.reduce)
