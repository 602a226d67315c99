"""train.py's runs end to end on the device under test: the run checks of gpu_check.py.

    python benchmarks/gpu_runs.py [--device cuda:0] [--data DIR] [--keep]
    python benchmarks/gpu_runs.py --device cpu          # gloo on the CPU (a check of the checks)

Each check is one command in a process of its own, at toy sizes (a 3-cell, 2-node network on 64
images; the thesis runs at sizes of seconds), and prints one line: `PASS name` or
`FAIL name: <the error's last line>`; the exit status is the number of failures (at most 1).

* Under torchrun (`python -m torch.distributed.run --standalone`), once with 1 rank and once
  with every visible GPU (2 ranks on the CPU), NCCL on GPUs, gloo on the CPU, and
  BIONAS_COLLECTIVES_AT_WORLD_1=1 (so the 1-rank runs make every collective too, and one GPU
  rejects a CPU tensor handed to one): the DARTS search first and second order, the EG-NAS
  search through one exploration, a retraining of a mixed-rule genotype stopped after epoch 1
  (--stop_after), `--attack fgsm,pgd` on its checkpoint, the same retraining with `--amp fp16`,
  and the stopped retraining resumed (--resume) to its end.
* In one process on the device (--gpu N): `--neurogenesis`, `--dyno`, `--equinas evolutionary`
  and `differentiable` (one epoch / generation), every thesis `--experiment` (--sizes of
  seconds), and equinas-table4 spread by `--gpus` over every visible GPU (two CPU slots on the
  CPU).
Data: --data DIR (a directory holding Fashion-MNIST), else generated Fashion-MNIST-format files
(class = a bright square's position) in the work directory, which is removed unless a check
fails or --keep is given.
"""
import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import darts  # noqa: E402

GENOTYPE = darts.Genotype(     # every rule on some edge, brsf's per-forward draws included
    normal=[("sep_conv_3x3_brsf", 0), ("dil_conv_3x3_fa", 1), ("skip_connect", 0), ("sep_conv_3x3_usf", 2)],
    normal_concat=[2, 3],
    reduce=[("skip_connect_brsf", 0), ("sep_conv_3x3_frsf", 1), ("max_pool_3x3", 0), ("dil_conv_3x3_brsf", 2)],
    reduce_concat=[2, 3])
EQUINAS = "n_train=60,n_test=30,fields=1,layers=2,kernel_size=3,hidden=8,bn_images=0"
THESIS = {  # --sizes of each thesis experiment at a size of seconds; the report each writes
    "north-generated": ("n_fs=2,hidden=1,samples=100,epochs_per_layer=1", "generated.md"),
    "north-pareto": ("images=96,epochs=1", "pareto.md"),
    "dyno-transfer": ("source_images=32,pretrain_epochs=1,iterations=2", "transfer.md"),
    "north-cost": ("cost_steps=1", "trigger-cost.md"),
    "equinas-table3": (EQUINAS + ",generations=1,parent_size=2", "equinas-table3.md"),
    "equinas-table4": (EQUINAS + ",epochs_d=1", "equinas-table4.md"),
    "equinas-fig12": (EQUINAS + ",fig12_train=40,fig12_epochs=1", "equinas-fig12.md"),
    "equinas-cost": ("cost=1/8/2,cost_repeats=1", "equinas-cost.md"),
}


def write_idx(path, array):
    """An IDX file (MNIST format) of unsigned bytes, gzipped: magic, dims, bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_mnist(root, n_train=96, n_test=48, seed=0):
    """Fashion-MNIST-format files in torchvision's layout under root: noise with a bright square
    whose position is the class, so a tiny network learns it."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 40, (n, 28, 28))
        for i, c in enumerate(y):
            r, q = divmod(int(c), 5)
            x[i, 4 + 10 * r:12 + 10 * r, 2 + 5 * q:6 + 5 * q] = 250
        write_idx(os.path.join(raw, f"{split}-images-idx3-ubyte.gz"), x)
        write_idx(os.path.join(raw, f"{split}-labels-idx1-ubyte.gz"), y)
    return root


def last_error(stderr, stdout=""):
    """The error's last line in a command's output: the last `error: ...` or `...Error: ...`
    line (a rank's too; torchrun's own summary skipped), else the first sign of a process that
    died without one (an abort, a signal), else stderr's (or stdout's) last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(^|\]:\s*)(error:|[\w.]*(Error|Exception)\b)", line)
              and "ChildFailedError" not in line and "errors.html" not in line]
    died = [line for line in lines if re.search(r"terminate called|Segmentation fault|core dumped|"
                                                r"\(SIG(ABRT|SEGV|KILL|BUS)\)", line)]
    rest = [line for line in lines if not set(line) <= set("=-")]
    return (errors[-1:] or died[:1] or rest[-1:] or stdout.strip().splitlines()[-1:] or ["no output"])[0][:300]


class Checks:
    """Runs the commands, prints PASS/FAIL lines, counts the failures."""

    def __init__(self, work, env, timeout):
        self.work, self.env, self.timeout, self.failed, self.passed = work, env, timeout, [], []

    def run(self, name, cmd, expect=lambda: None):
        """cmd (train.py's arguments, after `python` or torchrun) in the repository; PASS when it
        exits 0 and expect() returns None (else its message)."""
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True,
                               timeout=self.timeout)
            problem = last_error(p.stderr, p.stdout) if p.returncode else expect()
        except subprocess.TimeoutExpired:
            problem = f"did not finish in {self.timeout:.0f} s"
        except (OSError, ValueError, KeyError) as e:
            problem = f"{type(e).__name__}: {e}"
        if problem:
            self.failed.append(name)
            print(f"FAIL {name}: {problem}", flush=True)
        else:
            self.passed.append(name)
            print(f"PASS {name}", flush=True)
        return not problem

    def path(self, *parts):
        return os.path.join(self.work, "runs", *parts)

    def has(self, run, *files, log=None):
        """An expect(): the run directory holds the files, and its log.txt the text `log`."""
        def check():
            missing = [f for f in files if not os.path.exists(self.path(run, f))]
            if missing:
                return f"{run} has no {', '.join(missing)}"
            if log and log not in open(self.path(run, "log.txt")).read():
                return f"{run}/log.txt does not say {log!r}"
            return None
        return check


def torchrun(world):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={world}", "train.py"]


def distributed_checks(c, world, gpu, data):
    """The torchrun checks with `world` ranks (gpu: train.py's --gpu flag, [] on the CPU)."""
    batch = 8 * max(world, 2)              # >= 4 images per rank; a search takes one step
    tiny = ["--dataset", "fashion-mnist", "--data", data, "--save", c.path(),
            "--subset", str(2 * batch), "--batch_size", str(batch), "--init_channels", "2",
            "--layers", "3", "--nodes", "2", "--report_freq", "1", "--seed", "5"] + gpu
    ranks = f"{world} rank{'s' if world > 1 else ''}"
    said = f"x {world} processes" if world > 1 else None      # the log line of a split batch
    w = f"w{world}-"
    cmd = torchrun(world)
    c.run(f"{ranks}: DARTS search, first order", cmd + tiny + [
        "--search", "darts", "--epochs", "1", "--run_name", w + "darts1"],
        c.has(w + "darts1", "genotype.json", log=said))
    c.run(f"{ranks}: DARTS search, second order", cmd + tiny + [
        "--search", "darts", "--unrolled", "--epochs", "1", "--run_name", w + "darts2"],
        c.has(w + "darts2", "genotype.json", log=said))
    c.run(f"{ranks}: EG-NAS search through one exploration", cmd + tiny + [
        "--search", "egnas", "--epochs", "1", "--warm_start_epochs", "0", "--samples", "1",
        "--population_size", "4", "--partial_channels", "2", "--init_channels", "4",
        "--run_name", w + "egnas"],
        c.has(w + "egnas", "genotype.json", log="EG-NAS exploration (epoch 1)"))
    genotype = os.path.join(c.work, "genotype.json")
    retrain = tiny + ["--train", "--genotype", genotype, "--epochs", "2"]
    stopped = c.run(f"{ranks}: retraining (stopped after epoch 1)", cmd + retrain + [
        "--stop_after", "1", "--run_name", w + "train"],
        c.has(w + "train", "checkpoint.pt", log=said))
    c.run(f"{ranks}: --attack fgsm,pgd", cmd + gpu + [
        "--attack", "fgsm,pgd", "--checkpoint", c.path(w + "train", "checkpoint.pt"),
        "--attack_batches", "1", "--attack_steps", "2", "--batch_size", str(batch),
        "--save", c.path(), "--run_name", w + "attack"], c.has(w + "attack", "robustness.md"))
    c.run(f"{ranks}: retraining with --amp fp16", cmd + retrain + [
        "--amp", "fp16", "--run_name", w + "fp16"], c.has(w + "fp16", "model.pt"))
    if not stopped:
        c.run(f"{ranks}: --resume of the stopped retraining", ["false"],
              lambda: "its retraining failed")
        return

    def two_epochs():
        with open(c.path(w + "train", "history.json")) as f:
            epochs = [h["epoch"] for h in json.load(f)]
        return None if epochs == [0, 1] else f"history has epochs {epochs}, not [0, 1]"
    c.run(f"{ranks}: --resume of the stopped retraining", cmd + gpu + [
        "--resume", c.path(w + "train")], lambda: c.has(w + "train", "model.pt")() or two_epochs())


def thesis_checks(c, gpu, gpus, data):
    """The thesis systems in one process on the device (gpu: --gpu N, [] on the CPU); gpus: the
    --gpus list of the spread experiment."""
    common = ["--data", data, "--save", c.path(), "--seed", "1"] + gpu
    py = [sys.executable, "train.py"]
    c.run("1 process: --neurogenesis NORTH-Select", py + common + [
        "--neurogenesis", "NORTH-Select", "--epochs", "1", "--subset", "96", "--batch_size", "32",
        "--widths", "4,4", "--max_width", "16", "--run_name", "neuro"], c.has("neuro", "result.json"))
    c.run("1 process: --dyno far", py + common + [
        "--dyno", "far", "--iterations", "5", "--run_name", "dyno"], c.has("dyno", "result.json"))
    for method in ("evolutionary", "differentiable"):
        c.run(f"1 process: --equinas {method}", py + common + [
            "--equinas", method, "--quick", "--epochs", "1", "--batch_size", "16",
            "--run_name", f"equinas-{method}"], c.has(f"equinas-{method}", "result.json"))
    for name, (sizes, report) in THESIS.items():
        c.run(f"1 process: --experiment {name}", py + common + [
            "--experiment", name, "--quick", "--seeds", "1", "--sizes", sizes,
            "--run_name", name], c.has(name, report))
    slots = len(gpus.split(","))
    c.run(f"{slots} processes: --experiment equinas-table4 --gpus {gpus}", py + common + [
        "--experiment", "equinas-table4", "--quick", "--seeds", "1,2", "--sizes",
        THESIS["equinas-table4"][0], "--gpus", gpus, "--run_name", "gpus"],
        c.has("gpus", "equinas-table4.md", log=f"share {slots}/{slots}: started"))


def run_checks(dev, data=None, keep=False, timeout=600.0):
    """Every check on torch.device `dev` (cuda:N or cpu); returns the number that failed."""
    work = tempfile.mkdtemp(prefix="gpu_runs-")
    data = data or fake_fashion_mnist(os.path.join(work, "data"))
    darts.save_genotype(GENOTYPE, os.path.join(work, "genotype.json"))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(BIONAS_COLLECTIVES_AT_WORLD_1="1", PYTHONUNBUFFERED="1")
    if dev.type == "cuda":
        n = torch.cuda.device_count()
        worlds, gpu = sorted({1, n}), ["--gpu", str(dev.index or 0)]
        gpus = ",".join(str(i) for i in range(n)) if n > 1 else f"{dev.index or 0},{dev.index or 0}"
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
        worlds, gpu, gpus = (1, 2), [], "cpu,cpu"
    print(f"run checks on {dev} (work directory {work}):", flush=True)
    c = Checks(work, env, timeout)
    t0 = time.time()
    for world in worlds:      # torchrun takes cuda:LOCAL_RANK; one rank: the device's index
        distributed_checks(c, world, gpu if world == 1 or not gpu else ["--gpu", "0"], data)
    thesis_checks(c, gpu, gpus, data)
    print(f"run checks: {len(c.passed)} passed, {len(c.failed)} failed in {time.time() - t0:.0f} s",
          flush=True)
    if c.failed or keep:
        print(f"their run directories: {c.path()}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return len(c.failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0", help="cuda:N or cpu")
    ap.add_argument("--data", help="a directory holding Fashion-MNIST (default: generated files)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per check")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device}: CUDA is not available here; use --device cpu")
    return min(run_checks(dev, args.data, args.keep, args.timeout), 1)


if __name__ == "__main__":
    sys.exit(main())
