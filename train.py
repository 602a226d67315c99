"""BioNAS command line: search, retrain, attack, the papers' experiments, the thesis's runs.

    python train.py --search darts --gpu 0            # BioNAS-DARTS search on CIFAR-10
    python train.py --train --genotype runs/X/genotype.json
    python train.py --search darts --quick            # search + short retrain, Fashion-MNIST, CPU
    python train.py --resume runs/X                   # continue a run from its last checkpoint
    python train.py --plasticity table2 --quick       # plasticity-rules paper, Table 2

Flag names follow the original DARTS scripts (train_search.py, train.py). Every run writes a
run directory: log.txt, args.json, checkpoint.pt (each epoch, atomically), alpha per epoch,
genotype.json and plots. This file is the wiring: the flags (harness/options.py, the papers'
values in harness/presets.py) are checked, a run directory is made, and the mode's runner runs.
"""
import os
import sys
import time

from experiments import bionas_runs, plasticity_runs, thesis_runs
from harness import attack_runs, launch, quick
from harness.allocator import keep_freed_memory
from harness.data import image_folders, load_dataset
from harness.options import (LAUNCHED, apply_defaults, build_parser, check_args, check_data,
                             default_procs, mode_of, resume_args)
from harness.presets import THESIS_EXPERIMENTS
from harness.retrain import train
from harness.run_dir import WARNINGS, Run, collectives, distributed, load_checkpoint, pick_device

# mode -> runner(args, run, device); a thesis --experiment runs thesis_runs.thesis_experiment
RUNNERS = {
    "search": quick.search_run,                   # harness/search.py (+ --quick's retraining)
    "train": train,                               # harness/retrain.py
    "attack": attack_runs.attack,
    "experiment": bionas_runs.experiment,         # the BioNAS paper's analyses
    "plasticity": plasticity_runs.plasticity_run,
    "neurogenesis": thesis_runs.neurogenesis_run,
    "dyno": thesis_runs.dyno_run,
    "equinas": thesis_runs.equinas_run,
}
# mode -> check(args, mode) of the flags only that mode reads, beside its runner; it runs after
# options.check_args and, as it, before any run directory is made
CHECKS = {
    "attack": attack_runs.check_args,
    "experiment": thesis_runs.check_args,         # --sizes of a thesis experiment
    "plasticity": plasticity_runs.check_args,
    "neurogenesis": thesis_runs.check_args,
    "dyno": thesis_runs.check_args,
    "equinas": thesis_runs.check_args,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    keep_freed_memory()            # no page faults for each step's new activations (CPU)
    run = None
    try:
        args, mode = prepare(build_parser().parse_args(argv), argv)
        if args.procs > 1 and not os.environ.get(LAUNCHED):     # N ranks of this command
            code = launch.run_ranks(os.path.abspath(__file__), argv, args.procs)
            if code:
                raise SystemExit(code)
            return None
        device = pick_device(args.gpu)
        if args.resume:
            run = Run(args.resume, main=distributed(device)[0] == 0, lock=True)
            run.log(f"resuming {run.path}")
            if mode in ("search", "train") and resumed_state(args, mode, run) is None:
                run.log(f"{run.path} has finished all {args.epochs} epochs: nothing to do (give "
                        f"--epochs N > {args.epochs} to train it longer)")
                return leave_group(None)
            run.write_json(vars(args), "args.json")          # with the --epochs, ... given now
        else:
            run = new_run(args, mode)
        for w in WARNINGS:
            run.log_quietly(w)
        run_fn = RUNNERS[mode]
        if mode == "experiment" and args.experiment in THESIS_EXPERIMENTS:
            run_fn = thesis_runs.thesis_experiment
        return leave_group(run_fn(args, run, device))
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


def leave_group(out):
    """`out`, once this process has left its process group, if it has one: a rank that ends
    without destroy_process_group can abort at exit (gloo: 'terminate called without an active
    exception') while its group's threads are torn down."""
    if collectives():
        import torch.distributed as dist
        dist.destroy_process_group()
    return out


def prepare(args, argv):
    """(args, mode): the flags with defaults applied and every check passed -- before any run
    directory is made or touched."""
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
                args.experiment in THESIS_EXPERIMENTS else "cifar10"
        if mode == "attack":
            args.data = args.data if args.data != "./data" else None
        args.quick_retrain = bool(args.search and args.quick)
        if mode in ("search", "train", "neurogenesis", "dyno", "equinas"):
            apply_defaults(args, mode)
    if args.procs is None:
        args.procs = default_procs(args, mode)
    check_args(args, mode)
    if mode in CHECKS:
        CHECKS[mode](args, mode)
    if mode == "train" and args.dataset == "imagenet":      # the layout, and --subset in it
        check_data(args, mode, image_folders(args.data)[0])
    elif mode in ("search", "train") or (mode in ("plasticity", "neurogenesis") and args.subset):
        check_data(args, mode, load_dataset(args.dataset, args.data)[0])
    return args, mode


def new_run(args, mode):
    """A new run directory SAVE/NAME, locked; a --run_name that exists is refused (it would
    overwrite a run), an automatic name that exists gets a suffix."""
    tag = mode if mode == "attack" else f"{mode}-{args.dataset}"
    tag = f"{mode}-{args.plasticity or args.experiment}" if mode in ("plasticity", "experiment") \
        else tag
    tag = f"{mode}-{getattr(args, mode)}" if mode in ("neurogenesis", "dyno", "equinas") else tag
    name = [args.run_name or time.strftime(f"{tag}-%Y%m%d-%H%M%S")]
    device = pick_device(args.gpu)
    rank, world = distributed(device)
    if world > 1:                                   # every rank writes into rank 0's directory
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
    if collectives():                               # the name, pickled, from the process's device
        import torch.distributed as dist
        dist.broadcast_object_list(name, src=0, device=device)
    run = Run(os.path.join(args.save, name[0]), main=rank == 0, lock=True)
    run.write_json(vars(args), "args.json")
    return run


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
        raise SystemExit(f"error: --epochs {args.epochs} is fewer than the {done} epochs "
                         f"{run.path} has done")
    finished = done >= args.epochs and (
        os.path.exists(run.file("genotype.json")) if mode == "search" else
        os.path.exists(run.file("model.pt")))
    if finished and mode == "search" and args.quick_retrain:
        finished = os.path.exists(os.path.join(run.path, "retrain", "model.pt"))
    return None if finished else "continue"


if __name__ == "__main__":
    main()
