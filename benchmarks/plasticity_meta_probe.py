"""Which meta-learning protocol trains the T=3 RNN rule: the share of meta-steps whose rule
gradient is exactly zero (plasticity.MetaLosses), the meta-loss at the start and the end, and the
learned table's range, for A.3's setting (MLPRule(3, 20), perceptron output rule fixed, |V|, k =
|V|/2, batch 100, Adam lr 1e-2, l2 0.01) under each recurrence / meta-loss pair. Fashion-MNIST,
the first N of a seeded (2) permutation of the training images, as the --plasticity runs draw them.

    python benchmarks/plasticity_meta_probe.py N STEPS V SEEDS REC/LOSS[,REC/LOSS...]
    python benchmarks/plasticity_meta_probe.py 10000 100 200 0,1,2,3,4 text/logits_ce,brainnet/softmax_ce

benchmarks/results/plasticity/meta_protocols_seeds.csv holds the printed lines.
"""
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plasticity as P  # noqa: E402
from harness.data import load_dataset  # noqa: E402

warnings.simplefilter("ignore")
xtr, ytr, xte, yte = load_dataset("fashion-mnist", "/usr/share/datasets/fashion-mnist")
idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(2))[:int(sys.argv[1])]
X, y = xtr[idx].reshape(len(idx), -1).float() / 255, ytr[idx]
steps, v, seeds = int(sys.argv[2]), int(sys.argv[3]), [int(s) for s in sys.argv[4].split(",")]
for rec, loss in (c.split("/") for c in sys.argv[5].split(",")):
    for s in seeds:
        t0 = time.time()
        rule = P.MLPRule(3, 20, seed=s)
        L = P.meta_learn(lambda: P.CapRNN(784, 10, v, v // 2, 0.5, 3, seed=s, recurrence=rec), X, y, rnn_rule=rule,
                         output_rule=P.perceptron_output_rule(3).table().detach(), epochs=10 ** 9, steps=steps,
                         seed=s, loss=loss)
        t, zg = rule.table().detach(), L.zero_grad["rnn"]
        print(f"{rec:8s} {loss:10s} seed {s}: zero-grad {sum(zg)}/{len(L)} (first 100: {sum(zg[:100])}), "
              f"loss {sum(L[:5]) / 5:.3f} -> {sum(L[-10:]) / 10:.3f}, rule min {t.min():.3f} max {t.max():.3f} "
              f"frac>0 {(t > 0).float().mean():.2f} ({time.time() - t0:.0f}s)", flush=True)
