"""train.py's --plasticity NAME: an experiment of the plasticity-rules paper
(plasticity_paper.py) on flattened MNIST / Fashion-MNIST, in a run directory."""
import time

import torch

from experiments import plasticity_paper
from harness.data import load_dataset

MNIST_LIKE = ("mnist", "fashion-mnist")          # the paper's networks read 784 pixels


def check_args(args, mode):
    """The flags of a --plasticity run, checked before its run directory is made."""
    if args.dataset not in MNIST_LIKE:
        raise SystemExit(f"error: --plasticity runs on mnist or fashion-mnist, not "
                         f"{args.dataset}")
    models = _models(args)
    unknown = [m for m in models or () if m not in plasticity_paper.TABLE2_MODELS]
    if unknown:
        raise SystemExit(f"error: unknown --plasticity_models {unknown}; choose from "
                         f"{'; '.join(plasticity_paper.TABLE2_MODELS)}")


def _models(args):
    """--plasticity_models as a list of Table 2 model names (None: the default list)."""
    names = getattr(args, "plasticity_models", None)
    if not names:
        return None
    return list(plasticity_paper.TABLE2_MODELS) if names == "all" else [m.strip() for m in names.split(";") if m.strip()]


def plasticity_run(args, run, device):
    """--plasticity NAME on flattened MNIST / Fashion-MNIST (A.2: 10k random training images)
    with the Sec. 4 attack; generalization also reads the other data set when it is there."""
    names = [args.dataset] + [d for d in MNIST_LIKE
                              if args.plasticity == "generalization" and d != args.dataset]
    data = {}
    for name in names:
        try:
            xtr, ytr, xte, yte = load_dataset(name, args.data)
        except SystemExit as e:
            if name == args.dataset:
                raise
            run.log(f"{name} left out of the generalization table: {e}")
            continue
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
        idx = idx[:args.subset or 10000]
        flat = lambda x: x.reshape(len(x), -1).float().div_(255).to(device)  # noqa: E731
        data[name] = (flat(xtr[idx]), ytr[idx].to(device), flat(xte), yte.to(device))
    steps = args.attack_steps or 20
    attack = plasticity_paper.plasticity_attack(steps, args.attack_alpha)
    run.log(f"plasticity experiment {args.plasticity} ({'quick' if args.quick else 'full'}, "
            f"seeds {args.seeds}; --seed {args.seed} draws the training images) on "
            f"{', '.join(data)}; attack targeted_l2, {steps} steps, alpha "
            f"{args.attack_alpha or '(eps/4) / median |grad margin|'}")
    t0 = time.time()
    try:
        out = plasticity_paper.run(args.plasticity, data, run.path, quick=args.quick,
                                   attack=attack, seeds=[int(s) for s in args.seeds.split(",")],
                                   log=run.log, models=_models(args),
                                   meta_steps=getattr(args, "meta_steps", None))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    with open(run.file(args.plasticity + ".md")) as f:
        run.log(f"{args.plasticity} done in {time.time() - t0:.0f}s: "
                f"{run.file(args.plasticity + '.md')}\n" + f.read())
    return out
