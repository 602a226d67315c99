"""BioNAS command line: search, retrain, attack, plasticity experiments.

    python train.py --search darts --gpu 0            # BioNAS-DARTS search on CIFAR-10
    python train.py --train --genotype runs/X/genotype.json
    python train.py --search darts --quick            # search + short retrain, Fashion-MNIST, CPU
    python train.py --resume runs/X                   # continue a run from its last checkpoint
    python train.py --plasticity table2 --quick       # plasticity-rules paper, Table 2

Flag names follow the original DARTS scripts (train_search.py, train.py). Every run writes a
run directory: log.txt, args.json, checkpoint.pt (each epoch, atomically), alpha per epoch,
genotype.json and plots.
"""
import argparse
import json
import os
import sys
import time

import torch

from experiments import bionas_paper
import darts
import ops
from harness.data import Batches, image_folders, imagenet_stream, load_dataset
from experiments import thesis_runs
from harness.options import (SEARCH_DEFAULTS, apply_defaults, apply_thesis_defaults, build_parser,
                     check_args, check_data, mode_of, resume_args)
from harness.plots import plot_curves
from harness.retrain import build_eval_model, estimate_seconds, load_checkpoint_model, train
from harness.search import search
from harness.run_dir import WARNINGS, Run, distributed, fmt_eta, load_checkpoint, pick_device, run_on_devices

# ============================================================================ attacks

def attack(args, run, device):
    """Robustness table (BioNAS Table 2 layout) of a trained network, exact and/or feedback
    gradients, plus accuracy against epsilon for PGD."""
    import attacks
    model, ckpt = load_checkpoint_model(args.checkpoint, device, kinds=("eval", "resnet"),
                                        hint="attack the checkpoint.pt of a --train run")
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
    overrides = {}
    flags = {"eps": args.attack_eps, "alpha": args.attack_alpha, "steps": args.attack_steps}
    for name in names:                      # a flag changes the attacks that have that knob
        preset = attacks.PRESETS.get(args.attack_preset, {}).get(name)
        keys = ("eps", "alpha", "steps") if preset is None else \
            [k for k in preset if k in flags and name != "onepixel"]
        overrides[name] = {k: flags[k] for k in keys if flags[k] is not None}
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
    rows = mean_over_ranks(rows, world)
    table = attacks.to_markdown(rows)
    if run.main:
        with open(run.file("robustness.md"), "w") as f:
            f.write(f"Robust accuracy (%) of {args.checkpoint}, preset {args.attack_preset}\n\n"
                    + table + "\n")
        with open(run.file("robustness.csv"), "w") as f:
            f.write(attacks.to_csv(rows))
    run.log("\n" + table)
    if args.attack_sweep:
        attack_sweep(args, run, model, batches, grads, world)
    run.log(f"attacks done in {time.time() - t0:.0f}s: {run.file('robustness.md')}")
    return rows


def attack_sweep(args, run, model, batches, grads, world):
    """--attack_sweep: PGD robust accuracy against epsilon, one log line per point, and
    robustness_eps.png."""
    import attacks
    eps_list = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1, 0.35]
    curves = {g: [] for g in grads}
    t0, done, total = time.time(), 0, len(eps_list) * len(grads)
    for g in grads:
        for eps in eps_list:
            (_, acc), = attacks.accuracy_vs_eps(model, batches, "pgd", [eps], grad=g,
                                                max_batches=args.attack_batches,
                                                preset=args.attack_preset)
            acc = mean_over_ranks([dict(acc=acc)], world)[0]["acc"]
            curves[g].append((eps, acc))
            done += 1
            run.log(f"PGD sweep {done}/{total}: {g} gradient, eps {eps:.4f}: {acc:.2f}% "
                    f"(ETA {fmt_eta((time.time() - t0) / done * (total - done))})")
    if run.main:
        plot_curves(curves, run.file("robustness_eps.png"), "epsilon (L-inf)",
                    "PGD robust accuracy (%)",
                    f"PGD-{attacks.PRESETS[args.attack_preset]['pgd']['steps']} on "
                    f"{os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))}")


def mean_over_ranks(rows, world):
    """Under torchrun: every numeric entry of the rows averaged over the ranks (their shards of
    the test set are equal in size, so this is the accuracy on their union)."""
    if world <= 1:
        return rows
    import torch.distributed as dist
    keys = [(i, k) for i, r in enumerate(rows) for k, v in r.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    vals = torch.tensor([float(rows[i][k]) for i, k in keys], dtype=torch.float64)
    dist.all_reduce(vals)
    out = [dict(r) for r in rows]
    for (i, k), v in zip(keys, vals.tolist()):
        out[i][k] = v / world
    return out


def plasticity_attack(steps=20, alpha=None):
    """The plasticity paper's attack (Sec. 4, A.3) as attack(net, X, y, eps) -> broken mask:
    attacks.targeted_l2 (nine targets, raw-gradient steps, L2 ball, [0, 1]). The paper gives
    neither alpha nor the number of steps; unless `alpha` is given, alpha = (eps / 4) / the median
    over images of |grad_x (z_y - z_j)|, j the runner-up class, so that a typical first step
    has length eps/4 whatever the scale of the network's logits."""
    import attacks

    def attack(net, X, y, eps):
        a = alpha
        if a is None:
            x = X.clone().requires_grad_(True)
            z = net(x)
            runner_up = z.detach().scatter(1, y[:, None], float("-inf")).argmax(1)
            margin = z.gather(1, y[:, None]) - z.gather(1, runner_up[:, None])
            g, = torch.autograd.grad(margin.sum(), x)
            a = eps / 4 / float(g.flatten(1).norm(dim=1).median().clamp_min(1e-12))
        return attacks.targeted_l2(net, X, y, eps, a, steps, return_broken=True)[1]
    return attack


def plasticity(args, run, device):
    """--plasticity NAME: an experiment of the plasticity-rules paper (plasticity_paper.py)
    on flattened MNIST / Fashion-MNIST (A.2: 10k random training images) with the Sec. 4 attack."""
    from experiments import plasticity_paper as PE
    names = [args.dataset] + [d for d in ("fashion-mnist", "mnist")
                              if args.plasticity == "generalization" and d != args.dataset]
    data = {}
    for name in names:
        if name not in ("mnist", "fashion-mnist"):
            raise SystemExit(f"error: --plasticity runs on mnist or fashion-mnist, not {name}")
        try:
            xtr, ytr, xte, yte = load_dataset(name, args.data)
        except SystemExit as e:
            if name == args.dataset:
                raise
            run.log(f"{name} left out of the generalization table: {e}")
            continue
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
        idx = idx[:args.subset or 10000]
        flat = lambda x: x.reshape(len(x), -1).float().div_(255).to(device)
        data[name] = (flat(xtr[idx]), ytr[idx].to(device), flat(xte), yte.to(device))
    steps = args.attack_steps or 20
    attack = plasticity_attack(steps, args.attack_alpha)
    run.log(f"plasticity experiment {args.plasticity} ({'quick' if args.quick else 'full'}, "
            f"seeds {args.seeds}; --seed {args.seed} draws the training images) on "
            f"{', '.join(data)}; attack targeted_l2, {steps} steps, alpha "
            f"{args.attack_alpha or '(eps/4) / median |grad margin|'}")
    t0 = time.time()
    try:
        out = PE.run(args.plasticity, data, run.path, quick=args.quick, attack=attack,
                     seeds=[int(s) for s in args.seeds.split(",")], log=run.log)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    run.log(f"{args.plasticity} done in {time.time() - t0:.0f}s: "
            f"{run.file(args.plasticity + '.md')}\n" + open(run.file(args.plasticity + ".md")).read())
    return out


def experiment_runs(args, run, device):
    """(train_fn, search_fn) of an experiment: each retraining or search a train.py run in
    RUN/LABEL; a finished one (result.json) is reused, an interrupted one resumes."""
    genotype = darts.load_genotype(args.genotype) if args.genotype else None

    def cached(label, name, compute):
        """RUN/LABEL/NAME left by a finished run, else compute(sub, resume) saved there; resume
        is the run directory when an interrupted run left a checkpoint."""
        sub = Run(os.path.join(run.path, label))
        if os.path.exists(sub.file(name)):
            with open(sub.file(name)) as f:
                return json.load(f)
        out = compute(sub, sub.path if os.path.exists(sub.file("checkpoint.pt")) else None)
        sub.write_json(out, name)
        return out

    def retrain(sub, resume_dir, overrides):
        overrides = dict(overrides)
        g = genotype
        if "search_seed" in overrides:                  # the genotype of search s (searched once)
            s = overrides.pop("search_seed")
            g = darts.Genotype(**search_fn(f"search-s{s}", dict(seed=s))[-1]["genotype"])
        if "random_genotype" in overrides:                # a cell of the searches' node count
            g = darts.random_genotype(overrides.pop("random_genotype"), search_args({}).nodes,
                                      args.rules.split(","), args.skip_rules.split(","))
        targs = argparse.Namespace(**dict(vars(args), **overrides))
        targs.train, targs.stop_after = True, None
        apply_defaults(targs, "train")
        targs.experiment, targs.resume = None, resume_dir   # `--resume RUN/LABEL`: this run
        if g is not None and g is not genotype:   # its own genotype.json (the rules it trains)
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
        run.log(f"{os.path.basename(sub.path)}: test accuracy {acc:.2f}% (best {best['test_acc']:.2f}"
                f"% after epoch {best['epoch'] + 1}; {seconds:.0f}s)")
        return dict(test_acc=acc, best_test_acc=best["test_acc"], best_epoch=best["epoch"] + 1,
                    layers=layers, seconds=seconds, rules=cells or layers["rules"],
                    force_scope=targs.force_scope if targs.force_rule else None,
                    genotype=str(tuple(g)) if g is not None else None,
                    params=sum(p.numel() for p in build_eval_model(targs, g).parameters()))

    def search_args(overrides):
        """collapse: a DARTS search (--quick: the quick search for 15 epochs, or --epochs); the
        searches of the SEEDED experiments: the search preset's epochs and sizes (the size flags
        given are the retrainings')."""
        targs = argparse.Namespace(**dict(vars(args), **overrides))
        targs.search, targs.train, targs.stop_after, targs.experiment = "darts", False, None, None
        if args.experiment in bionas_paper.SEEDED:
            for k in ("subset", "batch_size", "learning_rate", "init_channels", "layers", "epochs"):
                setattr(targs, k, None)
        elif args.quick and args.epochs is None:
            targs.epochs = 15
        return apply_defaults(targs, "search")

    def search_run(sub, resume_dir, overrides):
        targs = search_args(overrides)
        targs.resume = resume_dir
        sub.write_json(vars(targs), "args.json")
        search(targs, sub, device)
        with open(sub.file("history.json")) as f:
            return [{k: h.get(k) for k in ("epoch", "param_free_share", "alpha_steps",
                                           "valid_acc", "genotype", "seconds")}
                    for h in json.load(f)]

    def train_fn(label, overrides):
        return cached(label, "result.json", lambda sub, r: retrain(sub, r, overrides))

    def search_fn(label, overrides):
        return cached(label, "result.json", lambda sub, r: search_run(sub, r, overrides))
    return train_fn, search_fn, cached


def experiment_job(args_dict, run_path, kind, label, overrides, gpu):
    """One sub-run of an experiment in a process of its own on device `gpu` (--gpus)."""
    args = argparse.Namespace(**dict(args_dict, gpu=gpu))
    cpu_slots = args.gpus.split(",").count("cpu")
    if gpu is None and cpu_slots > 1:    # CPU slots share the cores instead of oversubscribing
        torch.set_num_threads(max(1, torch.get_num_threads() // cpu_slots))
    run = Run(run_path)                  # the parent holds the lock; log lines are appended
    train_fn, search_fn, _ = experiment_runs(args, run, pick_device(gpu))
    (search_fn if kind == "search" else train_fn)(label, overrides)
    run.close()


def experiment(args, run, device):
    """--experiment NAME: a BioNAS analysis (bionas_paper.py). Each retraining is a train.py
    run in RUN/LABEL: a finished one (result.json) is reused, an interrupted one resumes, so
    `--resume RUN` continues the experiment where it stopped. --gpus D1,D2,...: the searches,
    then the retrainings, run concurrently, one per device, before the report."""
    import attacks
    genotype = darts.load_genotype(args.genotype) if args.genotype else None
    probe = apply_defaults(argparse.Namespace(**vars(args)), "train")
    train_fn, search_fn, cached = experiment_runs(args, run, device)
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

    def attack_run(sub):
        model, _ = load_checkpoint_model(sub.file("checkpoint.pt"), device)
        names = args.attack.split(",") if args.attack else ["onepixel", "fgsm", "pgd", "tpgd", "apgd"]
        if not test_set:
            test_set.extend(load_dataset(probe.dataset, args.data)[2:])
        quick = dict(onepixel=dict(popsize=20, steps=5), apgd=dict(steps=20)) if args.quick else {}
        batches = Batches(*test_set, 50 if args.quick else 100, device, train=False)
        return attacks.evaluate_robustness(model, batches, names, grads=("exact", "feedback"),
                                           max_batches=args.attack_batches or (1 if args.quick else None),
                                           preset=args.attack_preset, overrides=quick)

    def attack_fn(label):
        return cached(label, "robustness.json", lambda sub, _: attack_run(sub))
    run.log(f"experiment {args.experiment} ({'quick' if args.quick else 'full'}) on "
            f"{probe.dataset}, runs in {run.path}")
    t0 = time.time()
    out = bionas_paper.run(args.experiment, train_fn, attack_fn, run.path, probe.dataset,
                                 seeds, log=run.log, search_fn=search_fn,
                                 searched=genotype is None)
    with open(run.file(args.experiment + ".md")) as f:
        run.log(f"{args.experiment} done in {time.time() - t0:.0f}s\n" + f.read())
    return out


# ============================================================================ command line

def new_run(args, mode):
    """A new run directory SAVE/NAME, locked; a --run_name that exists is refused (it would
    overwrite a run), an automatic name that exists gets a suffix."""
    tag = mode if mode == "attack" else f"{mode}-{args.dataset}"
    tag = f"{mode}-{args.plasticity or args.experiment}" if mode in ("plasticity", "experiment") \
        else tag
    tag = f"{mode}-{getattr(args, mode)}" if mode in ("neurogenesis", "dyno", "equinas") else tag
    name = [args.run_name or time.strftime(f"{tag}-%Y%m%d-%H%M%S")]
    rank, world = distributed(pick_device(args.gpu))
    if world > 1:                                   # every rank writes into rank 0's directory
        import torch.distributed as dist
        if mode not in ("train", "attack", "search"):
            raise SystemExit("error: under torchrun only --search, --train and --attack run; "
                             "run experiments in one process (--gpus spreads their "
                             "retrainings over GPUs)")
    if rank == 0:
        path = os.path.join(args.save, name[0])
        if os.path.exists(path) and os.listdir(path):
            if args.run_name:
                raise SystemExit(f"error: {path} already exists; choose another --run_name, or "
                                 f"continue that run with --resume {path}")
            k = 2
            while os.path.exists(f"{path}-{k}"):
                k += 1
            name[0] = f"{name[0]}-{k}"
    if world > 1:
        dist.broadcast_object_list(name, src=0)
    run = Run(os.path.join(args.save, name[0]), main=rank == 0, lock=True)
    run.write_json(vars(args), "args.json")
    return run


def prepare(args, argv):
    """(args, mode, what a resumed run has done): the flags with defaults applied and every
    check passed -- before any run directory is made or touched."""
    if args.resume:
        args = resume_args(args, argv)
        mode = mode_of(args)
    else:
        mode = mode_of(args)
        if mode is None:
            raise SystemExit("error: choose what to run: --search darts|egnas, --train, "
                             "--attack, --experiment, --plasticity or --resume "
                             "(python train.py -h lists the flags)")
        if args.dataset is None:
            args.dataset = "fashion-mnist" if mode in ("plasticity", "neurogenesis", "dyno",
                                                       "equinas") or \
                args.experiment in thesis_runs.THESIS_EXPERIMENTS else "cifar10"
        if mode == "attack":
            args.data = args.data if args.data != "./data" else None
        args.quick_retrain = bool(args.search and args.quick)
        if mode in ("search", "train"):
            apply_defaults(args, mode)
        if mode in ("neurogenesis", "dyno", "equinas"):
            apply_thesis_defaults(args, mode)
    check_args(args, mode)
    if mode == "train" and args.dataset == "imagenet":      # the layout, and --subset in it
        check_data(args, mode, image_folders(args.data)[0])
    elif mode in ("search", "train") or (mode in ("plasticity", "neurogenesis") and args.subset):
        check_data(args, mode, load_dataset(args.dataset, args.data)[0])
    if mode == "attack":
        load_checkpoint(args.checkpoint, "cpu", kinds=("eval", "resnet"),
                        hint="attack the checkpoint.pt of a --train run")
    return args, mode


def resumed_state(args, mode, run):
    """Before a resumed search/train continues: the checkpoint's epochs against --epochs (stop
    if fewer; None if the run is complete), and a message if there is no checkpoint."""
    path = run.file("checkpoint.pt")
    if not os.path.exists(path):
        run.log(f"{run.path} has no checkpoint (it stopped before its first epoch ended): "
                f"starting it again from the beginning")
        args.resume = None
        return "restart"
    ckpt = load_checkpoint(path, "cpu", kinds=("search",) if mode == "search" else
                           ("eval",) if args.model == "darts" else ("resnet",),
                           hint=f"its args.json describes another kind of run: {run.path} "
                                f"mixes files of two runs")
    done = ckpt["epoch"] + 1
    if args.epochs < done:
        raise SystemExit(f"error: --epochs {args.epochs} is fewer than the {done} epochs {run.path} "
                         f"has done")
    finished = done >= args.epochs and (
        os.path.exists(run.file("genotype.json")) if mode == "search" else
        os.path.exists(run.file("model.pt")))
    if finished and mode == "search" and args.quick_retrain:
        finished = os.path.exists(os.path.join(run.path, "retrain", "model.pt"))
    return None if finished else "continue"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    run = None
    try:
        args, mode = prepare(build_parser().parse_args(argv), argv)
        device = pick_device(args.gpu)
        if args.resume:
            run = Run(args.resume, main=distributed(device)[0] == 0, lock=True)
            run.log(f"resuming {run.path}")
            if mode in ("search", "train") and resumed_state(args, mode, run) is None:
                run.log(f"{run.path} has finished all {args.epochs} epochs: nothing to do (give "
                        f"--epochs N > {args.epochs} to train it longer)")
                return None
            run.write_json(vars(args), "args.json")          # with the --epochs, ... given now
        else:
            run = new_run(args, mode)
        for w in WARNINGS:
            run.log_quietly(w)
        if mode == "experiment" and args.experiment in thesis_runs.THESIS_EXPERIMENTS:
            return thesis_runs.thesis_experiment(args, run)
        if mode == "experiment":
            return experiment(args, run, device)
        if mode in ("neurogenesis", "dyno", "equinas"):
            return getattr(thesis_runs, mode + "_run")(args, run, device)
        if mode == "plasticity":
            return plasticity(args, run, device)
        if mode == "attack":
            return attack(args, run, device)
        if mode == "search":
            after = quick_retrain_estimate(args, device) if args.quick_retrain else 0.0
            if after:
                run.log(f"--quick: the search is followed by a retraining of its genotype, "
                        f"estimated at {fmt_eta(after)}")
            genotype = search(args, run, device, after=after)
            if genotype is not None and args.quick_retrain:
                retrain_after_quick_search(args, run, device, genotype)
            return genotype
        return train(args, run, device)
    except KeyboardInterrupt:
        msg = "interrupted"
        if run is not None:
            last = run.last_checkpoint()
            msg += (f"; continue with: python train.py --resume {run.path}" +
                    (f" (from {last})" if last else " (no checkpoint yet: it starts over)"))
            run.log_quietly(msg)
        print(msg, file=sys.stderr)
        raise SystemExit(130) from None
    except ValueError as e:                                    # bad genotype, rule, sizes ...
        if run is not None:
            run.log_quietly(f"error: {e}")
        raise SystemExit(f"error: {e}") from None
    except SystemExit as e:
        if run is not None and isinstance(e.code, str):
            run.log_quietly(e.code)                           # the terminal shows it once
        raise
    finally:
        if run is not None:
            run.close()


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


if __name__ == "__main__":
    main()
