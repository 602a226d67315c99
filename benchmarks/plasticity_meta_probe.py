"""Which meta-learning protocol trains the T=3 RNN rule: the share of meta-steps whose rule
gradient is exactly zero (plasticity.MetaLosses), the meta-loss at the start and the end, and the
learned table's range, for A.3's setting (MLPRule(3, 20), perceptron output rule fixed, |V|, k =
|V|/2, batch 100, Adam lr 1e-2, l2 0.01) under each recurrence / meta-loss (/ firing: nonzero, the
default, or topk) combination. Fashion-MNIST, the first N of a seeded (2) permutation of the
training images, as the --plasticity runs draw them. A seed s sets the rule's initialization, the
network's draw and the batch order; R:N:B sets them apart (rule R, network N, batches B).

    python benchmarks/plasticity_meta_probe.py N STEPS V SEEDS REC/LOSS[/FIRING][,...]
    python benchmarks/plasticity_meta_probe.py 10000 100 200 0,1,2,3,4 text/logits_ce,brainnet/softmax_ce
    python benchmarks/plasticity_meta_probe.py 60000 100 200 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14 \
        brainnet/softmax_ce/nonzero,brainnet/softmax_ce/topk
    python benchmarks/plasticity_meta_probe.py 60000 100 200 1:1:0,1:0:1,0:1:0 brainnet/softmax_ce/nonzero

benchmarks/results/plasticity/ holds the printed values: meta_protocols_seeds.csv (10,000
images), meta_firing_seeds.csv (60,000 images, both firings, seeds 0-14), meta_seed_cross.csv
(60,000 images, the seeds of rule, network and batches crossed).
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
steps, v = int(sys.argv[2]), int(sys.argv[3])
seeds = [tuple(int(t) for t in s.split(":")) * (3 if ":" not in s else 1) for s in sys.argv[4].split(",")]
for rec, loss, *firing in (c.split("/") for c in sys.argv[5].split(",")):
    firing = firing[0] if firing else "nonzero"
    for rs, ns, bs in seeds:
        t0 = time.time()
        rule = P.MLPRule(3, 20, seed=rs)
        init_positive = float((rule.table() > 0).float().mean())
        L = P.meta_learn(lambda: P.CapRNN(784, 10, v, v // 2, 0.5, 3, seed=ns, recurrence=rec, firing=firing), X, y,
                         rnn_rule=rule, output_rule=P.perceptron_output_rule(3).table().detach(), epochs=10 ** 9,
                         steps=steps, seed=bs, loss=loss)
        t, zg = rule.table().detach(), L.zero_grad["rnn"]
        s = rs if rs == ns == bs else f"{rs}:{ns}:{bs}"
        print(f"{rec:8s} {loss:10s} {firing:7s} seed {s} (initial rule frac>0 {init_positive:.2f}): "
              f"zero-grad {sum(zg)}/{len(L)} (first 100: {sum(zg[:100])}), "
              f"loss {sum(L[:5]) / len(L[:5]):.3f} -> {sum(L[-10:]) / len(L[-10:]):.3f}, "
              f"rule min {t.min():.3f} max {t.max():.3f} "
              f"frac>0 {(t > 0).float().mean():.2f} ({time.time() - t0:.0f}s)", flush=True)
