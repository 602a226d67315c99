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
import time

import torch

import bionas_experiments
import darts
import rules
from data import DATASETS, Batches, load_dataset
from plots import plot_curves
from retrain import build_eval_model, load_checkpoint_model, train
from search import search
from run_dir import Run, distributed, pick_device

# ============================================================================ defaults

SEARCH_DEFAULTS = dict(augment=True, batch_size=256, learning_rate=0.1, learning_rate_min=0.0,
                       nesterov=True,
                       weight_decay=3e-4, epochs=50, init_channels=16, layers=5, nodes=4,
                       report_freq=50)
TRAIN_DEFAULTS = dict(augment=True, batch_size=96, learning_rate=0.025, learning_rate_min=0.0,
                      nesterov=False,
                      weight_decay=3e-4, epochs=600, init_channels=36, layers=20, auxiliary=True,
                      cutout=16, drop_path_prob=0.2, label_smoothing=0.0, lr_schedule="cosine",
                      report_freq=50)
DATASET_DEFAULTS = {  # (mode, dataset): overrides (BioNAS Sec. 3.4.2 and App. A.1)
    ("train", "imagenet16-120"): dict(batch_size=1024, learning_rate=0.5, weight_decay=3e-5,
                                      epochs=250, init_channels=48, layers=14, cutout=0,
                                      drop_path_prob=0.0, label_smoothing=0.1,
                                      lr_schedule="linear"),
    ("search", "imagenet16-120"): dict(batch_size=512, learning_rate=0.5),
}
# ResNet baselines: Sanfiz & Akrout's Biotorch benchmark (BioNAS Sec. 3.4: "the same setup")
RESNET_DEFAULTS = dict(augment=True, batch_size=128, learning_rate=0.1, learning_rate_min=0.0,
                       nesterov=False, weight_decay=1e-4, epochs=250, auxiliary=False, cutout=0,
                       drop_path_prob=0.0, label_smoothing=0.0, lr_schedule="multistep",
                       report_freq=50)
EGNAS_DEFAULTS = dict(layers=8, warm_start_epochs=15)    # EG-NAS train_search.py
QUICK = {  # --quick: search then a short retrain on Fashion-MNIST, minutes on a 2-core CPU
    "search": dict(dataset="fashion-mnist", subset=1600, batch_size=32, learning_rate=0.05,
                   epochs=3, init_channels=4, layers=3, nodes=2, report_freq=10,
                   warm_start_epochs=1),
    "train": dict(dataset="fashion-mnist", subset=40000, batch_size=64, learning_rate=0.05,
                  epochs=5, init_channels=8, layers=4, auxiliary=False, cutout=0,
                  drop_path_prob=0.0, augment=False, report_freq=50),
    # --experiment --quick: every retraining of the experiment at this size
    "experiment": dict(dataset="fashion-mnist", subset=5000, batch_size=64, learning_rate=0.05,
                       epochs=2, init_channels=8, layers=4, auxiliary=False, cutout=0,
                       drop_path_prob=0.0, augment=False, lr_schedule="cosine", report_freq=40),
}


def apply_defaults(args, mode):
    """Fill every flag left unset with the paper's default for this mode and dataset."""
    if args.quick:
        preset = "experiment" if getattr(args, "experiment", None) and mode == "train" else mode
        for k, v in QUICK[preset].items():
            if getattr(args, k, None) is None or k == "dataset":
                setattr(args, k, v)
    if mode == "search" and getattr(args, "darts_prime", False):
        args.schedule, args.prox = "fimt", args.prox or 0.1       # --darts-prime
    base = dict(SEARCH_DEFAULTS if mode == "search" else TRAIN_DEFAULTS)
    if mode in ("train", "experiment") and getattr(args, "model", "darts") != "darts":
        base = dict(RESNET_DEFAULTS)
    if mode == "search" and args.search == "egnas":
        base.update(EGNAS_DEFAULTS)
    if mode == "train" and genotype_search_method(args.genotype) == "egnas":
        base["drop_path_prob"] = 0.3                      # BioNAS Sec. 3.4.1: 0.3 for BioNAS-EG
    base.update(DATASET_DEFAULTS.get((mode, args.dataset), {}))
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args


def genotype_search_method(path):
    """'darts' or 'egnas' as recorded in a genotype.json written by a search, else None."""
    try:
        with open(path) as f:
            return json.load(f).get("search")
    except (OSError, TypeError, ValueError, AttributeError):
        return None


# ============================================================================ attacks

def attack(args, run, device):
    """Robustness table (BioNAS Table 2 layout) of a trained network, exact and/or feedback
    gradients, plus accuracy against epsilon for PGD."""
    import attacks
    model, ckpt = load_checkpoint_model(args.checkpoint, device)
    saved = ckpt["args"]
    _, _, xte, yte = load_dataset(saved["dataset"], args.data or saved["data"])
    rank, world = distributed(device)            # under torchrun each rank attacks its share
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
    eps_list = [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1, 0.35]
    curves = {g: attacks.accuracy_vs_eps(model, batches, "pgd", eps_list, grad=g,
                                         max_batches=args.attack_batches,
                                         preset=args.attack_preset) for g in grads}
    curves = {g: [(e, r["acc"]) for e, r in zip(eps_list, mean_over_ranks(
        [dict(acc=a) for _, a in pts], world))] for g, pts in curves.items()}
    if run.main:
        plot_curves(curves, run.file("robustness_eps.png"), "epsilon (L-inf)",
                    "PGD robust accuracy (%)",
                    f"PGD-{attacks.PRESETS[args.attack_preset]['pgd']['steps']} on "
                    f"{os.path.basename(os.path.dirname(os.path.abspath(args.checkpoint)))}")
    run.log(f"attacks done in {time.time() - t0:.0f}s: {run.file('robustness.md')}")
    return rows


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
    """--plasticity NAME: an experiment of the plasticity-rules paper (plasticity_experiments.py)
    on flattened MNIST / Fashion-MNIST (A.2: 10k random training images) with the Sec. 4 attack."""
    import plasticity_experiments as PE
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
    run.log(f"plasticity experiment {args.plasticity} ({'quick' if args.quick else 'full'}) on "
            f"{', '.join(data)}; attack targeted_l2, {steps} steps, alpha "
            f"{args.attack_alpha or '(eps/4) / median |grad margin|'}")
    t0 = time.time()
    try:
        out = PE.run(args.plasticity, data, run.path, quick=args.quick, attack=attack,
                     seed=args.seed, log=run.log)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    run.log(f"{args.plasticity} done in {time.time() - t0:.0f}s: "
            f"{run.file(args.plasticity + '.md')}\n" + open(run.file(args.plasticity + ".md")).read())
    return out


def experiment(args, run, device):
    """--experiment NAME: a BioNAS analysis (bionas_experiments.py). Each retraining is a train.py
    run in RUN/LABEL: a finished one (result.json) is reused, an interrupted one resumes, so
    `--resume RUN` continues the experiment where it stopped."""
    import attacks
    if args.experiment not in ("table1", "collapse") and not args.genotype:
        raise SystemExit(f"error: --experiment {args.experiment} needs --genotype PATH, the "
                         f"genotype.json of a search (e.g. of python train.py --search darts --quick)")
    genotype = darts.load_genotype(args.genotype) if args.genotype else None
    probe = apply_defaults(argparse.Namespace(**vars(args)), "train")

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
        targs = argparse.Namespace(**dict(vars(args), **overrides))
        targs.train, targs.stop_after = True, None
        apply_defaults(targs, "train")
        targs.experiment, targs.resume = None, resume_dir   # `--resume RUN/LABEL`: this run
        sub.write_json(vars(targs), "args.json")
        acc = train(targs, sub, device, genotype if targs.model == "darts" else None)
        with open(sub.file("layers.json")) as f:
            layers = json.load(f)
        with open(sub.file("history.json")) as f:
            seconds = sum(h["seconds"] for h in json.load(f))
        cells = [r for n, r in zip(layers["names"], layers["rules"]) if ".ops." in n]  # edges
        run.log(f"{os.path.basename(sub.path)}: test accuracy {acc:.2f}% ({seconds:.0f}s)")
        return dict(test_acc=acc, layers=layers, seconds=seconds, rules=cells or layers["rules"],
                    params=sum(p.numel() for p in build_eval_model(targs, genotype).parameters()))

    def search_run(sub, resume_dir, overrides):
        """collapse: a DARTS search (--quick: the quick search for 15 epochs, or --epochs)."""
        targs = argparse.Namespace(**dict(vars(args), **overrides))
        targs.search, targs.train, targs.stop_after, targs.experiment = "darts", False, None, None
        if args.quick and args.epochs is None:
            targs.epochs = 15
        apply_defaults(targs, "search")
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
    out = bionas_experiments.run(args.experiment, train_fn, attack_fn, run.path, probe.dataset,
                                 [int(s) for s in args.seeds.split(",")], log=run.log,
                                 search_fn=search_fn)
    with open(run.file(args.experiment + ".md")) as f:
        run.log(f"{args.experiment} done in {time.time() - t0:.0f}s\n" + f.read())
    return out


# ============================================================================ command line

def build_parser():
    p = argparse.ArgumentParser(description="BioNAS: search, retrain, attack, plasticity.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("what to run")
    m.add_argument("--search", choices=["darts", "egnas"], help="run an architecture search")
    m.add_argument("--train", action="store_true", help="retrain a genotype (--genotype)")
    m.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")
    m.add_argument("--attack", metavar="LIST", help="attacks to run on --checkpoint, e.g. "
                   "fgsm,pgd,tpgd,apgd,onepixel (also targeted_l2); with --experiment "
                   "robustness, the attacks it runs (default all but targeted_l2)")
    m.add_argument("--plasticity", choices=["table2", "generalization", "convergence",
                                            "robustness"],
                   help="an experiment of the plasticity-rules paper (Table 2, Figs. 3, 2, 5)")
    m.add_argument("--experiment", choices=list(bionas_experiments.EXPERIMENTS),
                   help="a BioNAS analysis: table1 (ResNets), mixed-vs-single (needs "
                        "--genotype), random-rules (--genotype), robustness (--genotype)")
    m.add_argument("--seeds", default="1,2,3", help="random-rules: the SEEDs to draw")
    m.add_argument("--quick", action="store_true",
                   help="CPU-sized preset on Fashion-MNIST (a search is followed by a retrain)")
    d = p.add_argument_group("data and machine")
    d.add_argument("--dataset", choices=list(DATASETS),
                   help="cifar10; fashion-mnist with --plasticity")
    d.add_argument("--data", default="./data", help="dataset root")
    d.add_argument("--subset", type=int, default=None, help="use N training images")
    d.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and flip of training images (on)")
    d.add_argument("--gpu", type=int, default=None, help="CUDA device index (CPU if absent)")
    d.add_argument("--amp", choices=["bf16", "fp16"],
                   help="mixed precision of the weight steps (fp16 with a GradScaler)")
    d.add_argument("--memory_format", choices=["channels_last", "contiguous"],
                   default="channels_last", help="channels_last is faster on CPU and GPU")
    d.add_argument("--channels-last", dest="memory_format", action="store_const",
                   const="channels_last", help="= --memory_format channels_last (the default)")
    d.add_argument("--save", default="runs", help="parent directory of run directories")
    d.add_argument("--run_name", default=None)
    d.add_argument("--seed", type=int, default=2)
    d.add_argument("--report_freq", type=int, help="log every N steps (50)")
    d.add_argument("--stop_after", type=int, default=None,
                   help="stop after this many epochs (resume later with --resume)")
    o = p.add_argument_group("optimization (unset = the paper's value for the mode)")
    o.add_argument("--batch_size", type=int)
    o.add_argument("--learning_rate", type=float)
    o.add_argument("--learning_rate_min", type=float)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    o.add_argument("--weight_decay", type=float)
    o.add_argument("--epochs", type=int)
    o.add_argument("--grad_clip", type=float, default=5.0)
    o.add_argument("--lr_schedule", choices=["cosine", "linear", "multistep"])
    o.add_argument("--label_smoothing", type=float)
    a = p.add_argument_group("architecture")
    a.add_argument("--model", default="darts", choices=["darts", "resnet20", "resnet56"],
                   help="retrain a --genotype (darts) or a CIFAR ResNet with --rule everywhere")
    a.add_argument("--rule", default="bp", help="the rule of every layer of a ResNet")
    a.add_argument("--force-rule", dest="force_rule", metavar="RULE",
                   help="retrain the genotype with every ruled op trained by RULE")
    a.add_argument("--random-rules", dest="random_rules", type=int, metavar="SEED",
                   help="retrain the genotype's ops with rules drawn at random (--rules, "
                        "--skip_rules) from SEED")
    a.add_argument("--init_channels", type=int)
    a.add_argument("--layers", type=int)
    a.add_argument("--nodes", type=int, help="intermediate nodes per cell (4)")
    a.add_argument("--rules", default="fa,usf,brsf,frsf", help="rules of the conv ops")
    a.add_argument("--skip_rules", default="usf,brsf,frsf", help="rules of skip_connect")
    a.add_argument("--base_rule", default="bp", help="rule of stem, preprocessing, classifier")
    a.add_argument("--genotype", help="genotype.json to retrain")
    a.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=None)
    a.add_argument("--auxiliary_weight", type=float, default=0.4)
    a.add_argument("--cutout", type=int, help="cutout length (0 = off)")
    a.add_argument("--drop_path_prob", type=float)
    s = p.add_argument_group("search")
    s.add_argument("--train_portion", type=float,
                   help="weight share of the training set (0.5; 10/11 for cs10 and fimt)")
    s.add_argument("--unrolled", action="store_true", help="second-order DARTS")
    s.add_argument("--partial_channels", type=int, default=1, metavar="K",
                   help="PC-DARTS: 1/K of the channels through each mixed op, edge normalization")
    s.add_argument("--checkpoint_cells", action="store_true",
                   help="recompute each supernet cell in backward (less memory, ~1.3x time)")
    s.add_argument("--arch_learning_rate", type=float, default=3e-4)
    s.add_argument("--arch_weight_decay", type=float, default=1e-3)
    pr = p.add_argument_group("DARTS-PRIME (Maile's thesis Ch. 5; with --search darts)")
    pr.add_argument("--schedule", default="alternate", choices=["alternate", "cs10", "fimt"],
                    help="alpha steps: one per weight step, one per 10, or FIMT (Algorithm 3)")
    pr.add_argument("--prox", type=float, nargs="?", const=0.1, metavar="RHO",
                    help="proximity regularization of alpha (Eq. 20), rho 0.1")
    pr.add_argument("--admm", action="store_true", help="ADMM regularization (Eqs. 21-25)")
    pr.add_argument("--crb", action="store_true", help="clipped-ReLU-batchnorm activation, "
                    "no 'none' candidate, pruning at alpha <= 0")
    pr.add_argument("--darts-prime", dest="darts_prime", action="store_true",
                    help="= --schedule fimt --prox 0.1")
    e = p.add_argument_group("EG-NAS search (names as in the paper, defaults EG-NAS's)")
    e.add_argument("--warm_start_epochs", type=int, help="weight-only epochs first (15)")
    e.add_argument("--samples", type=int, default=3, help="N: CMA-ES searches per exploration")
    e.add_argument("--population_size", type=int, default=50, help="CMA-ES population")
    e.add_argument("--zeta", type=float, default=1.0, help="weight of L_CE in the fitness")
    e.add_argument("--eta", type=float, default=0.4, help="weight of L_cos in the fitness")
    e.add_argument("--xi", type=float, default=0.1, help="step of alpha toward the best")
    e.add_argument("--pop_momentum", type=float, default=0.0)
    k = p.add_argument_group("attacks")
    k.add_argument("--checkpoint", help="checkpoint.pt of a train.py run to attack")
    k.add_argument("--attack-grad", dest="attack_grad", default="both",
                   choices=["exact", "feedback", "both"],
                   help="input gradient the attacker sees (README: 'Which gradient')")
    k.add_argument("--attack-preset", dest="attack_preset", default="bionas",
                   choices=["bionas", "standard"])
    k.add_argument("--attack-eps", dest="attack_eps", type=float)
    k.add_argument("--attack-alpha", dest="attack_alpha", type=float)
    k.add_argument("--attack-steps", dest="attack_steps", type=int)
    k.add_argument("--attack-batches", dest="attack_batches", type=int,
                   help="attack only the first N test batches")
    return p


def check_rules_arg(text, flag):
    try:
        return [rules.check_rule(r.strip()) for r in text.split(",")]
    except ValueError as e:
        raise SystemExit(f"error: {flag}: {e}") from None


def new_run(args, mode):
    tag = mode if mode == "attack" else f"{mode}-{args.dataset}"
    tag = f"{mode}-{args.plasticity or args.experiment}" if mode in ("plasticity", "experiment") \
        else tag
    name = [args.run_name or time.strftime(f"{tag}-%Y%m%d-%H%M%S")]
    rank, world = distributed(pick_device(args.gpu))
    if world > 1:                                   # every rank writes into rank 0's directory
        import torch.distributed as dist
        if mode not in ("train", "attack"):
            raise SystemExit("error: under torchrun only --train (retraining, ResNet baselines) "
                             "and --attack run; run searches and experiments in one process")
        dist.broadcast_object_list(name, src=0)
    run = Run(os.path.join(args.save, name[0]), main=rank == 0)
    run.write_json(vars(args), "args.json")
    return run


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.resume and args.dataset is None:
        args.dataset = "fashion-mnist" if args.plasticity else "cifar10"
    if args.resume:
        path = args.resume
        if not os.path.exists(os.path.join(path, "args.json")):
            raise SystemExit(f"error: --resume {path}: no args.json there; give a run directory "
                             f"written by train.py")
        with open(os.path.join(path, "args.json")) as f:
            saved = json.load(f)
        gpu = args.gpu
        args = argparse.Namespace(**dict(vars(build_parser().parse_args([])), **saved))
        args.resume, args.gpu = path, gpu if gpu is not None else saved.get("gpu")
        if not os.path.exists(os.path.join(path, "checkpoint.pt")):
            args.resume = None                                 # crashed before epoch 1 ended
        run = Run(path, main=distributed(pick_device(args.gpu))[0] == 0)
        run.log(f"resuming {path}")
    elif args.experiment:
        run = new_run(args, "experiment")
    elif args.attack:
        args.data = args.data if args.data != "./data" else None
        run = new_run(args, "attack")
    elif args.plasticity:
        run = new_run(args, "plasticity")
        return plasticity(args, run, pick_device(args.gpu))
    elif not (args.search or args.train):
        build_parser().print_help()
        raise SystemExit("error: choose what to run: --search darts|egnas, --train, --attack, "
                         "--plasticity or --resume")
    else:
        args.quick_retrain = bool(args.search and args.quick)
        apply_defaults(args, "search" if args.search else "train")
        run = new_run(args, "search" if args.search else "train")
    if args.prox and args.admm:
        raise SystemExit("error: --prox and --admm are two alternative regularizers; pick one")
    if (args.schedule != "alternate" or args.prox or args.admm or args.crb) and \
            args.search == "egnas":
        raise SystemExit("error: --schedule/--prox/--admm/--crb/--darts-prime change the DARTS "
                         "alpha step; use them with --search darts")
    check_rules_arg(args.rules, "--rules")
    check_rules_arg(args.skip_rules, "--skip_rules")
    check_rules_arg(args.rule, "--rule")
    check_rules_arg(args.force_rule or "bp", "--force-rule")
    rules.check_rule(args.base_rule)
    device = pick_device(args.gpu)
    try:
        if args.experiment:
            return experiment(args, run, device)
        if args.attack and not args.resume:
            attack(args, run, device)
        elif args.search:
            genotype = search(args, run, device)
            if genotype is not None and args.quick_retrain:
                retrain_after_quick_search(args, run, device, genotype)
        else:
            train(args, run, device)
    except ValueError as e:                                    # bad genotype, rule, ...
        run.log(f"error: {e}")
        raise SystemExit(2) from None


def retrain_after_quick_search(args, run, device, genotype):
    """--quick: retrain the derived network briefly on the whole training set."""
    targs = argparse.Namespace(**{k: v for k, v in vars(args).items()})
    for k in list(SEARCH_DEFAULTS) + ["subset", "report_freq", "stop_after", "resume"]:
        setattr(targs, k, None)
    targs.search, targs.train = None, True
    apply_defaults(targs, "train")
    sub = Run(os.path.join(run.path, "retrain"))
    if os.path.exists(sub.file("checkpoint.pt")):
        targs.resume = sub.path
    sub.write_json(vars(targs), "args.json")
    t0 = time.time()
    acc = train(targs, sub, device, genotype)
    run.log(f"quick retrain: test accuracy {acc:.2f}% in {time.time() - t0:.0f}s "
            f"(run directory {sub.path})")


if __name__ == "__main__":
    main()
