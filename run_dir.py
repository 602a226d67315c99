"""Run directories and the pieces of a training loop shared by search and retraining.

A run directory holds log.txt, args.json, checkpoint.pt (written to a temp file, then renamed,
so a crash never leaves a broken file) and metrics; `resume` restores weights, optimizers,
schedule, searcher and RNG state from it. Also: the device choice (--gpu N, CPU fallback), one
SGD step with gradient clipping and a clear stop on a non-finite loss, progress with ETA, and
evaluation.
"""
import contextlib
import csv
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def pick_device(gpu):
    """cuda:N when it exists, else the CPU (with a message). Under torchrun with --gpu, each
    process takes cuda:LOCAL_RANK."""
    if gpu is None:
        return torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if torch.cuda.is_available() and gpu < torch.cuda.device_count():
        return torch.device(f"cuda:{gpu}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"warning: --gpu {gpu} requested but this machine has {n} CUDA device(s); "
          f"running on the CPU", file=sys.stderr)
    return torch.device("cpu")


def autocast(args, device):
    """(context, GradScaler or None) for --amp bf16|fp16: torch.autocast around the forward and
    the loss; fp16 also scales the loss (GradScaler); no --amp: (nullcontext, None)."""
    amp = getattr(args, "amp", None)
    if not amp:
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def distributed(device):
    """(rank, world size). Under torchrun (WORLD_SIZE > 1) the process group is initialized
    once: NCCL for CUDA devices, gloo on the CPU. (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


class Run:
    """A run directory: log.txt, args.json, checkpoint.pt (atomic), metrics.json. With
    main=False (ranks other than 0 under torchrun) nothing is printed or written."""

    def __init__(self, path, main=True):
        self.path, self.main = path, main
        if main:
            os.makedirs(path, exist_ok=True)
            self.log_file = open(os.path.join(path, "log.txt"), "a")

    def log(self, msg):
        if not self.main:
            return
        line = time.strftime("%H:%M:%S ") + msg
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

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


def rng_state():
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fmt_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Meter:
    """Running loss/accuracy, images/s and ETA for the log line."""

    def __init__(self, total_steps):
        self.total, self.t0, self.n, self.loss, self.correct, self.steps = total_steps, \
            time.time(), 0, 0.0, 0, 0

    def update(self, loss, logits, y):
        self.n += len(y)
        self.loss += loss * len(y)
        self.correct += (logits.argmax(1) == y).sum().item()
        self.steps += 1

    def line(self):
        dt = time.time() - self.t0
        eta = dt / max(self.steps, 1) * (self.total - self.steps)
        return (f"loss {self.loss / max(self.n, 1):.4f} acc {100 * self.correct / max(self.n, 1):.2f}% "
                f"{self.n / max(dt, 1e-9):.0f} img/s ETA {fmt_eta(eta)}")


def check_finite(loss, run, where):
    if not math.isfinite(loss):
        run.log(f"error: the loss became {loss} at {where}. Lower --learning_rate (or "
                f"--arch_learning_rate), keep --grad_clip on, or try another --seed; the last "
                f"good checkpoint is {run.file('checkpoint.pt')} (resume with --resume).")
        raise SystemExit(2)


def sgd_step(loss, logits, y, params, optimizer, args, run, meter, epoch, step, lr,
             before_clip=None, scaler=None):
    """Backward, clip the gradient norm to --grad_clip, step; stop on a non-finite loss; log.
    before_clip() runs between backward and clipping (to record raw gradients). With a
    GradScaler (--amp fp16) the loss is scaled and the gradients unscaled before clipping."""
    params = list(params)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if before_clip is not None:
        before_clip()
    nn.utils.clip_grad_norm_(params, args.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    check_finite(loss.item(), run, f"epoch {epoch + 1} step {step + 1}")
    meter.update(loss.item(), logits.detach(), y)
    if (step + 1) % args.report_freq == 0 or step + 1 == meter.total:
        run.log(f"epoch {epoch + 1}/{args.epochs} step {step + 1}/{meter.total} lr {lr:.4f} "
                f"{meter.line()}")


def resume(args, run, device, model, optimizer, scheduler, searcher=None, monitor=None):
    """(first epoch, history): (0, []) for a new run, else everything restored from the run's
    checkpoint -- weights, alpha, optimizers, schedule, searcher, layer monitor, RNG state."""
    if not args.resume:
        return 0, []
    ckpt = torch.load(run.file("checkpoint.pt"), map_location=device, weights_only=False)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if searcher is not None:
        searcher.load_state_dict(ckpt["searcher"])
    if monitor is not None:
        monitor.history = ckpt.get("layers", [])
    set_rng_state(ckpt["rng"])
    run.log(f"resumed from {run.file('checkpoint.pt')} after epoch {ckpt['epoch'] + 1}")
    return ckpt["epoch"] + 1, ckpt["history"]


@torch.no_grad()
def evaluate(model, batches):
    """Top-1 accuracy (%) and mean loss on `batches` in eval mode."""
    was = model.training
    model.eval()
    correct = n = 0
    loss = 0.0
    for x, y in batches:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.train(was)
    return 100.0 * correct / max(n, 1), loss / max(n, 1)


def _atomic(path, write):
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def write_table(rows, columns, path_stem, title=""):
    """rows (dicts) as a markdown table (path_stem.md) and CSV (path_stem.csv)."""
    def cell(v):
        return "—" if v is None else str(v)

    def md(p):
        with open(p, "w") as f:
            f.write((f"{title}\n\n" if title else "") + "| " + " | ".join(h for h, _ in columns) + " |\n"
                    + "|" + "---|" * len(columns) + "\n"
                    + "".join("| " + " | ".join(cell(fn(r)) for _, fn in columns) + " |\n" for r in rows))

    def csv_(p):
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    _atomic(path_stem + ".md", md)
    _atomic(path_stem + ".csv", csv_)
