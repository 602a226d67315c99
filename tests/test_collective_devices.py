"""Collectives that NCCL accepts, one GPU per rank, and stops every rank agrees on.

NCCL rejects a tensor that is not on the process's GPU; gloo on the CPU accepts anything, so
on a CPU-only machine a tensor created without a device (which lands on the CPU, the default
device) cannot be told from one placed on the model's device by its `.device` alone. These
tests therefore mark every tensor that a factory (torch.zeros, torch.tensor, ...) creates
without a `device`, or that `.cpu()` returns, as "on the default device", and wrap
torch.distributed's collectives: each tensor handed over must be on the model's device and
not marked, and broadcast_object_list must be told the device. On a GPU machine the same
mistakes are what NCCL refuses."""
import argparse
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.overrides import TorchFunctionMode

import darts
import egnas
import ops
from harness import attack_runs, run_dir
from conftest import free_port, rank_env, tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORIES = {"zeros", "ones", "empty", "full", "tensor", "as_tensor", "arange", "rand", "randn",
             "randint", "randperm", "linspace", "eye", "from_numpy", "scalar_tensor"}


class MarkDefaultDevice(TorchFunctionMode):
    """Marks tensors that a factory creates without a device (or that .cpu() returns); an
    explicit .to(device) / device= clears the mark: the code placed the tensor itself."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            name = getattr(func, "__name__", "")
            if (name in FACTORIES and kwargs.get("device") is None) or name == "cpu":
                out._default_device = True
            elif name == "to" and (kwargs.get("device") is not None or any(
                    isinstance(a, (torch.device, str)) for a in args[1:])):
                out._default_device = False
        return out


COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce",
               "reduce_scatter", "gather", "scatter", "all_to_all")


def watch_collectives(device):
    """Wrap torch.distributed's collectives in this process; returns the list of complaints
    (empty: every tensor was on `device`) and the list of the collectives' names called."""
    bad, called = [], []

    def check(name, t):
        if isinstance(t, (list, tuple)):
            for u in t:
                check(name, u)
        elif isinstance(t, torch.Tensor):
            if t.device != device or getattr(t, "_default_device", False):
                bad.append(f"{name}: a {t.dtype} tensor on the "
                           + ("default device" if t.device == device else str(t.device))
                           + f", the model is on {device}")

    def wrap(name, fn):
        def wrapped(*args, **kwargs):
            called.append(name)
            for a in list(args) + list(kwargs.values()):
                check(name, a)
            return fn(*args, **kwargs)
        return wrapped

    for name in COLLECTIVES:
        setattr(dist, name, wrap(name, getattr(dist, name)))
    for name in ("broadcast_object_list", "all_gather_object", "gather_object",
                 "scatter_object_list"):
        fn = getattr(dist, name)

        def objects(*args, _name=name, _fn=fn, **kwargs):
            called.append(_name)
            if kwargs.get("device") != device:
                bad.append(f"{_name}: told device {kwargs.get('device')}, the model is on "
                           f"{device}")
            return _fn(*args, **kwargs)
        setattr(dist, name, objects)
    return bad, called


def _supernet():
    torch.manual_seed(0)
    return darts.Network(2, 10, 3, ops.search_space(("fa",), ()), steps=2, multiplier=2,
                         in_channels=1)


def _batches(n=8):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g),
            torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def every_collective(rank, world, tmp, device):
    """What a distributed run hands to collectives, each as the harness calls it: the run
    directory's name (train.new_run), EG-NAS's gathered batch, broadcast buffers and scores,
    the architect's averaged gradients (first and second order), the weight gradients, the
    attack table's mean, the agreement on a stop. Returns the collectives' names called."""
    import train
    bad, called = watch_collectives(device)
    model = _supernet().to(device)
    x, y, xv, yv = (t.to(device) for t in _batches())
    args = argparse.Namespace(run_name="r", save=str(tmp), dataset="fashion-mnist", gpu=None,
                              plasticity=None, experiment=None, learning_rate=0.1,
                              arch_learning_rate=3e-4, search="darts")
    with MarkDefaultDevice():
        run = train.new_run(args, "attack")
        searcher = egnas.EGNASSearcher(model, samples=1, population_size=4, warm_start_epochs=0,
                                       log=lambda *_: None, dist=(rank, world, run_dir.all_sum,
                                                                  run_dir.all_gather,
                                                                  run_dir.broadcast_state))
        searcher.step(x, y, xv, yv, 0.1, None, 0)
        opt = torch.optim.SGD(model.weights(), 0.1)
        for unrolled in (False, True):
            darts.Architect(model, unrolled=unrolled, reduce=run_dir.all_average).step(
                x, y, xv, yv, 0.1, opt)
        model.loss(x, y).backward()
        run_dir.all_average([w.grad for w in model.weights()])
        attack_runs.mean_over_ranks([dict(attack="pgd", grad="exact", acc=50.0 + rank)], device)
        run_dir.check_model_finite(model, run, "epoch 1", args, 1.0 if rank == 0 else None)
        run_dir.check_finite(1.0, run, "epoch 1 step 1", args, device)
        assert run_dir.agree("stop" if rank == world - 1 else None, device) == "stop"
        run.close()
    assert not bad, "\n".join(sorted(set(bad)))
    return called


def _worker(rank, world, port, tmp):
    rank_env(rank, world, port)
    dist.init_process_group("gloo")
    try:
        called = every_collective(rank, world, tmp, torch.device("cpu"))
        with open(os.path.join(tmp, f"ok{rank}"), "w") as f:
            f.write(" ".join(sorted(set(called))))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_hand_every_collective_tensors_on_the_model_device(tmp_path):
    """Catches: EG-NAS scores, the attack table's mean, the agreement on a stop or the
    run-name broadcast created on the default device (the CPU), NCCL's 'No backend type
    associated with device type cpu' on a GPU machine."""
    ctx = mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=False)
    assert ctx.join(timeout=300) or ctx.join(timeout=300), "the 2-process run did not finish"
    for r in (0, 1):
        called = (tmp_path / f"ok{r}").read_text().split()
        assert {"all_reduce", "all_gather", "broadcast", "broadcast_object_list"} <= set(called)


def test_the_marks_see_a_tensor_created_without_a_device():
    """The check itself: a score tensor made as EG-NAS once made it is reported."""
    with MarkDefaultDevice():
        a = torch.zeros(3, dtype=torch.float64)
        b = torch.zeros(3, dtype=torch.float64, device="cpu")
        c = torch.tensor([1.0]).to("cpu")
        d = torch.ones(2, device="cpu").cpu()
    assert a._default_device and not getattr(b, "_default_device", False)
    assert not c._default_device and d._default_device


def test_collectives_run_at_world_1_with_the_environment_variable(tmp_path, monkeypatch):
    """Catches: the flag ignored (a one-GPU machine would never run a collective) and, with it,
    a tensor off the model's device in any collective of one process."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert run_dir.distributed(torch.device("cpu")) == (0, 1) and not run_dir.collectives()
    monkeypatch.setenv(run_dir.AT_WORLD_1, "1")
    for name in COLLECTIVES + ("broadcast_object_list", "all_gather_object", "gather_object",
                               "scatter_object_list"):      # restored after the test
        monkeypatch.setattr(dist, name, getattr(dist, name))
    try:
        assert run_dir.distributed(torch.device("cpu")) == (0, 1) and run_dir.collectives()
        called = every_collective(0, 1, tmp_path, torch.device("cpu"))
    finally:
        dist.destroy_process_group()
    assert {"all_reduce", "all_gather", "broadcast", "broadcast_object_list"} <= set(called)


@pytest.mark.slow
def test_egnas_search_through_the_command_line_at_world_1(tmp_path):
    """The flag end to end: an EG-NAS search exploring in its first epoch runs in one process
    with a one-rank process group and ends with its genotype."""
    env = dict(os.environ, BIONAS_COLLECTIVES_AT_WORLD_1="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    argv = tiny_args(tmp_path, "--search", "egnas", "--epochs", "1", "--warm_start_epochs", "0",
                     "--samples", "1", "--population_size", "4", "--partial_channels", "2",
                     "--init_channels", "4", "--run_name", "w1")
    r = subprocess.run([sys.executable, "train.py", *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "runs" / "w1" / "log.txt").read_text()
    assert "EG-NAS exploration (epoch 1)" in log and "search finished" in log


# ------------------------------------------------------------------ one GPU per rank

def _fake_gpus(monkeypatch, n, calls):
    """n CUDA devices as far as pick_device and distributed can tell; set_device and
    init_process_group recorded in `calls` in the order they happen."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "set_device",
                        lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: any(c[0] == "init" for c in calls))
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: int(os.environ.get("RANK", "0")))
    monkeypatch.setattr(dist, "get_world_size", lambda: int(os.environ.get("WORLD_SIZE", "1")))
    monkeypatch.setattr(run_dir, "WARNINGS", [])


def test_each_torchrun_rank_owns_cuda_local_rank_before_the_process_group(monkeypatch, capsys):
    """Catches: no torch.cuda.set_device (every rank's NCCL traffic on cuda:0, 'duplicate
    GPU'), set only after init_process_group, --gpu N under torchrun silently meaning
    something else, and more local ranks than GPUs failing deep in CUDA."""
    calls = []
    _fake_gpus(monkeypatch, 2, calls)
    monkeypatch.delenv(run_dir.AT_WORLD_1, raising=False)
    for k, v in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1").items():
        monkeypatch.setenv(k, v)
    device = run_dir.pick_device(0)
    assert device == torch.device("cuda:1") and calls == [("set_device", device)]
    assert run_dir.distributed(device) == (1, 2)
    first_init = calls.index(("init", "nccl"))
    assert {c for c in calls[:first_init]} == {("set_device", torch.device("cuda:1"))}
    assert capsys.readouterr().err == ""
    assert run_dir.pick_device(3) == torch.device("cuda:1")       # --gpu 3: ignored, said once
    run_dir.pick_device(3)
    err = capsys.readouterr().err
    assert err.count("--gpu 3 is ignored under torchrun") == 1 and "CUDA_VISIBLE_DEVICES" in err
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(SystemExit, match=r"local rank 2 but this machine has 2 CUDA device"):
        run_dir.pick_device(0)


def test_one_process_owns_the_gpu_it_is_given(monkeypatch):
    """Catches: --gpu 1 in one process leaving cuda:0 the current device (where NCCL under
    BIONAS_COLLECTIVES_AT_WORLD_1, and anything placed on "cuda", would go)."""
    calls = []
    _fake_gpus(monkeypatch, 2, calls)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert run_dir.pick_device(1) == torch.device("cuda:1")
    assert calls == [("set_device", torch.device("cuda:1"))]
    monkeypatch.setenv(run_dir.AT_WORLD_1, "1")
    calls.clear()                    # distributed() on its own sets the device before the group
    assert run_dir.distributed(torch.device("cuda:1")) == (0, 1)
    assert calls == [("set_device", torch.device("cuda:1")), ("init", "nccl")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pick_device_makes_the_gpu_current_on_a_real_gpu(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    last = torch.cuda.device_count() - 1
    try:
        assert run_dir.pick_device(last) == torch.device(f"cuda:{last}")
        assert torch.cuda.current_device() == last
    finally:
        torch.cuda.set_device(0)


# ------------------------------------------------------------------ a divergence stop on every rank

def _stop_worker(rank, world, port, tmp, argv, fault):
    rank_env(rank, world, port)
    import types
    import torch.nn.functional as F
    import train
    from harness import search
    from harness import retrain
    if fault == "rank0_valid" and rank == 0:       # only rank 0 evaluates: it alone sees it
        search.evaluate = lambda model, batches: (10.0, float("nan"))
    if fault == "retrain_rank0_valid" and rank == 0:     # every rank evaluates its share (a
        real = retrain.evaluate                           # collective), rank 0's loss is nan
        retrain.evaluate = lambda *a, **kw: (real(*a, **kw)[0], float("nan"))
    if fault == "rank1_loss" and rank == 1:        # one rank's loss at step 2 only
        count = [0]

        def cross_entropy(*a, **kw):
            count[0] += 1
            loss = F.cross_entropy(*a, **kw)
            return loss * float("nan") if count[0] == 2 else loss
        search.F = types.SimpleNamespace(cross_entropy=cross_entropy)
    try:
        train.main(argv)
        msg = "the run did not stop"
    except SystemExit as e:
        msg = str(e.code)
    with open(os.path.join(tmp, f"stop{rank}.txt"), "w") as f:
        f.write(msg)
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("fault,what", [
    ("learning_rate", "the run diverged"),
    ("rank1_loss", "the training loss became nan at epoch 1 step 2"),
    ("rank0_valid", "the evaluation loss (nan)"),
    ("retrain_rank0_valid", "the evaluation loss (nan)")])
def test_divergence_stops_every_rank_with_one_line(tmp_path, fault, what):
    """Through the command line, 2 torchrun-style ranks: a search with a huge learning rate,
    a non-finite loss on rank 1 only, a non-finite evaluation on rank 0 only; a retraining
    with a non-finite evaluation on rank 0 only. Catches: a rank stopping alone (the others
    waiting forever in their next collective under NCCL, or failing with a traceback under
    gloo), and ranks stopping with different messages."""
    mode = ["--search", "darts"]
    if fault.startswith("retrain"):
        darts.save_genotype(darts.Genotype(normal=[("sep_conv_3x3_fa", 0), ("skip_connect", 1),
                                                   ("max_pool_3x3", 0), ("skip_connect", 2)],
                                           normal_concat=[2, 3],
                                           reduce=[("max_pool_3x3", 0), ("skip_connect", 1),
                                                   ("avg_pool_3x3", 0), ("skip_connect", 2)],
                                           reduce_concat=[2, 3]), str(tmp_path / "g.json"))
        mode = ["--train", "--genotype", str(tmp_path / "g.json")]
    argv = tiny_args(tmp_path, *mode, "--epochs", "2", "--run_name", "div",
                     *(["--learning_rate", "1e6"] if fault == "learning_rate" else []))
    ctx = mp.spawn(_stop_worker, args=(2, free_port(), str(tmp_path), argv, fault), nprocs=2,
                   join=False)
    ended = ctx.join(timeout=120) or ctx.join(timeout=120)
    if not ended:                                 # a hung rank must not hang the test suite
        for p in ctx.processes:
            p.kill()
    assert ended, "a rank did not end within 240 s"
    m0, m1 = ((tmp_path / f"stop{r}.txt").read_text() for r in (0, 1))
    assert m0 == m1 and "\n" not in m0 and m0.startswith("error: the run diverged") and what in m0
    log = (tmp_path / "runs" / "div" / "log.txt").read_text()
    assert log.count("the run diverged") == 1
