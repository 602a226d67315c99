"""What the "online" protocol's RNN rule converges to, and why: the text's recurrence, CE of the
logits, |V|=1000, one network through 2 epochs of 10,000 Fashion-MNIST images (198 meta-steps),
with Adam's weight decay 0.01 (the protocol) and 0. Prints the zero-gradient meta-steps and the
learned table's range against its random start.

    python benchmarks/plasticity_online_probe.py SEEDS      (e.g. 0,1)

benchmarks/results/plasticity/online_rule_seeds.csv holds the printed lines.
"""
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plasticity as P  # noqa: E402
from harness.data import load_dataset  # noqa: E402

warnings.simplefilter("ignore")
xtr, ytr, _, _ = load_dataset("fashion-mnist", "/usr/share/datasets/fashion-mnist")
idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(2))[:10000]
X, y = xtr[idx].reshape(len(idx), -1).float() / 255, ytr[idx]
for s in [int(a) for a in sys.argv[1].split(",")]:
    for wd in (0.01, 0.0):
        rule = P.MLPRule(3, 20, seed=s)
        r0 = rule.table().detach().clone()
        L = P.meta_learn(lambda: P.CapRNN(784, 10, 1000, 500, 0.5, 3, seed=s), X, y, rnn_rule=rule,
                         output_rule=P.perceptron_output_rule(3).table().detach(), epochs=2, online=True, seed=s,
                         weight_decay=wd, zero_grad_warn=None)
        t, zg = rule.table().detach(), L.zero_grad["rnn"]
        print(f"seed {s} wd {wd}: zero-grad {sum(zg)}/{len(zg)}, |r| init max {r0.abs().max():.3g} -> max "
              f"{t.abs().max():.3g}, min {t.min():.3g} max {t.max():.3g}", flush=True)
