"""train.py's runs of Maile's thesis systems (chapters 4, 6, 7), each in a run directory.

    --neurogenesis STRATEGY   an MLP grown by NORTH* or a baseline (ch. 6, Algorithm 4) on
                              Fashion-MNIST: widths per layer over time, accuracy, checkpoint
                              every epoch, --resume
    --dyno near|far           ch. 7: an MLP pretrained on Fashion-MNIST classes 0-4, then moved to
                              classes 5-9 (near) or 5-9 with permuted pixels (far) by DYNO and
                              by static fine-tuning, side by side
    --equinas evolutionary|differentiable
                              ch. 4: EquiNAS_E / EquiNAS_D on rotated Fashion-MNIST (or
                              --dataset rotmnist: the standard files), checkpoint
                              every generation / epoch, --resume
    --experiment north-* | dyno-* | equinas-*
                              the thesis's experiments (thesis_neurogenesis.py,
                              thesis_equinas.py), resumable: finished single runs are kept;
                              --gpus D1,D2,...: their single runs spread over the devices

Every run puts its networks and data on --gpu N (harness.run_dir.pick_device; the CPU without).

The systems themselves are neurogenesis.py, dyno.py and equinas.py; this file only checks the
flags (check_args, before the run directory is made), loads the data, writes the run directory
and calls them.
"""
import argparse
import os
import time

import torch

from harness.data import load_dataset
from harness.presets import THESIS_EXPERIMENTS
from harness.run_dir import Run, fmt_eta, pick_device, run_on_devices

MNIST_LIKE = ("mnist", "fashion-mnist")         # the thesis's MLPs read 28x28 grey images


def parse_sizes(text):
    """'n_train=6000,epochs_d=5,n_fs=2/4/8' -> {"n_train": 6000, "epochs_d": 5, "n_fs": [2, 4, 8]}
    (numbers as int or float, '/'-separated lists)."""
    def num(v):
        try:
            return int(v)
        except ValueError:
            return float(v)
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            if not sep or not key:
                raise ValueError
            out[key.strip()] = [num(v) for v in value.split("/")] if "/" in value else num(value)
        except ValueError:
            raise SystemExit(f"error: --sizes {text!r}: expected KEY=NUMBER[,KEY=NUMBER...] "
                             f"(lists as 2/4/8), got {item!r}") from None
    return out


def shaped(sizes, defaults):
    """--sizes values nested as deep as the knobs' defaults: n_fs=8 -> [8] (a list of one),
    cost=4/28/64 -> [[4, 28, 64]] (one configuration)."""
    def depth(v):
        return 1 + depth(v[0]) if isinstance(v, (list, tuple)) and v else 0
    out = {}
    for k, v in sizes.items():
        for _ in range(depth(defaults.get(k)) - depth(v)):
            v = [v]
        out[k] = v
    return out


def check_args(args, mode):
    """The flags of a thesis run or --experiment, checked before its run directory is made:
    --sizes knobs of the experiment's chapter, --widths within --max_width, the dataset."""
    if args.sizes and args.experiment in THESIS_EXPERIMENTS:
        sizes = parse_sizes(args.sizes)
        if THESIS_EXPERIMENTS[args.experiment][0] == "neurogenesis":
            from experiments.thesis_neurogenesis import SIZES
        elif THESIS_EXPERIMENTS[args.experiment][0] == "dyno":
            from experiments.thesis_dyno import SIZES
        else:
            from experiments.thesis_equinas import SIZES
        unknown = sorted(set(sizes) - set(SIZES[False]))
        if unknown:
            raise SystemExit(f"error: --sizes: unknown knob(s) {', '.join(unknown)} for "
                             f"{args.experiment}; choose from {', '.join(SIZES[False])}")
    if mode == "neurogenesis":
        try:
            widths = [int(w) for w in args.widths.split(",")]
        except ValueError:
            raise SystemExit(f"error: --widths {args.widths!r}: give integers separated by commas, "
                             f"e.g. 64,64") from None
        if not widths or min(widths) < 1 or max(widths) > args.max_width:
            raise SystemExit(f"error: --widths {args.widths}: every width must be between 1 and "
                             f"--max_width {args.max_width}")
    if mode == "equinas" and args.sizes:
        from experiments.thesis_equinas import SIZES
        unknown = sorted(set(parse_sizes(args.sizes)) - set(SIZES[False]))
        if unknown:
            raise SystemExit(f"error: --sizes: unknown knob(s) {', '.join(unknown)} for --equinas; "
                             f"choose from {', '.join(SIZES[False])}")
    if mode == "equinas" and args.dataset not in MNIST_LIKE + ("rotmnist",):
        raise SystemExit(f"error: --equinas runs on rotmnist, mnist or fashion-mnist, not {args.dataset}")
    if mode in ("neurogenesis", "dyno") and args.dataset not in MNIST_LIKE:
        raise SystemExit(f"error: --{mode} runs on mnist or fashion-mnist, not {args.dataset}")


def _flat(data):
    """(train_x, train_y, test_x, test_y) as flattened float [0, 1] images and labels."""
    from experiments import thesis_neurogenesis as NX
    return NX.as_flat(data)


def neurogenesis_run(args, run, device):
    """--neurogenesis STRATEGY: GrowableMLP(784, --widths, 10), grown by the strategy (or a
    --growth_schedule preset, or 'static') up to --max_width per layer; a checkpoint after
    every epoch (run_dir's atomic save), resumable."""
    import neurogenesis as NG
    from experiments import thesis_neurogenesis as NX
    xtr, ytr, xte, yte = _flat(load_dataset(args.dataset, args.data))
    if args.subset:
        idx = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))
        xtr, ytr = xtr[idx[:args.subset]], ytr[idx[:args.subset]]
    xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    widths = [int(w) for w in args.widths.split(",")]
    strategy = None if args.neurogenesis == "static" else args.neurogenesis
    state = None
    if args.resume and os.path.exists(run.file("checkpoint.pt")):
        state = torch.load(run.file("checkpoint.pt"), weights_only=False)["state"]
        run.log(f"resumed after epoch {state['epoch']}")
    torch.manual_seed(args.seed)
    model = NG.GrowableMLP(xtr.shape[1], widths, int(ytr.max()) + 1,
                           max_widths=args.max_width).to(device)
    run.log(f"neurogenesis {args.neurogenesis}{' ' + args.growth_schedule if args.growth_schedule else ''}"
            f": MLP {xtr.shape[1]}-{widths}-{int(ytr.max()) + 1} (max {args.max_width} per layer), "
            f"{len(xtr)} images, {args.epochs} epochs, batch {args.batch_size}, Adam "
            f"{args.learning_rate:g}")
    t0 = time.time()

    def on_epoch(epoch, st):
        run.save(dict(kind="neurogenesis", state=st, args=vars(args)), "checkpoint.pt")
        run.write_json(st["result"]["epochs"], "history.json")
        done, last = [e["seconds"] for e in st["result"]["epochs"]], st["result"]["epochs"][-1]
        run.log(f"epoch {epoch}/{args.epochs}: test {100 * last['test_accuracy']:.2f}%, widths "
                f"{last['widths']} ({last['seconds']:.0f}s), run ETA "
                f"{fmt_eta(sum(done) / len(done) * (args.epochs - epoch))}")
    stop = args.stop_after if args.stop_after and args.stop_after < args.epochs else None
    res = NX.train_growing(model, strategy, (xtr, ytr, xte, yte), epochs=stop or args.epochs,
                           batch_size=args.batch_size, lr=args.learning_rate,
                           schedule=args.growth_schedule, max_widths=args.max_width,
                           final_widths=[args.max_width] * len(widths) if args.growth_schedule
                           else None,
                           seed=args.seed, state=state, on_epoch=on_epoch)
    if stop:
        run.log(f"stopping after epoch {stop} (--stop_after); continue with --resume {run.path}")
        return None
    run.write_json({k: v for k, v in res.items() if k != "history"}, "result.json")
    NX.plot_growth(res["history"]["widths"], run.file("widths.png"),
                   f"{args.neurogenesis}: widths per hidden layer over training steps",
                   [(e["epoch"], 100 * e["test_accuracy"]) for e in res["epochs"]])
    run.log(f"finished in {time.time() - t0:.0f}s: test accuracy {100 * res['test_accuracy']:.2f}%, "
            f"widths {res['widths']} ({res['params']:,} parameters)")
    return res


def dyno_run(args, run, device):
    """--dyno near|far: pretrain the MLP on classes 0-4, then DYNO and static fine-tuning on the
    target for --iterations mini-batches each, from the same pretrained weights (Sec. 7.3)."""
    from experiments import thesis_neurogenesis as NX
    xtr, ytr, xte, yte = (t.to(device) for t in _flat(load_dataset(args.dataset, args.data)))
    src = [m for m in (ytr < 5, yte < 5)]
    source = (xtr[src[0]], ytr[src[0]], xte[src[1]], yte[src[1]])
    tgt = (xtr[~src[0]], ytr[~src[0]] - 5, xte[~src[1]], yte[~src[1]] - 5)
    if args.dyno == "far":                         # a fixed pixel permutation: a far shift
        perm = torch.randperm(xtr.shape[1], generator=torch.Generator().manual_seed(args.seed))
        perm = perm.to(device)
        tgt = (tgt[0][:, perm], tgt[1], tgt[2][:, perm], tgt[3])
    torch.manual_seed(args.seed)
    model = NX.pretrain(NX.TRANSFER_MODELS["mlp"](5).to(device), source, args.seed)
    pre = {k: v.clone() for k, v in model.state_dict().items()}
    run.log(f"pretrained on classes 0-4 ({len(source[0])} images): test "
            f"{100 * NX.accuracy(model, source[2], source[3]):.2f}%")
    rows = []
    for method in ("dyno", "static"):
        net = NX.TRANSFER_MODELS["mlp"](5).to(device)
        net.load_state_dict(pre)
        torch.manual_seed(args.seed)
        torch.nn.init.xavier_uniform_(net.head.weight)
        torch.nn.init.zeros_(net.head.bias)
        r = NX.transfer(net, tgt, method, args.iterations, batch_size=args.batch_size,
                        lr=args.learning_rate, seed=args.seed)
        rows.append(dict(method=method, target=args.dyno, test_acc=round(100 * r["test_accuracy"], 2),
                         mflops=round(r["flops"] / 1e6, 3), widths=r["widths"],
                         widths_before=r["widths_before"], grown=r["grown"], pruned=r["pruned"],
                         seconds=round(r["seconds"], 1)))
        run.log(f"{method}: test {rows[-1]['test_acc']}% on classes 5-9 ({args.dyno}), "
                f"{rows[-1]['mflops']} MFLOPs, widths {r['widths_before']} -> {r['widths']} "
                f"({rows[-1]['seconds']}s)")
        NX.plot_growth(r["widths_curve"], run.file(f"widths_{method}.png"),
                       f"{method} transfer ({args.dyno}): widths per layer")
    run.write_json(rows, "result.json")
    return rows


def equinas_run(args, run, device):
    """--equinas evolutionary|differentiable on rotated Fashion-MNIST (or --dataset rotmnist: the
    standard rotMNIST files, not rotated again, the authors' normalization) at thesis_equinas'
    sizes (quick or full, --sizes KEY=VALUE overrides, --sizes thesis=1: Sec. 4.5's scale), on
    `device`: EquiNAS_E checkpoints every generation, EquiNAS_D every epoch. --epochs: EquiNAS_D's
    epochs, EquiNAS_E's generations; --learning_rate: of Psi (SGD for E, Adam for D; Z keeps Adam
    0.01); --batch_size: both (unset: Sec. 4.5's values)."""
    import equinas as E
    from experiments import thesis_equinas as X
    sz = X.size_knobs(args.quick, parse_sizes(args.sizes) if args.sizes else None)
    rot = args.dataset == "rotmnist"
    d = X.on_device(X.prepare(load_dataset(args.dataset, args.data), sz["n_train"], sz["n_test"],
                              None if rot else (lambda x, s: X.rotate_images(x, s)),
                              pool=sz["pool_input"]), device)
    if rot:
        from harness.rotmnist import NORM
        d["mean"], d["std"] = NORM
    cfg = dict(fields=sz["fields"], layers=sz["layers"], kernel_size=sz["kernel_size"],
               hidden=sz["hidden"], mean=d["mean"], std=d["std"], device=device, log=run.log,
               calibrate=X.calibration(d["train"][0], sz["bn_images"]), seed=args.seed, state=None)
    cfg.update({k: v for k, v in (("lr", args.learning_rate), ("batch_size", args.batch_size))
                if v is not None})
    if args.resume and os.path.exists(run.file("checkpoint.pt")):
        cfg["state"] = torch.load(run.file("checkpoint.pt"), weights_only=False,
                                  map_location="cpu")["state"]
        run.log("resumed from the last checkpoint")
    save = lambda st: run.save(dict(kind="equinas", state=st, args=vars(args)),  # noqa: E731
                               "checkpoint.pt")
    evolutionary = args.equinas == "evolutionary"
    budget = args.epochs or sz["generations" if evolutionary else "epochs_d"]
    shown = {k: v for k, v in cfg.items() if k not in ("log", "state", "device", "calibrate")}
    run.log(f"EquiNAS ({args.equinas}, {'quick' if args.quick else 'full'}) on {device}: "
            f"{len(d['train'][0])} {'rotMNIST' if rot else 'rotated'} training images, "
            f"{len(d['valid'][0])} validation, {len(d['test'][0])} test; {budget} "
            f"{'generations' if evolutionary else 'epochs'}; {shown}, BatchNorm: "
            f"{'recalibrated on %d images' % sz['bn_images'] if sz['bn_images'] else 'running statistics'}")
    t0 = time.time()
    if evolutionary:
        st = E.search_evolutionary(*d["train"], *d["valid"], generations=budget,
                                   parent_size=sz["parent_size"], on_generation=save, **cfg)
        net, best = max(X.population(st, device), key=lambda p: p[1]["valid_acc"])
    else:
        net, st = E.search_differentiable(*d["train"], epochs=budget, valid=d["valid"],
                                          on_epoch=save, **cfg)
    history = st["history"]
    if sz["bn_images"]:
        X.recalibrate_bn(net, d["train"][0][:sz["bn_images"]])
    acc = E.accuracy(net, *d["test"])
    groups = net.groups()
    if args.equinas == "differentiable":             # mixed layers: the group of largest z
        groups = [E.GROUPS[max(range(len(z)), key=z.__getitem__)] for z in net.z()]
    out = dict(method=args.equinas, test_error=round(100 * (1 - acc), 2), groups=groups,
               z=net.z() if args.equinas == "differentiable" else None,
               params=net.num_params(), seconds=round(time.time() - t0))
    run.write_json(out, "result.json")
    run.write_json(history, "history.json")
    run.log(f"finished: test error {out['test_error']}% with groups {out['groups']}"
            + (" (largest z per layer)" if args.equinas == "differentiable" else "") + " "
            f"({out['params']:,} parameters, {out['seconds']}s)")
    return out


def thesis_experiment(args, run, device):
    """--experiment NAME of the thesis's systems, in the run directory, every network on
    `device`; a second call with the same run directory (--resume RUN) skips the single runs
    that finished. --gpus D1,D2,...: first one process per device trains the single runs
    shares() deals it, then this process writes the report (equinas-cost, a timing, is measured
    here, on `device`)."""
    module, name = THESIS_EXPERIMENTS[args.experiment]
    t0 = time.time()
    if args.gpus:
        devices = [None if d == "cpu" else int(d) for d in args.gpus.split(",")]
        if module == "neurogenesis":       # config.json written (or checked) before the processes
            drive(args, run, device, share=lambda group: False)
        run.log(f"--gpus {args.gpus}: the single runs of {args.experiment} dealt to "
                f"{len(devices)} processes, one per device")
        run_on_devices([(f"{args.experiment} share {i + 1}/{len(devices)}",
                         (vars(args), run.path, i, len(devices))) for i in range(len(devices))],
                       devices, thesis_job, run.log)
    rows = drive(args, run, device)
    with open(run.file(name + ".md")) as f:
        run.log(f"{args.experiment} done in {time.time() - t0:.0f}s\n" + f.read())
    return rows


def drive(args, run, device, share=None):
    """The experiment driver's run() (thesis_neurogenesis or thesis_equinas) in the run
    directory on `device`: every single run, or with share(group) -> bool only those it gives
    this process (and no report)."""
    module, name = THESIS_EXPERIMENTS[args.experiment]
    seeds = [int(s) for s in args.seeds.split(",")]
    data = None if name == "generated" else load_dataset(args.dataset or "fashion-mnist", args.data)
    if module == "neurogenesis":
        from experiments import thesis_neurogenesis as driver
    elif module == "dyno":
        from experiments import thesis_dyno as driver
    else:
        from experiments import thesis_equinas as driver
    sizes = shaped(parse_sizes(args.sizes), driver.SIZES[False]) if getattr(args, "sizes", None) \
        else None
    extra = {}
    if module == "equinas" and args.dataset == "rotmnist":       # rotated already, authors' norm
        from harness.rotmnist import NORM
        extra = dict(rotate=False, norm=NORM, data_name="rotMNIST")
    return driver.run(name, data, run.path, seeds=seeds, quick=args.quick, log=run.log,
                      sizes=sizes, device=device, share=share, **extra)


def shares(index, count):
    """share(group) of process `index` of `count`: the groups, in the order the driver meets
    them (the same in every process), dealt round-robin."""
    seen = {}

    def share(group):
        return seen.setdefault(group, len(seen)) % count == index
    share.count = count                      # how many processes share the run (for its ETA)
    return share


def thesis_job(args_dict, run_path, index, count, gpu):
    """Process `index` of --gpus's `count`: its share of the single runs on device `gpu`."""
    args = argparse.Namespace(**dict(args_dict, gpu=gpu))
    cpu_slots = args.gpus.split(",").count("cpu")
    if gpu is None and cpu_slots > 1:    # CPU slots share the cores instead of oversubscribing
        torch.set_num_threads(max(1, torch.get_num_threads() // cpu_slots))
    run = Run(run_path)                  # the parent holds the lock; log lines are appended
    drive(args, run, pick_device(gpu), share=shares(index, count))
    run.close()
