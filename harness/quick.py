"""train.py's --search: the search loop (search.py), and after a --quick search the short
retraining of its genotype (quick.py's own part), with the ETA of both from the start."""
import argparse
import os
import time

import torch

import darts
import ops
from harness.data import load_dataset
from harness.options import apply_defaults
from harness.presets import SEARCH_DEFAULTS
from harness.retrain import estimate_seconds, train
from harness.run_dir import Run, fmt_eta
from harness.search import search


def search_run(args, run, device):
    """--search darts|egnas; with --quick the retraining of the genotype follows, and the
    search's ETA counts it."""
    after = quick_retrain_estimate(args, device) if args.quick_retrain else 0.0
    if after:
        run.log(f"--quick: the search is followed by a retraining of its genotype, "
                f"estimated at {fmt_eta(after)}")
    genotype = search(args, run, device, after=after)
    if genotype is not None and args.quick_retrain:
        retrain_after_quick_search(args, run, device, genotype)
    return genotype


def quick_retrain_args(args):
    """The flags of the retraining that follows a --quick search."""
    targs = argparse.Namespace(**{k: v for k, v in vars(args).items()})
    for k in list(SEARCH_DEFAULTS) + ["subset", "report_freq", "stop_after", "resume"]:
        setattr(targs, k, None)
    targs.search, targs.train = None, True
    return apply_defaults(targs, "train")


def quick_retrain_estimate(args, device):
    """Seconds the --quick retraining should take, timed on a genotype of random alpha (the
    search has not found its own yet), for the ETA of the whole run."""
    targs = quick_retrain_args(args)
    cands = ops.search_space(args.rules.split(","), args.skip_rules.split(","))
    k = sum(2 + i for i in range(args.nodes))
    g = torch.Generator().manual_seed(0)
    guess = darts.derive_genotype(torch.rand(k, len(cands), generator=g),
                                  torch.rand(k, len(cands), generator=g), cands, args.nodes,
                                  args.nodes)
    xtr, _, xte, _ = load_dataset(targs.dataset, targs.data)
    return estimate_seconds(targs, guess, device, min(targs.subset or len(xtr), len(xtr)),
                            len(xte))


def retrain_after_quick_search(args, run, device, genotype):
    """--quick: retrain the derived network briefly on the whole training set."""
    targs = quick_retrain_args(args)
    sub = Run(os.path.join(run.path, "retrain"), main=run.main)     # torchrun: rank 0 writes
    if os.path.exists(sub.file("checkpoint.pt")):
        targs.resume = sub.path
    sub.write_json(vars(targs), "args.json")
    t0 = time.time()
    acc = train(targs, sub, device, genotype)
    if acc is not None:
        run.log(f"quick retrain: test accuracy {acc:.2f}% in {time.time() - t0:.0f}s "
                f"(run directory {sub.path})")
