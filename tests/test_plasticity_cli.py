"""`python train.py --plasticity NAME`: the paper's attack wrapper against a closed form, the
experiments' drivers on small data (rows, controls, files on disk), and the seed summaries
against hand computations. Each docstring names the one-line bug the test catches."""
import csv
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import data
import plasticity as P
from experiments import plasticity_paper as PE
import train
from conftest import make_fake_mnist


def test_plasticity_attack_breaks_a_linear_model_exactly_within_its_margin():
    """Bug: the attack steps up the target's loss (x + alpha grad): two classes, logits w_c . x,
    the smallest L2 perturbation that flips x is d = (z_y - z_o) / |w_y - w_o|, so exactly the
    images with d < eps must break."""
    g = torch.Generator().manual_seed(0)
    n, dim = 200, 50
    net = nn.Linear(dim, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(0.3 * torch.randn(2, dim, generator=g))
    X = 0.5 + 0.02 * torch.randn(n, dim, generator=g)
    with torch.no_grad():
        z = net(X)
    y = z.argmax(1)
    w_diff = (net.weight[0] - net.weight[1]).detach().norm()
    d = (z.max(1).values - z.min(1).values) / w_diff          # distance to the boundary
    eps = float(d.median())
    broken = PE.plasticity_attack(steps=30)(net, X, y, eps)
    clear = (d - eps).abs() > 0.02 * eps                     # leave out near-ties
    assert clear.sum() > 150
    assert torch.equal(broken[clear], (d < eps)[clear])
    assert not PE.plasticity_attack(steps=5)(net, X, y, 1e-9).any()
    assert not PE.plasticity_attack(steps=1, alpha=1e-9)(net, X, y, eps).any()


def _linear_case(n=40, dim=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = nn.Linear(dim, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.randn(2, dim, generator=g))
    X = torch.randn(n, dim, generator=g)
    with torch.no_grad():
        z = net(X)
    y = z.argmax(1)
    d = (z.max(1).values - z.min(1).values) / (net.weight[0] - net.weight[1]).detach().norm()
    exact = lambda net_, X_, y_, eps: ((net_(X_).max(1).values - net_(X_).min(1).values)
                                       / (net_.weight[0] - net_.weight[1]).norm() < eps).detach()
    return net, X, y, d, exact


def test_min_breaking_eps_bisects_to_the_closed_form_distance():
    """Bug: the bisection keeps the lower end (returns lo: a radius at which the image survives):
    with an exact attack on a linear model the smallest breaking radius is d = margin / |w_0 - w_1|,
    and 6 halvings of [0, 8] must land in [d, d + 8/64]."""
    net, X, y, d, exact = _linear_case()
    e = PE.min_breaking_eps(net, X, y, exact, hi=8.0, iters=6)
    inside = d < 8
    assert inside.sum() > 20 and torch.isinf(e[~inside]).all()
    assert ((e[inside] >= d[inside] - 1e-6) & (e[inside] <= d[inside] + 8 / 64 + 1e-6)).all()


def test_attack_sample_is_a_seeded_random_draw():
    """Bug: A.3's "one hundred random images" are the first n again (X[:n])."""
    X, y = torch.arange(1000.0)[:, None], torch.arange(1000)
    a, b, c = PE.attack_sample(X, y, 100, 0), PE.attack_sample(X, y, 100, 0), PE.attack_sample(X, y, 100, 1)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and not torch.equal(a[1], y[:100])
    assert len(set(a[1].tolist())) == 100 and a[1].max() > 500


def _protos(n=400, dim=784, classes=3, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return (protos[y] + noise * torch.randn(n, dim, generator=g)).clamp(0, 1), y


def _local_targeted_l2(net, X, y, eps, steps=6):
    """A tiny targeted L2 PGD (Sec. 4): every other class as target, broken if any succeeds."""
    broken = torch.zeros(len(X), dtype=torch.bool)
    for t in range(1, net.n_out):
        target, x = (y + t) % net.n_out, X.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(net(x), target), x)
            x = x.detach() - 0.5 * eps * g / (g.norm(dim=1, keepdim=True) + 1e-12)
            dlt = x - X
            x = (X + dlt * torch.clamp(eps / (dlt.norm(dim=1, keepdim=True) + 1e-12), max=1.0)).clamp(0, 1)
        with torch.no_grad():
            broken |= net(x).argmax(1) != y
    return broken


@pytest.mark.slow
def test_table2_rows_controls_and_robustness_with_a_local_attack():
    """Bug: the "no RNN rule" control gets an RNN rule (or a random W): its W must stay 0 (so
    every round repeats round 1 and T=3 equals T=1 exactly); the random-W control's mean |W| is
    E|N(0, 1/(p k))| = sqrt(2 / pi) / sqrt(p k); robust accuracy at eps = 0 is the clean
    accuracy and a huge radius breaks everything."""
    X, y = _protos()
    models = ["T=1", "T=3, no RNN rule", "T=3, random fixed W", "T=3, rule learned as A.3 (|V|=200)",
              "T=3, rule learned as BrainNet (|V|=200)"]
    rows = PE.experiment_table2(X[:300], y[:300], X[300:], y[300:], quick=True, attack=_local_targeted_l2,
                                epochs=1, n_attack=10, models=models)
    r = {q["model"]: q for q in rows}
    assert list(r) == models and r["T=1"]["accuracy"] > 60 and r["T=1"]["paper_accuracy"] == 70
    assert (r["T=1"]["accuracy"], r["T=1"]["robust_eps2"]) == (r["T=3, no RNN rule"]["accuracy"], r["T=3, no RNN rule"]["robust_eps2"])
    assert r["T=3, no RNN rule"]["mean_abs_W"] == 0 and r["T=3, rule learned as A.3 (|V|=200)"]["mean_abs_W"] > 0
    assert r["T=3, random fixed W"]["mean_abs_W"] == pytest.approx(math.sqrt(2 / math.pi) / math.sqrt(0.5 * 500), rel=0.02)
    assert r["T=3, rule learned as BrainNet (|V|=200)"]["paper_robust_eps2_mnist"] == 60
    assert r["T=3, rule learned as A.3 (|V|=200)"]["paper_robust_eps2_mnist"] is None
    assert r["T=1"]["zero_grad_share"] is None and r["T=3, rule learned as BrainNet (|V|=200)"]["meta_steps"] == 20
    assert 0 <= r["T=3, rule learned as BrainNet (|V|=200)"]["zero_grad_share"] <= 1
    assert all(0 <= q["robust_eps4"] <= 100 for q in rows)
    net = P.train_with_rules(P.CapRNN(784, 3, num_v=200, cap=100, rounds=1, seed=0), X[:300], y[:300],
                             output_rule=P.perceptron_output_rule(1))
    Xa, ya = X[300:340], y[300:340]
    assert PE.robust_accuracy(net, Xa, ya, 0, _local_targeted_l2) == P.accuracy(net, Xa, ya)
    assert PE.robust_accuracy(net, Xa, ya, 50.0, _local_targeted_l2) == 0.0


def test_random_w_control_scale():
    """Bug: the random-W control draws N(0, 1) (the recurrent drive then swamps A x): W must be
    N(0, 1/(p k)) on the edges of G only."""
    net = PE.random_w(P.CapRNN(10, 2, 400, 200, 0.5, 3, seed=0), seed=0)
    w = net.W[net.G.bool()]
    assert (net.W[~net.G.bool()] == 0).all()
    assert abs(float(w.std()) * math.sqrt(0.5 * 200) - 1) < 0.03 and abs(float(w.mean())) < 0.01


@pytest.mark.slow
def test_robustness_experiment_rows_with_a_local_attack():
    """Bug: experiment_robustness attacks the GD net for every model (nets dict overwritten), or
    counts "correct or unbroken": each model's eps = 0 row is its clean accuracy on the seeded
    attack sample (T=1 rule and GD rebuilt by hand), and no radius beats it."""
    X, y = _protos(n=500, noise=0.9)
    rows = PE.experiment_robustness(X[:400], y[:400], X[400:], y[400:], quick=True, attack=_local_targeted_l2, n_attack=15)
    models = list(dict.fromkeys(r["model"] for r in rows))
    assert models == ["plasticity T=1", "plasticity T=3 (A.3 rule)", "plasticity T=3 (initial rule)", "GD (Adam) T=1"]
    assert [r["eps"] for r in rows if r["model"] == "GD (Adam) T=1"] == [0, 1, 2, 3, 4]
    clean = {r["model"]: r["robust_accuracy"] for r in rows if r["eps"] == 0}
    Xa, ya = PE.attack_sample(X[400:], y[400:], 15, 0)
    t1 = P.train_with_rules(P.CapRNN(784, 3, 1000, 500, 0.5, 1, seed=0), X[:400], y[:400],
                            output_rule=P.perceptron_output_rule(1), epochs=2, seed=0)
    gd = P.train_gd(P.CapRNN(784, 3, 1000, 500, 0.5, 1, seed=0), X[:400], y[:400], epochs=2, seed=0)
    assert clean["plasticity T=1"] == round(100 * P.accuracy(t1, Xa, ya), 2) and clean["plasticity T=1"] > 50   # chance 33%
    assert clean["GD (Adam) T=1"] == round(100 * P.accuracy(gd, Xa, ya), 2) and clean["GD (Adam) T=1"] > 50
    assert all(r["robust_accuracy"] <= clean[r["model"]] for r in rows)
    assert any(r["robust_accuracy"] < clean[r["model"]] for r in rows if r["eps"] == 4)


@pytest.mark.slow
def test_generalization_reshuffles_one_network_per_seed(monkeypatch):
    """Bug: the reshuffles redraw the network (seed + r): A.2 retrains the same network on
    reshuffled examples, so every network of a seed's run is drawn with that seed."""
    seen = []
    real = P.CapRNN

    def spy(*a, **kw):
        seen.append(kw.get("seed"))
        return real(*a, **kw)
    monkeypatch.setattr(P, "CapRNN", spy)
    small = {k: tuple(t[:200] for t in v) for k, v in PE.synthetic_datasets(200, 200, 0).items()}
    rows = PE.experiment_generalization(small, quick=True, seed=3, reps=2, meta_steps=2)
    assert set(seen) == {3}
    res = [(r["dataset"], r["model"], r["rules"]) for r in rows]
    assert len(res) == 4 * (4 * 2 + 2) and len(set(res)) == len(res)      # 4 models x 2 starts + 2 controls
    assert ("ReLU1", "large feedforward", "perceptron, no RNN rule") in res
    assert all(0 <= r["test"] <= 100 for r in rows) and rows[0]["halfspace_rule"].startswith("[[")


def test_row_protocol_networks_use_brainnets_recurrence_and_topk_firing(monkeypatch):
    """Bug: a protocol's firing is dropped where its networks are built (meta-learning builds
    h != 0 networks, or Table 2 / Fig. 6 train the learned rule in a network other than the
    one it was learned in): every network of Table 2's row, of its BrainNet controls and of
    Fig. 6 is BrainNet's W (h + A x) with top-k firing; the text's-firing variant keeps h != 0."""
    seen = []
    real = P.CapRNN

    def spy(*a, **kw):
        seen.append((a[2] if len(a) > 2 else kw.get("num_v"), a[5] if len(a) > 5 else kw.get("rounds"),
                     kw.get("recurrence", "text"), kw.get("firing", "nonzero")))
        return real(*a, **kw)
    monkeypatch.setattr(P, "CapRNN", spy)
    X, y = _protos(n=400, dim=30, seed=1)
    row = ["T=3, rule learned as BrainNet (|V|=200)", "T=3 BrainNet network, random fixed W",
           "T=3 BrainNet network, initial rule"]
    PE.experiment_table2(X[:300], y[:300], X[300:], y[300:], quick=True, epochs=1, models=row, meta_steps=2)
    assert {s[2:] for s in seen} == {("brainnet", "topk")} and {s[0] for s in seen} == {200, 1000}
    seen.clear()
    PE.experiment_table2(X[:300], y[:300], X[300:], y[300:], quick=True, epochs=1, meta_steps=2,
                         models=["T=3, rule learned as BrainNet with the text's firing (h != 0)"])
    assert {s[2:] for s in seen} == {("brainnet", "nonzero")}
    seen.clear()
    PE.experiment_fig6(X[:200], y[:200], X[300:], y[300:], quick=True, points=2)
    assert {s[2:] for s in seen} == {("brainnet", "topk")} and {s[0] for s in seen} == {200, 1000}


def test_perceptron_update_all_with_brainnet_rows_equals_update_on_mistakes():
    """Bug: rows="predicted_always" skips the predicted row on a correct prediction: BrainNet's
    update then adds both columns to the true row, r(a, 0) + r(a, 1) = 0 for the perceptron, so
    updating on every example changes nothing beyond updating on mistakes (Fig. 6's "similar")."""
    X, y = _protos(n=300, dim=50, seed=2, noise=0.5)
    nets = [P.train_with_rules(P.CapRNN(50, 3, 100, 50, 0.5, 1, seed=0), X, y, output_rule=P.perceptron_output_rule(1),
                               update=u, rows=r, seed=0) for u, r in (("mistakes", "predicted"), ("all", "predicted_always"), ("all", "predicted"))]
    assert torch.equal(nets[0].U, nets[1].U) and not torch.equal(nets[0].U, nets[2].U)


def _fake(tmp_path, monkeypatch, **kw):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    make_fake_mnist(str(tmp_path / "d"), **kw)
    return str(tmp_path / "d")


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_table2_cli_writes_tables_csv_plot(tmp_path, monkeypatch):
    """Bug: run() ignores its seed(s) (always seed 0) or the paper column reads MNIST's numbers
    on Fashion-MNIST. (--seed and --seeds both say 4: the command works before and after
    train.py forwards --seeds.)"""
    root = _fake(tmp_path, monkeypatch, n_train=300, n_test=100)
    keep = ("T=1", "T=1*", "T=3, rule learned as BrainNet (|V|=200)")
    train.main(["--plasticity", "table2", "--quick", "--data", root, "--save", str(tmp_path / "runs"),
                "--run_name", "t2", "--attack-steps", "3", "--seed", "4", "--seeds", "4",
                "--plasticity_models", ";".join(keep), "--meta_steps", "3"])
    out = tmp_path / "runs" / "t2"
    per_seed, summary = _read_csv(out / "table2_seeds.csv"), _read_csv(out / "table2.csv")
    assert [r["model"] for r in summary] == list(keep) and {r["seed"] for r in per_seed} == {"4"}
    assert [int(r["paper_accuracy"]) for r in summary] == [70, 81, 77]      # Fashion-MNIST column
    for r in summary:
        assert float(r["accuracy_mean"]) > 40 and r["seeds"] == "1"      # chance 10%
        assert 0 <= float(r["robust_eps4_mean"]) <= 100
    md = (out / "table2.md").read_text()
    assert "| T=3, rule learned as BrainNet (|V|=200) | 77 | 60 | 36 |" in md and "seeds 4;" in md
    assert [r["meta_steps"] for r in per_seed] == ["", "", "3"]
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "table2 done" in (out / "log.txt").read_text()


@pytest.mark.slow
def test_run_summary_is_the_mean_and_sample_std_of_the_seeds(tmp_path):
    """Bug: the summary's std is the population std (ddof=0) or the per-seed CSV keeps only the
    last seed: mean and sample std recomputed by hand from NAME_seeds.csv."""
    X, y = _protos(n=700, dim=40, seed=1, noise=0.6)
    rows, summary = PE.run("convergence", {"fashion-mnist": (X[:500], y[:500], X[500:], y[500:])}, str(tmp_path),
                           seeds=(0, 1, 2), log=lambda *_: None)
    per_seed = _read_csv(tmp_path / "convergence_seeds.csv")
    assert {r["seed"] for r in per_seed} == {"0", "1", "2"} and len(per_seed) == len(rows)
    for s in _read_csv(tmp_path / "convergence.csv"):
        v = [float(r["accuracy"]) for r in per_seed if (r["method"], r["examples"]) == (s["method"], s["examples"])]
        m = sum(v) / 3
        assert len(v) == 3 and float(s["accuracy_mean"]) == pytest.approx(m, abs=0.006)
        assert float(s["accuracy_std"]) == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in v) / 2), abs=0.006)
    assert {r["method"] for r in per_seed} == {"plasticity (perceptron rule)", "plasticity (fired-only rule)", "GD (Adam on U)"}
    assert max(int(r["examples"]) for r in per_seed) == 500
    assert (tmp_path / "convergence.png").read_bytes()[:4] == b"\x89PNG"


def test_plasticity_cli_bad_inputs(tmp_path):
    """Bug: bad names or seed arguments run anyway (or make a run directory first)."""
    with pytest.raises(SystemExit, match="mnist or fashion-mnist, not cifar10"):
        train.main(["--plasticity", "table2", "--dataset", "cifar10", "--save", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown --plasticity_models"):
        train.main(["--plasticity", "table2", "--dataset", "fashion-mnist", "--plasticity_models", "T=9",
                     "--save", str(tmp_path)])
    with pytest.raises(SystemExit, match="invalid choice: 'table3'"):
        train.main(["--plasticity", "table3"])
    assert not os.listdir(tmp_path)                  # refused before a run directory exists
    with pytest.raises(ValueError, match="unknown plasticity experiment 'x'"):
        PE.run("x", {"mnist": None}, str(tmp_path))
    with pytest.raises(ValueError, match="not both"):
        PE.run("a4", {"mnist": None}, str(tmp_path), seeds=(1, 2), seed=3)
    with pytest.raises(ValueError, match="needs an attack"):
        PE.run("fig4", {"mnist": None}, str(tmp_path))
    assert set(PE.EXPERIMENTS) >= {"table2", "convergence", "generalization", "robustness", "fig4", "fig6", "a4", "theory"}


@pytest.mark.slow
def test_a4_and_fig6_rows_on_small_data():
    """Bug: A.4's MSE-optimal rule is used with updates on mistakes only (App. B's optimum assumes
    every example and every row): its accuracy must equal training it that way by hand."""
    X, y = _protos(n=400, dim=30, seed=3, noise=0.5)
    small = {"Halfspace": tuple(t[:300] for t in PE.synthetic_datasets(300, 300, 0)["Halfspace"])}
    rows = PE.experiment_a4(X[:300], y[:300], X[300:], y[300:], quick=True, datasets=small)
    mse = next(r for r in rows if r["dataset"] == "images" and r["rule"].startswith("MSE"))
    net = P.CapRNN(30, 3, 1000, 500, 0.5, 1, seed=0)
    r = P.mse_optimal_output_rule(*net.hidden(X[:300]), y[:300], 3, 1, lr=1e-2)
    P.train_with_rules(net, X[:300], y[:300], output_rule=r, update="all", rows="all")
    assert mse["accuracy"] == round(100 * P.accuracy(net, X[300:], y[300:]), 2)
    assert len([r for r in rows if r["dataset"] == "images"]) == 8 and len(rows) == 14
    maj = next(r for r in rows if r["dataset"] == "images" and r["rule"] == "majority class")
    assert maj["accuracy"] == round(100 * float((y[300:] == torch.bincount(y[:300]).argmax()).float().mean()), 2)
    rows6 = PE.experiment_fig6(X[:200], y[:200], X[300:], y[300:], quick=True, points=2)
    assert len({r["scheme"] for r in rows6}) == 3 and {r["examples"] for r in rows6} == {100, 200}
