"""How often skip_connect wins an edge, with one identity per rule at stride 1 (the BioNAS space:
skip_connect_usf / _brsf / _frsf are three copies of the identity there) and with them merged
into one candidate (--merge_identity_skips).

    python benchmarks/skip_merge.py                      # 5 seeds x 2 spaces, the quick search
    python benchmarks/skip_merge.py --seeds 1,2 --epochs 1 --out /tmp/sm

Each run is `train.py --search darts` at the --quick search size (Fashion-MNIST, 1,600 images,
4 channels, 3 cells, 2 nodes, batch 32); per seed and space it records, over the stride-1
edges, how many edges' strongest candidate (argmax of softmax(alpha)) is a skip_connect and how
many skip_connects the derived genotype keeps, and writes skip_merge.csv / .md with
mean +- std over seeds.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ops  # noqa: E402
import train  # noqa: E402
from harness.search import make_supernet  # noqa: E402


def stride1_rows(steps, reduction):
    rows, r = [], 0
    for i in range(steps):
        for j in range(2 + i):
            if not (reduction and j < 2):
                rows.append(r)
            r += 1
    return rows


def counts(run, steps):
    ck = torch.load(os.path.join(run, "checkpoint.pt"), weights_only=False)
    net = make_supernet(**ck["config"])
    net.load_state_dict(ck["model"])
    cands = ck["config"]["candidates"]
    skip = [ops.parse_candidate(c)[0] == "skip_connect" for c in cands]
    wn, wr = (w.detach() for w in net.mixing_weights())
    out = {}
    for name, w, red in (("normal", wn, False), ("reduce", wr, True)):
        rows = stride1_rows(steps, red)
        out[f"{name}_edges"] = len(rows)
        out[f"{name}_argmax_skip"] = int(sum(skip[int(w[r].argmax())] for r in rows))
        out[f"{name}_skip_share"] = round(float(w[rows][:, skip].sum(1).mean()), 4)
    g = json.load(open(os.path.join(run, "genotype.json")))
    for name, red in (("normal", False), ("reduce", True)):
        kept = [(n, j) for n, j in g[name] if not (red and j < 2)]
        out[f"{name}_kept_stride1"] = len(kept)
        out[f"{name}_kept_skip"] = sum(ops.parse_candidate(n)[0] == "skip_connect" for n, _ in kept)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default="runs/skip-merge")
    a = p.parse_args()
    rows, t0 = [], time.time()
    for seed in [int(s) for s in a.seeds.split(",")]:
        for merged in (False, True):
            name = f"seed{seed}-{'merged' if merged else 'copies'}"
            run = os.path.join(a.out, name)
            if not os.path.exists(os.path.join(run, "genotype.json")):
                train.main(["--search", "darts", "--dataset", "fashion-mnist", "--subset", "1600",
                            "--batch_size", "32", "--learning_rate", "0.05",
                            "--learning_rate_min", "0", "--nesterov", "--epochs", str(a.epochs),
                            "--init_channels", "4", "--layers", "3", "--nodes", "2",
                            "--report_freq", "1000", "--seed", str(seed), "--save", a.out,
                            "--run_name", name] + (["--merge_identity_skips"] if merged else []))
            rows.append(dict(seed=seed, space="merged" if merged else "copies", **counts(run, 2)))
            print(f"{name}: {rows[-1]} ({time.time() - t0:.0f}s)", flush=True)
    keys = [k for k in rows[0] if k.endswith(("_argmax_skip", "_kept_skip", "_skip_share"))]
    with open(os.path.join(a.out, "skip_merge.csv"), "w") as f:
        f.write(",".join(rows[0]) + "\n" + "".join(",".join(str(r[k]) for k in rows[0]) + "\n"
                                                  for r in rows))
    lines = ["| space | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for space in ("copies", "merged"):
        sel = [r for r in rows if r["space"] == space]
        lines.append(f"| {space} | " + " | ".join(
            f"{np.mean([r[k] for r in sel]):.4g} ± {np.std([r[k] for r in sel], ddof=1):.2g}"
            if len(sel) > 1 else str(sel[0][k]) for k in keys) + " |")
    e = rows[0]
    md = (f"skip_connect on stride-1 edges ({e['normal_edges']} normal, {e['reduce_edges']} "
          f"reduce per search; kept: {e['normal_kept_stride1']} / {e['reduce_kept_stride1']}), "
          f"mean ± std over {len(rows) // 2} seeds, {a.epochs}-epoch quick searches\n\n"
          + "\n".join(lines) + "\n")
    with open(os.path.join(a.out, "skip_merge.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
