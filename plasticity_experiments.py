"""The experiments of "Learning with plasticity rules: generalization and robustness".

Table 2 (accuracy and robustness of T=1, T=1*, T=3), Fig. 2 (convergence against Adam), Fig. 3
(rules learned on one data set, used on others) and Fig. 5 (robust accuracy against epsilon), on
top of plasticity.py. Each `experiment_*` returns rows or curves; `run(name, ...)` also writes
NAME.md, NAME.csv and NAME.png into a directory (`python train.py --plasticity NAME [--quick]`).

The adversary is passed in: attack(net, X, y, eps) -> bool tensor, True where the image is
broken (train.py wraps attacks.targeted_l2, the paper's Sec. 4 / A.3 attack).
"""
import os
import time

import numpy as np
import torch

from plots import plot_bars, plot_curves
from run_dir import write_table
from plasticity import (CapRNN, MLPRule, OutputRuleTable, accuracy, halfspace, meta_learn,
                        perceptron_output_rule, relu_data, rnn_data, train_gd, train_with_rules)

EXPERIMENTS = ("table2", "generalization", "convergence", "robustness")
LABELS = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}

PAPER_TABLE2 = {  # Table 2: accuracy (%) and robustness on MNIST (%) at eps = 2, 4
    "T=3": dict(mnist=87, fashion=77, robust_eps2=60, robust_eps4=36),
    "T=1*": dict(mnist=93, fashion=81, robust_eps2=12, robust_eps4=0),
    "T=1": dict(mnist=85, fashion=70, robust_eps2=0, robust_eps4=0),
}


def _quiet(*_):
    pass


def robust_accuracy(net, X, y, eps, attack):
    """Fraction of images classified correctly and not broken by `attack` at radius eps (Sec. 4)."""
    with torch.no_grad():
        correct = net(X).argmax(1) == y
    if eps == 0:
        return float(correct.float().mean())
    broken = attack(net, X, y, eps).to(correct.device).bool()
    return float((correct & ~broken).float().mean())


def learn_mlp_rnn_rule(X, y, n_out, num_v=200, cap=100, steps=100, seed=0, output_rule=None):
    """A.3: an MLP RNN rule (hidden 20, T=3) learned by meta_learn on a smaller simple RNN
    (|V|=200, cap 100) with the perceptron output rule held fixed. Returns (rule, losses)."""
    rule = MLPRule(3, 20, seed=seed)
    fixed = output_rule if output_rule is not None else perceptron_output_rule(3).table().detach()
    losses = meta_learn(lambda: CapRNN(X.shape[1], n_out, num_v, cap, 0.5, 3, seed=seed), X, y,
                        rnn_rule=rule, output_rule=fixed, epochs=10 ** 9, steps=steps, seed=seed)
    return rule, losses


def _n_out(*ys):
    return int(max(int(t.max()) for t in ys)) + 1


def experiment_table2(train_X, train_y, test_X, test_y, quick=False, attack=None, seed=0,
                      dataset="fashion", rnn_rule=None, epochs=2, n_attack=100, meta_steps=None,
                      log=_quiet):
    """Table 2: |V|=1000, k=500, 2 epochs of rule-based training (perceptron output rule; T=3
    adds the A.3 MLP RNN rule); T=1, T=1* (input weights all one), T=3; test accuracy and, with
    an attack, robust accuracy at eps 2 and 4 on `n_attack` test images. Returns rows."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, test_X, test_y, n_attack = train_X[:2000], train_y[:2000], test_X[:2000], test_y[:2000], min(n_attack, 20)
    if rnn_rule is None:
        steps = meta_steps or (20 if quick else 100)
        t0 = time.perf_counter()
        rnn_rule, losses = learn_mlp_rnn_rule(train_X, train_y, n_out, steps=steps, seed=seed)
        log(f"T=3 rule: {steps} meta-learning steps (|V|=200, cap 100), loss {losses[0]:.3f} -> "
            f"{losses[-1]:.3f}, {time.perf_counter() - t0:.0f}s")
    rows = []
    for name, T, inputs in (("T=1", 1, "normal"), ("T=1*", 1, "ones"), ("T=3", 3, "normal")):
        net = CapRNN(train_X.shape[1], n_out, 1000, 500, 0.5, T, seed=seed, input_weights=inputs).to(train_X.device)
        t0 = time.perf_counter()
        train_with_rules(net, train_X, train_y, rnn_rule=rnn_rule if T > 1 else None,
                         output_rule=perceptron_output_rule(T), epochs=epochs, seed=seed)
        row = dict(model=name, rounds=T, input_weights=inputs, n_train=len(train_X),
                   n_test=len(test_X), train_seconds=round(time.perf_counter() - t0, 1),
                   accuracy=round(100 * accuracy(net, test_X, test_y), 1),
                   paper_accuracy=PAPER_TABLE2[name][dataset] if dataset in ("mnist", "fashion") else None)
        if attack is not None:
            Xa, ya = test_X[:n_attack], test_y[:n_attack]
            row["n_attack"] = len(Xa)
            for eps in (2, 4):
                row[f"robust_eps{eps}"] = round(100 * robust_accuracy(net, Xa, ya, eps, attack), 1)
                row[f"paper_robust_eps{eps}_mnist"] = PAPER_TABLE2[name][f"robust_eps{eps}"]
        log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "model"))
        rows.append(row)
    return rows


def synthetic_datasets(n_train=10000, n_test=10000, seed=0):
    """A.2's four synthetic data sets (10-dim Gaussian inputs): name -> (Xtr, ytr, Xte, yte)."""
    out = {}
    for name, fn in (("Halfspace", lambda n: halfspace(n, 10, seed)), ("ReLU1", lambda n: relu_data(n, 10, seed + 1)),
                     ("ReLU2", lambda n: relu_data(n, 10, seed + 2)), ("RNN", lambda n: rnn_data(n, 10, seed + 3))):
        X, y = fn(n_train + n_test)
        out[name] = (X[:n_train], y[:n_train], X[n_train:], y[n_train:])
    return out


def experiment_generalization(datasets=None, quick=False, seed=0, reps=None, meta_steps=None,
                              log=_quiet, on_row=_quiet):
    """Fig. 3: an output rule learned on Halfspace (|V|=100, T=1) and an MLP RNN rule plus
    output rule learned on ReLU1 (|V|=100, k=50, T=3); rules fixed, train small (|V|=100, k=50)
    and large (|V|=1000, k=500) feedforward (T=1) and recurrent (T=3) models on every data set,
    `reps` reshuffles (10; quick 2). Returns rows with mean and std of train/test accuracy;
    on_row(rows) is called after each row (to save partial results)."""
    n = 2000 if quick else 10000
    datasets = dict(datasets) if datasets is not None else {}
    for k_, v in synthetic_datasets(n, n, seed).items():
        datasets.setdefault(k_, v)
    reps = reps or (2 if quick else 10)
    steps = meta_steps or 100
    t0 = time.perf_counter()
    Xh, yh = datasets["Halfspace"][:2]
    ff_rule = OutputRuleTable(1, seed=seed)
    meta_learn(lambda: CapRNN(Xh.shape[1], 2, 100, 50, 0.5, 1, seed=seed), Xh, yh, output_rule=ff_rule,
               epochs=10 ** 9, steps=steps, meta_lr=0.1, seed=seed)
    Xr, yr = datasets["ReLU1"][:2]
    rnn_rule, rnn_out = MLPRule(3, 20, seed=seed), OutputRuleTable(3, seed=seed)
    meta_learn(lambda: CapRNN(Xr.shape[1], 2, 100, 50, 0.5, 3, seed=seed), Xr, yr, rnn_rule=rnn_rule,
               output_rule=rnn_out, epochs=10 ** 9, steps=steps // 2 if quick else steps, meta_lr=0.1, seed=seed)
    log(f"rules meta-learned in {time.perf_counter() - t0:.0f}s; output rule (Halfspace, T=1) = "
        f"{[[round(float(t), 3) for t in r_] for r_ in ff_rule.table().detach()]}")
    models = (("small feedforward", 100, 50, 1), ("large feedforward", 1000, 500, 1),
              ("small recurrent", 100, 50, 3), ("large recurrent", 1000, 500, 3))
    rows, done, total, t0 = [], 0, len(datasets) * len(models), time.perf_counter()
    for dname, (Xtr, ytr, Xte, yte) in datasets.items():
        n_out = _n_out(ytr, yte)
        for mname, v, k, T in models:
            tr, te = [], []
            for r in range(reps):
                net = CapRNN(Xtr.shape[1], n_out, v, k, 0.5, T, seed=seed + r).to(Xtr.device)
                train_with_rules(net, Xtr, ytr, rnn_rule=rnn_rule if T > 1 else None,
                                 output_rule=rnn_out if T > 1 else ff_rule, seed=seed + r)
                tr.append(accuracy(net, Xtr, ytr))
                te.append(accuracy(net, Xte, yte))
            rows.append(dict(dataset=dname, model=mname, reps=reps,
                             train_mean=round(100 * float(np.mean(tr)), 1), train_std=round(100 * float(np.std(tr)), 1),
                             test_mean=round(100 * float(np.mean(te)), 1), test_std=round(100 * float(np.std(te)), 1)))
            done += 1
            el = time.perf_counter() - t0
            log(f"[{done}/{total}] {dname}, {mname}: test {rows[-1]['test_mean']} ± {rows[-1]['test_std']}% "
                f"({el:.0f}s, ETA {el / done * (total - done):.0f}s)")
            on_row(rows)
    rows.append(dict(dataset="(rules)", model="learned output rule (Halfspace, T=1)",
                     table=[[round(float(t), 3) for t in r_] for r_ in ff_rule.table().detach()]))
    rows.append(dict(dataset="(rules)", model="learned output rule (ReLU1, T=3)",
                     table=[[round(float(t), 3) for t in r_] for r_ in rnn_out.table().detach()]))
    return rows


def experiment_convergence(train_X, train_y, test_X, test_y, quick=False, seed=0, points=None,
                           log=_quiet):
    """Fig. 2: test accuracy against examples seen, T=1, |V|=1000, k=500: the perceptron output
    rule (one pass) vs Adam (lr 1e-2, batch 100) on the output weights. Returns name -> [(x, y)]."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, test_X, test_y = train_X[:3000], train_y[:3000], test_X[:2000], test_y[:2000]
    points = points or 15
    every = max(100, (len(train_X) // points) // 100 * 100)
    curves = {"plasticity": [], "gd (Adam)": []}
    net = CapRNN(train_X.shape[1], n_out, 1000, 500, 0.5, 1, seed=seed).to(train_X.device).reset()
    rule = perceptron_output_rule(1)
    for s in range(0, len(train_X), every):
        train_with_rules(net, train_X[s:s + every], train_y[s:s + every], output_rule=rule, reset=False)
        curves["plasticity"].append((min(s + every, len(train_X)), accuracy(net, test_X, test_y)))
    log(f"plasticity: {curves['plasticity'][-1][1]:.3f} after {curves['plasticity'][-1][0]} examples")
    net = CapRNN(train_X.shape[1], n_out, 1000, 500, 0.5, 1, seed=seed).to(train_X.device)
    train_gd(net, train_X, train_y, lr=1e-2, batch_size=100, seed=seed, callback_every=every,
             callback=lambda seen: curves["gd (Adam)"].append((seen, accuracy(net, test_X, test_y))))
    if not curves["gd (Adam)"] or curves["gd (Adam)"][-1][0] != len(train_X):
        curves["gd (Adam)"].append((len(train_X), accuracy(net, test_X, test_y)))
    log(f"gd (Adam): {curves['gd (Adam)'][-1][1]:.3f} after {curves['gd (Adam)'][-1][0]} examples")
    return curves


def experiment_robustness(train_X, train_y, test_X, test_y, quick=False, attack=None, seed=0,
                          eps_list=(0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4), n_attack=100, rnn_rule=None,
                          epochs=2, gd_params="output", log=_quiet):
    """Fig. 5: robust accuracy against eps (A.3: targeted L2 attack, nine targets, 100 images) for
    |V|=1000, k=500 trained by rules with T=1 and T=3, and by GD (Adam, T=1, `gd_params`).
    Returns name -> [(eps, accuracy)]."""
    if attack is None:
        raise ValueError("experiment_robustness needs attack(net, X, y, eps) -> broken mask")
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, n_attack, eps_list = train_X[:2000], train_y[:2000], min(n_attack, 20), (0, 1, 2, 3, 4)
    if rnn_rule is None:
        rnn_rule, _ = learn_mlp_rnn_rule(train_X, train_y, n_out, steps=20 if quick else 100, seed=seed)
    nets = {}
    for T in (1, 3):
        net = CapRNN(train_X.shape[1], n_out, 1000, 500, 0.5, T, seed=seed).to(train_X.device)
        nets[f"plasticity T={T}"] = train_with_rules(net, train_X, train_y, rnn_rule=rnn_rule if T > 1 else None,
                                                     output_rule=perceptron_output_rule(T), epochs=epochs, seed=seed)
    net = CapRNN(train_X.shape[1], n_out, 1000, 500, 0.5, 1, seed=seed).to(train_X.device)
    nets["gd (Adam) T=1"] = train_gd(net, train_X, train_y, epochs=epochs, params=gd_params, seed=seed)
    Xa, ya = test_X[:n_attack], test_y[:n_attack]
    curves = {}
    for name, n_ in nets.items():
        curves[name] = [(eps, robust_accuracy(n_, Xa, ya, eps, attack)) for eps in eps_list]
        log(f"{name}: " + ", ".join(f"eps {e}: {100 * a:.0f}%" for e, a in curves[name]))
    return curves


# ----------------------------------------------------------------------------------------
# Reports: NAME.md, NAME.csv (run_dir.write_table), NAME.png
# ----------------------------------------------------------------------------------------

def _curve_rows(curves, xname):
    xs = sorted({x for pts in curves.values() for x, _ in pts})
    return [dict({xname: x}, **{k: next((round(100 * a, 1) for x_, a in pts if x_ == x), None)
                                for k, pts in curves.items()}) for x in xs]


def run(name, data, out_dir, quick=False, attack=None, seed=0, log=print):
    """Run experiment `name` (EXPERIMENTS) and write NAME.md/.csv/.png into out_dir.

    data: {"fashion-mnist"|"mnist": (train_X, train_y, test_X, test_y)} of flattened [0, 1]
    images; table2, convergence and robustness use the first entry, generalization all of them
    (next to its four synthetic data sets). Returns the rows or curves."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown plasticity experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if not data:
        raise ValueError("no image data set given (mnist or fashion-mnist)")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name)
    dname, (Xtr, ytr, Xte, yte) = next(iter(data.items()))
    label = LABELS.get(dname, dname)
    scale = "quick" if quick else "full"
    if name == "table2":
        key = {"fashion-mnist": "fashion", "mnist": "mnist"}.get(dname, dname)
        rows = experiment_table2(Xtr, ytr, Xte, yte, quick=quick, attack=attack, seed=seed, dataset=key, log=log)
        cols = [("model", lambda r: r["model"]), (f"paper {label}", lambda r: r["paper_accuracy"]),
                (f"measured {label}", lambda r: r["accuracy"])]
        if attack is not None:
            cols += [("paper robust MNIST ε=2 / ε=4", lambda r: f"{r['paper_robust_eps2_mnist']} / {r['paper_robust_eps4_mnist']}"),
                     (f"measured robust {label} ε=2 / ε=4", lambda r: f"{r['robust_eps2']} / {r['robust_eps4']}")]
        cols.append(("train s", lambda r: r["train_seconds"]))
        robust = f"; robustness on {rows[0]['n_attack']} test images" if attack is not None else ""
        write_table(rows, cols, stem, f"Table 2 ({scale}: {rows[0]['n_train']} training images, 2 epochs, "
                    f"{rows[0]['n_test']} test images{robust}), accuracy %")
        series = {f"paper {label}": [r["paper_accuracy"] for r in rows], f"measured {label}": [r["accuracy"] for r in rows]}
        if attack is not None:
            series["paper robust ε=2 (MNIST)"] = [r["paper_robust_eps2_mnist"] for r in rows]
            series[f"measured robust ε=2 ({label})"] = [r["robust_eps2"] for r in rows]
        plot_bars([r["model"] for r in rows], series, stem + ".png", "accuracy (%)", f"Table 2, {label} ({scale})")
        return rows
    if name == "generalization":
        models = ("small feedforward", "large feedforward", "small recurrent", "large recurrent")
        cols = [("data set", lambda r: r["dataset"]), ("model", lambda r: r["model"]),
                ("train % (mean ± std)", lambda r: f"{r['train_mean']} ± {r['train_std']}" if "train_mean" in r else None),
                ("test % (mean ± std)", lambda r: f"{r['test_mean']} ± {r['test_std']}" if "test_mean" in r else r.get("table"))]
        images = {LABELS.get(k, k): v for k, v in data.items()}
        title = f"Fig. 3 ({scale}): rules learned on Halfspace (T=1) and ReLU1 (T=3), fixed, used everywhere"
        rows = experiment_generalization(images, quick=quick, seed=seed, log=log,
                                         on_row=lambda rs: write_table(rs, cols, stem, title + " (partial)"))
        write_table(rows, cols, stem, title)
        res = [r for r in rows if "test_mean" in r]
        groups = list(dict.fromkeys(r["dataset"] for r in res))
        get = lambda d, m, k: next((r[k] for r in res if r["dataset"] == d and r["model"] == m), None)
        plot_bars(groups, {m: [get(d, m, "test_mean") for d in groups] for m in models}, stem + ".png",
                  "test accuracy (%)", title, errors={m: [get(d, m, "test_std") or 0 for d in groups] for m in models})
        return rows
    if name == "convergence":
        curves = experiment_convergence(Xtr, ytr, Xte, yte, quick=quick, seed=seed, log=log)
        write_table(_curve_rows(curves, "examples seen"), [(k, lambda r, k=k: r[k]) for k in ["examples seen", *curves]],
                    stem, f"Fig. 2 ({scale}, {label}): test accuracy (%) against examples seen")
        plot_curves({k: [(x, 100 * a) for x, a in v] for k, v in curves.items()}, stem + ".png", "examples seen",
                   "test accuracy (%)", f"Fig. 2, {label} ({scale}): plasticity vs Adam, T=1, |V|=1000")
        return curves
    curves = experiment_robustness(Xtr, ytr, Xte, yte, quick=quick, attack=attack, seed=seed, log=log)
    write_table(_curve_rows(curves, "eps (L2)"), [(k, lambda r, k=k: r[k]) for k in ["eps (L2)", *curves]],
                stem, f"Fig. 5 ({scale}, {label}): robust accuracy (%) under the targeted L2 attack")
    plot_curves({k: [(x, 100 * a) for x, a in v] for k, v in curves.items()}, stem + ".png", "ε (L2)",
               "robust accuracy (%)", f"Fig. 5, {label} ({scale}): targeted L2, |V|=1000, k=500")
    return curves
