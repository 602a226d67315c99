"""train.py's --experiment NAME of the BioNAS paper: the searches and retrainings the
analysis needs (bionas_paper.plan), each a train.py run in RUN/LABEL, then bionas_paper.run's
report. A finished sub-run (result.json) is reused and an interrupted one resumes, so
`--resume RUN` continues an experiment where it stopped; --gpus spreads the sub-runs over
devices."""
import argparse
import functools
import json
import os
import time

import torch

import attacks
import darts
from experiments import bionas_paper
from harness.attack_runs import attack_overrides
from harness.data import Batches, load_dataset
from harness.options import apply_defaults
from harness.retrain import build_eval_model, load_checkpoint_model, train
from harness.run_dir import Run, pick_device, run_on_devices
from harness.search import search


def experiment(args, run, device):
    """--experiment NAME: a BioNAS analysis (bionas_paper.py). Each search and retraining is a
    train.py run in RUN/LABEL: a finished one (result.json) is reused, an interrupted one
    resumes, so `--resume RUN` continues the experiment where it stopped. --gpus D1,D2,...: the
    searches, then the retrainings, run concurrently, one per device, before the report."""
    genotype = darts.load_genotype(args.genotype) if args.genotype else None
    probe = apply_defaults(argparse.Namespace(**vars(args)), "train")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.gpus:
        todo = bionas_paper.plan(args.experiment, seeds, genotype is None)
        kind = "search" if args.experiment == "collapse" else "train"
        searches = sorted({o["search_seed"] for _, o in todo if "search_seed" in o})
        devices = [None if d == "cpu" else int(d) for d in args.gpus.split(",")]
        for phase in ([("search", f"search-s{s}", dict(seed=s)) for s in searches],
                      [(kind, label, o) for label, o in todo]):
            jobs = [(job[1], (vars(args), run.path) + job) for job in phase
                    if not os.path.exists(os.path.join(run.path, job[1], "result.json"))]
            if jobs:
                run.log(f"--gpus {args.gpus}: {len(jobs)} {phase[0][0]} runs, one per device "
                        f"at a time")
                run_on_devices(jobs, devices, experiment_job, run.log)
    test_set = []                                   # loaded once, at the first attack

    def attack_run(sub, _):
        model, _ = load_checkpoint_model(sub.file("checkpoint.pt"), device)
        names = args.attack.split(",") if args.attack else \
            ["onepixel", "fgsm", "pgd", "tpgd", "apgd"]
        if not test_set:
            test_set.extend(load_dataset(probe.dataset, args.data)[2:])
        quick = dict(onepixel=dict(popsize=20, steps=5), apgd=dict(steps=20)) if args.quick else {}
        batches = Batches(*test_set, 50 if args.quick else 100, device, train=False)
        return attacks.evaluate_robustness(model, batches, names, grads=("exact", "feedback"),
                                           max_batches=args.attack_batches or
                                           (1 if args.quick else None),
                                           preset=args.attack_preset,
                                           overrides=attack_overrides(args, names, quick))

    def attack_fn(label):
        return cached(run, label, "robustness.json", attack_run)
    run.log(f"experiment {args.experiment} ({'quick' if args.quick else 'full'}) on "
            f"{probe.dataset}, runs in {run.path}")
    t0 = time.time()
    out = bionas_paper.run(args.experiment, functools.partial(retrain_run, args, run, device),
                           attack_fn, run.path, probe.dataset, seeds, log=run.log,
                           search_fn=functools.partial(search_run, args, run, device),
                           searched=genotype is None)
    with open(run.file(args.experiment + ".md")) as f:
        run.log(f"{args.experiment} done in {time.time() - t0:.0f}s\n" + f.read())
    return out


def experiment_job(args_dict, run_path, kind, label, overrides, gpu):
    """One sub-run of an experiment in a process of its own on device `gpu` (--gpus)."""
    args = argparse.Namespace(**dict(args_dict, gpu=gpu))
    cpu_slots = args.gpus.split(",").count("cpu")
    if gpu is None and cpu_slots > 1:    # CPU slots share the cores instead of oversubscribing
        torch.set_num_threads(max(1, torch.get_num_threads() // cpu_slots))
    run = Run(run_path)                  # the parent holds the lock; log lines are appended
    (search_run if kind == "search" else retrain_run)(args, run, pick_device(gpu), label,
                                                      overrides)
    run.close()


def cached(run, label, name, compute):
    """RUN/LABEL/NAME left by a finished sub-run, else compute(sub, resume) saved there; resume
    is the sub-run's directory when an interrupted run left a checkpoint."""
    sub = Run(os.path.join(run.path, label))
    if os.path.exists(sub.file(name)):
        with open(sub.file(name)) as f:
            return json.load(f)
    out = compute(sub, sub.path if os.path.exists(sub.file("checkpoint.pt")) else None)
    sub.write_json(out, name)
    return out


def retrain_run(args, run, device, label, overrides):
    """bionas_paper's train_fn: the retraining LABEL with the experiment's flags and
    `overrides` -> dict(test_acc, best_test_acc, layers, rules, params, seconds, ...)."""
    return cached(run, label, "result.json",
                  lambda sub, resume_dir: retrain(args, run, device, sub, resume_dir, overrides))


def retrain(args, run, device, sub, resume_dir, overrides):
    genotype = darts.load_genotype(args.genotype) if args.genotype else None
    overrides = dict(overrides)
    g = genotype
    if "search_seed" in overrides:                      # the genotype of search s (searched once)
        s = overrides.pop("search_seed")
        g = darts.Genotype(**search_run(args, run, device, f"search-s{s}",
                                        dict(seed=s))[-1]["genotype"])
    if "random_genotype" in overrides:                  # a cell of the searches' node count
        g = darts.random_genotype(overrides.pop("random_genotype"), search_args(args, {}).nodes,
                                  args.rules.split(","), args.skip_rules.split(","))
    targs = argparse.Namespace(**dict(vars(args), **overrides))
    targs.train, targs.stop_after = True, None
    apply_defaults(targs, "train")
    targs.experiment, targs.resume = None, resume_dir   # `--resume RUN/LABEL`: this run
    if g is not None and g is not genotype:     # its own genotype.json (the rules it trains)
        if targs.random_rules is not None:
            g = darts.random_rules(g, targs.random_rules, args.rules.split(","),
                                   args.skip_rules.split(","))
            targs.random_rules = None
        sub.write_json(g._asdict(), "genotype.json")
        targs.genotype = sub.file("genotype.json")
    sub.write_json(vars(targs), "args.json")
    acc = train(targs, sub, device, g if targs.model == "darts" else None)
    with open(sub.file("layers.json")) as f:
        layers = json.load(f)
    with open(sub.file("history.json")) as f:
        hist = json.load(f)
    seconds = sum(h["seconds"] for h in hist)
    best = max(hist, key=lambda h: h["test_acc"])
    cells = [r for n, r in zip(layers["names"], layers["rules"]) if ".ops." in n]  # edges
    run.log(f"{os.path.basename(sub.path)}: test accuracy {acc:.2f}% (best "
            f"{best['test_acc']:.2f}% after epoch {best['epoch'] + 1}; {seconds:.0f}s)")
    return dict(test_acc=acc, best_test_acc=best["test_acc"], best_epoch=best["epoch"] + 1,
                layers=layers, seconds=seconds, rules=cells or layers["rules"],
                force_scope=targs.force_scope if targs.force_rule else None,
                genotype=str(tuple(g)) if g is not None else None,
                params=sum(p.numel() for p in build_eval_model(targs, g).parameters()))


def search_args(args, overrides):
    """collapse: a DARTS search (--quick: the quick search for 15 epochs, or --epochs); the
    searches of the SEEDED experiments: the search preset's epochs and sizes (the size flags
    given are the retrainings')."""
    targs = argparse.Namespace(**dict(vars(args), **overrides))
    targs.search, targs.train, targs.stop_after, targs.experiment = "darts", False, None, None
    # DARTS's stem unless asked: the experiments' retrainings (QUICK["experiment"]) keep it
    targs.stem_stride = getattr(args, "stem_stride", None) or 1
    if args.experiment in bionas_paper.SEEDED:
        for k in ("subset", "batch_size", "learning_rate", "init_channels", "layers", "epochs"):
            setattr(targs, k, None)
    elif args.quick and args.epochs is None:
        targs.epochs = 15
    return apply_defaults(targs, "search")


def search_run(args, run, device, label, overrides):
    """bionas_paper's search_fn: the search LABEL -> its history, one dict per epoch."""
    def compute(sub, resume_dir):
        targs = search_args(args, overrides)
        targs.resume = resume_dir
        sub.write_json(vars(targs), "args.json")
        search(targs, sub, device)
        with open(sub.file("history.json")) as f:
            return [{k: h.get(k) for k in ("epoch", "param_free_share", "alpha_steps",
                                           "valid_acc", "genotype", "seconds")}
                    for h in json.load(f)]
    return cached(run, label, "result.json", compute)
