"""Probes of NORTH*'s mechanisms (Maile's thesis Ch. 6) behind the measured tables.

    python benchmarks/north_probes.py eq32 [--seeds 1,2,3,4,5] [--epochs 4]
    python benchmarks/north_probes.py pre  [--seeds 1,2,3,4,5]

eq32: Eq. 32's trigger ratio by width. A static MLP 64 -> [M] -> 2 (Adam 3e-4, batch 128, the
      generated data of Sec. 6.3.2) for M = 4 ... 512; at every step the largest singular value of
      the auxiliary gradient (dL/dZ_2)[H_0; 1]^T against the threshold sum_m ||dL/dw_m^in|| +
      ||dL/dw_m^out|| of the M hidden neurons (halved: the authors' code). Eq. 32 adds a neuron
      only when the ratio sigma_max / threshold exceeds 1. Rows: median / max of the ratio over
      every step and seed, the fraction of steps that would add a neuron, and the medians of
      sigma_max and of the mean per-neuron norm (what grows with M and what does not).
      Also the 784 -> [M, M] -> 10 MLP of Sec. 6.3.3 on Fashion-MNIST (batch 512), layer 1.
pre:  NORTH-Pre (Eq. 33) on one hidden layer at the code's epoch count (20 + 4 n_f): the width
      after every epoch, and for the layer-0 candidates of the last growth: the norm of
      (H^T)^+ V_Z a before rescaling and the rank of the layer's pre-activations (at most n_f + 1).
Writes benchmarks/results/thesis/north-eq32.{md,csv} and north-pre.{md,csv}.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import neurogenesis as N  # noqa: E402
from experiments.thesis_neurogenesis import _batches, generated_data, train_growing  # noqa: E402
from harness.run_dir import write_table  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "thesis")


def eq32_ratios(model, data, epochs, batch, seed, lr=3e-4, layer=0):
    """(sigma_max, half-sum threshold, mean per-neuron norm) of hidden layer `layer` at every
    Adam step of a static `model` on data = (x, y)."""
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr)
    out = []
    for epoch in range(epochs):
        for idx in _batches(len(x), batch, seed, epoch):
            opt.zero_grad(set_to_none=True)
            logits, ins, pres, _ = model.forward_all(x[idx])
            pres[layer + 1].retain_grad()
            F.cross_entropy(logits, y[idx]).backward()
            aux = N.aux_from(pres[layer + 1].grad, ins[layer]).double()
            norms = N.neuron_grad_norms(model, layer).double()
            out.append((float(torch.linalg.svdvals(aux)[0]), float(norms.sum()) / 2, float(norms.mean())))
            opt.step()
    return np.array(out)


def probe_eq32(seeds, epochs, widths=(4, 8, 16, 32, 64, 128, 256, 512), n_f=8):
    rows = []
    xtr, ytr, _, _ = generated_data(n_f)
    fm = _fashion()
    for net, ws in (("generated n_f=%d, 64-[M]-2, batch 128" % n_f, widths),
                    ("Fashion-MNIST 784-[M,M]-10, batch 512, layer 1", widths if fm else ())):
        for w in ws:
            t0, per = time.time(), []
            for seed in seeds:
                torch.manual_seed(seed)
                if net.startswith("generated"):
                    model = N.GrowableMLP(64, [w], 2)
                    per.append(eq32_ratios(model, (xtr, ytr), epochs, 128, seed))
                else:
                    model = N.GrowableMLP(784, [w, w], 10)
                    per.append(eq32_ratios(model, fm, 1, 512, seed))
            a = np.concatenate(per)
            ratio = a[:, 0] / a[:, 1]
            seed_med = [float(np.median(p[:, 0] / p[:, 1])) for p in per]
            rows.append(dict(network=net, width=w, steps=len(a), seeds=len(seeds),
                             ratio_median=round(float(np.median(ratio)), 3),
                             ratio_median_seed_std=round(float(np.std(seed_med, ddof=1)), 3) if len(seeds) > 1 else 0,
                             ratio_max=round(float(ratio.max()), 3),
                             fires_half_sum=round(float((ratio > 1).mean()), 3),
                             fires_full_sum=round(float((ratio > 2).mean()), 3),
                             sigma_max_median=float(f"{np.median(a[:, 0]):.3g}"),
                             threshold_median=float(f"{np.median(a[:, 1]):.3g}"),
                             neuron_norm_median=float(f"{np.median(a[:, 2]):.3g}")))
            print(rows[-1], f"{time.time() - t0:.0f}s", flush=True)
    write_table(rows, [(k, lambda r, k=k: r[k]) for k in rows[0]], os.path.join(OUT, "north-eq32"),
                "Eq. 32's trigger ratio sigma_max(aux) / (half of sum_m ||dL/dw_m^in|| + ||dL/dw_m^out||) by width, "
                f"static MLPs, Adam 3e-4, every step of {epochs} epochs (generated) / 1 epoch of 12,000 images "
                "(Fashion-MNIST), seeds " + ",".join(map(str, seeds)) + "; a neuron is added when the ratio > 1 "
                "(the code's half sum) or > 2 (the printed full sum). Command: python benchmarks/north_probes.py eq32")
    return rows


def _fashion(n=12000):
    """The first n Fashion-MNIST training images as float [0, 1] and their labels (None if absent)."""
    try:
        from harness.data import load_dataset
        xtr, ytr, _, _ = load_dataset("fashion-mnist", "./data")
    except Exception as e:                                       # the probe still runs on generated data
        print(f"Fashion-MNIST not loaded ({e}); generated data only")
        return None
    return xtr[:n].reshape(n, -1).float().div(255), ytr[:n].long()


def probe_pre(seeds, n_fs=(8, 32), stem="north-pre"):
    """NORTH-Pre at the code's epoch count: width per epoch; the pseudo-inverse's candidate norms."""
    import neurogenesis_init as I
    rows, norms = [], {}
    real = I._pre_candidates

    def spy(model, l, c, acts, g):
        x, z = acts[1][l].double(), acts[2][l].double()
        xa = torch.cat([x, x.new_ones(len(x), 1)], 1)
        q, _ = torch.linalg.qr(z)
        r = torch.randn(len(z), 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        v = r - q @ (q.t() @ r)
        wb = torch.linalg.pinv(xa) @ v
        fan_in, bias = real(model, l, c, acts, g)
        z_new = x @ fan_in.double().t() + bias.double()               # the rescaled candidates' pre-activations
        norms.setdefault(key, []).append((model.widths[l], float(wb.norm(dim=0).median() / v.norm(dim=0).median()),
                                          int(torch.linalg.matrix_rank(z)),
                                          float(z_new.pow(2).mean(0).sqrt().median() / z.pow(2).mean(0).sqrt().median())))
        return fan_in, bias
    I._pre_candidates = spy
    for n_f in n_fs:
        data = generated_data(n_f)
        for seed in seeds:
            key = (n_f, seed)
            torch.manual_seed(seed)
            model = N.GrowableMLP(64, [4], 2, max_widths=512)
            t0 = time.time()
            res = train_growing(model, "NORTH-Pre", data, epochs=20 + 4 * n_f, batch_size=128, max_widths=512,
                                buffer_size=1024, seed=seed)
            ws = [e["widths"][0] for e in res["epochs"]]
            ns = norms.get(key, [])
            small = [r for w, r, _, _ in ns if w > n_f + 1]
            big = [r for w, r, _, _ in ns if w <= n_f + 1]
            rows.append(dict(n_f=n_f, seed=seed, epochs=len(ws), width_epoch_8=ws[7], width_epoch_16=ws[15],
                             width_final=ws[-1], epoch_reaching_512=next((i + 1 for i, w in enumerate(ws) if w >= 512),
                                                                         None),
                             test_accuracy=round(100 * res["test_accuracy"], 2),
                             growth_events=len(ns),
                             pinv_ratio_while_M_le_nf1=float(f"{np.median(big):.3g}") if big else None,
                             pinv_ratio_after=float(f"{np.median(small):.3g}") if small else None,
                             preact_rank_max=max((rk for _, _, rk, _ in ns), default=None),
                             new_rms_over_existing=float(f"{np.median([q for *_, q in ns]):.3g}") if ns else None,
                             seconds=round(time.time() - t0, 1)))
            print(rows[-1], flush=True)
            write_table(rows, [(k, lambda r, k=k: r[k]) for k in rows[0]], os.path.join(OUT, stem),
                        "NORTH-Pre (Eq. 33), one hidden layer from width 4, generated data, 20 + 4 n_f epochs (the code): "
                        "width after epochs 8 and 16 and at the end; pinv_ratio = ||(H^T)^+ V_Z a|| / ||V_Z a|| before "
                        "the rescaling (median over growth events, while M <= n_f + 1 and after); preact_rank_max = "
                        "the largest rank of the layer's pre-activations on the buffer; new_rms_over_existing = the rescaled "
                        "candidates' RMS pre-activation over the existing neurons' (median). Command: python "
                        "benchmarks/north_probes.py pre")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("probe", choices=("eq32", "pre"))
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--epochs", type=int, default=4, help="eq32: epochs on the generated data")
    p.add_argument("--n_fs", default="8,32", help="pre: n_f values")
    p.add_argument("--stem", default="north-pre", help="pre: the table's file name in benchmarks/results/thesis")
    a = p.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.probe == "eq32":
        probe_eq32(seeds, a.epochs)
    else:
        probe_pre(seeds, [int(v) for v in a.n_fs.split(",")], a.stem)
