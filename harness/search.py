"""The architecture search loop (DARTS's train_search.py) for BioNAS-DARTS and BioNAS-EG.

Per weight step on a batch of the weight part of the training set, alpha steps on batches of
the alpha part: DARTS's alternation (first or second order, darts.Architect), DARTS-PRIME's
schedules and regularizers (darts_prime.py), or EG-NAS's per-epoch exploration (egnas.py).
Every epoch: validation accuracy, the derived genotype, alpha heatmap, checkpoint; resumable.
"""
import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import darts
import darts_prime
import ops
import pc_darts
from fused import FusedNetwork
from harness.data import DATASETS, load_dataset, make_batches, place
from harness.plots import Redraw, plot_alphas, plot_cell, plot_history
from harness.run_dir import (Meter, all_average, all_gather, all_sum, autocast, broadcast_state,
                             check_model_finite, collectives, distributed, eta_after_epoch,
                             evaluate, fmt_eta, log_step, resume, rng_state)

SUPERNETS = {"darts": darts.Network, "pc-darts": pc_darts.PCNetwork,
             "eg-nas": pc_darts.EGNASNetwork}


def write_genotype(genotype, run, method):
    """genotype.json as darts.save_genotype writes it, plus the search method that found it."""
    run.write_json(dict(genotype._asdict(), search=method), "genotype.json")


def split_search_data(args):
    """The training set split into the weight part and the alpha part (--train_portion; by
    default 1/2, and 10/11 for the cs10 and fimt schedules, Maile's thesis Sec. 5.3.3)."""
    xtr, ytr, _, _ = load_dataset(args.dataset, args.data)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(xtr), generator=g)
    if args.subset:
        perm = perm[:args.subset]
    portion = args.train_portion if args.train_portion is not None else \
        darts_prime.Schedule(args.schedule).weight_share
    n = int(len(perm) * portion)
    if not 0 < n < len(perm):
        raise ValueError(f"--train_portion {portion:g} of {len(perm)} images leaves "
                         f"{'no weight' if n <= 0 else 'no alpha'} images; the search needs "
                         f"both parts (0 < --train_portion < 1)")
    return (xtr[perm[:n]], ytr[perm[:n]]), (xtr[perm[n:]], ytr[perm[n:]])


@functools.lru_cache(maxsize=None)
def _join(variants):
    """One class with the hooks of every variant (each a subclass of darts.Network overriding
    its own hooks; a hook two of them override, such as initialize_alphas, runs both through
    super())."""
    if len(variants) == 1:
        return variants[0]
    return type("+".join(v.__name__ for v in variants), variants, {})


def make_supernet(C, num_classes, layers, candidates, activation="softmax", partial_channels=1,
                  supernet=None, merge_identity_skips=False, fused=False, checkpoint_cells=False,
                  **kwargs):
    """The search's supernet: darts.Network, or the subclass joining the variants asked for --
    supernet "pc-darts" / "eg-nas" (pc_darts.py; default pc-darts when partial_channels > 1),
    activation "crb" (darts_prime.CRBNetwork), merge_identity_skips (darts.MergedSkipsNetwork),
    fused (fused.FusedNetwork), checkpoint_cells (darts.CheckpointedNetwork). kwargs: the rest
    of darts.Network's. model.config names every variant but checkpointing (a way to run, not
    a model), so make_supernet(**model.config) rebuilds the model of a checkpoint."""
    supernet = supernet or ("pc-darts" if partial_channels > 1 else "darts")
    if activation not in ("softmax", "crb"):
        raise ValueError(f"activation must be 'softmax' or 'crb', not {activation!r}")
    if supernet not in SUPERNETS or (supernet == "darts") != (partial_channels == 1):
        raise ValueError(f"supernet {supernet!r} with partial_channels {partial_channels}: "
                         f"choose darts (partial_channels 1) or pc-darts / eg-nas (> 1)")
    if fused and activation == "crb":
        raise ValueError("fused=True computes every rule variant of an operation together; "
                         "CRB prunes single candidates: use fused=False with CRB")
    variants = (([darts.CheckpointedNetwork] if checkpoint_cells else [])
                + ([darts.MergedSkipsNetwork] if merge_identity_skips else [])
                + ([darts_prime.CRBNetwork] if activation == "crb" else [])
                + ([FusedNetwork] if fused else []) + [SUPERNETS[supernet]])
    variants = [v for v in variants if v is not darts.Network] or [darts.Network]  # each is one
    if supernet != "darts":
        kwargs["partial_channels"] = partial_channels
    model = _join(tuple(variants))(C, num_classes, layers, candidates, **kwargs)
    model.config.update(activation=activation, partial_channels=partial_channels,
                        supernet=supernet, merge_identity_skips=merge_identity_skips, fused=fused)
    return model


def build_supernet(args, candidates):
    """make_supernet of the search flags (--partial_channels, --supernet, --crb,
    --merge_identity_skips, --fused, --checkpoint_cells) on the dataset's shape."""
    c_in, classes, mean, std, _, _ = DATASETS[args.dataset]
    return make_supernet(args.init_channels, classes, args.layers, candidates, steps=args.nodes,
                         multiplier=args.nodes, in_channels=c_in, base_rule=args.base_rule,
                         mean=mean, std=std, activation="crb" if args.crb else "softmax",
                         partial_channels=getattr(args, "partial_channels", 1) or 1,
                         supernet=getattr(args, "supernet", None),
                         merge_identity_skips=getattr(args, "merge_identity_skips", False),
                         fused=getattr(args, "fused", False),
                         checkpoint_cells=bool(getattr(args, "checkpoint_cells", False)),
                         stem_stride=getattr(args, "stem_stride", None) or 1)


def alpha_batches(alpha_b, epoch):
    """The alpha batches of an epoch, cycled when the alpha part is the smaller one; the order
    depends only on (seed, epoch, pass), so a resumed search sees the same batches."""
    if len(alpha_b) == 0:
        raise ValueError("the alpha part of the training set is empty")
    k = 0
    while True:
        alpha_b.epoch = epoch + 100003 * k
        yield from alpha_b
        k += 1


def weight_step(loss, params, optimizer, scaler, grad_clip, average=None, inspect=None):
    """One weight step of the search and retraining loops, the same decision on every rank:
    backward of the loss (scaled under --amp fp16); the gradients averaged over the ranks
    (`average`; None where DistributedDataParallel averaged them during backward); unscaled;
    `inspect()` sees the whole batch's raw gradients (the Fisher trace, the layer monitor);
    clipped; stepped. Averaging before unscaling gives every rank the same gradients, so an
    overflow on one rank is seen by all: they all skip the step (and lower the scale), or all
    take it. Clipping after averaging clips the whole batch's gradient."""
    scaler.scale(loss).backward()
    if average is not None:
        average([p.grad for p in params])
    scaler.unscale_(optimizer)
    if inspect is not None:
        inspect()
    nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def search(args, run, device, after=0.0):
    """BioNAS-DARTS search (DARTS train_search.py): per step one alpha step on an alpha-half
    batch, then one SGD step of the weights on a weight-half batch. `after`: the seconds
    estimated for what follows (the --quick retraining), for the run's ETA.

    Under torchrun every rank takes 1/world of each weight and alpha batch; the weight
    gradients are averaged before clipping (so DARTS-PRIME's Fisher trace is the whole batch's
    too), the architect averages every gradient it uses (darts.Architect `reduce`), EG-NAS
    splits its populations; the torch seed is the same on every rank, so brsf draws agree.
    Each rank normalizes its shard with its own BN statistics (DDP's default); rank 0
    evaluates, logs and writes."""
    torch.manual_seed(args.seed)
    rank, world = distributed(device)
    candidates = ops.search_space(args.rules.split(","), args.skip_rules.split(","),
                                  zero=args.search == "darts" and not args.crb)
    (xw, yw), (xa, ya) = split_search_data(args)
    train_b = make_batches(args, xw, yw, device, train=True, rank=rank, world=world)
    alpha_b = make_batches(args, xa, ya, device, train=True, seed_offset=1, rank=rank,
                           world=world,
                           batch_size=args.batch_size // 2 if args.search == "egnas" else None)
    eval_b = make_batches(args, xa, ya, device, train=False)
    model = place(build_supernet(args, candidates), args, device)
    optimizer = torch.optim.SGD(model.weights(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs,
                                                           eta_min=args.learning_rate_min)
    searcher = make_searcher(args, model, run, rank, world)
    start, history = resume(args, run, device, model, optimizer, scheduler, searcher,
                            kinds=("search",))
    run.log(f"search {args.search}: {len(candidates)} candidates, "
            f"{sum(p.numel() for p in model.weights()) / 1e6:.2f}M weights, "
            f"{len(xw)} weight / {len(xa)} alpha images, {args.epochs} epochs on {device}"
            + (f" x {world} processes (batch {args.batch_size // world} each)"
               if world > 1 else ""))
    weights = list(model.weights())
    sched = getattr(searcher, "schedule", None)                  # None: EG-NAS, every step
    amp, scaler = autocast(args, device)          # --amp: the weight steps; a no-op scaler else
    redraw = Redraw()                             # alphas.png: at most once a minute, and at the end
    for epoch in range(start, args.epochs):
        lr = scheduler.get_last_lr()[0]
        train_b.epoch = epoch
        alpha_it, alpha_before = alpha_batches(alpha_b, epoch), sched.alpha_steps if sched else 0
        meter = Meter(len(train_b), epoch, args.epochs, history, after)
        for step, (x, y) in enumerate(train_b):
            if sched is not None:
                searcher.progress = (epoch + step / len(train_b)) / args.epochs   # c of Eq. 20
            if sched is None or sched.before_weight_step():
                searcher.step(x, y, *next(alpha_it), lr, optimizer, epoch)
            optimizer.zero_grad(set_to_none=True)
            with amp():
                logits = model(x)
                loss = F.cross_entropy(logits, y)
            # backward; average over the ranks; unscale; Eq. 18's Fisher trace; clip; step
            weight_step(loss, weights, optimizer, scaler, args.grad_clip,
                        average=all_average if collectives() else None,
                        inspect=searcher.record if args.schedule == "fimt" else None)
            log_step(loss, logits, y, args, run, meter, epoch, step, lr)
            if sched is not None and sched.after_weight_step(searcher.fisher):
                searcher.step(x, y, *next(alpha_it), lr, optimizer, epoch)
        scheduler.step()
        valid_acc, valid_loss = evaluate(model, eval_b) if rank == 0 else (None, None)
        check_model_finite(model, run, f"epoch {epoch + 1}", args, valid_loss)   # every rank
        rng = rng_state(device)      # every rank's generators, after the evaluation (a collective)
        stopping = bool(args.stop_after) and args.stop_after <= epoch + 1 < args.epochs
        if rank > 0:                     # rank 0 evaluates, logs, checkpoints and plots
            if stopping:
                return None
            continue
        genotype = model.genotype()
        wn, wr = model.mixing_weights()
        prime = dict(alpha_steps=sched.alpha_steps - alpha_before, fimt_h=sched.h,
                     fimt_ewma=sched.ewma) if sched else {}
        history.append(dict(epoch=epoch, train_loss=meter.loss / meter.n,
                            train_acc=100 * meter.correct / meter.n, valid_acc=valid_acc,
                            valid_loss=valid_loss, genotype=genotype._asdict(),
                            weights_normal=wn.tolist(), weights_reduce=wr.tolist(),
                            param_free_share=darts_prime.parameter_free_share(genotype),
                            seconds=time.time() - meter.t0, **prime))
        run.log(f"epoch {epoch + 1}/{args.epochs} done: valid acc {valid_acc:.2f}% loss "
                f"{valid_loss:.4f} ({time.time() - meter.t0:.0f}s, run ETA "
                f"{fmt_eta(eta_after_epoch(epoch, args.epochs, history, after))}); "
                + (f"{prime['alpha_steps']} alpha steps for {len(train_b)} weight steps "
                   f"({args.schedule}); " if sched else "")
                + f"parameter-free ops in the normal cell "
                f"{100 * history[-1]['param_free_share']:.0f}%; genotype {genotype}")
        run.save(dict(kind="search", config=model.config, model=model.state_dict(),
                      optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                      searcher=searcher.state_dict(), rng=rng, epoch=epoch,
                      history=history, args=vars(args)), "checkpoint.pt")
        run.write_json(history, "history.json")
        write_genotype(genotype, run, args.search)
        if redraw.due(final=stopping or epoch + 1 == args.epochs):
            plot_alphas(wn, wr, candidates, args.nodes, run.file("alphas.png"),
                        f"{args.search} search, epoch {epoch + 1}", genotype=genotype)
        if stopping:
            run.log(f"stopping after epoch {epoch + 1} (--stop_after); continue with "
                    f"--resume {run.path}")
            return None
    genotype = model.genotype()
    if rank > 0:
        return genotype
    write_genotype(genotype, run, args.search)
    for cell in ("normal", "reduce"):
        plot_cell(genotype, cell, run.file(f"cell_{cell}.png"))
    plot_history(history, run.file("curves.png"),
                 ["train_acc", "valid_acc", "train_loss", "valid_loss"])
    run.log(f"search finished: genotype written to {run.file('genotype.json')}")
    return genotype


class DartsSearcher:
    """The alpha update of the DARTS search: darts.Architect, first or second order, with the
    DARTS-PRIME options (darts_prime.py): --schedule, --prox or --admm, --crb."""

    def __init__(self, args, model, world=1):
        self.model, self.progress, self.fisher = model, 0.0, None      # progress: set by search()
        self.schedule = darts_prime.Schedule(args.schedule)
        self.admm = darts_prime.ADMM(model) if args.admm else None
        reg = self.admm.penalty if args.admm else (
            (lambda: darts_prime.proximity(model, self.progress, args.prox)) if args.prox else None)
        self.architect = darts.Architect(model, args.momentum, args.weight_decay,
                                         args.arch_learning_rate,
                                         0.0 if args.crb else args.arch_weight_decay,
                                         args.unrolled, regularizer=reg,
                                         nesterov=bool(args.nesterov),
                                         reduce=all_average if collectives() else None)

    def record(self):
        """After the weights' backward, before clipping: Eq. 18's Fisher trace."""
        self.fisher = darts_prime.fisher_trace(self.model.weights())

    def step(self, x, y, xv, yv, lr, optimizer, epoch):
        self.architect.step(x, y, xv, yv, lr, optimizer)
        if self.admm is not None:
            self.admm.after_alpha_step()
        if isinstance(self.model, darts_prime.CRBNetwork):
            self.model.prune()

    def state_dict(self):
        return {"optimizer": self.architect.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "admm": self.admm.state_dict() if self.admm else None}

    def load_state_dict(self, state):
        self.architect.optimizer.load_state_dict(state["optimizer"])
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if state.get("admm") is not None:
            self.admm.load_state_dict(state["admm"])
        if isinstance(self.model, darts_prime.CRBNetwork):
            self.model.prune()                       # rebuild the edges' active lists


def make_searcher(args, model, run, rank=0, world=1):
    if args.search == "egnas":
        import egnas
        return egnas.EGNASSearcher(model, args.samples, args.population_size, args.zeta,
                                   args.eta, args.xi, args.warm_start_epochs, args.pop_momentum,
                                   seed=args.seed, log=run.log,
                                   as_released=getattr(args, "eg_as_released", False),
                                   generations=getattr(args, "cma_generations", 1) or 1,
                                   dist=(rank, world, all_sum, all_gather, broadcast_state)
                                   if collectives() else None)
    return DartsSearcher(args, model, world)
