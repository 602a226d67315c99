"""Is a T=3 network trained with BrainNet's learned RNN rule silent in its last round? For each
seed: the rule learned as Table 2's row (plasticity_rules.learn_rnn_rule: |V|=200, k=100, 100
meta-steps), then networks with that rule at |V| in SIZES (k = |V|/2; Table 2's is
1000) trained for 2 epochs on mistakes with the perceptron output rule. Printed per network after
100 examples (the horizon a meta-step sees: a fresh network trained on one batch), 1,000, 5,000 and
every epoch: test accuracy (first 2,000 test images), the share of them whose last round fires no
unit, the mean firing units per round, and mean W on the graph's edges. Fashion-MNIST, the first N
of a seeded (2) permutation.

    python benchmarks/plasticity_silence_probe.py N SEEDS SIZES [PROTOCOL]
    python benchmarks/plasticity_silence_probe.py 10000 0,1,2,3,4 200,1000 brainnet_nonzero
    python benchmarks/plasticity_silence_probe.py 10000 0,1 1000 brainnet

PROTOCOL (default brainnet) sets the rule's protocol and the network's recurrence and firing
(plasticity_rules.RNN_RULE_PROTOCOLS). A unit is counted active in a round when its h is non-zero
(top-k firing marks k units as firing even at zero drive; those do not count here).
benchmarks/results/plasticity/silence_probe_seeds.csv holds the printed lines.
"""
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plasticity as P  # noqa: E402
from experiments.plasticity_rules import learn_rnn_rule, network_of  # noqa: E402
from harness.data import load_dataset  # noqa: E402

warnings.simplefilter("ignore")
xtr, ytr, xte, yte = load_dataset("fashion-mnist", "/usr/share/datasets/fashion-mnist")
idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(2))[:int(sys.argv[1])]
X, y = xtr[idx].reshape(len(idx), -1).float() / 255, ytr[idx]
Xt, yt = xte[:2000].reshape(2000, -1).float() / 255, yte[:2000]
seeds, sizes = [int(s) for s in sys.argv[2].split(",")], [int(v) for v in sys.argv[3].split(",")]
protocol = sys.argv[4] if len(sys.argv) > 4 else "brainnet"


print("protocol,seed,zero_grad_share,meta_loss_last10,v,k,examples,accuracy,silent_last_round,"
      "active_round1,active_round2,active_round3,mean_W_on_edges")
for s in seeds:
    t0 = time.time()
    rule, losses = learn_rnn_rule(X, y, 10, protocol, seed=s)
    for v in sizes:
        net = P.CapRNN(784, 10, v, v // 2, 0.5, 3, seed=s, **network_of(protocol)).reset()
        g = torch.Generator().manual_seed(s)
        order = torch.cat([torch.randperm(len(X), generator=g) for _ in range(2)])   # 2 epochs
        done = 0
        for stop in sorted({c for c in (100, 1000, 5000) if c < 2 * len(X)} | {len(X), 2 * len(X)}):
            P.train_with_rules(net, X[order[done:stop]], y[order[done:stop]], rnn_rule=rule,
                               output_rule=P.perceptron_output_rule(3), reset=False)
            done = stop
            act = net.active_units(Xt)
            silent = (act[:, -1] == 0).float().mean()
            print(f"{protocol},{s},{losses.zero_grad_share():.2f},{sum(losses[-10:]) / 10:.3f},{v},{v // 2},{stop},"
                  f"{100 * P.accuracy(net, Xt, yt):.2f},{silent:.3f},"
                  + ",".join(f"{a:.1f}" for a in act.mean(0).tolist())
                  + f",{float(net.W.sum() / net.G.sum()):.4g}  # {time.time() - t0:.0f}s", flush=True)
