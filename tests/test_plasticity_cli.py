"""`python train.py --plasticity NAME`: the paper's attack wrapper against a closed form, and the
experiments end to end on small generated IDX files (tables, CSV and plots on disk)."""
import csv
import os

import pytest
import torch
import torch.nn as nn

import data
import plasticity as P
import plasticity_experiments as PE
import train
from test_train import make_fake_mnist


def test_plasticity_attack_breaks_a_linear_model_exactly_within_its_margin():
    """Two classes, logits w_c . x: the smallest L2 perturbation that flips image x is
    d = (z_y - z_o) / |w_y - w_o| (x stays inside [0, 1] here), so the targeted raw-gradient
    attack must break exactly the images with d < eps."""
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
    broken = train.plasticity_attack(steps=30)(net, X, y, eps)
    clear = (d - eps).abs() > 0.02 * eps                     # leave out near-ties
    assert clear.sum() > 150
    assert torch.equal(broken[clear], (d < eps)[clear])
    # eps = 0 keeps every image; a fixed alpha given by the user is used as is
    assert not train.plasticity_attack(steps=5)(net, X, y, 1e-9).any()
    tiny = train.plasticity_attack(steps=1, alpha=1e-9)(net, X, y, eps)
    assert not tiny.any()                                     # a 1e-9 step flips nothing


def _fake(tmp_path, monkeypatch, **kw):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    make_fake_mnist(str(tmp_path / "d"), **kw)
    return str(tmp_path / "d")


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_table2_cli_writes_table_csv_plot(tmp_path, monkeypatch):
    root = _fake(tmp_path, monkeypatch, n_train=400, n_test=200)
    train.main(["--plasticity", "table2", "--quick", "--data", root, "--save", str(tmp_path / "runs"),
                "--run_name", "t2", "--attack-steps", "5"])
    out = tmp_path / "runs" / "t2"
    rows = _read_csv(out / "table2.csv")
    assert [r["model"] for r in rows] == ["T=1", "T=1*", "T=3"]
    assert [int(r["paper_accuracy"]) for r in rows] == [70, 81, 77]      # Fashion-MNIST column
    for r in rows:
        acc, r2, r4 = float(r["accuracy"]), float(r["robust_eps2"]), float(r["robust_eps4"])
        assert acc > 40                      # ten classes (chance 10%): a bright square's position
        assert 0 <= r4 <= r2 <= 100
        assert int(r["n_train"]) == 400 and int(r["n_attack"]) == 20
    md = (out / "table2.md").read_text()
    assert "| T=3 | 77 | " in md and "60 / 36" in md
    assert (out / "table2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "table2 done" in (out / "log.txt").read_text()


def test_convergence_cli_curves(tmp_path, monkeypatch):
    root = _fake(tmp_path, monkeypatch, n_train=600, n_test=200)
    curves = train.main(["--plasticity", "convergence", "--data", root, "--save", str(tmp_path / "runs"),
                         "--run_name", "c"])
    rows = _read_csv(tmp_path / "runs" / "c" / "convergence.csv")
    seen = [int(r["examples seen"]) for r in rows]
    assert seen == sorted(seen) and seen[-1] == 600
    for name in ("plasticity", "gd (Adam)"):
        assert [x for x, _ in curves[name]] == seen
        assert float(rows[-1][name]) == pytest.approx(100 * curves[name][-1][1], abs=0.05)
        assert curves[name][-1][1] > 0.4                        # learned (chance 0.1)


def test_plasticity_cli_bad_inputs(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit, match="mnist or fashion-mnist, not cifar10"):
        train.main(["--plasticity", "table2", "--dataset", "cifar10", "--save", str(tmp_path)])
    with pytest.raises(SystemExit, match="invalid choice: 'table3'"):
        train.main(["--plasticity", "table3"])
    assert not os.listdir(tmp_path)                  # refused before a run directory exists
    with pytest.raises(ValueError, match="unknown plasticity experiment 'x'"):
        PE.run("x", {"mnist": None}, str(tmp_path))


def test_write_table_markdown_and_csv(tmp_path):
    rows = [dict(a=1, b=None), dict(a=2, b=3.5, c="x")]
    PE.write_table(rows, [("A", lambda r: r["a"]), ("B", lambda r: r.get("b"))], str(tmp_path / "t"), "title")
    assert (tmp_path / "t.md").read_text() == "title\n\n| A | B |\n|---|---|\n| 1 | — |\n| 2 | 3.5 |\n"
    assert _read_csv(tmp_path / "t.csv") == [dict(a="1", b="", c=""), dict(a="2", b="3.5", c="x")]
    assert not any(p.endswith(".tmp") for p in os.listdir(tmp_path))


def test_generalization_rows_and_partial_saves():
    """Fig. 3's driver on one tiny extra data set: every (data set, model) row, partial saves
    after each, and the learned Halfspace output rule reported."""
    g = torch.Generator().manual_seed(1)
    protos = torch.rand(3, 20, generator=g)
    y = torch.randint(0, 3, (400,), generator=g)
    X = (protos[y] + 0.1 * torch.randn(400, 20, generator=g)).clamp(0, 1)
    calls = []
    small = {k: tuple(t[:300] for t in v[:2]) + tuple(t[:300] for t in v[2:])
             for k, v in PE.synthetic_datasets(300, 300, 0).items()}
    small["protos"] = (X[:300], y[:300], X[300:], y[300:])
    rows = PE.experiment_generalization(small, quick=True, reps=1, meta_steps=4,
                                        on_row=lambda rs: calls.append(len(rs)))
    res = [r for r in rows if "test_mean" in r]
    assert len(res) == 5 * 4 and calls == list(range(1, 21))
    assert {r["dataset"] for r in res} == {"Halfspace", "ReLU1", "ReLU2", "RNN", "protos"}
    assert all(0 <= r["test_mean"] <= 100 and r["test_std"] == 0 for r in res)   # one rep: std 0
    rules = [r for r in rows if r["dataset"] == "(rules)"]
    assert len(rules) == 2 and len(rules[0]["table"]) == 2 and len(rules[1]["table"]) == 8
    assert P.OutputRuleTable(1, torch.tensor(rules[0]["table"])).table().shape == (2, 2)
