"""ResNet baselines, forced / random rules, the layer monitor (Eq. 8) and the --experiment
commands end to end on small generated data."""
import csv
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from experiments import bionas_paper as BE
from experiments import bionas_runs
from harness import monitor
import attacks
import darts
from harness import data
import resnet
from harness import retrain
import rules
import train
from conftest import make_fake_mnist

GENOTYPE = darts.Genotype(
    normal=[("sep_conv_3x3_fa", 0), ("skip_connect", 1), ("dil_conv_3x3_usf", 0), ("max_pool_3x3", 2)],
    normal_concat=[2, 3],
    reduce=[("skip_connect_brsf", 0), ("sep_conv_5x5_frsf", 1), ("avg_pool_3x3", 0), ("dil_conv_5x5_fa", 2)],
    reduce_concat=[2, 3])


def resnet_params_by_hand(depth, classes=10, c_in=3):
    """He et al.'s CIFAR ResNet: 3x3 convs without bias, BN (weight + bias), option-A
    shortcuts (no parameters), a linear classifier with bias."""
    n = (depth - 2) // 6
    total = c_in * 16 * 9 + 2 * 16
    c_prev = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += c_prev * c * 9 + c * c * 9 + 4 * c
            c_prev = c
    return total + 64 * classes + classes


def test_resnet_parameter_counts():
    for depth, paper in ((20, 0.27e6), (56, 0.85e6)):
        m = resnet.ResNet(depth, 10, "fa")
        count = sum(p.numel() for p in m.parameters())
        assert count == resnet_params_by_hand(depth)
        assert abs(count - paper) / paper < 0.01
    assert set(rules.layer_rules(resnet.resnet56(rule="brsf")).values()) == {"brsf"}
    assert len(rules.layer_rules(resnet.resnet20())) == 20               # 19 convs + classifier
    with pytest.raises(ValueError, match="depth 6n\\+2"):
        resnet.ResNet(21)
    with pytest.raises(ValueError, match="unknown learning rule .sgd."):
        resnet.ResNet(20, rule="sgd")


def test_option_a_shortcut_is_subsample_and_zero_channels():
    block = resnet.BasicBlock(16, 32, 2, "bp")
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2])
    assert not s[:, :8].any() and not s[:, 24:].any()


def _eval_args(**kw):
    a = train.build_parser().parse_args(["--dataset", "cifar10", "--init_channels", "4", "--layers", "3"])
    a.auxiliary = False
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def _edge_rules(model):
    """{layer name: rule} of the layers inside the cells' edge ops, and of the others."""
    lr = rules.layer_rules(model)
    edge = {n: r for n, r in lr.items() if ".ops." in n}
    return edge, {n: r for n, r in lr.items() if n not in edge}


def test_force_rule_changes_every_ruled_convolution():
    mixed_edge, _ = _edge_rules(retrain.build_eval_model(_eval_args(), GENOTYPE))
    assert set(mixed_edge.values()) == {"fa", "usf", "brsf", "frsf"}
    for rule in ("bp", "fa", "usf", "brsf", "frsf"):
        edge, other = _edge_rules(retrain.build_eval_model(
            _eval_args(force_rule=rule, force_scope="edges"), GENOTYPE))
        assert edge.keys() == mixed_edge.keys()                       # the same convolutions
        assert set(edge.values()) == {rule}
        assert set(other.values()) == {"bp"}                          # stem, preprocessing, classifier
        # the authors' scope (their Fig. 4 runs wrap the whole network in Biotorch's BioModule)
        a = _eval_args(force_rule=rule, auxiliary=True)
        assert a.force_scope == "network"                            # the default
        whole = rules.layer_rules(retrain.build_eval_model(a, GENOTYPE))
        assert set(whole.values()) == {rule}
        assert {"stem.0", "classifier", "auxiliary_head.classifier",
                "cells.0.preprocess1.op.1"} <= whole.keys()
    g = darts.force_rule(GENOTYPE, "usf")
    assert [n for n, _ in g.normal] == ["sep_conv_3x3_usf", "skip_connect_usf", "dil_conv_3x3_usf", "max_pool_3x3"]
    assert [j for _, j in g.reduce] == [j for _, j in GENOTYPE.reduce]


def test_random_rules_draw_per_edge_from_the_given_sets():
    seen = {"conv": [], "skip": []}
    for seed in range(300):
        g = darts.random_rules(GENOTYPE, seed)
        for (name, j), (orig, j0) in zip(g.normal + g.reduce, GENOTYPE.normal + GENOTYPE.reduce):
            op, r = darts.ops.parse_candidate(name)
            op0, r0 = darts.ops.parse_candidate(orig)
            assert op == op0 and j == j0
            if r0 is None:
                assert r is None
            else:
                seen["skip" if op == "skip_connect" else "conv"].append(r)
    for kind, pool in (("conv", ("fa", "usf", "brsf", "frsf")), ("skip", ("usf", "brsf", "frsf"))):
        n = len(seen[kind])
        for r in pool:                                   # uniform: binomial within 5 sigma
            p = 1 / len(pool)
            assert abs(seen[kind].count(r) - n * p) < 5 * math.sqrt(n * p * (1 - p))
        assert set(seen[kind]) == set(pool)
    assert darts.random_rules(GENOTYPE, 7) == darts.random_rules(GENOTYPE, 7)
    assert len({tuple(darts.random_rules(GENOTYPE, s).normal) for s in range(10)}) > 1
    edge, _ = _edge_rules(retrain.build_eval_model(_eval_args(random_rules=3), GENOTYPE))
    drawn = darts.random_rules(GENOTYPE, 3)
    for k, (name, _) in enumerate(drawn.normal):          # every conv of edge k has its drawn rule
        r = darts.ops.parse_candidate(name)[1]
        got = {v for n, v in edge.items() if n.startswith(f"cells.0.ops.{k}.")}
        assert got == ({r} if r is not None and name.split("_")[0] != "skip" else set())


def test_layer_monitor_is_eq8_per_layer_and_the_alignment_angle():
    torch.manual_seed(0)
    model = nn.Sequential(rules.RuleLinear(6, 5, rule="fa"), nn.ReLU(), rules.RuleLinear(5, 3, rule="usf"))
    mon = monitor.LayerMonitor(model)
    grads = [[], []]
    for _ in range(7):
        model.zero_grad()
        x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
        F.cross_entropy(model(x), y).backward()
        mon.step()
        for k, i in enumerate((0, 2)):
            grads[k].append(model[i].weight.grad.clone().double())
    entry = mon.end_epoch(0)
    for k in range(2):
        g = torch.stack(grads[k])
        direct = ((g - g.mean(0)) ** 2).mean(0).mean()           # Eq. 8, 1/n, then over weights
        assert entry["grad_variance"][k] == pytest.approx(float(direct), rel=1e-9)
    W, B = model[0].weight.detach().double().flatten(), model[0].weight_backward.double().flatten()
    angle = math.degrees(math.acos(float(W @ B / (W.norm() * B.norm()))))
    assert entry["alignment"][0] == pytest.approx(angle, abs=1e-6)
    W = model[2].weight.detach().double().flatten()             # uSF: B = s * sign(W)
    angle = math.degrees(math.acos(float(W.abs().sum() / (W.norm() * math.sqrt(W.numel())))))
    assert entry["alignment"][1] == pytest.approx(angle, abs=1e-6)
    assert mon.end_epoch(1)["batches"] == 0                      # reset between epochs
    h = mon.weight_histogram(bins=10)
    assert sum(h["counts"]) + h["outside"] == 6 * 5 + 5 * 3


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST", str(tmp_path / "nowhere"))
    root = str(tmp_path / "d")
    make_fake_mnist(root, n_train=64, n_test=16)           # 16 test images: one evaluation batch
    gpath = str(tmp_path / "genotype.json")
    darts.save_genotype(GENOTYPE, gpath)
    return ["--data", root, "--save", str(tmp_path / "runs"), "--quick", "--subset", "64",
            "--batch_size", "32", "--epochs", "1", "--init_channels", "4", "--layers", "3"], gpath


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_train_resnet_cli_logs_finite_layer_statistics(tmp_path, fake):
    flags, _ = fake
    train.main(["--train", "--model", "resnet20", "--rule", "frsf", "--run_name", "r"] + flags
               + ["--epochs", "2", "--holdout", "16"])
    run = tmp_path / "runs" / "r"
    hist = json.loads((run / "history.json").read_text())     # Biotorch's held-out validation
    assert all(0 <= h["valid_acc"] <= 100 and 100 * round(h["valid_acc"] * 16 / 100) / 16
               == pytest.approx(h["valid_acc"]) for h in hist)       # a share of 16 images
    layers = json.loads((run / "layers.json").read_text())
    assert len(layers["names"]) == 20 and set(layers["rules"]) == {"frsf"}
    assert len(layers["history"]) == 2
    for h in layers["history"]:
        assert len(h["grad_variance"]) == 20 and all(math.isfinite(v) and v > 0 for v in h["grad_variance"])
        assert all(0 < a < 90 for a in h["alignment"])
    model, ckpt = retrain.load_checkpoint_model(str(run / "checkpoint.pt"), torch.device("cpu"))
    assert ckpt["kind"] == "resnet" and set(rules.layer_rules(model).values()) == {"frsf"}
    assert (run / "layers.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_experiment_table1_cli(tmp_path, fake):
    flags, _ = fake
    train.main(["--experiment", "table1", "--run_name", "t1"] + flags)
    out = tmp_path / "runs" / "t1"
    rows = _rows(out / "table1.csv")
    assert [(r["model"], r["rule"]) for r in rows] == [(f"resnet{d}", r) for d in (20, 56)
                                                       for r in ("bp", "fa", "usf", "brsf", "frsf")]
    assert {int(r["params"]) for r in rows} == {resnet_params_by_hand(20, 10, 1), resnet_params_by_hand(56, 10, 1)}
    assert [float(r["paper_error"]) for r in rows[:5]] == [8.63, 32.16, 10.05, 11.02, 11.2]
    for r in rows:
        assert float(r["error"]) == pytest.approx(100 - float(r["test_acc"]), abs=0.011)
        sub = json.loads((out / f"{r['model']}-{r['rule']}" / "result.json").read_text())
        assert set(sub["rules"]) == {r["rule"]}
    assert (out / "table1.png").exists() and "| resnet56 | usf | 0.85M | 8.2 |" in (out / "table1.md").read_text()


def _mean_std(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@pytest.mark.slow
def test_experiment_mixed_vs_single_over_seeds_and_resume(tmp_path, fake, monkeypatch):
    flags, gpath = fake
    train.main(["--experiment", "mixed-vs-single", "--genotype", gpath, "--seeds", "1,2",
                "--run_name", "m"] + flags)
    out = tmp_path / "runs" / "m"
    variants = ["mixed", "forced-bp"] + [f"forced-{r}-{scope}" for scope in ("edges", "network")
                                         for r in ("fa", "usf", "brsf", "frsf")]
    seeds = _rows(out / "mixed-vs-single_seeds.csv")
    assert [(r["variant"], int(r["seed"])) for r in seeds] == [(v, s) for s in (1, 2) for v in variants]
    for r in seeds:
        sub = out / f"{r['variant']}-s{r['seed']}"
        assert json.loads((sub / "args.json").read_text())["seed"] == int(r["seed"])
        hist = json.loads((sub / "history.json").read_text())
        assert float(r["test_acc"]) == pytest.approx(round(hist[-1]["test_acc"], 2))
        assert float(r["best_acc"]) == pytest.approx(round(max(h["test_acc"] for h in hist), 2))
        assert r["rules"] == ("brsf fa frsf usf" if r["variant"] == "mixed" else
                              r["variant"].split("-")[1])
        # the arms differ outside the cells only: edges keeps the mixed network's bp there
        layers = json.loads((sub / "layers.json").read_text())
        outside = {rule for n, rule in zip(layers["names"], layers["rules"]) if ".ops." not in n}
        scope = r["variant"].split("-")[-1]
        assert r["scope"] == {"mixed": "edges", "bp": "none"}.get(scope, scope)
        assert outside == ({r["variant"].split("-")[1]} if scope == "network" else {"bp"})
    rows = _rows(out / "mixed-vs-single.csv")
    assert [r["variant"] for r in rows] == variants
    acc = {(r["variant"], int(r["seed"])): float(r["test_acc"]) for r in seeds}
    for r in rows:
        m, sd = _mean_std([acc[(r["variant"], s)] for s in (1, 2)])
        assert float(r["mean_acc"]) == pytest.approx(m, abs=0.006)
        assert float(r["std_acc"]) == pytest.approx(sd, abs=0.006)        # sample std (n - 1)
        if r["variant"] != "mixed":
            d = [acc[("mixed", s)] - acc[(r["variant"], s)] for s in (1, 2)]
            assert float(r["ref_minus"]) == pytest.approx(sum(d) / 2, abs=0.006)
            assert r["ref_wins"] == f"{sum(x > 0 for x in d)}/2"
            md, sd = _mean_std(d)
            if sd > 0:                  # paired t = mean / (std / sqrt n); n = 2: p from Cauchy
                t = md / (sd / math.sqrt(2))
                assert float(r["t"]) == pytest.approx(t, abs=0.006)
                assert float(r["p"]) == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, abs=1e-6)
    assert [r["paper_acc"] for r in rows] == ["94.86", ""] + ["", "86.54", "83.17", "90.58"] * 2
    assert "mixed − edges measures the rule assignment alone" in (out / "mixed-vs-single.md").read_text()
    for f in ("mixed-vs-single.png", "mixed-vs-single_dynamics.png", "mixed-vs-single.md"):
        assert (out / f).exists()
    # --resume reuses every finished retraining instead of training again
    monkeypatch.setattr(bionas_runs, "train", lambda *a, **k: pytest.fail("retrained a finished run"))
    rows2 = train.main(["--resume", str(out)])
    assert [r["mean_acc"] for r in rows2] == [float(r["mean_acc"]) for r in rows]


def test_random_genotype_is_a_uniform_draw_of_the_space():
    seen_ops, seen_inputs = set(), set()
    conv_rules, skip_rules = ("fa", "usf", "brsf", "frsf"), ("usf", "brsf", "frsf")
    for seed in range(60):
        g = darts.random_genotype(seed, steps=3)
        darts.check_genotype(g)
        assert g.normal_concat == g.reduce_concat == [2, 3, 4]
        for cell in (g.normal, g.reduce):
            assert len(cell) == 6
            for i in range(3):                    # two distinct earlier nodes per node
                (_, a), (_, b) = cell[2 * i], cell[2 * i + 1]
                assert a != b and 0 <= a < 2 + i and 0 <= b < 2 + i
                seen_inputs.add((i, a)), seen_inputs.add((i, b))
            for name, _ in cell:
                op, r = darts.ops.parse_candidate(name)
                seen_ops.add(op)
                assert op != "none"
                if op.endswith("pool_3x3"):
                    assert r is None
                else:
                    assert r in (skip_rules if op == "skip_connect" else conv_rules)
    assert seen_ops == {"max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                        "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}
    assert seen_inputs == {(i, j) for i in range(3) for j in range(2 + i)}
    assert darts.random_genotype(5) == darts.random_genotype(5) != darts.random_genotype(6)
    assert darts.random_genotype(5).normal != darts.random_genotype(5).reduce


@pytest.mark.slow
def test_experiment_search_vs_random_searches_per_seed(tmp_path, fake):
    flags, _ = fake
    rows = train.main(["--experiment", "search-vs-random", "--seeds", "3,4", "--run_name", "sr"]
                      + flags)
    out = tmp_path / "runs" / "sr"
    assert [r["variant"] for r in rows] == ["searched", "searched-ops-random-rules", "random-genotype"]
    for s in (3, 4):
        search_args = json.loads((out / f"search-s{s}" / "args.json").read_text())
        assert search_args["seed"] == s and search_args["nodes"] == 2       # the quick search
        assert search_args["init_channels"] == 4 and search_args["epochs"] == 3
        found = darts.load_genotype(str(out / f"search-s{s}" / "genotype.json"))
        g = {v: darts.load_genotype(str(out / f"{v}-s{s}" / "genotype.json"))
             for v in ("searched", "searched-ops-random-rules", "random-genotype")}
        assert g["searched"] == found
        assert g["searched-ops-random-rules"] == darts.random_rules(found, s)
        assert [j for _, j in g["searched-ops-random-rules"].normal] == [j for _, j in found.normal]
        assert g["random-genotype"] == darts.random_genotype(s, steps=2)
        for v in g:
            a = json.loads((out / f"{v}-s{s}" / "args.json").read_text())
            assert a["seed"] == s and a["subset"] == 64 and a["init_channels"] == 4
    seeds = _rows(out / "search-vs-random_seeds.csv")
    assert len(seeds) == 6 and (out / "search-vs-random.png").exists()


@pytest.mark.slow
def test_experiment_random_rules_and_robustness_cli(tmp_path, fake, monkeypatch):
    flags, gpath = fake
    rows = train.main(["--experiment", "random-rules", "--genotype", gpath, "--seeds", "4,5", "--run_name", "rr"] + flags)
    assert [r["variant"] for r in rows] == ["searched", "random-4", "random-5"]
    for r, s in zip(rows[1:], (4, 5)):
        drawn = darts.random_rules(GENOTYPE, s, ("fa", "usf", "brsf", "frsf"), ("usf", "brsf", "frsf"))
        want = {darts.ops.parse_candidate(n)[1] for n, _ in drawn.normal + drawn.reduce} - {None}
        assert set(r["rules"].split()) == want
    pgd_steps = []                     # --attack_steps reaches the experiment's attacks
    pgd = attacks.ATTACKS["pgd"]
    monkeypatch.setitem(attacks.ATTACKS, "pgd", lambda *a, **k: pgd_steps.append(k["steps"]) or pgd(*a, **k))
    rows = train.main(["--experiment", "robustness", "--genotype", gpath, "--attack", "fgsm,pgd",
                       "--attack_steps", "2", "--run_name", "rb"] + flags)
    assert pgd_steps and set(pgd_steps) == {2}
    models = ["searched", "resnet56-fa", "resnet56-usf", "resnet56-frsf", "resnet56-brsf", "resnet20-bp"]
    assert [(r["model"], r["grad"]) for r in rows if r["grad"] != "paper"] == \
        [(m, g) for m in models for g in ("exact", "feedback")]
    for r in rows:
        if r["grad"] != "paper":
            assert all(0 <= r[c] <= 100 for c in ("clean", "fgsm", "pgd"))   # may exceed clean (Table 2 does)
    resnet_bp = [r for r in rows if r["model"] == "resnet20-bp" and r["grad"] != "paper"]
    assert resnet_bp[0]["pgd"] == resnet_bp[1]["pgd"]                 # backprop: both gradients equal
    assert [r["clean"] for r in rows if r["grad"] == "paper"][0] == 94.86
    assert (tmp_path / "runs" / "rb" / "robustness.png").exists()


def test_experiment_needs_genotype(tmp_path, fake):
    flags, _ = fake
    with pytest.raises(SystemExit, match="needs --genotype"):
        train.main(["--experiment", "random-rules"] + flags)
    with pytest.raises(SystemExit, match="no such file"):
        train.main(["--experiment", "mixed-vs-single", "--genotype", "nope.json"] + flags)


def test_multistep_schedule_is_biotorchs_at_250_epochs():
    args = train.build_parser().parse_args(["--lr_schedule", "multistep", "--epochs", "250"])
    args.learning_rate = 0.1
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = retrain.make_scheduler(args, opt)
    lrs = []
    for _ in range(250):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for epoch, lr in ((0, 0.1), (99, 0.1), (100, 0.01), (149, 0.01), (150, 1e-3), (200, 1e-4), (249, 1e-4)):
        assert lrs[epoch] == pytest.approx(lr)
