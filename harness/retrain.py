"""Retraining from scratch (DARTS's train.py): a searched genotype's network, or a CIFAR ResNet
with one learning rule (the BioNAS baselines), trained by SGD with the paper's schedule, with
per-epoch checkpoints, resume and the learning-dynamics monitor (gradient variance, alignment,
weights) of LayerMonitor. train.py's --train, --experiment and --quick call it.
"""
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

import darts
import resnet
import rules
from harness.data import (DATASETS, image_folders, imagenet_stream, load_dataset,
                          make_batches, place)
from harness.monitor import LayerMonitor, plot_layers
from harness.plots import Redraw, plot_history
from harness.run_dir import (Meter, all_sum, autocast, broadcast_state, check_model_finite,
                             distributed, eta_after_epoch, evaluate, fmt_eta, load_checkpoint,
                             log_step, resume, rng_state)
from harness.search import make_supernet, weight_step


def imagenet_streams(args, device, rank=0, world=1):
    """(training stream, validation stream) of the ImageFolder in --data (DARTS's
    train_imagenet.py): --workers processes decode and augment; under torchrun each rank
    streams its 1/world of every epoch's training images, batch / world images per step."""
    mf = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    if args.batch_size % world:
        raise SystemExit(f"error: --batch_size {args.batch_size} does not split over {world} "
                         f"processes; use a multiple of {world}")
    kw = dict(device=device, workers=args.workers, crop_size=args.crop_size, seed=args.seed,
              memory_format=mf)
    return (imagenet_stream(args.data, True, args.batch_size // world, augment=args.augment,
                            rank=rank, world=world, subset=args.subset, **kw),
            imagenet_stream(args.data, False, args.batch_size, **kw))


def build_eval_model(args, genotype):
    """The network to retrain: a CIFAR ResNet with --rule everywhere, or the genotype's network,
    its rules forced to one (--force_rule; --force_scope network, the authors' Fig. 4 runs,
    also converts the stem, preprocessing, classifier and auxiliary head; edges: only the
    searched edges) or drawn at random (--random_rules SEED)."""
    c_in, classes, mean, std, _, _ = DATASETS[args.dataset]
    if args.dataset == "imagenet":                    # as many classes as folders in train/
        classes = len(image_folders(args.data)[0].classes)
    if args.model != "darts":
        return resnet.ResNet(int(args.model[6:]), classes, args.rule, c_in, mean, std)
    base_rule = args.base_rule
    if args.force_rule:
        genotype = darts.force_rule(genotype, args.force_rule)
        if getattr(args, "force_scope", "network") == "network":
            base_rule = args.force_rule    # the authors' BioModule: stem, preprocessing, heads
    if args.random_rules is not None:
        genotype = darts.random_rules(genotype, args.random_rules, args.rules.split(","),
                                      args.skip_rules.split(","))
    if args.dataset == "imagenet":
        return darts.NetworkImageNet(args.init_channels, classes, args.layers, genotype,
                                     args.auxiliary, base_rule=base_rule, mean=mean, std=std)
    return darts.NetworkEval(args.init_channels, classes, args.layers, genotype, args.auxiliary,
                             in_channels=c_in, base_rule=base_rule, mean=mean, std=std,
                             stem_stride=getattr(args, "stem_stride", None) or 1)


def make_scheduler(args, optimizer):
    """cosine to --learning_rate_min, linear to 0, multistep (x0.1 at 40/60/80% of the
    epochs: Biotorch's 100/150/200 of 250), or exponential (x --lr_gamma every epoch: DARTS
    train_imagenet.py's StepLR(1, gamma 0.97))."""
    if args.lr_schedule == "exponential":
        return torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=args.lr_gamma)
    if args.lr_schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1 - e / args.epochs)
    if args.lr_schedule == "multistep":
        steps = sorted({max(1, round(f * args.epochs)) for f in (0.4, 0.6, 0.8)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, 0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs,
                                                      eta_min=args.learning_rate_min)


def train(args, run, device, genotype=None, after=0.0):
    """Retrain a genotype from scratch (DARTS train.py): SGD, cosine (or linear) decay,
    auxiliary head, cutout, drop-path rising linearly to --drop_path_prob, gradient clipping;
    --dataset imagenet: NetworkImageNet on streamed images (train_imagenet.py), top-5 too.
    `after`: seconds estimated for what follows, for the run's ETA."""
    torch.manual_seed(args.seed)
    if genotype is None and args.model == "darts":
        if not args.genotype:
            raise SystemExit("error: --train needs --genotype PATH (a genotype.json of a search)")
        genotype = darts.load_genotype(args.genotype)
    rank, world = distributed(device)
    holdout = getattr(args, "holdout", 0) or 0
    valid_b = None
    if args.dataset == "imagenet":                # streamed from disk, not held in memory
        train_b, test_b = imagenet_streams(args, device, rank, world)
        n_train = len(train_b.dataset)
    else:
        xtr, ytr, xte, yte = load_dataset(args.dataset, args.data)
        if args.subset:
            perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
            xtr, ytr = xtr[perm[:args.subset]], ytr[perm[:args.subset]]
        if holdout:                  # Biotorch: 5,000 training images held out for validation
            perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed + 7))
            xva, yva = xtr[perm[-holdout:]], ytr[perm[-holdout:]]
            xtr, ytr = xtr[perm[:-holdout]], ytr[perm[:-holdout]]
            valid_b = make_batches(args, xva, yva, device, train=False)
        train_b = make_batches(args, xtr, ytr, device, train=True, cutout=args.cutout, rank=rank,
                               world=world)
        # under torchrun each rank evaluates every world-th test image (counts summed)
        test_b = make_batches(args, xte[rank::world], yte[rank::world], device, train=False)
        n_train = len(xtr)
    model = place(build_eval_model(args, genotype), args, device)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    scheduler = make_scheduler(args, optimizer)
    monitor = LayerMonitor(model)
    start, history = resume(args, run, device, model, optimizer, scheduler, monitor=monitor,
                            kinds=("eval",) if args.model == "darts" else ("resnet",))
    what = args.model if args.model != "darts" else f"genotype {model.config['genotype']}"
    run.log(f"train: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
            f"rules {sorted(set(rules.layer_rules(model).values()))}, {n_train} images, "
            f"{args.epochs} epochs on {device}"
            + (f" x {world} processes (batch {args.batch_size // world} each)"
               if world > 1 else "") + f"; {what}")
    net = ddp(model, device) if world > 1 else model
    amp, scaler = autocast(args, device)          # --amp: the weight steps; a no-op scaler else
    params = list(model.parameters())
    redraw = Redraw()                             # the figures: at most once a minute, and at the end
    for epoch in range(start, args.epochs):
        lr = scheduler.get_last_lr()[0]
        model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
        train_b.epoch = epoch
        meter = Meter(len(train_b), epoch, args.epochs, history, after)
        model.train()
        for step, (x, y) in enumerate(train_b):
            optimizer.zero_grad(set_to_none=True)
            with amp():
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
                if model.logits_aux is not None:
                    loss = loss + args.auxiliary_weight * F.cross_entropy(
                        model.logits_aux, y, label_smoothing=args.label_smoothing)
            # backward (DistributedDataParallel averages over the ranks); unscale; the
            # monitor reads the raw gradients; clip; step
            weight_step(loss, params, optimizer, scaler, args.grad_clip,
                        inspect=monitor.step)
            log_step(loss, logits, y, args, run, meter, epoch, step, lr)
        scheduler.step()
        monitor.end_epoch(epoch)
        spread = replica_spread(model) if world > 1 else 0.0
        top5 = args.dataset == "imagenet"              # DARTS's ImageNet: top-1 and top-5
        shared = world > 1 and not top5                 # ImageNet: rank 0 evaluates it all
        if shared:
            broadcast_state(model)                      # rank 0's BatchNorm statistics
        test_acc, test_loss, *top5_acc = evaluate(model, test_b, top5=top5, reduce=all_sum) \
            if shared else evaluate(model, test_b, top5=top5) if rank == 0 else (None, None)
        check_model_finite(model, run, f"epoch {epoch + 1}", args, test_loss)   # every rank
        rng = rng_state(device)      # every rank's generators, after the evaluation (a collective)
        stopping = bool(args.stop_after) and args.stop_after <= epoch + 1 < args.epochs
        if rank > 0:                     # rank 0 evaluates, logs, checkpoints and plots
            if stopping:
                return None
            continue
        valid = dict(zip(("valid_acc", "valid_loss"), evaluate(model, valid_b))) if valid_b else {}
        history.append(dict(epoch=epoch, train_loss=meter.loss / meter.n,
                            train_acc=100 * meter.correct / meter.n, test_acc=test_acc,
                            test_loss=test_loss, **(dict(test_top5=top5_acc[0]) if top5 else {}),
                            seconds=time.time() - meter.t0, **valid,
                            **(dict(replica_max_diff=spread) if world > 1 else {})))
        run.log(f"epoch {epoch + 1}/{args.epochs} done: test acc {test_acc:.2f}% "
                + (f"(top-5 {top5_acc[0]:.2f}%) " if top5 else "") + f"loss "
                f"{test_loss:.4f} ({time.time() - meter.t0:.0f}s, run ETA "
                f"{fmt_eta(eta_after_epoch(epoch, args.epochs, history, after))})")
        run.save(dict(kind="resnet" if args.model != "darts" else "eval", config=model.config,
                      model=model.state_dict(), optimizer=optimizer.state_dict(),
                      scheduler=scheduler.state_dict(), rng=rng, epoch=epoch,
                      history=history, layers=monitor.history, args=vars(args)),
                 "checkpoint.pt")
        run.write_json(history, "history.json")
        layers = monitor.summary()
        run.write_json(layers, "layers.json")
        if redraw.due(final=stopping or epoch + 1 == args.epochs):
            plot_history(history, run.file("curves.png"), ["train_acc", "valid_acc", "test_acc",
                                                           "train_loss", "valid_loss", "test_loss"])
            plot_layers(layers, run.file("layers.png"),
                        f"{os.path.basename(run.path)}: epoch {epoch + 1}")
        if stopping:
            run.log(f"stopping after epoch {epoch + 1} (--stop_after); continue with "
                    f"--resume {run.path}")
            return None
    if rank > 0:
        return None
    run.save(model.state_dict(), "model.pt")
    best = max(history, key=lambda h: h["test_acc"])
    run.log(f"training finished: test accuracy {history[-1]['test_acc']:.2f}% after the last "
            f"epoch; best {best['test_acc']:.2f}% after epoch {best['epoch'] + 1} (selected on "
            f"the test set, as the BioNAS authors report)" + (
                "; at the best validation epoch {:.2f}%".format(
                    max(history, key=lambda h: h["valid_acc"])["test_acc"]) if holdout else ""))
    return history[-1]["test_acc"]


def ddp(model, device):
    """Under torchrun: DistributedDataParallel, gradients averaged over the ranks in backward,
    buffers (B, BatchNorm statistics) broadcast from rank 0 before every forward."""
    from torch.nn.parallel import DistributedDataParallel
    # a depthwise weight (C, 1, k, k) in channels_last has strides (k*k, 1, k, 1), its
    # gradient (k*k, k*k, k, 1): the same memory, which DDP reports as a stride mismatch
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def estimate_seconds(args, genotype, device, n_train, n_test, steps=8):
    """Seconds a retraining with `args` should take (for the ETA of a --quick run before its
    search has found the genotype): the median of `steps` timed SGD steps (after a warm-up)
    of `genotype`'s network, times the run's steps, plus evaluation at a third of a training
    step per test batch; under torchrun every rank times its share of the batch through
    DistributedDataParallel, as the run will. The steps take random images of the batch size
    from four buffers at different offsets: where a large tensor sits changes oneDNN's speed by
    up to 4x on the CPU (docs/rules.md), and a run's batches land everywhere, so the fastest
    step of one fixed batch (a lucky address) underestimates the run. The global RNG is
    untouched."""
    c_in, _, _, _, _, _ = DATASETS[args.dataset]
    size = 32 if c_in == 3 else 28
    world = distributed(device)[1]           # under torchrun / --procs: each rank's share
    batch = max(1, args.batch_size // world)
    n = batch * c_in * size * size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = place(build_eval_model(args, genotype), args, device).train()
        net = ddp(model, device) if world > 1 else model      # with its all-reduce
        opt = torch.optim.SGD(model.parameters(), 0.0)
        pool = torch.rand(n + 3 * 1040, device=device)
        xs = [pool[k * 1040:k * 1040 + n].view(batch, c_in, size, size)
              for k in range(4)]                  # 4 KiB + 64 B apart: other cache sets
        y = torch.zeros(batch, dtype=torch.long, device=device)
        times = []
        for i in range(steps + 1):
            t0 = time.time()
            opt.zero_grad()
            F.cross_entropy(net(xs[i % 4]), y).backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.time() - t0)
    per_step = statistics.median(times[1:])
    batches = -(-n_train // args.batch_size) + -(-n_test // args.batch_size) / 3
    return per_step * batches * args.epochs


def replica_spread(model):
    """Under torchrun: the largest difference of any weight between two ranks (0 when the
    replicas are in sync, as DistributedDataParallel must keep them)."""
    import torch.distributed as dist
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    lo, hi = flat.clone(), flat.clone()
    dist.all_reduce(lo, dist.ReduceOp.MIN)
    dist.all_reduce(hi, dist.ReduceOp.MAX)
    return float((hi - lo).max())


def load_checkpoint_model(path, device, kinds=None, hint=""):
    """Rebuild the network saved in a train.py checkpoint (search supernet or retrained net);
    `kinds` limits which (run_dir.load_checkpoint)."""
    if not path:
        raise SystemExit("error: give --checkpoint RUN_DIR/checkpoint.pt (of a --train run)")
    ckpt = load_checkpoint(path, device, kinds, hint)
    cfg = dict(ckpt["config"])
    if ckpt["kind"] == "search":
        model = make_supernet(**cfg)
    elif ckpt["kind"] == "resnet":
        model = resnet.ResNet(**cfg)
    else:
        cfg["genotype"] = darts.Genotype(**cfg["genotype"])
        model = (darts.NetworkImageNet if ckpt["args"].get("dataset") == "imagenet" else
                 darts.NetworkEval)(**cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise SystemExit(f"error: the weights in {path} do not match the network described by "
                         f"its config: {str(e).splitlines()[0]}") from None
    return model.to(device), ckpt
