"""The experiments of "Learning with plasticity rules: generalization and robustness", over seeds.

Each `experiment_*` runs one seed and returns rows (dicts); `run(name, data, out_dir, seeds=...)`
runs the seeds one after the other and writes into out_dir: NAME_seeds.csv/.md (every row of
every seed), NAME.csv/.md (mean ± sample std over the seeds, the per-seed values, the paper's
number where the text gives one) and NAME.png (error bars: ± std over seeds; plasticity_report.py
writes them). Partial files are rewritten after each seed. `python train.py --plasticity NAME --seeds ...`.

    table2          Table 2 with controls (no RNN rule, random W, initial rule, three protocols)
    convergence     Fig. 2: test accuracy against examples seen, perceptron rule vs Adam
    generalization  Fig. 3: rules learned on Halfspace / ReLU1, fixed, used on every data set
    robustness      Fig. 5: robust accuracy against the L2 radius, rules vs GD
    fig4            Fig. 4: adversarial images and the smallest radius that breaks each image
    fig6            Fig. 6: updates on all examples vs on mistakes only, T=3
    a4              A.4: all examples / all rows / the MSE-optimal rule of App. B
    theory          Theorems 1-4, App. B and App. C as checks

The adversary is passed in: attack(net, X, y, eps) -> bool tensor, True where the image is
broken; plasticity_attack() is the paper's (Sec. 4 / A.3: attacks.targeted_l2 with a step
size chosen here). experiments/plasticity_runs.py is the --plasticity run that calls run().
"""
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

import attacks
import plasticity as P
from harness.presets import PLASTICITY_EXPERIMENTS as EXPERIMENTS
from experiments.plasticity_report import SPECS, _fig4_picture, adversarial_image, report, summarize  # noqa: F401
from experiments.plasticity_rules import (DEFAULT_PROTOCOL, RNN_RULE_PROTOCOLS, _n_out, _net, _pct, _quiet,  # noqa: F401
                                          fmt_table, halfspace_output_rule, learn_rnn_rule, random_w,
                                          network_of, relu1_rules, rule_for, zero_grad_note)

SEEDS = (0, 1, 2, 3, 4)
LABELS = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}
PAPER_TABLE2 = {  # Table 2: accuracy (%) and robustness on MNIST (%) at eps = 2, 4
    "T=3": dict(mnist=87, fashion=77, robust_eps2=60, robust_eps4=36),
    "T=1*": dict(mnist=93, fashion=81, robust_eps2=12, robust_eps4=0),
    "T=1": dict(mnist=85, fashion=70, robust_eps2=0, robust_eps4=0),
}


# ---- Data sets (A.2): 10-dim Gaussian inputs; 10,000 training and 10,000 test points each ----

def halfspace(n, d=10, seed=0):
    """Halfspace: x ~ N(0, I_d), label 1[w* . x > 0] for a random w* ~ N(0, I_d)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    X = torch.randn(n, d, generator=g)
    return X, (X @ w > 0).long()


def relu_data(n, d=10, seed=0, width=1000):
    """ReLU1/ReLU2: label = argmax of a random one-hidden-layer ReLU net without biases (A.2:
    width 1000, two outputs; weights N(0, 1/fan-in))."""
    g = torch.Generator().manual_seed(seed)
    W1 = torch.randn(width, d, generator=g) / math.sqrt(d)
    W2 = torch.randn(2, width, generator=g) / math.sqrt(width)
    X = torch.randn(n, d, generator=g)
    return X, (F.relu(X @ W1.t()) @ W2.t()).argmax(1)


def rnn_data(n, d=10, seed=0, w_scale=0.1):
    """Simple-RNN data: argmax of a random simple RNN (A.2: T=3, |V|=100, k=50, p=0.5) with
    A ~ N(0, 1), U ~ N(0, 1) and W ~ N(0, w_scale^2) on G. The paper gives no scale for W; at
    w_scale = 1 the recurrent drive swamps A x and one label gets ~3% of the points (0.1: ~20%)."""
    teacher = P.CapRNN(d, 2, num_v=100, cap=50, p=0.5, rounds=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        teacher.W.copy_(torch.randn(100, 100, generator=g) * teacher.G * w_scale)
        teacher.U.copy_(torch.randn(2, 100, generator=g))
    X = torch.randn(n, d, generator=g)
    with torch.no_grad():
        return X, teacher(X).argmax(1)


def synthetic_datasets(n_train=10000, n_test=10000, seed=0):
    """A.2's four synthetic data sets: name -> (Xtr, ytr, Xte, yte), one draw split in two."""
    out = {}
    for name, fn in (("Halfspace", lambda n: halfspace(n, 10, seed)), ("ReLU1", lambda n: relu_data(n, 10, seed + 1)),
                     ("ReLU2", lambda n: relu_data(n, 10, seed + 2)), ("RNN", lambda n: rnn_data(n, 10, seed + 3))):
        X, y = fn(n_train + n_test)
        out[name] = (X[:n_train], y[:n_train], X[n_train:], y[n_train:])
    return out


# ---- Rules and controls used by several experiments ----

def plasticity_attack(steps=20, alpha=None):
    """The paper's attack (Sec. 4, A.3) as attack(net, X, y, eps) -> broken mask:
    attacks.targeted_l2 (nine targets, raw-gradient steps, L2 ball, [0, 1]). The paper gives
    neither alpha nor the number of steps; unless `alpha` is given, alpha = (eps / 4) / the median
    over images of |grad_x (z_y - z_j)|, j the runner-up class, so that a typical first step
    has length eps/4 whatever the scale of the network's logits."""
    def attack(net, X, y, eps):
        a = alpha
        if a is None:
            x = X.clone().requires_grad_(True)
            z = net(x)
            runner_up = z.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
            margin = z.gather(1, y[:, None]) - z.gather(1, runner_up[:, None])
            g, = torch.autograd.grad(margin.sum(), x)
            a = eps / 4 / float(g.flatten(1).norm(dim=1).median().clamp_min(1e-12))
        return attacks.targeted_l2(net, X, y, eps, a, steps, return_broken=True)[1]
    return attack


def robust_accuracy(net, X, y, eps, attack):
    """Fraction of images classified correctly and not broken by `attack` at radius eps (Sec. 4)."""
    with torch.no_grad():
        correct = net(X).argmax(1) == y
    if eps == 0:
        return float(correct.float().mean())
    broken = attack(net, X, y, eps).to(correct.device).bool()
    return float((correct & ~broken).float().mean())


def attack_sample(X, y, n, seed):
    """A.3: `n` random test images (a seeded draw, not the first n)."""
    idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:n].to(X.device)
    return X[idx], y[idx]


# ---- Experiments: one seed each, rows of dicts ----

TABLE2_MODELS = {  # name -> (T, input weights, firing, output rule, RNN rule, recurrence, paper row)
    "T=1": (1, "normal", "nonzero", "paper", None, "text", "T=1"),
    "T=1*": (1, "ones", "nonzero", "paper", None, "text", "T=1*"),
    "T=1, fired-only output rule": (1, "normal", "nonzero", "fired_only", None, "text", None),
    "T=1, top-k firing (BrainNet)": (1, "normal", "topk", "paper", None, "text", None),
    # the T=3 row: the rule learned by the authors' code's protocol (input through W, top-k
    # firing, softmax CE), and its controls in the same network
    "T=3, rule learned as BrainNet (|V|=200)": (3, "normal", "topk", "paper", "brainnet", "brainnet", "T=3"),
    "T=3, rule learned as BrainNet, 1,000 meta-steps": (3, "normal", "topk", "paper", "brainnet1000", "brainnet", None),
    "T=3 BrainNet network, random fixed W": (3, "normal", "topk", "paper", "random_w", "brainnet", None),
    "T=3 BrainNet network, initial rule": (3, "normal", "topk", "paper", "init", "brainnet", None),
    "T=3, rule learned as BrainNet with the text's firing (h != 0)": (3, "normal", "nonzero", "paper", "brainnet_nonzero",
                                                                      "brainnet", None),
    "T=3 BrainNet recurrence, text's firing, random fixed W": (3, "normal", "nonzero", "paper", "random_w", "brainnet", None),
    "T=3 BrainNet recurrence, text's firing, initial rule": (3, "normal", "nonzero", "paper", "init", "brainnet", None),
    # the text's protocol (W h + A x, CE of the logits) as the control arm, and its controls
    "T=3, rule learned as A.3 (|V|=200)": (3, "normal", "nonzero", "paper", "a3", "text", None),
    "T=3, no RNN rule": (3, "normal", "nonzero", "paper", None, "text", None),
    "T=3, random fixed W": (3, "normal", "nonzero", "paper", "random_w", "text", None),
    "T=3, initial (unlearned) rule": (3, "normal", "nonzero", "paper", "init", "text", None),
    "T=3, rule learned at |V|=1000": (3, "normal", "nonzero", "paper", "v1000", "text", None),
    "T=3, rule learned online at |V|=1000": (3, "normal", "nonzero", "paper", "online", "text", None),
}
TABLE2_DEFAULT = tuple(m for m in TABLE2_MODELS if "1,000 meta-steps" not in m)   # --plasticity_models all: every one
OUTPUT_RULES = {"paper": P.perceptron_output_rule, "fired_only": P.perceptron_output_rule_fired_only}


def experiment_table2(train_X, train_y, test_X, test_y, quick=False, attack=None, seed=0,
                      dataset="fashion", epochs=2, n_attack=100, models=None, meta_steps=None, log=_quiet):
    """Table 2: |V|=1000, k=500, `epochs` epochs of rule-based training on mistakes (perceptron
    output rule) for TABLE2_MODELS (default TABLE2_DEFAULT): T=1, T=1*, the T=3 RNN rule learned
    by the protocols of plasticity_rules (the row: BrainNet's; the text's as control) and the
    controls, each network with its rule's recurrence. Test accuracy, the rule's zero-gradient
    share of meta-steps and, with `attack`, robust accuracy at eps 2 and 4 on `n_attack` random
    test images. Returns one row per model."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, test_X, test_y, n_attack = train_X[:2000], train_y[:2000], test_X[:2000], test_y[:2000], min(n_attack, 20)
    Xa, ya = attack_sample(test_X, test_y, n_attack, seed)
    rows, cache = [], {}
    for name in models or TABLE2_DEFAULT:
        T, inputs, firing, out_rule, rnn_kind, rec, paper = TABLE2_MODELS[name]
        rule, learned = rule_for(rnn_kind, train_X, train_y, n_out, seed, quick, cache, log, meta_steps)
        net = _net(train_X, n_out, 1000, 500, T, seed, input_weights=inputs, firing=firing, recurrence=rec).reset()
        if rnn_kind == "random_w":
            random_w(net, seed)
        t0 = time.perf_counter()
        P.train_with_rules(net, train_X, train_y, rnn_rule=rule, output_rule=OUTPUT_RULES[out_rule](T),
                           epochs=epochs, seed=seed, reset=False)
        row = dict(model=name, seed=seed, n_train=len(train_X), train_seconds=round(time.perf_counter() - t0, 1),
                   mean_abs_W=round(float(net.W.abs().sum() / net.G.sum()), 4), accuracy=_pct(P.accuracy(net, test_X, test_y)),
                   zero_grad_share=round(learned[0], 3) if learned else None, meta_steps=learned[1] if learned else None,
                   paper_accuracy=PAPER_TABLE2[paper].get(dataset) if paper else None)
        if attack is not None:
            for eps in (2, 4):
                row[f"robust_eps{eps}"] = _pct(robust_accuracy(net, Xa, ya, eps, attack))
                row[f"paper_robust_eps{eps}_mnist"] = PAPER_TABLE2[paper][f"robust_eps{eps}"] if paper else None
        log(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("model", "seed") and v is not None))
        rows.append(row)
    return rows


def experiment_convergence(train_X, train_y, test_X, test_y, quick=False, seed=0, points=15, log=_quiet):
    """Fig. 2: test accuracy against examples seen, T=1, |V|=1000, k=500, one pass in a seeded
    order: the perceptron output rule (and the fired-only alternative) vs Adam (lr 1e-2, batch
    100) on U. Returns rows (method, examples, accuracy)."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, test_X, test_y = train_X[:3000], train_y[:3000], test_X[:2000], test_y[:2000]
    every = max(100, (len(train_X) // points) // 100 * 100)
    order = torch.randperm(len(train_X), generator=torch.Generator().manual_seed(seed)).to(train_X.device)
    Xs, ys = train_X[order], train_y[order]
    rows = []
    add = lambda m, n, net: rows.append(dict(method=m, seed=seed, examples=n, accuracy=_pct(P.accuracy(net, test_X, test_y))))
    for name, rule in (("plasticity (perceptron rule)", P.perceptron_output_rule(1)),
                       ("plasticity (fired-only rule)", P.perceptron_output_rule_fired_only(1))):
        net = _net(train_X, n_out, 1000, 500, 1, seed).reset()
        for s in range(0, len(Xs), every):
            P.train_with_rules(net, Xs[s:s + every], ys[s:s + every], output_rule=rule, reset=False)
            add(name, min(s + every, len(Xs)), net)
    net = _net(train_X, n_out, 1000, 500, 1, seed)
    P.train_gd(net, train_X, train_y, lr=1e-2, batch_size=100, seed=seed, callback_every=every,
               callback=lambda n: add("GD (Adam on U)", n, net))
    if rows[-1]["examples"] != len(train_X):
        add("GD (Adam on U)", len(train_X), net)
    log("  " + ", ".join(f"{r['method']}: {r['accuracy']}" for r in rows if r["examples"] == len(train_X)))
    return rows


GEN_MODELS = (("small feedforward", 100, 50, 1), ("large feedforward", 1000, 500, 1),
              ("small recurrent", 100, 50, 3), ("large recurrent", 1000, 500, 3))


def experiment_generalization(datasets=None, quick=False, seed=0, reps=None, meta_steps=100,
                              meta_lr=0.1, controls=True, protocol=DEFAULT_PROTOCOL, log=_quiet):
    """Fig. 3 (A.2): an output rule learned on Halfspace (|V|=100, k=50, T=1) and an MLP RNN rule
    plus output rule learned on ReLU1 (|V|=100, k=50, T=3, the recurrence, firing and meta-loss
    of `protocol`, which the T=3 networks keep), `meta_steps` Adam steps at `meta_lr` (the paper
    gives neither; 0.1 is our choice: at 1e-2, 100 steps leave a rule near its random start),
    each from the paper's random start and from BrainNet's zero start (a binary-learned output rule cannot see its rows' means: a
    random start leaves them random); rules fixed, the four GEN_MODELS trained (one epoch on
    mistakes, lr 1e-2) on every data set: the network of this seed, `reps` reshuffles of the
    examples (A.2). controls: the perceptron output rule and no RNN rule (T=1).
    Returns rows (dataset, model, rules, train, test, zero_grad_share), the mean over the reshuffles."""
    n = 2000 if quick else 10000
    datasets = dict(datasets or {})
    for k_, v in synthetic_datasets(n, n, 0).items():
        datasets.setdefault(k_, v)
    reps = reps or (1 if quick else 2)
    t0 = time.perf_counter()
    rnn_net = network_of(protocol)
    variants = []
    for init in ("random", "zeros"):
        ff, ff_l = halfspace_output_rule(*datasets["Halfspace"][:2], seed, init, meta_steps, meta_lr)
        rnn, out, rnn_l = relu1_rules(*datasets["ReLU1"][:2], seed, init, protocol, meta_steps, meta_lr)
        log(f"  {init} start: Halfspace output rule {fmt_table(ff)} ({zero_grad_note(ff_l.zero_grad_share())}), "
            f"ReLU1 RNN rule: {zero_grad_note(rnn_l.zero_grad_share())}")
        variants.append((f"learned, {init} start", ff, rnn, out, ff_l.zero_grad_share(), rnn_l.zero_grad_share()))
    if controls:
        variants.append(("perceptron, no RNN rule", P.perceptron_output_rule(1), None, None, None, None))
    rows = []
    for dname, (Xtr, ytr, Xte, yte) in datasets.items():
        n_out = _n_out(ytr, yte)
        for mname, v, k, T in GEN_MODELS:
            for vname, ff, rnn, out, ff_share, rnn_share in variants:
                if rnn is None and T > 1:
                    continue                                    # the control is T=1 only
                tr, te = [], []
                for r in range(reps):
                    net = _net(Xtr, n_out, v, k, T, seed, **(rnn_net if T > 1 else network_of(None)))
                    P.train_with_rules(net, Xtr, ytr, *((rnn, out) if T > 1 else (None, ff)), seed=1000 * seed + r)
                    tr.append(P.accuracy(net, Xtr, ytr))
                    te.append(P.accuracy(net, Xte, yte))
                share = rnn_share if T > 1 else ff_share
                rows.append(dict(dataset=dname, model=mname, rules=vname, seed=seed, reps=reps,
                                 train=_pct(np.mean(tr)), test=_pct(np.mean(te)),
                                 zero_grad_share=None if share is None else round(share, 3),
                                 halfspace_rule=fmt_table(ff) if T == 1 and rnn is not None else None))
        log(f"  {dname}: " + ", ".join(f"{r['model']} ({r['rules']}) {r['test']}" for r in rows if r["dataset"] == dname)
            + f" ({time.perf_counter() - t0:.0f}s)")
    return rows


def _three_nets(train_X, train_y, n_out, seed, quick, epochs, log, gd_params="output"):
    """Fig. 4/5: |V|=1000, k=500 trained by the perceptron rule (T=1; T=3 with the A.3 rule and
    with the initial rule) and by Adam on U (T=1), `epochs` epochs."""
    cache, nets = {}, {}
    for name, T, kind in (("plasticity T=1", 1, None), ("plasticity T=3 (A.3 rule)", 3, "a3"),
                          ("plasticity T=3 (initial rule)", 3, "init")):
        net = _net(train_X, n_out, 1000, 500, T, seed)
        nets[name] = P.train_with_rules(net, train_X, train_y, rnn_rule=rule_for(kind, train_X, train_y, n_out, seed, quick, cache, log)[0],
                                        output_rule=P.perceptron_output_rule(T), epochs=epochs, seed=seed)
    nets["GD (Adam) T=1"] = P.train_gd(_net(train_X, n_out, 1000, 500, 1, seed), train_X, train_y, epochs=epochs,
                                       params=gd_params, seed=seed)
    return nets


def experiment_robustness(train_X, train_y, test_X, test_y, quick=False, attack=None, seed=0,
                          eps_list=(0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4), n_attack=100, epochs=2, log=_quiet):
    """Fig. 5 (A.3): robust accuracy against eps (targeted L2, nine targets) on `n_attack` random
    test images for the nets of _three_nets. Returns rows (model, eps, robust_accuracy)."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, n_attack, eps_list = train_X[:2000], train_y[:2000], min(n_attack, 20), (0, 1, 2, 3, 4)
    Xa, ya = attack_sample(test_X, test_y, n_attack, seed)
    rows = []
    for name, net in _three_nets(train_X, train_y, n_out, seed, quick, epochs, log).items():
        rows += [dict(model=name, seed=seed, eps=e, robust_accuracy=_pct(robust_accuracy(net, Xa, ya, e, attack)))
                 for e in eps_list]
        log(f"  {name}: " + ", ".join(f"{r['eps']}: {r['robust_accuracy']}" for r in rows if r["model"] == name))
    return rows


def min_breaking_eps(net, X, y, attack, hi=8.0, iters=6):
    """Per image, the smallest L2 radius in [0, hi] at which `attack` breaks it, by bisection
    (`iters` halvings; inf if not broken at hi, 0 if misclassified already)."""
    with torch.no_grad():
        wrong = net(X).argmax(1) != y
    lo_, hi_ = torch.zeros(len(X)), torch.full((len(X),), hi)
    ok = attack(net, X, y, hi).cpu().bool() | wrong.cpu()
    for _ in range(iters):
        mid = (lo_ + hi_) / 2
        b = torch.zeros(len(X), dtype=torch.bool)
        for e in mid.unique().tolist():
            sel = (mid == e) & ok & ~wrong.cpu()
            if sel.any():
                b[sel] = attack(net, X[sel.to(X.device)], y[sel.to(X.device)], e).cpu().bool()
        hi_, lo_ = torch.where(b, mid, hi_), torch.where(b, lo_, mid)
    return torch.where(wrong.cpu(), torch.zeros_like(hi_), torch.where(ok, hi_, torch.full_like(hi_, math.inf)))


def experiment_fig4(train_X, train_y, test_X, test_y, quick=False, attack=None, seed=0, n_images=50,
                    epochs=2, log=_quiet, keep_images=0):
    """Fig. 4: for the nets of _three_nets, the smallest L2 radius that breaks each of `n_images`
    random test images (min_breaking_eps); rows give its median and the fraction unbroken at 8.
    keep_images > 0 also returns {model: (eps, images)} of that many images for the picture."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, n_images = train_X[:2000], train_y[:2000], min(n_images, 10)
    Xa, ya = attack_sample(test_X, test_y, n_images, seed)
    rows, pics = [], {}
    for name, net in _three_nets(train_X, train_y, n_out, seed, quick, epochs, log).items():
        e = min_breaking_eps(net, Xa, ya, attack, iters=3 if quick else 6)
        fin = e[torch.isfinite(e)]
        rows.append(dict(model=name, seed=seed, n_images=len(Xa), median_min_eps=round(float(e.median()), 3),
                         mean_min_eps_broken=round(float(fin.mean()), 3) if len(fin) else None,
                         unbroken_at_8=_pct(torch.isinf(e).float().mean())))
        log(f"  {name}: median smallest breaking radius {rows[-1]['median_min_eps']}")
        if keep_images:
            pics[name] = (e[:keep_images], net)
    return (rows, (Xa[:keep_images], ya[:keep_images], pics)) if keep_images else rows


def experiment_fig6(train_X, train_y, test_X, test_y, quick=False, seed=0, points=10, protocol=DEFAULT_PROTOCOL,
                    log=_quiet):
    """Fig. 6 (A.4): T=3, |V|=1000, k=500, the RNN rule learned by `protocol` (BrainNet's: a rule
    that is trained; the network uses its recurrence and firing) and the perceptron output rule,
    one pass; test accuracy (the first 2,000 test images; --quick 1,000) against examples seen when
    updating on mistakes only vs on all examples, with the paper's rows ("predicted") and
    BrainNet's ("predicted_always": on a correct prediction the true row gets both columns, i.e.
    no change with the perceptron rule)."""
    n_out = _n_out(train_y, test_y)
    if quick:
        train_X, train_y, test_X, test_y = train_X[:1000], train_y[:1000], test_X[:1000], test_y[:1000]
    else:
        test_X, test_y = test_X[:2000], test_y[:2000]
    rule, (share, _) = rule_for(protocol, train_X, train_y, n_out, seed, quick, {}, log)
    order = torch.randperm(len(train_X), generator=torch.Generator().manual_seed(seed)).to(train_X.device)
    Xs, ys = train_X[order], train_y[order]
    every = max(100, len(Xs) // points // 100 * 100)
    rows = []
    for update, rows_ in (("mistakes", "predicted"), ("all", "predicted"), ("all", "predicted_always")):
        name = f"update {update}, rows {rows_}"            # on mistakes predicted_always = predicted
        net = _net(train_X, n_out, 1000, 500, 3, seed, **network_of(protocol)).reset()
        for s in range(0, len(Xs), every):
            P.train_with_rules(net, Xs[s:s + every], ys[s:s + every], rnn_rule=rule, output_rule=P.perceptron_output_rule(3),
                               update=update, rows=rows_, reset=False)
            rows.append(dict(scheme=name, seed=seed, examples=min(s + every, len(Xs)), zero_grad_share=round(share, 3),
                             accuracy=_pct(P.accuracy(net, test_X, test_y))))
        log(f"  {name}: {rows[-1]['accuracy']}")
    return rows


def experiment_a4(train_X, train_y, test_X, test_y, quick=False, seed=0, datasets=None, image_name="images",
                  log=_quiet):
    """A.4, T=1, |V|=1000, k=500, one epoch: the perceptron rule on mistakes / all examples x
    predicted / all rows, and the MSE-optimal rule of App. B (computed on the training set's
    firing, used with updates on all examples and all rows) on the images and the synthetic sets,
    against two references: the learned rule (Fig. 3's output rule learned on Halfspace, on
    mistakes: the paper's "original model"; from a zero start, and from the paper's random start)
    and the majority class."""
    if quick:
        train_X, train_y, test_X, test_y = train_X[:1500], train_y[:1500], test_X[:1500], test_y[:1500]
    sets = {image_name: (train_X, train_y, test_X, test_y)}
    sets.update(datasets or synthetic_datasets(1500 if quick else 10000, 1500 if quick else 10000, 0))
    learned = {init: halfspace_output_rule(*sets["Halfspace"][:2], seed, init)[0] for init in ("zeros", "random")}
    rows = []
    for dname, (Xtr, ytr, Xte, yte) in sets.items():
        n_out = _n_out(ytr, yte)
        majority = int(torch.bincount(ytr, minlength=n_out).argmax())
        rows.append(dict(dataset=dname, rule="majority class", update="-", rows="-", seed=seed,
                         accuracy=_pct((yte == majority).float().mean()), rule_table=None))
        for init, rule in learned.items():                 # Fig. 3's large feedforward model, both starts
            net = P.train_with_rules(_net(Xtr, n_out, 1000, 500, 1, seed), Xtr, ytr, output_rule=rule, seed=seed)
            rows.append(dict(dataset=dname, rule=f"learned on Halfspace ({init} start)", update="mistakes", rows="predicted",
                             seed=seed, accuracy=_pct(P.accuracy(net, Xte, yte)), rule_table=fmt_table(rule)))
        schemes = [("mistakes", "predicted"), ("all", "all")] if dname != image_name else \
            [("mistakes", "predicted"), ("all", "predicted"), ("mistakes", "all"), ("all", "all")]
        for update, rows_ in schemes:
            net = P.train_with_rules(_net(Xtr, n_out, 1000, 500, 1, seed), Xtr, ytr, output_rule=P.perceptron_output_rule(1),
                                     update=update, rows=rows_, seed=seed)
            rows.append(dict(dataset=dname, rule="perceptron", update=update, rows=rows_, seed=seed,
                             accuracy=_pct(P.accuracy(net, Xte, yte)), rule_table=None))
        net = _net(Xtr, n_out, 1000, 500, 1, seed)
        H, codes = net.hidden(Xtr)
        r = P.mse_optimal_output_rule(H, codes, ytr, n_out, 1, lr=1e-2)
        P.train_with_rules(net, Xtr, ytr, output_rule=r, update="all", rows="all")
        rows.append(dict(dataset=dname, rule="MSE-optimal (App. B)", update="all", rows="all", seed=seed,
                         accuracy=_pct(P.accuracy(net, Xte, yte)), rule_table=str([[float(f"{float(t):.3g}") for t in q] for q in r])))
        log("  " + ", ".join(f"{q['dataset']} {q['rule']} {q['update']}/{q['rows']}: {q['accuracy']}" for q in rows if q["dataset"] == dname))
    return rows


def pm1_separable(m, n, gamma, seed, noise=0.0):
    """Theorems 3-4: x uniform in {-1, 1}^n, a unit w* with sum_i w*_i = 0, label sign(w* . x),
    only points with |w* . x| >= gamma kept; `noise`: fraction of labels flipped afterwards."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    w = (w - w.mean()) / (w - w.mean()).norm()
    X = torch.randint(0, 2, (40 * m, n), generator=g).double() * 2 - 1
    X = X[(X @ w).abs() >= gamma][:m]
    y = torch.sign(X @ w)
    flip = torch.rand(len(y), generator=g, dtype=torch.float64) < noise
    return X, torch.where(flip, -y, y), w


def experiment_theory(quick=False, seed=0, log=_quiet):
    """Theorems 1-4, App. B and App. C as checks. Rows (check, quantity, value, bound, holds)."""
    rows = []
    g4 = lambda v: float(f"{float(v):.4g}")
    add = lambda c, q, v, b, h: rows.append(dict(check=c, quantity=q, seed=seed, value=g4(v),
                                                bound=None if b is None else g4(b), holds=int(bool(h))))
    X, y = halfspace(3000, 10, seed)
    mk = lambda T=1: P.CapRNN(10, 2, 100, 50, 0.5, T, seed=seed)
    rule, _ = P.theorem1_gd(mk, X, y, steps=40 if quick else 150, batch_size=50, meta_lr=0.1, seed=seed)
    add("Theorem 1", "sign pattern [-,+;+,-] reached (1/0)", P.sign_pattern(rule.table().detach()) == [[-1, 1], [1, -1]], 1, None)
    rows[-1]["holds"] = rows[-1]["value"]
    net = mk()
    H, codes = net.hidden(X[:1000])
    M = P.output_rule_design(H.double(), codes, y[:1000], 2, 1)
    rs = torch.randn(20, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ev = [torch.linalg.eigvalsh(torch.autograd.functional.hessian(lambda r: P.output_rule_ce_loss(r, M, y[:1000]), r_))
          for r_ in rs]
    eig = min(float(e.min()) for e in ev) / max(float(e.max()) for e in ev)
    add("Theorem 2", "smallest / largest Hessian eigenvalue of CE(r) over 20 random rules", eig, 0, eig >= -1e-9)
    sols = []
    for r0 in rs[:5]:
        r_ = r0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([r_], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = P.output_rule_ce_loss(r_, M, y[:1000]) + 1e-3 * (r_ ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        sols.append(r_.detach())
    spread = float(torch.stack(sols).std(0).max())
    add("Theorem 2", "spread of the minimizers from 5 random starts (l2 1e-3)", spread, 1e-3, spread < 1e-3)
    n, gam, m = 20, 1.0, 300 if quick else 1000
    Xp, yp, w = pm1_separable(m, n, gam, seed)
    for a, b in ((1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (0.5, 2.0)):
        out, bound = P.threshold_rule_run(Xp, yp, [[-a, a], [b, -b]], epochs=200), 2 * b ** 2 * n / (a ** 2 * gam ** 2)
        add("Theorem 3", f"rule [-{a}, {a}; {b}, -{b}]: mistakes until convergence", out["mistakes"], bound,
            out["converged"] and out["mistakes"] <= bound)
    Xp, yp, w = pm1_separable(m, n, gam, seed, noise=0.05)
    D2 = float((torch.clamp(gam - yp * (Xp @ w), min=0) ** 2).sum())
    for a, b in ((1.0, 1.0), (1.0, 2.0), (1.0, 4.0)):          # a = b: Freund-Schapire; b > a: O(.) with constant 1
        out = P.threshold_rule_run(Xp, yp, [[-a, a], [b, -b]], margin=0.0 if a == b else gam)
        bound = (math.sqrt(n) + math.sqrt(D2)) ** 2 / gam ** 2 if a == b else (b / a) ** 2 * (n + D2 + 2 * gam) / gam ** 2
        add("Theorem 4", f"rule [-{a}, {a}; {b}, -{b}], 5% flipped labels, margin {0 if a == b else gam}: mistakes in one pass",
            out["mistakes"], bound, out["mistakes"] <= bound)
    Xs, ys = X[:120 if quick else 300], y[:120 if quick else 300]
    H, codes = mk().hidden(Xs)
    r_opt = P.mse_optimal_output_rule(H, codes, ys, 2, 1, lr=1e-4)
    ro = P.OutputRuleTable(1, seed=seed)
    L = lambda r: P.mse_output_rule_loss(r, H, codes, ys, 2, 1, lr=1e-4)
    L0 = L(ro.table().detach())
    P.meta_learn(mk, Xs, ys, output_rule=ro, epochs=10 ** 9, batch_size=len(Xs), meta_lr=1e-2, weight_decay=0.0, lr=1e-4,
                 update="all", rows="all", loss="mse", steps=150 if quick else 1500, seed=seed)
    gap = (L(ro.table().detach()) - L(r_opt)) / (L0 - L(r_opt))
    add("App. B", "GD (meta_learn, MSE) on the rule: (L(r) - L(r*)) / (L(r0) - L(r*)), r* closed form", gap, 0.02, 0 <= gap < 0.02)
    ev = P.simulate_evolution(lambda Y: (Y - 1.0) ** 2, n_genes=100, eps=0.01, theta=0.5, generations=300, x0=0.3)
    dev = max(abs(a_ - b_) for a_, b_ in zip(ev["y_evolution"], ev["y_gd"])) / abs(ev["y_gd"][-1] - ev["y_gd"][0])
    add("App. C", "max |Ybar evolution - Ybar GD| / |GD's total move|", dev, 0.05, dev < 0.05)
    log("  " + "; ".join(f"{r['check']} {r['value']} ({'holds' if r['holds'] else 'FAILS'})" for r in rows))
    return rows


def run(name, data, out_dir, quick=False, attack=None, seeds=SEEDS, seed=None, log=print, models=None,
        meta_steps=None):
    """Run experiment `name` (EXPERIMENTS) for each seed in `seeds` (`seed`: one-seed alias,
    seeds=(seed,)) and write the files into out_dir. A seed draws the networks, the example
    order, the rules' initialization and meta-learning batches and the attacked images; the
    data sets are fixed. data: {"fashion-mnist"|"mnist": (train_X, train_y, test_X, test_y)}
    of flattened [0, 1] images; all but generalization and theory use the first entry.
    table2 only: `models` (names of TABLE2_MODELS; default TABLE2_DEFAULT) and `meta_steps`
    (overrides every protocol's number of meta-steps). Returns (per-seed rows, summary rows)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown plasticity experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if seed is not None:
        if tuple(seeds) != SEEDS:
            raise ValueError("give seeds or seed, not both")
        seeds = (seed,)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("no seeds given")
    if not data and name != "theory":
        raise ValueError("no image data set given (mnist or fashion-mnist)")
    if attack is None and name in ("robustness", "fig4"):
        raise ValueError(f"{name} needs an attack")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, name)
    dname, (Xtr, ytr, Xte, yte) = next(iter(data.items())) if data else ("none", (None,) * 4)
    label, scale = LABELS.get(dname, dname), "quick" if quick else "full"
    key = {"fashion-mnist": "fashion", "mnist": "mnist"}.get(dname, dname)
    rows, t_all = [], time.perf_counter()
    for i, s in enumerate(seeds):
        t0 = time.perf_counter()
        log(f"{name}, seed {s} ({i + 1}/{len(seeds)})")
        c, img = dict(quick=quick, seed=s, log=log), (Xtr, ytr, Xte, yte)
        out = {"table2": lambda: experiment_table2(*img, attack=attack, dataset=key, models=models, meta_steps=meta_steps, **c),
               "convergence": lambda: experiment_convergence(*img, **c),
               "generalization": lambda: experiment_generalization({LABELS.get(k, k): v for k, v in data.items()}, **c),
               "robustness": lambda: experiment_robustness(*img, attack=attack, **c),
               "fig4": lambda: experiment_fig4(*img, attack=attack, keep_images=6 if i == 0 else 0, **c),
               "fig6": lambda: experiment_fig6(*img, **c), "a4": lambda: experiment_a4(*img, image_name=label, **c),
               "theory": lambda: experiment_theory(**c)}[name]()
        if name == "fig4" and i == 0:
            out, (Xp, yp, pics) = out
            _fig4_picture(Xp, yp, pics, stem + "_images.png", int(math.isqrt(Xtr.shape[1])))
        rows += out
        summary = report(name, rows, stem, scale, label)
        log(f"{name}, seed {s} done in {time.perf_counter() - t0:.0f}s (total {time.perf_counter() - t_all:.0f}s)")
    return rows, summary
