"""The weight step and the generator states under torchrun, on 2 CPU processes (gloo) spawned
by the test: the search and retraining loops' own step (harness.search.weight_step) keeps the
ranks together under --amp fp16 when only one rank overflows, and clips the whole batch's
gradient; a checkpoint gives each rank its own generator states back on --resume."""
import argparse
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from test_distributed import _TwoShards, _env, _search_batches, _spawn, _supernet


# ------------------------------------------------------------ --amp fp16: overflow on one rank

def _amp_worker(rank, world, port, out):
    dist = _env(rank, world, port)
    from harness.run_dir import all_average
    from harness.search import weight_step
    from torch.nn.parallel import DistributedDataParallel
    res = {}
    for path in ("search", "retrain"):       # gradients averaged by all_average, or by DDP
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        net = DistributedDataParallel(model) if path == "retrain" else model
        params = list(model.parameters())
        opt = torch.optim.SGD(params, 0.1, momentum=0.9)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
        g = torch.Generator().manual_seed(1 + rank)
        x, y = torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
        before = [p.detach().clone() for p in params]
        steps = []
        for big in (1e36 if rank == 0 else 1.0, 1.0):     # rank 0 overflows in the first step
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x * big), y)
            weight_step(loss, params, opt, scaler, 5.0,
                        average=all_average if path == "search" else None)
            steps.append(([p.detach().clone() for p in params], scaler.get_scale()))
        res[path] = dict(before=before, steps=steps)
    torch.save(res, os.path.join(out, f"amp{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_amp_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """An overflow of the scaled gradients on rank 0 only: every rank skips that step and halves
    its scale, keeping identical finite weights; the next step (no overflow) is taken by both,
    identically. Unscaling before averaging would let rank 1 step on the averaged infinite
    gradients (to NaN weights) while rank 0 skips."""
    _spawn(_amp_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"amp{r}.pt") for r in (0, 1))
    for path in ("search", "retrain"):
        before = r0[path]["before"]
        (w0, s0), (w0b, s0b) = r0[path]["steps"]
        (w1, s1), (w1b, s1b) = r1[path]["steps"]
        for a, b, c in zip(w0, w1, before):
            assert torch.isfinite(b).all() and torch.equal(a, c) and torch.equal(b, c), path
        assert s0 == s1 == 2.0 ** 15, path                    # skipped: the scale halved on both
        for a, b, c in zip(w0b, w1b, before):
            assert torch.isfinite(a).all() and torch.equal(a, b) and not torch.equal(a, c), path
        assert s0b == s1b == 2.0 ** 15, path


# ------------------------------------------------------------ the clip after the averaging

CLIP, LR = 1e-3, 1.0


def _clip_steps(model, loss_model, batches, average):
    """The search loop's weight steps (harness.search.weight_step, no alpha steps) with a clip
    far below the gradients' norm; returns the weights' total change and the gradient norms
    seen before clipping."""
    from harness.run_dir import autocast
    from harness.search import weight_step
    torch.manual_seed(3)                                     # the same brsf draws on every rank
    weights = list(model.weights())
    start = torch.cat([w.detach().flatten() for w in weights])
    opt = torch.optim.SGD(weights, LR, momentum=0.9)
    _, scaler = autocast(argparse.Namespace(amp=None), torch.device("cpu"))     # disabled
    norms = []
    for x, y, _, _ in batches:
        opt.zero_grad(set_to_none=True)
        weight_step(loss_model.loss(x, y), weights, opt, scaler, CLIP, average=average,
                    inspect=lambda: norms.append(float(torch.cat(
                        [w.grad.flatten() for w in weights if w.grad is not None]).norm())))
    return torch.cat([w.detach().flatten() for w in weights]) - start, norms


def _clip_worker(rank, world, port, out):
    dist = _env(rank, world, port)
    from harness.run_dir import all_average
    h = 8
    shard = [(x[rank * h:(rank + 1) * h], y[rank * h:(rank + 1) * h], None, None)
             for x, y, _, _ in _search_batches()]
    model = _supernet()
    torch.save(_clip_steps(model, model, shard, all_average), os.path.join(out, f"clip{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_clipped_weight_steps_are_one_process_on_the_union(tmp_path):
    """--grad_clip far below the gradient norm: the 2-rank steps (each rank's shard, gradients
    averaged, then clipped) equal one process's on the union of the shards, whose whole-batch
    gradient is clipped. Clipping each rank's gradient before averaging moves the weights
    along another direction by a shorter step."""
    model = _supernet()
    ref, ref_norms = _clip_steps(model, _TwoShards(model), _search_batches(), None)
    assert min(ref_norms) > 100 * CLIP                     # the clip binds at every step
    _spawn(_clip_worker, tmp_path)
    (d0, n0), (d1, n1) = (torch.load(tmp_path / f"clip{r}.pt") for r in (0, 1))
    assert torch.equal(d0, d1)                                 # the ranks agree exactly
    assert (d0 - ref).norm() < 1e-3 * ref.norm(), float((d0 - ref).norm() / ref.norm())
    assert n0 == pytest.approx(ref_norms, rel=1e-4)            # the whole batch's gradient


# ------------------------------------------------------------ each rank's generators on resume

def _rng_worker(rank, world, port, out, backend):
    from conftest import rank_env
    import torch.distributed as dist
    from harness import run_dir
    rank_env(rank, world, port)
    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    torch.manual_seed(10 + rank)               # the ranks' generators differ on purpose
    torch.rand(3 + rank, device=device)
    model = nn.Linear(2, 2).to(device)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    run = run_dir.Run(out, main=rank == 0)
    rng = run_dir.rng_state(device)            # every rank, at the same point
    run.save(dict(kind="eval", config={}, model=model.state_dict(), optimizer=opt.state_dict(),
                  scheduler=sched.state_dict(), rng=rng, epoch=0, history=[],
                  args=dict(epochs=2)), "checkpoint.pt")
    expected = torch.rand(4, device=device).cpu()
    dist.barrier()
    saved = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=False)["rng"]
    old = {"torch": saved["torch"]}            # as a checkpoint of one process holds: rank 0's
    torch.manual_seed(999)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(999)
    args = argparse.Namespace(resume=True, epochs=2)
    run_dir.resume(args, run, device, model, opt, sched, kinds=("eval",))
    got = torch.rand(4, device=device).cpu()
    torch.manual_seed(999)
    run_dir.set_rng_state(old, device)
    got_old = torch.rand(4)
    torch.save(dict(expected=expected, got=got, got_old=got_old),
               os.path.join(out, f"rng{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gloo", pytest.param("nccl", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (one per rank)"))])
def test_resume_gives_every_rank_its_own_generator_states(tmp_path, backend):
    """The ranks' generators (CPU with gloo; each rank's own CUDA device with NCCL) made to
    differ, a checkpoint written by rank 0, then run_dir.resume on every rank: each rank draws
    what it would have drawn without the stop, not rank 0's numbers. A checkpoint holding one
    process's CPU state still loads, giving every rank that state."""
    _spawn(_rng_worker, tmp_path, backend)
    r0, r1 = (torch.load(tmp_path / f"rng{r}.pt") for r in (0, 1))
    assert not torch.equal(r0["expected"], r1["expected"])          # they differ on purpose
    for r in (r0, r1):
        assert torch.equal(r["got"], r["expected"])
    if backend == "gloo":
        assert torch.equal(r0["got_old"], r0["expected"]) and torch.equal(r1["got_old"],
                                                                          r0["expected"])
