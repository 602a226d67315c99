"""train.py's --attack: the robustness of a trained network (a --train run's checkpoint.pt)
under the attacks of attacks.py, with exact and/or feedback input gradients, written as
robustness.md/.csv in the run directory; --attack_sweep adds PGD accuracy against epsilon."""
import os
import time

import torch
import torch.distributed as dist

import attacks
from harness.data import Batches, imagenet_stream, load_dataset
from harness.plots import plot_curves
from harness.retrain import load_checkpoint_model
from harness.run_dir import collectives, distributed, fmt_eta, load_checkpoint

CHECKPOINT_KINDS = ("eval", "resnet")            # the checkpoints a --train run writes
HINT = "attack the checkpoint.pt of a --train run"


def check_args(args, mode):
    """--checkpoint given and a --train run's, checked before the run directory is made."""
    if not args.checkpoint:
        raise SystemExit("error: --attack needs --checkpoint RUN_DIR/checkpoint.pt of a "
                         "--train run")
    load_checkpoint(args.checkpoint, "cpu", kinds=CHECKPOINT_KINDS, hint=HINT)


def attack_overrides(args, names, base=None):
    """{attack: {knob: value}} from --attack_eps/--attack_alpha/--attack_steps: a flag changes
    the attacks of `names` that have that knob in their preset, over `base`'s values."""
    flags = {"eps": args.attack_eps, "alpha": args.attack_alpha, "steps": args.attack_steps}
    overrides = {}
    for name in names:
        preset = attacks.PRESETS.get(args.attack_preset, {}).get(name)
        keys = ("eps", "alpha", "steps") if preset is None else \
            [k for k in preset if k in flags and name != "onepixel"]
        overrides[name] = dict((base or {}).get(name, {}),
                               **{k: flags[k] for k in keys if flags[k] is not None})
    return overrides


def attack(args, run, device):
    """Robustness table (BioNAS Table 2 layout) of a trained network, exact and/or feedback
    gradients, plus accuracy against epsilon for PGD."""
    model, ckpt = load_checkpoint_model(args.checkpoint, device, kinds=CHECKPOINT_KINDS,
                                        hint=HINT)
    saved = ckpt["args"]
    rank, world = distributed(device)            # under torchrun each rank attacks its share
    if saved["dataset"] == "imagenet":           # val/, streamed as in the retraining
        batches = imagenet_stream(args.data or saved["data"], False, args.batch_size or 100,
                                  device, args.workers, saved.get("crop_size", 224), rank=rank,
                                  world=world)
    else:
        _, _, xte, yte = load_dataset(saved["dataset"], args.data or saved["data"])
        batches = Batches(xte, yte, args.batch_size or 100, device, train=False, rank=rank,
                          world=world)
    names = [n.strip() for n in args.attack.split(",")]
    grads = ("exact", "feedback") if args.attack_grad == "both" else (args.attack_grad,)
    overrides = attack_overrides(args, names)
    run.log(f"attacks {names} ({args.attack_preset} preset, overrides {overrides}) on "
            f"{args.checkpoint}, gradients {grads}, up to {args.attack_batches or 'all'} "
            f"batches of {batches.bs}")
    t0 = time.time()
    try:
        rows = attacks.evaluate_robustness(model, batches, names, grads=grads,
                                           max_batches=args.attack_batches,
                                           preset=args.attack_preset, overrides=overrides)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    rows = mean_over_ranks(rows, device)
    table = attacks.to_markdown(rows)
    if run.main:
        with open(run.file("robustness.md"), "w") as f:
            f.write(f"Robust accuracy (%) of {args.checkpoint}, preset {args.attack_preset}\n\n"
                    + table + "\n")
        with open(run.file("robustness.csv"), "w") as f:
            f.write(attacks.to_csv(rows))
    run.log("\n" + table)
    if args.attack_sweep:
        attack_sweep(args, run, model, batches, grads, device)
    run.log(f"attacks done in {time.time() - t0:.0f}s: {run.file('robustness.md')}")
    return rows


def attack_sweep(args, run, model, batches, grads, device):
    """--attack_sweep: PGD robust accuracy against epsilon, one log line per point, and
    robustness_eps.png."""
    eps_list = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1, 0.35]
    curves = {g: [] for g in grads}
    t0, done, total = time.time(), 0, len(eps_list) * len(grads)
    for g in grads:
        for eps in eps_list:
            (_, acc), = attacks.accuracy_vs_eps(model, batches, "pgd", [eps], grad=g,
                                                max_batches=args.attack_batches,
                                                preset=args.attack_preset)
            acc = mean_over_ranks([dict(acc=acc)], device)[0]["acc"]
            curves[g].append((eps, acc))
            done += 1
            run.log(f"PGD sweep {done}/{total}: {g} gradient, eps {eps:.4f}: {acc:.2f}% "
                    f"(ETA {fmt_eta((time.time() - t0) / done * (total - done))})")
    if run.main:
        plot_curves(curves, run.file("robustness_eps.png"), "epsilon (L-inf)",
                    "PGD robust accuracy (%)",
                    f"PGD-{attacks.PRESETS[args.attack_preset]['pgd']['steps']} on "
                    f"{os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))}")


def mean_over_ranks(rows, device):
    """Under torchrun: every numeric entry of the rows averaged over the ranks (their shards of
    the test set are equal in size, so this is the accuracy on their union). The float64 sums
    are taken on `device`, the process's device, as a collective (NCCL) needs them."""
    if not collectives():
        return rows
    keys = [(i, k) for i, r in enumerate(rows) for k, v in r.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    vals = torch.tensor([float(rows[i][k]) for i, k in keys], dtype=torch.float64,
                        device=device)
    dist.all_reduce(vals)
    out = [dict(r) for r in rows]
    for (i, k), v in zip(keys, vals.tolist()):
        out[i][k] = v / dist.get_world_size()
    return out
