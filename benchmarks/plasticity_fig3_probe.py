"""Fig. 3's recurrent models: what happens to a T=3 network trained with the rules learned on
ReLU1 (plasticity_rules.relu1_rules, BrainNet's protocol, 100 meta-steps at lr 0.1, random or zero
start). For each seed and start: a |V|=1000, k=500 network on Halfspace (Fig. 3's large recurrent
model, one pass on mistakes) after 100, 1,000, 5,000 and 10,000 examples: test accuracy, the share
of test points whose last round has no active unit (h != 0), active units per round, mean W on G.

    python benchmarks/plasticity_fig3_probe.py SEEDS
    python benchmarks/plasticity_fig3_probe.py 0,1,3
    python benchmarks/plasticity_fig3_probe.py swap 0:zeros:random,1:random:zeros,3:zeros:random

`swap SEED:BAD:GOOD,...`: which of the two rules learned together fails. On SEED's network, one
pass over Halfspace with every pairing of the RNN rule and the output rule learned from the BAD
and the GOOD start, and each RNN rule with the perceptron output rule in place of the learned one.
benchmarks/results/plasticity/fig3_probe_seeds.csv and fig3_swap_seeds.csv hold the printed lines.
"""
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import plasticity as P  # noqa: E402
from experiments.plasticity_paper import synthetic_datasets  # noqa: E402
from experiments.plasticity_rules import network_of, relu1_rules  # noqa: E402

warnings.simplefilter("ignore")
data = synthetic_datasets(10000, 10000, 0)
Xr, yr = data["ReLU1"][:2]
Xh, yh, Xt, yt = data["Halfspace"]
if sys.argv[1] == "swap":
    print("net_seed,rnn_rule_from,output_rule_from,accuracy")
    for case in sys.argv[2].split(","):
        s, bad, good = case.split(":")
        s = int(s)
        rules = {init: relu1_rules(Xr, yr, s, init)[:2] for init in (bad, good)}
        for rf, of in ((good, good), (good, bad), (bad, good), (bad, bad), (good, None), (bad, None)):
            net = P.CapRNN(Xh.shape[1], 2, 1000, 500, 0.5, 3, seed=s, **network_of("brainnet")).reset()
            P.train_with_rules(net, Xh, yh, rnn_rule=rules[rf][0], seed=1000 * s,
                               output_rule=P.perceptron_output_rule(3) if of is None else rules[of][1])
            print(f"{s},{s}/{rf},{'perceptron' if of is None else f'{s}/{of}'},"
                  f"{100 * P.accuracy(net, Xt, yt):.2f}", flush=True)
    sys.exit()
print("seed,start,zero_grad_share,examples,accuracy,silent_last_round,active_round1,active_round2,active_round3,"
      "mean_W_on_edges")
for s in (int(t) for t in sys.argv[1].split(",")):
    for init in ("random", "zeros"):
        t0 = time.time()
        rnn, out, losses = relu1_rules(Xr, yr, s, init)
        net = P.CapRNN(Xh.shape[1], 2, 1000, 500, 0.5, 3, seed=s, **network_of("brainnet")).reset()
        order, done = torch.randperm(len(Xh), generator=torch.Generator().manual_seed(1000 * s)), 0
        for stop in (100, 1000, 5000, 10000):
            P.train_with_rules(net, Xh[order[done:stop]], yh[order[done:stop]], rnn_rule=rnn, output_rule=out,
                               reset=False)
            done = stop
            act = net.active_units(Xt)
            print(f"{s},{init},{losses.zero_grad_share():.2f},{stop},{100 * P.accuracy(net, Xt, yt):.2f},"
                  f"{(act[:, -1] == 0).float().mean():.3f}," + ",".join(f"{a:.1f}" for a in act.mean(0).tolist())
                  + f",{float(net.W.sum() / net.G.sum()):.4g}  # {time.time() - t0:.0f}s", flush=True)
