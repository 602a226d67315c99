"""Run directories and the pieces of a training loop shared by search and retraining.

A run directory holds log.txt, args.json, checkpoint.pt (written to a temp file, then renamed,
so a crash never leaves a broken file) and metrics, and is locked while a process writes it;
`resume` restores weights, optimizers, schedule, searcher and RNG state from it. Also: the
device choice (--gpu N, CPU fallback), the log line of a weight step, a clear stop when a
loss, weight or alpha stops being finite, progress with an ETA for the whole run, evaluation.
"""
import contextlib
import csv
import json
import math
import os
import pathlib
import re
import sys
import time
import warnings

import torch
import torch.nn.functional as F

try:
    import fcntl                                          # run-directory lock (POSIX)
except ImportError:                                       # Windows: runs are not locked
    fcntl = None

WARNINGS = []        # device warnings of this process, printed once; train.py logs them


def pick_device(gpu):
    """cuda:N when it exists, else the CPU (with a message). Under torchrun (WORLD_SIZE > 1)
    with --gpu, each process takes cuda:LOCAL_RANK whatever N is (choose the GPUs with
    CUDA_VISIBLE_DEVICES; an N other than 0 is reported once as ignored). A CUDA device is made
    the process's current device at once, before any process group or collective exists, so
    that nothing of this process lands on cuda:0 by default."""
    if gpu is None:
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        local, n = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= n:
            raise SystemExit(f"error: torchrun started local rank {local} but this machine has "
                             f"{n} CUDA device(s); give --nproc_per_node {n} or fewer")
        if gpu != 0:
            _warn(f"warning: --gpu {gpu} is ignored under torchrun: each process uses "
                  f"cuda:LOCAL_RANK (this one cuda:{local}); choose the GPUs with "
                  f"CUDA_VISIBLE_DEVICES")
        return _own(torch.device(f"cuda:{local}"))
    if torch.cuda.is_available() and gpu < torch.cuda.device_count():
        return _own(torch.device(f"cuda:{gpu}"))
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    _warn(f"warning: --gpu {gpu} requested but this machine has {n} CUDA device(s); "
          f"running on the CPU")
    return torch.device("cpu")


def _warn(msg):
    if msg not in WARNINGS:                                # once per process
        WARNINGS.append(msg)
        print(msg, file=sys.stderr)


def _own(device):
    """`device` made this process's current CUDA device (where NCCL and anything placed on
    "cuda" without an index go); returns it."""
    torch.cuda.set_device(device)
    return device


def autocast(args, device):
    """(context, GradScaler) for --amp bf16|fp16: torch.autocast around the forward and the
    loss; fp16 also scales the loss. Without --amp fp16 the GradScaler is disabled, and a
    disabled GradScaler's scale, unscale_, step and update pass through (plain backward and
    optimizer.step)."""
    amp = getattr(args, "amp", None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    if not amp:
        return contextlib.nullcontext, scaler
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


AT_WORLD_1 = "BIONAS_COLLECTIVES_AT_WORLD_1"    # =1: collectives run in a single process too


def distributed(device):
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the process group is initialized
    once: NCCL for CUDA devices, gloo on the CPU. (0, 1) otherwise -- but with the environment
    variable BIONAS_COLLECTIVES_AT_WORLD_1=1 a one-process group is initialized as well, so
    that every collective a distributed run makes also runs in one process (on one GPU, NCCL
    then rejects a tensor that is not on the GPU, as it would under torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and os.environ.get(AT_WORLD_1) != "1":
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)             # the process's own GPU, before the group
        if world > 1:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def collectives():
    """Whether this process's collectives run: under torchrun, or in one process with
    BIONAS_COLLECTIVES_AT_WORLD_1=1 (a process group is initialized)."""
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def all_average(tensors):
    """Under torchrun: each tensor replaced in place by its mean over the ranks (gloo / NCCL
    all-reduce; the mean of equal shards' gradients is the whole batch's); returns them. One
    all-reduce per dtype over the tensors laid end to end, not one per tensor (the quick
    search's supernet has 208 weight tensors; a small collective's cost is mostly latency)."""
    import torch.distributed as dist
    if collectives():                                 # dtypes in the same order on every rank
        for dtype in sorted({t.dtype for t in tensors if t is not None}, key=str):
            group = [t for t in tensors if t is not None and t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat)
            flat.div_(dist.get_world_size())
            for t, v in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(v.view(t.shape))
    return tensors


def all_sum(tensor):
    """Under torchrun: the tensor summed over the ranks, in place (a gather of entries that each
    rank fills in its own places, zeros elsewhere); returns it."""
    import torch.distributed as dist
    if collectives():
        dist.all_reduce(tensor)
    return tensor


def all_gather(x):
    """Under torchrun: the ranks' equal-sized tensors concatenated in rank order (dim 0)."""
    import torch.distributed as dist
    if not collectives():
        return x
    parts = [torch.empty(x.shape, dtype=x.dtype, device=x.device)
             for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def broadcast_state(model, src=0):
    """Under torchrun: rank `src`'s buffers (BN statistics, feedback matrices) on every rank."""
    import torch.distributed as dist
    if collectives():
        for b in model.buffers():
            dist.broadcast(b, src)


def agree(message, device):
    """Under torchrun: the same decision on every rank -- None if no rank has a message, else
    the message of the first rank (in rank order) that has one, on every rank. `device`: the
    process's device, where the collectives' tensors go. Without collectives: `message`."""
    if not collectives():
        return message
    import torch.distributed as dist
    world = dist.get_world_size()
    first = torch.tensor([world if message is None else dist.get_rank()], device=device)
    dist.all_reduce(first, dist.ReduceOp.MIN)
    src = int(first.item())
    if src == world:
        return None
    box = [message]
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def run_on_devices(jobs, devices, work, log=print, poll=0.2):
    """work(*payload, device) for every (name, payload) of `jobs`, each in a spawned process,
    at most one at a time on each of `devices` (a device may be listed twice to run two jobs
    on it), in order; returns {name: device} when all have finished, or stops with a one-line
    error naming the jobs that failed (their sub-runs keep their checkpoints: rerun to resume).
    A SIGTERM, Ctrl-C or error in this process stops the jobs still running (no orphan keeps
    writing into the run)."""
    import multiprocessing
    import signal
    import threading
    ctx = multiprocessing.get_context("spawn")
    pending, running, placed, failed = list(jobs), {}, {}, []

    def terminated(signum, frame):                  # a scheduler's SIGTERM: the finally below stops the jobs
        raise SystemExit(f"error: stopped by signal {signum}; rerun with --resume to continue")
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        while pending or running:
            for slot, dev in enumerate(devices):
                if slot not in running and pending:
                    name, payload = pending.pop(0)
                    p = ctx.Process(target=work, args=tuple(payload) + (dev,), daemon=False)
                    p.start()
                    running[slot], placed[name] = (p, name), dev
                    log(f"{name}: started on {'cpu' if dev is None else f'cuda:{dev}'}")
            for slot, (p, name) in list(running.items()):
                if not p.is_alive():
                    p.join()
                    del running[slot]
                    if p.exitcode:
                        failed.append(name)
            time.sleep(poll)
    finally:
        for p, _ in running.values():               # empty unless interrupted
            p.terminate()
            p.join(10)
            if p.is_alive():
                p.kill()
        if main:
            signal.signal(signal.SIGTERM, before)
    if failed:
        raise SystemExit(f"error: {len(failed)} sub-run(s) failed: {', '.join(failed)}; see their "
                         f"log lines above, then rerun with --resume to continue")
    return placed


class Run:
    """A run directory: log.txt, args.json, checkpoint.pt (atomic), metrics.json. With
    main=False (ranks other than 0 under torchrun) nothing is printed or written. lock=True
    takes RUN/.lock for the life of the process (released by the OS even after SIGKILL): a
    second process writing the same run stops with an error instead of corrupting it."""

    def __init__(self, path, main=True, lock=False):
        self.path, self.main, self._lock = path, main, None
        if main:
            os.makedirs(path, exist_ok=True)
            if lock:
                self._take_lock()
            self.log_file = open(os.path.join(path, "log.txt"), "a")

    def _take_lock(self):
        if fcntl is None:
            return
        f = open(os.path.join(self.path, ".lock"), "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise SystemExit(f"error: {self.path} is in use by another train.py process (pid "
                             f"{pid}); wait for it to end (or stop it) before resuming this "
                             f"run") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f                                    # held until the process ends

    def close(self):
        """Release the lock and the log (also done by the OS when the process ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if self.main and not self.log_file.closed:
            self.log_file.close()

    def log(self, msg):
        if not self.main:
            return
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def log_quietly(self, msg):
        """To log.txt only (an error the terminal already shows once)."""
        if self.main:
            self.log_file.write(time.strftime("%H:%M:%S ") + msg + "\n")
            self.log_file.flush()

    def last_checkpoint(self):
        """'RUN/checkpoint.pt (after epoch E)' if the run has written one, else None."""
        path = self.file("checkpoint.pt")
        if not os.path.exists(path):
            return None
        try:
            with open(self.file("history.json")) as f:
                return f"{path} (after epoch {len(json.load(f))})"
        except (OSError, ValueError):
            return path

    def file(self, name):
        return os.path.join(self.path, name)

    def save(self, obj, name):
        """torch.save to a temp file, then rename: a crash never leaves a broken file."""
        if not self.main:
            return
        tmp = self.file(name + ".tmp")
        torch.save(obj, tmp)
        os.replace(tmp, self.file(name))

    def write_json(self, obj, name):
        if not self.main:
            return
        tmp = self.file(name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, self.file(name))


def rng_state(device=None):
    """The generators' states for a checkpoint: the CPU generator's ("torch") and every CUDA
    device's as this process sees them ("cuda"). Under torchrun also each rank's own ("ranks",
    in rank order: its CPU generator and, on a GPU, the generator of its `device`), gathered
    from every rank -- a collective, so every rank calls it at the same point -- because the
    ranks' generators must each continue where they stopped for their brsf and drop-path
    draws to keep agreeing after a resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if collectives():
        device = torch.device(device or "cpu")
        own = all_gather(state["torch"].to(device)[None]).cpu()           # (world, bytes)
        state["ranks"] = [{"torch": t.clone()} for t in own]
        if device.type == "cuda":
            own = all_gather(torch.cuda.get_rng_state(device).to(device)[None]).cpu()
            for r, t in enumerate(own):
                state["ranks"][r]["cuda"] = t.clone()
    return state


def set_rng_state(state, device=None):
    """Restore rng_state()'s generators (loaded onto any device; generator states are set from
    CPU tensors). Under torchrun each rank takes its own states when the checkpoint holds them;
    a checkpoint of one process (or of fewer ranks) gives every rank without its own the
    saving process's states."""
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    ranks = state.get("ranks") or []
    if rank < len(ranks):
        torch.set_rng_state(ranks[rank]["torch"].cpu())
        device = torch.device(device or "cpu")
        if "cuda" in ranks[rank] and device.type == "cuda":
            torch.cuda.set_rng_state(ranks[rank]["cuda"].cpu(), device)


def fmt_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def eta_after_epoch(epoch, epochs, history, after=0.0):
    """Seconds the run still needs once epoch `epoch` (0-based) has ended: the epochs left at
    the mean pace of those in `history`, plus `after`."""
    done = [h["seconds"] for h in history if "seconds" in h]
    return (sum(done) / max(len(done), 1)) * (epochs - epoch - 1) + after


class Meter:
    """Running loss/accuracy, images/s and the ETA of the whole run for the log line: the steps
    left in this epoch at this epoch's pace, the epochs left at the pace of the finished ones
    (their evaluation included; `history` holds their "seconds"), and `after` seconds
    estimated for what follows this phase (the retraining after a --quick search)."""

    def __init__(self, total_steps, epoch=0, epochs=1, history=(), after=0.0):
        self.total, self.t0, self.n, self.loss, self.correct, self.steps = total_steps, \
            time.time(), 0, 0.0, 0, 0
        self.epoch, self.epochs, self.history, self.after = epoch, epochs, history, after

    def update(self, loss, logits, y):
        self.n += len(y)
        self.loss += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum().item()
        self.steps += 1

    def eta(self):
        """Seconds until the whole run ends."""
        per_step = (time.time() - self.t0) / max(self.steps, 1)
        left = per_step * (self.total - self.steps)
        if any("seconds" in h for h in self.history):
            return left + eta_after_epoch(self.epoch, self.epochs, self.history, self.after)
        return left + per_step * self.total * (self.epochs - self.epoch - 1) + self.after

    def line(self):
        dt = time.time() - self.t0
        return (f"loss {self.loss / max(self.n, 1):.4f} acc {100 * self.correct / max(self.n, 1):.2f}% "
                f"{self.n / max(dt, 1e-9):.0f} img/s, run ETA {fmt_eta(self.eta())}")


def diverged_line(run, what, args):
    """The one line a run whose loss, weights or alpha stopped being finite stops with: what,
    the learning rates to lower, and the last good checkpoint if any."""
    last = run.last_checkpoint()
    return (f"error: the run diverged: {what}. Lower --learning_rate (it is "
            f"{args.learning_rate:g}" + (f", --arch_learning_rate {args.arch_learning_rate:g}"
                                         if getattr(args, "search", None) else "")
            + ") or keep --grad_clip on, and start a new run; "
            + (f"the last good checkpoint is {last}" if last else
               "no checkpoint was written (it diverged in its first epoch)"))


def _stop_together(line, device):
    """Stop with `line` -- under torchrun on every rank, with the first rank's line, when any
    rank has one (so no rank waits forever in a collective for a rank that stopped)."""
    line = agree(line, device)
    if line is not None:
        raise SystemExit(line)


def check_finite(loss, run, where, args, device=None):
    """Stop if the training loss is not finite. Under torchrun every rank calls this at the
    same step and all stop if one loss is not finite; `device`: the process's device."""
    line = None if math.isfinite(loss) else \
        diverged_line(run, f"the training loss became {loss} at {where}", args)
    _stop_together(line, device)


def check_model_finite(model, run, where, args, valid_loss=None):
    """Stop if the validation loss or any parameter or buffer of `model` (weights, alpha,
    BatchNorm statistics) is not finite: checked before each checkpoint, so the checkpoint on
    disk is always the last finite one. Under torchrun every rank calls this at the same point
    (valid_loss None where the rank does not evaluate): all stop with one rank's line, or none
    does."""
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if valid_loss is not None and not math.isfinite(valid_loss):
        bad.insert(0, f"the evaluation loss ({valid_loss})")
    line = None
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        line = diverged_line(run, f"{len(bad)} non-finite value(s) after {where}: {shown}", args)
    _stop_together(line, next(model.parameters()).device)


def log_step(loss, logits, y, args, run, meter, epoch, step, lr):
    """After a weight step: stop on a non-finite loss, count it in `meter`, log every
    --report_freq steps and at the end of the epoch."""
    check_finite(loss.item(), run, f"epoch {epoch + 1} step {step + 1}", args, loss.device)
    meter.update(loss.item(), logits.detach(), y)
    if (step + 1) % args.report_freq == 0 or step + 1 == meter.total:
        run.log(f"epoch {epoch + 1}/{args.epochs} step {step + 1}/{meter.total} lr {lr:.4f} "
                f"{meter.line()}")


def load_checkpoint(path, device="cpu", kinds=None, hint=""):
    """A checkpoint.pt written by train.py, or a one-line stop naming what is wrong: missing,
    unreadable (truncated, not a torch file), or of another kind than `kinds` (search / eval /
    resnet; `hint` says what to give instead)."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path} does not exist; give the checkpoint.pt of "
                         f"a train.py run directory")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:                                 # truncated zip, random bytes, ...
        first = (str(e).strip().splitlines() or [""])[0][:100]
        raise SystemExit(f"error: {path} cannot be read as a checkpoint: it is truncated or "
                         f"damaged, or not a torch file ({type(e).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") not in ("search", "eval", "resnet"):
        raise SystemExit(f"error: {path} is not a checkpoint written by train.py (it has no "
                         f"'kind' of search, eval or resnet)")
    if kinds is not None and ckpt["kind"] not in kinds:
        what = {"search": "an architecture search (supernet)", "eval": "a genotype retraining",
                "resnet": "a ResNet baseline"}
        raise SystemExit(f"error: {path} holds {what[ckpt['kind']]} checkpoint, not "
                         f"{' or '.join(what[k] for k in kinds)}" + (f"; {hint}" if hint else ""))
    return ckpt


def resume(args, run, device, model, optimizer, scheduler, searcher=None, monitor=None,
           kinds=None):
    """(first epoch, history): (0, []) for a new run, else everything restored from the run's
    checkpoint -- weights, alpha, optimizers, schedule, searcher, layer monitor, RNG state.
    If --epochs grew since the checkpoint, the learning-rate schedule (built for the new
    total) is replayed up to the resumed epoch instead of restored."""
    if not args.resume:
        return 0, []
    ckpt = load_checkpoint(run.file("checkpoint.pt"), device, kinds,
                           hint=f"{run.path} mixes files of two runs")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start = ckpt["epoch"] + 1
    if ckpt["args"].get("epochs", args.epochs) == args.epochs:
        scheduler.load_state_dict(ckpt["scheduler"])
    else:                                                  # --resume RUN --epochs MORE
        for group in optimizer.param_groups:              # replay from the initial lr
            group["lr"] = group["initial_lr"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                # "step() before optimizer.step()"
            for _ in range(start):
                scheduler.step()
        run.log(f"--epochs {ckpt['args']['epochs']} -> {args.epochs}: the learning-rate "
                f"schedule now spans {args.epochs} epochs; epoch {start + 1} starts at lr "
                f"{scheduler.get_last_lr()[0]:.5g}")
    if searcher is not None:
        searcher.load_state_dict(ckpt["searcher"])
    if monitor is not None:
        monitor.history = ckpt.get("layers", [])
    set_rng_state(ckpt["rng"], device)
    run.log(f"resumed from {run.file('checkpoint.pt')} after epoch {start}")
    return start, ckpt["history"]


@torch.no_grad()
def evaluate(model, batches, top5=False, reduce=None):
    """Top-1 accuracy (%) and mean loss on `batches` in eval mode; top5=True adds the top-5
    accuracy (%) (DARTS utils.accuracy with topk=(1, 5); top-k of all classes if fewer).
    reduce: under torchrun, all_sum -- each rank evaluated its share, the counts are summed."""
    was = model.training
    model.eval()
    correct = correct5 = n = 0
    loss = 0.0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        if top5:
            best = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct5 += (best == y[:, None]).any(1).sum().item()
        n += len(y)
    model.train(was)
    if reduce is not None:
        dev = next(model.parameters()).device
        correct, correct5, n, loss = reduce(torch.tensor([correct, correct5, n, loss],
                                                         dtype=torch.float64, device=dev)).tolist()
    out = 100.0 * correct / max(n, 1), loss / max(n, 1)
    return out + (100.0 * correct5 / max(n, 1),) if top5 else out


def _atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def md_table(header, rows):
    """A markdown table: header names, rows as lists of cells (None shown as —)."""
    return ("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
            + "".join("| " + " | ".join("—" if v is None else str(v) for v in r) + " |\n" for r in rows))


def write_csv(rows, path):
    """rows (dicts) as CSV at path, written whole (temp file, then rename)."""
    def csv_(p):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    _atomic(path, csv_)


def write_table(rows, columns, path_stem, title="", note=""):
    """rows (dicts) as a markdown table (path_stem.md, `note` as a paragraph under it) and
    CSV (path_stem.csv)."""
    def md(p):
        with open(p, "w") as f:
            f.write((f"{title}\n\n" if title else "")
                    + md_table([h for h, _ in columns], [[fn(r) for _, fn in columns] for r in rows])
                    + (f"\n{note}\n" if note else ""))
    _atomic(path_stem + ".md", md)
    write_csv(rows, path_stem + ".csv")


def _dump_json(obj, path):
    _atomic(path, lambda p: pathlib.Path(p).write_text(json.dumps(obj)))


class Runs:
    """The single runs of one experiment in `folder` (out_dir/NAME.runs): KEY.json holds a
    finished run's rows, KEY.ckpt.pt a running one's last checkpoint, config.json `config` (what
    shapes a single run). A config other than the stored one raises a one-line ValueError.
    Progress lines count the runs finished in `folder` by any of the `workers` processes that
    share it, and the ETA is that of the whole run: the runs not finished yet, at this process's
    mean time per run, spread over the workers."""

    def __init__(self, folder, config, total, log=None, on_row=None, workers=1):
        os.makedirs(folder, exist_ok=True)
        config, path = json.loads(json.dumps(config)), os.path.join(folder, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            diff = [f"{k} {old.get(k)!r} there, {config.get(k)!r} now" if k != "data" else "other data"
                    for k in sorted(set(old) | set(config)) if old.get(k) != config.get(k)]
            if diff:
                raise ValueError(f"{folder} holds runs of other sizes ({'; '.join(diff)}): pass the same quick, "
                                 f"sizes and data to continue them, or use another out_dir")
        else:
            _dump_json(config, path)
        self.folder, self.total, self.workers = folder, total, workers
        self.log, self.on_row = log or (lambda *_: None), on_row or (lambda *_: None)
        self.rows, self.done, self.trained, self.seconds = [], 0, 0, 0.0

    def path(self, key, ext):
        return os.path.join(self.folder, re.sub(r"[^A-Za-z0-9.=-]+", "_", key) + ext)

    def __call__(self, key, work, describe):
        """The rows of single run `key`: KEY.json's if it finished before; else work(state,
        checkpoint) -> rows, state being its last checkpoint (None: from the start) and
        checkpoint(state) saving one. describe(rows): the progress line's text."""
        done, ckpt = self.path(key, ".json"), self.path(key, ".ckpt.pt")
        self.done += 1
        if os.path.exists(done):
            with open(done) as f:
                rows = json.load(f)
            self.log(f"[{self.done}/{self.total}] {key}: finished earlier")
        else:
            state = torch.load(ckpt, weights_only=True) if os.path.exists(ckpt) else None
            if state is not None:
                self.log(f"  {key}: continuing from its checkpoint (epoch {state.get('epoch')})")
            t0 = time.perf_counter()
            rows = json.loads(json.dumps(work(state, lambda s: _atomic(ckpt, lambda p: torch.save(s, p)))))
            _dump_json(rows, done)                     # JSON's rows: a cached run returns the same
            self.trained, self.seconds = self.trained + 1, self.seconds + time.perf_counter() - t0
            finished = sum(f.endswith(".json") and f != "config.json" for f in os.listdir(self.folder))
            eta = self.seconds / self.trained * max(self.total - finished, 0) / self.workers
            self.log(f"[{finished}/{self.total} finished] {describe(rows)} ({self.seconds:.0f}s trained, "
                     f"ETA {eta:.0f}s)")
            self.on_row(self.rows + rows)                # a partial report after every trained run
        if os.path.exists(ckpt):
            os.remove(ckpt)
        self.rows += rows
        return rows

    def cached(self, key, make):
        """make()'s picklable result, kept in KEY.pt (e.g. a pretrained model's state_dict)."""
        path = self.path(key, ".pt")
        if os.path.exists(path):
            return torch.load(path, weights_only=True)
        obj = make()
        _atomic(path, lambda p: torch.save(obj, p))
        return obj
