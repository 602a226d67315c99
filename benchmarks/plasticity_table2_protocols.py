"""Table 2's T=3 row under BrainNet's protocol against the text's (the control arm) and T=1, over
seeds 0-4, without the attack (the robustness columns are train.py's --plasticity table2): the
CPU-sized version of

    python train.py --plasticity table2 --subset N --plasticity_models \
        "T=1;T=3, rule learned as BrainNet (|V|=200);T=3, rule learned as A.3 (|V|=200)"

on the first N of the seeded (2) permutation of the Fashion-MNIST training images, as the
--plasticity runs draw them. Writes OUT/table2*.{csv,md,png} (per seed: accuracy, the rule's
zero-gradient share of meta-steps).

    python benchmarks/plasticity_table2_protocols.py N OUT      (e.g. 1000 runs/t2-1000)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import plasticity_paper as PE  # noqa: E402
from harness.data import load_dataset  # noqa: E402

xtr, ytr, xte, yte = load_dataset("fashion-mnist", "/usr/share/datasets/fashion-mnist")
idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(2))[:int(sys.argv[1])]
flat = lambda x: x.reshape(len(x), -1).float().div_(255)  # noqa: E731
data = {"fashion-mnist": (flat(xtr[idx]), ytr[idx], flat(xte), yte)}
PE.run("table2", data, sys.argv[2], seeds=(0, 1, 2, 3, 4),
       models=["T=1", "T=3, rule learned as BrainNet (|V|=200)", "T=3, rule learned as A.3 (|V|=200)"])
