"""The flags of train.py: the parser, the resume rules, and the checks every run passes before
its run directory is made (the papers' values themselves are in presets.py; the checks of a
single kind of run sit beside its runner).

    build_parser()      every flag, spelled with underscores as in the DARTS scripts (each
                        also accepted with hyphens: --force-rule = --force_rule); -h shows
                        the real default of each, per mode where it depends on the mode
    apply_defaults()    fills unset flags with the paper's value for the mode (and --quick)
    check_args()        impossible values, sizes and combinations: one line each, at once
    resume_args()       --resume RUN: the run's saved flags, plus the few that may change
"""
import argparse
import json
import os

import darts
import neurogenesis
import rules
from attacks import ATTACKS, PRESETS
from harness.data import DATASETS
from harness.presets import (ARCH_LEARNING_RATE, BIONAS_EG_DROP_PATH, BIONAS_EXPERIMENTS,
                             BIONAS_SEEDED, DATASET_DEFAULTS, EGNAS_DEFAULTS,
                             EGNAS_QUICK_CHANNELS, PLASTICITY_EXPERIMENTS, QUICK, QUICK_PROCS,
                             QUICK_THESIS, RESNET_DEFAULTS, SEARCH_PRESETS, SEEDS, THESIS_DEFAULTS,
                             THESIS_EXPERIMENTS, TRAIN_DEFAULTS)

# the flags --resume accepts: they change how a run continues, not what it computes
LAUNCHED = "BIONAS_LAUNCHED_RANK"  # set in the processes that --procs starts
RESUME_FLAGS = ("epochs", "gpu", "gpus", "procs", "report_freq", "stop_after", "data")
MIN_LAYERS = 3               # reductions at 1/3 and 2/3 of the depth leave a normal cell


def default_procs(args, mode):
    """--procs when not given: QUICK_PROCS processes for a --quick --search or --train on a CPU
    with that many cores (two single-thread processes ran the quick retraining at 1.5x the
    images/s of one process with two threads), else 1. Under torchrun one process per rank."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)
    torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not os.environ.get(LAUNCHED)
    quick_cpu = getattr(args, "quick", False) and mode in ("search", "train") and \
        getattr(args, "gpu", None) is None and not torchrun
    return QUICK_PROCS if quick_cpu and cores >= QUICK_PROCS else 1


def apply_defaults(args, mode):
    """Fill every flag left unset with the paper's default for this mode and dataset
    (presets.py); --quick's values first."""
    if mode in THESIS_DEFAULTS:                         # --neurogenesis, --dyno, --equinas
        for preset in ([QUICK_THESIS[mode]] if args.quick else []) + [THESIS_DEFAULTS[mode]]:
            for k, v in preset.items():
                if getattr(args, k, None) is None:
                    setattr(args, k, v)
        return args
    if args.quick and mode == "search" and args.search == "egnas" and args.init_channels is None:
        args.init_channels = EGNAS_QUICK_CHANNELS
    if args.quick:
        preset = "experiment" if getattr(args, "experiment", None) and mode == "train" else mode
        for k, v in QUICK[preset].items():
            if getattr(args, k, None) is None or k == "dataset":
                setattr(args, k, v)
    if mode == "search" and getattr(args, "darts_prime", False):
        args.schedule, args.prox = "fimt", args.prox or 0.1       # --darts_prime
    base = dict(TRAIN_DEFAULTS)
    if mode == "search":
        base = dict(EGNAS_DEFAULTS if args.search == "egnas" else
                    SEARCH_PRESETS[getattr(args, "preset", None) or "authors"])
    if mode in ("train", "experiment") and getattr(args, "model", "darts") != "darts":
        base = dict(RESNET_DEFAULTS)
    if mode == "train" and genotype_search_method(args.genotype) == "egnas":
        base["drop_path_prob"] = BIONAS_EG_DROP_PATH
    if mode != "search" or getattr(args, "preset", None) == "table4":
        base.update(DATASET_DEFAULTS.get((mode, args.dataset), {}))
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if mode == "search" and getattr(args, "supernet", None) is None:
        args.supernet = "pc-darts" if (args.partial_channels or 1) > 1 else "darts"
    if mode == "search" and args.partial_channels is None:
        args.partial_channels = 1
    if mode == "search":
        if args.arch_learning_rate is None:
            args.arch_learning_rate = ARCH_LEARNING_RATE
        if args.fused is None:                               # --quick: 1.5x faster, same result
            args.fused = bool(args.quick and args.search == "darts" and not args.crb)
    return args


def genotype_search_method(path):
    """'darts' or 'egnas' as recorded in a genotype.json written by a search, else None."""
    try:
        with open(path) as f:
            return json.load(f).get("search")
    except (OSError, TypeError, ValueError, AttributeError):
        return None


def mode_of(args):
    """What a command runs: experiment, plasticity, attack, search or train (None: nothing)."""
    for mode in ("experiment", "plasticity", "attack", "search", "train", "neurogenesis",
                 "dyno", "equinas"):
        if getattr(args, mode, None):
            return mode
    return None


# ============================================================================ the parser

def _typed(kind, test, what):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return v
    parse.__name__ = what
    return parse


POS_INT = _typed(int, lambda v: v >= 1, "an integer >= 1")
NONNEG_INT = _typed(int, lambda v: v >= 0, "an integer >= 0")
NONNEG = _typed(float, lambda v: v >= 0, "a number >= 0")
PORTION = _typed(float, lambda v: 0 < v < 1, "a fraction strictly between 0 and 1")
PROB = _typed(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


class _Help(argparse.HelpFormatter):
    """Shows one spelling per flag and its default; flags whose default depends on the mode
    say so in their help text (built from the tables above) instead of "(default: None)"."""

    def _format_action_invocation(self, action):
        shown = [o for o in action.option_strings
                 if "-" not in o.removeprefix("--no-").removeprefix("--").removeprefix("-")]
        if not shown or action.nargs == 0:
            return ", ".join(shown or action.option_strings)
        return f"{shown[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_help_string(self, action):
        h = action.help or ""
        if "%(default)" in h or "default:" in h or action.default is None or \
                action.default is False or action.default == argparse.SUPPRESS:
            return h
        return h + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error and both spellings (_ and -) of every flag."""

    def error(self, message):
        raise SystemExit(f"error: {message} (python train.py -h lists the flags)")


def _flag(group, name, **kw):
    alias = "--" + name[2:].replace("_", "-")
    return group.add_argument(*([name, alias] if alias != name else [name]), **kw)


def _mode_default(key):
    """'default: search 256 (EG-NAS 8), retrain 96, ResNet 128; --quick: ...' for `key`."""
    fmt = lambda v: ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" \
        if isinstance(v, float) else str(v)                               # noqa: E731
    parts = []
    search = [f"{name} {fmt(d[key])}" for name, d in list(SEARCH_PRESETS.items()) +
              [("EG-NAS", EGNAS_DEFAULTS)] if key in d]
    if search:
        parts.append("search " + " / ".join(search))
    if key in TRAIN_DEFAULTS:
        parts.append(f"retrain {fmt(TRAIN_DEFAULTS[key])}")
    if key in RESNET_DEFAULTS and RESNET_DEFAULTS[key] != TRAIN_DEFAULTS.get(key):
        parts.append(f"ResNet {fmt(RESNET_DEFAULTS[key])}")
    for (mode, ds), d in DATASET_DEFAULTS.items():
        if key in d:
            parts.append(f"{ds} {'retrain' if mode == 'train' else 'search (table4)'} "
                         f"{fmt(d[key])}")
    quick = [f"{m.replace('train', 'retrain')} {fmt(QUICK[m][key])}"
             for m in ("search", "train", "experiment") if key in QUICK[m]]
    return "default: " + ", ".join(parts) + ("; --quick: " + ", ".join(quick) if quick else "")


def _quick_help():
    s, t, e = QUICK["search"], QUICK["train"], QUICK["experiment"]
    return (f"CPU-sized presets on Fashion-MNIST. --search darts --quick: a search on "
            f"{s['subset']:,} images (half weights, half alpha), {s['epochs']} epochs, "
            f"{s['init_channels']} channels, {s['layers']} cells of {s['nodes']} nodes, batch "
            f"{s['batch_size']}, then a retrain of the genotype on {t['subset']:,} images, "
            f"{t['epochs']} epochs, {t['init_channels']} channels, {t['layers']} layers, "
            f"both with a stride-{t['stem_stride']} stem (3-6 min on 2 cores); --experiment "
            f"--quick: every retraining on {e['subset']:,} images for {e['epochs']} epochs; "
            f"--plasticity --quick: the short version")


EXPERIMENT_HELP = dict(table1="ResNet-20/56 with each single rule (Table 1)",
                       **{"mixed-vs-single": "per seed, the genotype of the seed's search (or "
                          "--genotype) vs the same with every edge forced to one rule (Fig. 4)",
                          "search-vs-random": "per seed, the searched genotype vs its ops with "
                          "random rules vs a random genotype (arXiv Table 5, DARTS's control)",
                          "random-rules": "the genotype vs random rule assignments (--seeds; "
                          "needs --genotype)",
                          "robustness": "attacks on the genotype and on single-rule ResNets "
                          "(Table 2; needs --genotype)",
                          "collapse": "DARTS vs DARTS-PRIME searches, parameter-free share per "
                          "epoch (thesis Fig. 19)",
                          "north-generated": "thesis Sec. 6.3.2: every NORTH* strategy on generated "
                          "data", "north-pareto": "Sec. 6.3.3: accuracy vs size of every strategy "
                          "on Fashion-MNIST", "dyno-transfer": "Ch. 7: DYNO vs static transfer",
                          "dyno-phi": "Ch. 7: phi per layer of the transfer CNNs on source and targets",
                          "dyno-moving": "Ch. 7: DYNO on a CNN whose last convolution is rank-deficient",
                          "north-cost": "Table 9: seconds per mini-batch of each strategy",
                          "equinas-table3": "Ch. 4 Table 3: EquiNAS_E vs C1/C4/D4/RPP on rotated "
                          "Fashion-MNIST", "equinas-table4": "Table 4: EquiNAS_D vs the baselines",
                          "equinas-fig12": "Fig. 12: EquiNAS_D's z under each group's "
                          "augmentation", "equinas-cost": "a mixed layer's cost vs one group's"})


def build_parser():
    p = Parser(description="BioNAS: search, retrain, attack, experiments, plasticity. Every "
               "flag may also be spelled with hyphens (--force-rule = --force_rule).",
               formatter_class=_Help)
    m = p.add_argument_group("what to run")
    m.add_argument("--search", choices=["darts", "egnas"], help="run an architecture search")
    m.add_argument("--train", action="store_true", help="retrain a genotype (--genotype), or "
                   "a ResNet baseline (--model)")
    m.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last "
                   f"checkpoint; only --{', --'.join(RESUME_FLAGS)} may be given with it")
    m.add_argument("--attack", metavar="LIST", help="attacks to run on --checkpoint, from "
                   f"{','.join(ATTACKS)}; with --experiment robustness, the attacks it runs "
                   "(default: all but targeted_l2)")
    m.add_argument("--plasticity", choices=list(PLASTICITY_EXPERIMENTS),
                   help="an experiment of the plasticity-rules paper: table2 (Table 2), "
                   "generalization (Fig. 3), convergence (Fig. 2), robustness (Fig. 5)")
    m.add_argument("--neurogenesis", choices=list(neurogenesis.STRATEGIES) + ["static"],
                   metavar="STRATEGY", help="thesis ch. 6: grow an MLP on Fashion-MNIST with a "
                   f"strategy of Table 7 ({', '.join(neurogenesis.STRATEGIES)}) or 'static'")
    m.add_argument("--dyno", choices=["near", "far"], help="thesis ch. 7: transfer an MLP "
                   "pretrained on classes 0-4 to classes 5-9 (near) or 5-9 with permuted pixels "
                   "(far) by DYNO and by static fine-tuning")
    m.add_argument("--equinas", choices=["evolutionary", "differentiable"],
                   help="thesis ch. 4: EquiNAS_E or EquiNAS_D on rotated Fashion-MNIST or "
                   "--dataset rotmnist (--epochs: D's epochs, E's generations; --learning_rate, "
                   "--batch_size: of Psi; --sizes: the network and data knobs, thesis=1: Sec. 4.5)")
    m.add_argument("--experiment", choices=list(BIONAS_EXPERIMENTS) + list(THESIS_EXPERIMENTS),
                   help="a BioNAS analysis: " + "; ".join(f"{k}: {v}" for k, v in
                                                           EXPERIMENT_HELP.items()))
    m.add_argument("--seeds", help="the SEEDs of --experiment and --plasticity, comma-separated "
                   "(default: 1,2,3,4,5 for mixed-vs-single and search-vs-random, 1,2,3 for "
                   "the other BioNAS and the thesis experiments, 0,1,2,3,4 for --plasticity)")
    m.add_argument("--quick", action="store_true", help=_quick_help())
    d = p.add_argument_group("data and machine")
    d.add_argument("--dataset", choices=list(DATASETS),
                   help="default: cifar10; fashion-mnist with --quick and --plasticity")
    d.add_argument("--data", default="./data", help="dataset root (imagenet: the directory "
                   "holding train/<class>/*.JPEG and val/<class>/*.JPEG)")
    d.add_argument("--subset", type=POS_INT, help="use N training images (default: all; "
                   "--plasticity 10000; " + _mode_default("subset").split("; ")[1] + ")")
    _flag(d, "--augment", action=argparse.BooleanOptionalAction,
          help="random crop and flip of training images (" + _mode_default("augment") + ")")
    _flag(d, "--workers", type=NONNEG_INT, default=4,
          help="--dataset imagenet: processes decoding and augmenting images (0: in the "
          "training process)")
    _flag(d, "--crop_size", type=POS_INT, default=224,
          help="--dataset imagenet: the training crop and the validation centre crop (after "
          "resizing to 256/224 of it)")
    d.add_argument("--gpu", type=NONNEG_INT, help="CUDA device index (default: the CPU)")
    d.add_argument("--procs", type=POS_INT,
                   help="--search / --train on the CPU: data parallel over N processes, one "
                   "core each (harness/launch.py; as torchrun --nproc_per_node N; default 1; "
                   f"--quick on a CPU with >= {QUICK_PROCS} cores: {QUICK_PROCS})")
    d.add_argument("--gpus", metavar="D1,D2,...",
                   help="--experiment: run its sub-runs (searches and retrainings; a thesis "
                   "experiment's single runs) concurrently, one per listed device (CUDA indices; "
                   "'cpu' for a CPU slot), e.g. 0,1,2,3")
    d.add_argument("--amp", choices=["bf16", "fp16"],
                   help="mixed precision of the weight steps, fp16 with a GradScaler "
                        "(default: off, float32)")
    _flag(d, "--memory_format", choices=["channels_last", "contiguous"],
          default="channels_last", help="channels_last is faster on CPU and GPU")
    _flag(d, "--channels_last", dest="memory_format", action="store_const",
          const="channels_last", help="= --memory_format channels_last (the default)")
    d.add_argument("--save", default="runs", help="parent directory of run directories")
    _flag(d, "--run_name", help="name of the run directory (default: MODE-DATASET-DATE-TIME); "
          "must not exist yet")
    d.add_argument("--seed", type=int, default=2, help="random seed of data order, "
                   "initialization and rules")
    _flag(d, "--report_freq", type=POS_INT, help="log every N steps (" +
          _mode_default("report_freq") + ")")
    d.add_argument("--holdout", type=NONNEG_INT, metavar="N",
                   help="retraining: hold N training images out as a validation set, "
                   "evaluated every epoch (" + _mode_default("holdout") + ")")
    _flag(d, "--stop_after", type=POS_INT, metavar="N",
          help="stop after epoch N (resume later with --resume)")
    o = p.add_argument_group("optimization (unset: the paper's value for the mode)")
    _flag(o, "--batch_size", type=POS_INT, help=_mode_default("batch_size"))
    _flag(o, "--learning_rate", type=NONNEG, help=_mode_default("learning_rate"))
    _flag(o, "--learning_rate_min", type=NONNEG, help="the cosine schedule's final lr (" +
          _mode_default("learning_rate_min") + ")")
    o.add_argument("--momentum", type=PROB, default=0.9, help="SGD momentum of the weights")
    o.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help="Nesterov momentum (" + _mode_default("nesterov") + ")")
    _flag(o, "--weight_decay", type=NONNEG, help=_mode_default("weight_decay"))
    o.add_argument("--epochs", type=POS_INT, help=_mode_default("epochs"))
    _flag(o, "--grad_clip", type=NONNEG, default=5.0, help="clip the weights' gradient norm")
    _flag(o, "--lr_schedule", choices=["cosine", "linear", "multistep", "exponential"],
          help="of a retraining; multistep = x0.1 at 40/60/80%% of the epochs, exponential = "
          "x --lr_gamma every epoch (" + _mode_default("lr_schedule") + ")")
    _flag(o, "--lr_gamma", type=NONNEG, default=0.97,
          help="the exponential schedule's factor per epoch (DARTS's ImageNet)")
    _flag(o, "--label_smoothing", type=PROB, help=_mode_default("label_smoothing"))
    a = p.add_argument_group("architecture")
    a.add_argument("--model", default="darts", choices=["darts", "resnet20", "resnet56"],
                   help="retrain a --genotype (darts) or a CIFAR ResNet with --rule everywhere")
    a.add_argument("--rule", default="bp", help="the rule of every layer of a ResNet")
    _flag(a, "--force_rule", metavar="RULE",
          help="retrain the genotype with every ruled op trained by RULE")
    _flag(a, "--force_scope", choices=["network", "edges"], default="network",
          help="--force_rule converts the whole network (stem, preprocessing, classifier, "
          "auxiliary head: the authors' Fig. 4 runs) or only the searched edges")
    _flag(a, "--random_rules", type=int, metavar="SEED",
          help="retrain the genotype's ops with rules drawn at random (--rules, "
               "--skip_rules) from SEED")
    _flag(a, "--init_channels", type=POS_INT, help=_mode_default("init_channels"))
    _flag(a, "--stem_stride", type=int, choices=[1, 2],
          help="stride of the stem convolution: 1 (DARTS's CIFAR network; the default), 2 (the "
               "cells see half the resolution: 28x28 -> 14x14; --search --quick, search and "
               "retraining)")
    a.add_argument("--layers", type=POS_INT, help=f"cells, >= {MIN_LAYERS} (" +
                   _mode_default("layers") + ")")
    a.add_argument("--nodes", type=POS_INT, help="intermediate nodes per search cell (" +
                   _mode_default("nodes") + ")")
    a.add_argument("--rules", default="fa,usf,brsf,frsf", help="rules of the conv ops")
    _flag(a, "--skip_rules", default="usf,brsf,frsf", help="rules of skip_connect")
    _flag(a, "--base_rule", default="bp", help="rule of stem, preprocessing, classifier")
    a.add_argument("--genotype", help="genotype.json to retrain (written by a search)")
    a.add_argument("--auxiliary", action=argparse.BooleanOptionalAction,
                   help="DARTS's auxiliary head (" + _mode_default("auxiliary") + ")")
    _flag(a, "--auxiliary_weight", type=NONNEG, default=0.4, help="its loss weight")
    a.add_argument("--cutout", type=NONNEG_INT, help="cutout length, 0 = off (" +
                   _mode_default("cutout") + ")")
    _flag(a, "--drop_path_prob", type=PROB, help="final drop-path probability (" +
          _mode_default("drop_path_prob") + "; 0.3 for a BioNAS-EG genotype)")
    s = p.add_argument_group("search")
    _flag(s, "--train_portion", type=PORTION,
          help="weight share of the training set (default: 0.5; 10/11 for cs10 and fimt)")
    s.add_argument("--unrolled", action="store_true", help="second-order DARTS")
    s.add_argument("--preset", choices=list(SEARCH_PRESETS),
                   help="--search darts setup: authors = the BioNAS authors' released "
                   "train_search.py (DARTS's: 8 cells, batch 64, lr 0.025 cosine to 0.001, no "
                   "Nesterov); table4 = BioNAS Table 4 (5 cells, batch 256, lr 0.1 to 0, "
                   "Nesterov) (default: authors)")
    _flag(s, "--partial_channels", type=POS_INT, metavar="K",
          help="1/K of the channels through each mixed op (default: 1; EG-NAS 4)")
    s.add_argument("--supernet", choices=["darts", "pc-darts", "eg-nas"],
                   help="darts: all channels, BN after pools; pc-darts: partial channels, edge "
                   "normalization beta, BN after pools; eg-nas: partial channels, no beta, no "
                   "BN after pools (default: darts, pc-darts with --partial_channels > 1, "
                   "eg-nas with --search egnas)")
    _flag(s, "--merge_identity_skips", action="store_true",
          help="at stride 1, one skip_connect candidate instead of one identity per rule")
    _flag(s, "--fused", action=argparse.BooleanOptionalAction,
          help="the fused supernet: the rule variants of each operation as one convolution "
          "(same function and gradients, faster on the CPU; not with --crb) (default: on with "
          "--search darts --quick, off otherwise; --no-fused: off)")
    _flag(s, "--checkpoint_cells", action="store_true",
          help="recompute each supernet cell in backward (less memory, ~1.3x time)")
    _flag(s, "--arch_learning_rate", type=NONNEG,
          help="Adam lr of alpha (default: 3e-4, DARTS's; --quick: 3e-2)")
    _flag(s, "--arch_weight_decay", type=NONNEG, default=1e-3, help="weight decay of alpha")
    th = p.add_argument_group("neurogenesis and DYNO (Maile's thesis Ch. 6, 7)")
    th.add_argument("--widths", default="64,64", help="--neurogenesis: initial hidden widths")
    th.add_argument("--sizes", metavar="KEY=VALUE,...",
                    help="--experiment north-*/dyno-transfer/equinas-*, --equinas: overrides of the "
                    "experiment's size knobs between --quick and full, e.g. "
                    "n_train=6000,generations=5 (the knobs: SIZES in "
                    "experiments/thesis_neurogenesis.py and thesis_equinas.py)")
    _flag(th, "--max_width", type=POS_INT, default=784, help="--neurogenesis: the largest width "
          "a hidden layer may grow to")
    _flag(th, "--growth_schedule", choices=list(neurogenesis.SCHEDULES),
          help="--neurogenesis: a preset schedule (Linear, Batched) instead of the triggers, "
          "growing to --max_width (default: the strategy's triggers)")
    th.add_argument("--iterations", type=POS_INT,
                    help="--dyno: fine-tuning mini-batches per method (default: 1000, Sec. 7.3; "
                    "--quick 200)")
    pr = p.add_argument_group("DARTS-PRIME (Maile's thesis Ch. 5; with --search darts)")
    pr.add_argument("--schedule", default="alternate", choices=["alternate", "cs10", "fimt"],
                    help="alpha steps: one per weight step, one per 10, or FIMT (Algorithm 3)")
    pr.add_argument("--prox", type=NONNEG, nargs="?", const=0.1, metavar="RHO",
                    help="proximity regularization of alpha (Eq. 20); --prox alone: rho 0.1 "
                         "(default: off)")
    pr.add_argument("--admm", action="store_true", help="ADMM regularization (Eqs. 21-25)")
    pr.add_argument("--crb", action="store_true", help="clipped-ReLU-batchnorm activation, "
                    "no 'none' candidate, pruning at alpha <= 0")
    _flag(pr, "--darts_prime", action="store_true", help="= --schedule fimt --prox 0.1")
    e = p.add_argument_group("EG-NAS search (names as in the paper, defaults EG-NAS's)")
    _flag(e, "--warm_start_epochs", type=NONNEG_INT,
          help="weight-only epochs first (" + _mode_default("warm_start_epochs") + ")")
    e.add_argument("--samples", type=POS_INT, default=3, help="N: CMA-ES searches per "
                   "exploration")
    _flag(e, "--population_size", type=_typed(int, lambda v: v >= 2, "an integer >= 2"),
          default=50, help="CMA-ES population")
    e.add_argument("--zeta", type=float, default=1.0, help="weight of L_CE in the fitness")
    e.add_argument("--eta", type=float, default=0.4, help="weight of L_cos in the fitness")
    e.add_argument("--xi", type=float, default=0.1, help="step of alpha toward the best")
    _flag(e, "--pop_momentum", type=PROB, default=0.0, help="blend of the previous best")
    _flag(e, "--eg_as_released", action="store_true",
          help="the exploration as EG-NAS's released code runs it: sigma stays 1 (its epoch "
          "counter is never incremented), one shared centre, every CMA-ES run seeded 1 (the N "
          "runs are identical)")
    _flag(e, "--cma_generations", type=POS_INT, default=1, metavar="G",
          help="ask/tell generations per CMA-ES run: 1 as EG-NAS's code runs, more for the "
          "iterated updates BioNAS App. A.4.2 describes")
    k = p.add_argument_group("attacks")
    k.add_argument("--checkpoint", help="checkpoint.pt of a --train run to attack")
    _flag(k, "--attack_grad", default="both", choices=["exact", "feedback", "both"],
          help="input gradient the attacker sees: exact (through W), feedback (through the "
          "feedback matrices B, what plain autograd returns; the BioNAS paper's), or both")
    _flag(k, "--attack_preset", default="bionas", choices=list(PRESETS),
          help="attack settings: BioNAS's or the standard ones")
    _flag(k, "--attack_eps", type=NONNEG, help="override epsilon (default: the preset's)")
    _flag(k, "--attack_alpha", type=NONNEG, help="override the step (default: the preset's)")
    _flag(k, "--attack_steps", type=POS_INT, help="override the steps (default: the preset's)")
    _flag(k, "--attack_batches", type=POS_INT,
          help="attack only the first N test batches (default: all)")
    _flag(k, "--attack_sweep", action="store_true",
          help="also PGD accuracy against epsilon (8 values, robustness_eps.png)")
    q = p.add_argument_group("plasticity")
    _flag(q, "--plasticity_models", metavar="NAMES", help="--plasticity table2: the models to "
          "run, names of experiments/plasticity_paper.TABLE2_MODELS separated by ';', or 'all' "
          "(default: all but the 1,000-meta-step BrainNet rule)")
    _flag(q, "--meta_steps", type=POS_INT, help="--plasticity table2: meta-steps of every learned "
          "RNN rule (default: the protocol's, 100; BrainNet's README: 1000)")
    return p


def given_flags(argv):
    """{dest: value} of the flags written on the command line (not their defaults)."""
    p = build_parser()
    for action in p._actions:          # (set_defaults would put SUPPRESS into the namespace)
        action.default = argparse.SUPPRESS
    return vars(p.parse_args(argv))


# ============================================================================ checks

def check_rules_arg(text, flag):
    try:
        return [rules.check_rule(r.strip()) for r in text.split(",")]
    except ValueError as e:
        raise SystemExit(f"error: {flag}: {e}") from None


def check_args(args, mode):
    """Stop with one line on any impossible value or combination of a command (after
    apply_defaults); data-dependent checks are check_data's."""
    check_rules_arg(args.rules, "--rules")
    check_rules_arg(args.skip_rules, "--skip_rules")
    check_rules_arg(args.rule, "--rule")
    check_rules_arg(args.force_rule or "bp", "--force_rule")
    check_rules_arg(args.base_rule, "--base_rule")
    if getattr(args, "fused", False) and args.crb:
        raise SystemExit("error: --fused computes the rule variants of an operation together; "
                         "CRB prunes single candidates: drop --fused or --crb")
    if args.prox and args.admm:
        raise SystemExit("error: --prox and --admm are two alternative regularizers; pick one")
    if (args.schedule != "alternate" or args.prox or args.admm or args.crb) and \
            args.search == "egnas":
        raise SystemExit("error: --schedule/--prox/--admm/--crb/--darts_prime change the DARTS "
                         "alpha step; use them with --search darts")
    if args.seeds is None:
        args.seeds = SEEDS["plasticity"] if args.plasticity else \
            SEEDS["seeded"] if args.experiment in BIONAS_SEEDED else SEEDS["other"]
    try:
        [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --seeds {args.seeds!r}: give integers separated by commas, "
                         f"e.g. 1,2,3") from None
    if args.attack:
        names = [n.strip() for n in args.attack.split(",")]
        unknown = [n for n in names if n not in ATTACKS]
        if unknown:
            raise SystemExit(f"error: --attack: unknown attack(s) {', '.join(unknown)}; choose "
                             f"from {', '.join(ATTACKS)}")
    if args.sizes and args.experiment not in THESIS_EXPERIMENTS and not args.equinas:
        raise SystemExit("error: --sizes sets the size knobs of the thesis experiments "
                         f"({', '.join(THESIS_EXPERIMENTS)}) and of --equinas; drop it here")
    if args.dataset == "rotmnist" and not (args.equinas or str(args.experiment).startswith("equinas")):
        raise SystemExit("error: --dataset rotmnist (float images) is read by --equinas and "
                         "--experiment equinas-* only")
    if args.dataset == "imagenet" and mode not in ("train", "attack"):
        raise SystemExit("error: --dataset imagenet retrains a searched genotype (--train "
                         "--genotype PATH), as DARTS transfers its CIFAR cell; search on a small "
                         "dataset first")
    if mode == "train" and args.dataset == "imagenet" and (args.model != "darts" or args.cutout
                                                           or args.holdout):
        raise SystemExit("error: --dataset imagenet retrains a --genotype in DARTS's "
                         "NetworkImageNet: no --model (CIFAR ResNets), --cutout or --holdout "
                         "(those are for the in-memory datasets; validation is val/)")
    if mode in ("search", "train") and (mode == "search" or args.model == "darts"):
        if args.layers < MIN_LAYERS:
            raise SystemExit(f"error: --layers {args.layers}: a DARTS network needs at least "
                             f"{MIN_LAYERS} cells (reductions sit at 1/3 and 2/3 of the depth, "
                             f"so fewer leave no normal cell)")
    if mode == "search":
        if args.preset and args.search == "egnas":
            raise SystemExit("error: --preset picks a --search darts setup; --search egnas "
                             "uses EG-NAS's own (set single flags to change it)")
        if (args.supernet == "darts") != (args.partial_channels == 1):
            raise SystemExit(f"error: --supernet {args.supernet} with --partial_channels "
                             f"{args.partial_channels}: darts takes every channel (K = 1), "
                             f"pc-darts and eg-nas a part (K > 1)")
        if args.init_channels % args.partial_channels:
            raise SystemExit(f"error: --partial_channels {args.partial_channels} must divide "
                             f"--init_channels {args.init_channels}")
        if args.merge_identity_skips and args.search == "egnas":
            raise SystemExit("error: --merge_identity_skips works with --search darts (EG-NAS's "
                             "individuals set every candidate's weight)")
    if args.procs > 1:
        if mode not in ("search", "train") or args.gpu is not None:
            raise SystemExit(f"error: --procs {args.procs} splits a --search or --train over "
                             f"CPU cores; for GPUs use torchrun --nproc_per_node N ... --gpu 0")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not os.environ.get(LAUNCHED):
            raise SystemExit("error: --procs starts its own processes; under torchrun give "
                             "--nproc_per_node instead")
    if args.gpus is not None:
        devs = args.gpus.split(",")
        if mode != "experiment":
            raise SystemExit("error: --gpus spreads the sub-runs of an --experiment over "
                             "devices; a single run takes --gpu N (or torchrun for several)")
        if not all(d == "cpu" or d.isdigit() for d in devs):
            raise SystemExit(f"error: --gpus {args.gpus!r}: give CUDA indices or 'cpu' separated "
                             f"by commas, e.g. 0,1,2,3")
    if mode == "experiment" and args.experiment in BIONAS_SEEDED and args.genotype:
        if not os.path.isfile(args.genotype):
            raise SystemExit(f"error: --genotype {args.genotype}: no such file")
    if mode == "train" and args.model == "darts" or mode == "experiment" and \
            args.experiment in ("random-rules", "robustness"):
        if not args.genotype:
            raise SystemExit(f"error: {'--experiment ' + args.experiment if mode == 'experiment' else '--train'}"
                             f" needs --genotype PATH, the genotype.json of a search (e.g. of "
                             f"python train.py --search darts --quick)")
        if not os.path.isfile(args.genotype):
            raise SystemExit(f"error: --genotype {args.genotype}: "
                             + ("is a directory; give the genotype.json inside a search's run "
                                "directory" if os.path.isdir(args.genotype) else
                                "no such file"))
        try:
            darts.load_genotype(args.genotype)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None


def check_data(args, mode, xtr):
    """Checks that need the training set `xtr`: --subset within it, and a search split that
    leaves images in both the weight and the alpha part."""
    n = len(xtr)
    if args.subset is not None and args.subset > n:
        raise SystemExit(f"error: --subset {args.subset} exceeds the {n:,} training images of "
                         f"{args.dataset}")
    if mode == "train" and (getattr(args, "holdout", 0) or 0) >= (args.subset or n):
        raise SystemExit(f"error: --holdout {args.holdout} leaves no training images of the "
                         f"{args.subset or n:,}; hold out fewer (--holdout 0: none)")
    if mode == "search":
        n = args.subset or n
        portion = args.train_portion if args.train_portion is not None else \
            (10 / 11 if args.schedule in ("cs10", "fimt") else 0.5)
        w = int(n * portion)
        if w < 1 or n - w < 1:
            raise SystemExit(f"error: --train_portion {portion:g} of {n} images leaves "
                             f"{w} weight and {n - w} alpha images; both parts need at least "
                             f"one (use more images or a portion nearer 0.5)")


def resume_args(args, argv):
    """The Namespace of `--resume RUN [flags]`: RUN/args.json, with --epochs, --gpu,
    --report_freq, --stop_after and --data taken from the command line; any other flag that
    differs from the run's stops with a line naming it."""
    path = args.resume
    if not os.path.isfile(os.path.join(path, "args.json")):
        raise SystemExit(f"error: --resume {path}: no args.json there; give a run directory "
                         f"written by train.py")
    try:
        with open(os.path.join(path, "args.json")) as f:
            saved = json.load(f)
        assert isinstance(saved, dict)
    except (ValueError, AssertionError):
        raise SystemExit(f"error: {path}/args.json is not a JSON object of flags; this run "
                         f"directory cannot be resumed") from None
    given = {k: v for k, v in given_flags(argv).items() if k != "resume"}
    changed = [k for k, v in given.items() if k not in RESUME_FLAGS and saved.get(k) != v]
    if changed:
        flags = ", ".join(f"--{k} (the run has {saved.get(k)!r})" for k in changed)
        raise SystemExit(f"error: --resume continues {path} with the settings it started with; "
                         f"{flags} cannot change. Only --{', --'.join(RESUME_FLAGS)} may; "
                         f"start a new run to change the others")
    out = argparse.Namespace(**dict(vars(build_parser().parse_args([])), **saved))
    out.stop_after = None                     # a --stop_after of an earlier call is spent
    for k, v in given.items():
        setattr(out, k, v)
    out.resume = path
    if mode_of(out) in ("attack", "plasticity", "dyno"):
        raise SystemExit(f"error: {path} is an --{mode_of(out)} run, which has no checkpoint "
                         f"to resume; run it again")
    return out
